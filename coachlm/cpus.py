"""How many CPU cores this process may really use: the default for torch's thread count.

`os.cpu_count()` counts the machine's cores, not this process's. Two limits cut it down:
- the affinity mask (`taskset`, `docker --cpuset-cpus`, a batch scheduler): `sched_getaffinity`;
- a CFS bandwidth quota (`docker --cpus`, Kubernetes CPU limits): cgroup v2 `cpu.max`
  ("QUOTA PERIOD" or "max PERIOD") or cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`
  (-1: none), on the process's cgroup or any ancestor (the tightest applies).
A quota of 1.5 CPUs gives 1 thread, rounded down as Go's automaxprocs does (uber-go/automaxprocs):
threads beyond the quota are throttled together mid-matmul and every op waits for the slowest,
which is how two torch threads on a busy 2-core machine ran ~8x slower than one (see demo.py).

A third limit is other work: a core that another process keeps busy is not free either. With
two torch threads on a 2-core machine where a busy process sat on one core, an RLOO run at
world-25m took ~10x the CPU seconds of one thread (TRL's ~7x): each operator's threads wait at
a barrier for the one that shares its core. `free_cpus` finds the cores that stayed idle while
this process slept for a moment (/proc/stat), for the default thread count of one process.

Pure Python, no torch: the paths are parameters so that tests can use fake cgroup trees.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")


def usable_cpus(affinity: set[int] | None = None, cgroup_root: Path = CGROUP_ROOT,
                proc_cgroup: Path = PROC_CGROUP) -> int:
    """min(cores in the affinity mask, whole CPUs of the cgroup quota), at least 1."""
    cores = len(affinity if affinity is not None else os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs' worth of CFS quota on this process's cgroup (tightest over its ancestors), or None."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2 (unified)
            for mount in (cgroup_root, cgroup_root / "unified"):
                limits += [_v2_limit(d) for d in _ancestors(mount, path)]
        elif "cpu" in controllers.split(","):  # cgroup v1 cpu controller
            for mount in (cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
                limits += [_v1_limit(d) for d in _ancestors(mount, path)]
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """`mount/path` and each of its parents up to `mount` (a limit on any of them applies).
    Inside a container the cgroup namespace often shows "/" and its limit sits at the mount."""
    parts = [p for p in path.strip("/").split("/") if p]
    return [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_limit(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    return int(quota) / int(period or 100000)


def _v1_limit(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) < 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def cpu_times(stat: Path = PROC_STAT, count_nice: bool = True) -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) clock ticks since boot, from /proc/stat's `cpuN` lines.

    Busy is user + system + irq + softirq + steal, plus nice when `count_nice`: work at a
    higher nice value than this process barely takes a core from it (CFS weights: nice 19
    gets ~1.5% beside nice 0), so it counts only for a process that is itself niced."""
    out: dict[int, tuple[int, int]] = {}
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        v = [int(x) for x in fields[:8]] + [0] * (8 - len(fields[:8]))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        busy = user + system + irq + softirq + steal + (nice if count_nice else 0)
        out[int(name[3:])] = (busy, busy + idle + iowait + (0 if count_nice else nice))
    return out


def busy_share(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
               ) -> dict[int, float]:
    """Per core, the share of the ticks between two `cpu_times` snapshots that were busy."""
    out = {}
    for core, (busy, total) in after.items():
        b0, t0 = before.get(core, (busy, total))
        out[core] = (busy - b0) / (total - t0) if total > t0 else 0.0
    return out


def free_cpus(cores: set[int] | None = None, interval: float = 0.2, stat: Path = PROC_STAT,
              threshold: float = 0.5) -> set[int]:
    """The cores of `cores` (default: the affinity mask) that other processes kept busy less
    than `threshold` of the time over `interval` seconds, while this process slept (so its own
    thread does not count). A snapshot: work that starts later is not seen. No /proc/stat (not
    Linux): all of `cores`."""
    cores = set(cores if cores is not None else os.sched_getaffinity(0))
    count_nice = os.getpriority(os.PRIO_PROCESS, 0) > 0
    before = cpu_times(stat, count_nice)
    if not before:
        return cores
    time.sleep(interval)
    share = busy_share(before, cpu_times(stat, count_nice))
    return {c for c in cores if share.get(c, 0.0) < threshold}
