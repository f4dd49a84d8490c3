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
