"""How many CPU cores this process may really use: the default for torch's thread count.

`os.cpu_count()` counts the machine's cores, not this process's. Two limits cut it down:
- the affinity mask (`taskset`, `docker --cpuset-cpus`, a batch scheduler): `sched_getaffinity`;
- a CFS bandwidth quota (`docker --cpus`, Kubernetes CPU limits): cgroup v2 `cpu.max`
  ("QUOTA PERIOD" or "max PERIOD") or cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`
  (-1: none), on the process's cgroup or any ancestor (the tightest applies).
A quota of 1.5 CPUs gives 1 thread, rounded down as Go's automaxprocs does (uber-go/automaxprocs):
threads beyond the quota are throttled together mid-matmul and every op waits for the slowest,
which is how two torch threads on a busy 2-core machine ran ~8x slower than one (see demo.py).

Pure Python, no torch: the paths are parameters so that tests can use fake cgroup trees.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


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
