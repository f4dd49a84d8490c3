"""The figures of one RL benchmark run: rates over the training call, phase times, medians."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any, Callable


def rates(tokens: int, seconds: float, cpu: float, loop: float) -> dict[str, float]:
    """Rates over the whole training call (wall, process CPU) and over its loop alone."""
    return {"train_seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "loop_seconds": round(loop, 3), "tokens_per_s": round(tokens / seconds, 1),
            "tokens_per_cpu_s": round(tokens / cpu, 1),
            "loop_tokens_per_s": round(tokens / loop, 1)}


def phase_times(total: float, **parts: float) -> dict[str, float]:
    """The parts, and "other": the rest of `total` (set-up, checkpoints, decoding, logging)."""
    out = {k: round(v, 3) for k, v in parts.items()}
    out["other"] = round(total - sum(parts.values()), 3)
    return out


def median(runs: list[dict]) -> dict:
    """The last run's record, with medians (and every run's value) of the speeds."""
    out = dict(runs[-1])
    for key in ("tokens_per_s", "tokens_per_cpu_s", "loop_tokens_per_s"):
        out[f"{key}_runs"] = [r[key] for r in runs]
        out[key] = round(statistics.median(out[f"{key}_runs"]), 1)
    return out


class Phases:
    """Seconds spent in named calls (wrapped functions), summed over the run: wall-clock
    (`seconds`) and CPU of the process (`cpu`; on a shared machine the wall-clock of a phase
    also holds the time other processes had the core)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.cpu[name] += time.process_time() - c0
        return timed
