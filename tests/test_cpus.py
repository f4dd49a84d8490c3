"""Usable CPUs from the affinity mask and cgroup v1/v2 CFS quotas, on fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

from coachlm.cpus import cgroup_cpu_quota, usable_cpus


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc(tmp_path: Path, text: str) -> Path:
    _write(tmp_path / "proc_cgroup", text)
    return tmp_path / "proc_cgroup"


def test_no_cgroup_files_means_the_affinity_mask(tmp_path):
    proc = _proc(tmp_path, "0::/\n")
    assert cgroup_cpu_quota(tmp_path / "cg", proc) is None
    assert usable_cpus({0, 1, 2, 3}, tmp_path / "cg", proc) == 4
    assert usable_cpus({5}, tmp_path / "cg", tmp_path / "missing") == 1


def test_v2_quota_rounds_down_and_caps_the_affinity(tmp_path):
    root = tmp_path / "cg"
    _write(root / "app" / "cpu.max", "150000 100000\n")  # 1.5 CPUs
    proc = _proc(tmp_path, "0::/app\n")
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert usable_cpus(set(range(8)), root, proc) == 1
    _write(root / "app" / "cpu.max", "300000 100000\n")
    assert usable_cpus(set(range(8)), root, proc) == 3
    assert usable_cpus({0, 1}, root, proc) == 2  # the mask is tighter than the quota


def test_v2_max_means_no_limit_and_the_tightest_ancestor_wins(tmp_path):
    root = tmp_path / "cg"
    _write(root / "a" / "b" / "cpu.max", "max 100000\n")
    _write(root / "a" / "cpu.max", "200000 100000\n")
    _write(root / "cpu.max", "400000 100000\n")
    proc = _proc(tmp_path, "0::/a/b\n")
    assert cgroup_cpu_quota(root, proc) == 2.0
    assert usable_cpus(set(range(16)), root, proc) == 2


def test_v2_in_a_container_namespace_reads_the_mount_itself(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cpu.max", "50000 100000\n")  # half a CPU: still one thread
    proc = _proc(tmp_path, "0::/\n")
    assert usable_cpus({0, 1, 2, 3}, root, proc) == 1


def test_v1_cfs_quota_and_hybrid_layout(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "250000\n")
    _write(root / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000\n")
    _write(root / "unified" / "cpu.max", "max 100000\n")  # hybrid: v2 mounted, no limit there
    proc = _proc(tmp_path, "4:memory:/job\n2:cpu,cpuacct:/job\n0::/\n")
    assert cgroup_cpu_quota(root, proc) == 2.5
    assert usable_cpus(set(range(8)), root, proc) == 2


def test_v1_minus_one_is_no_quota(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    proc = _proc(tmp_path, "1:cpu:/\n0::/\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cpus({0, 1, 2}, root, proc) == 3


def test_this_machine_gives_at_least_one_cpu():
    assert 1 <= usable_cpus() <= len(__import__("os").sched_getaffinity(0))


# ------------------------------------------------------------------- cores other work keeps busy

STAT_0 = """cpu  300 200 100 1000 10 0 0 0 0 0
cpu0 100 100 50 500 5 0 0 0 0 0
cpu1 200 100 50 500 5 0 0 0 0 0
intr 12345
"""
# 100 ticks later: core 0 idle 90 of them, core 1 busy 80 (user 30, nice 50) and idle 20.
STAT_1 = """cpu  330 250 105 1110 10 0 0 0 0 0
cpu0 100 100 55 590 5 0 0 0 0 0
cpu1 230 150 50 520 5 0 0 0 0 0
intr 12399
"""


def test_busy_share_per_core_with_and_without_nice(tmp_path):
    from coachlm.cpus import busy_share, cpu_times

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(STAT_0)
    b.write_text(STAT_1)
    assert cpu_times(a) == {0: (250, 755), 1: (350, 855)}  # the "cpu" total line is skipped
    share = busy_share(cpu_times(a), cpu_times(b))
    assert share == {0: 5 / 95, 1: 80 / 100}
    # For a process at nice 0, niced work is no competition: core 1 was busy 30 of 100 ticks.
    plain = busy_share(cpu_times(a, count_nice=False), cpu_times(b, count_nice=False))
    assert plain[1] == 30 / 100


def test_free_cpus_leaves_out_a_core_another_process_keeps_busy(tmp_path, monkeypatch):
    from coachlm import cpus

    stat = tmp_path / "stat"
    stat.write_text(STAT_0)
    monkeypatch.setattr(cpus.time, "sleep", lambda s: stat.write_text(STAT_1))
    monkeypatch.setattr(cpus.os, "getpriority", lambda *a: 19)  # niced, as on a shared machine
    assert cpus.free_cpus({0, 1}, stat=stat) == {0}
    stat.write_text(STAT_0)
    monkeypatch.setattr(cpus.os, "getpriority", lambda *a: 0)
    assert cpus.free_cpus({0, 1}, stat=stat) == {0, 1}  # only niced work on core 1
    assert cpus.free_cpus({0, 1}, stat=tmp_path / "missing") == {0, 1}  # no /proc/stat


def test_default_threads_leave_busy_cores_to_their_owner(monkeypatch):
    import torch

    from coachlm.engine import accel

    before = torch.get_num_threads()
    monkeypatch.setattr(accel, "usable_cpus", lambda: 2)
    monkeypatch.setattr(accel, "free_cpus", lambda: {0})
    try:
        assert accel.set_threads(None) == 1  # one core busy with other work: one thread
        assert accel.set_threads(2) == 2  # asked for: as asked
        monkeypatch.setattr(accel, "free_cpus", lambda: set())
        assert accel.set_threads(None) == 1  # at least one
        monkeypatch.setattr(accel, "free_cpus", lambda: {0, 1})
        assert accel.set_threads(None) == 2
    finally:
        torch.set_num_threads(before)
