"""A competing CPU-bound process for the benchmarks' "under load" figures (issue 15): a shared
machine, reproduced on purpose, so that a speed-up measured on a quiet machine can be checked
when another process wants a core too (a browser, a web server, another job)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import Iterator


def pick_core(core: int) -> int:
    """`core`, or for -1 the highest-numbered core this process may run on."""
    usable = sorted(os.sched_getaffinity(0))
    if core == -1:
        return usable[-1]
    if core not in usable:
        raise SystemExit(f"--background-load {core}: not a core this process may use {usable}")
    return core


@contextlib.contextmanager
def busy_core(core: int | None) -> Iterator[dict]:
    """Run a busy loop pinned to `core` (-1: the last usable core; None: no load) while the
    block runs. Yields a dict that, after the block, holds the core and the CPU seconds the
    competitor actually got (so a reader can see that the load was there)."""
    info: dict = {}
    if core is None:
        yield info
        return
    info["core"] = pick_core(core)
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(proc.pid, {info["core"]})
    t0 = time.perf_counter()
    try:
        yield info
    finally:
        proc.kill()
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = -9
        info["seconds"] = round(time.perf_counter() - t0, 3)
        info["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 3)
