"""What every run writes: `metrics.jsonl` (one JSON object per logged step) and `summary.json`
(steps, tokens, tokens/s, wall seconds, peak memory, final metrics), plus Rich progress bars."""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def warn(message: str) -> None:
    """A one-line warning on stderr (a setting or input the run works around, and says so)."""
    Console(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLog:
    """Appends metrics to `out_dir/metrics.jsonl` and writes `out_dir/summary.json` at the end.

    `resume=True` keeps earlier lines (a resumed run continues the same file), dropping any logged
    after `from_step` so that a resumed run's metrics are not duplicated.
    """

    def __init__(self, out_dir: str | Path, resume: bool = False, from_step: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        kept: list[str] = []
        if resume and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= from_step:
                    kept.append(line)
        self.path.write_text("".join(l + "\n" for l in kept))
        self.start = time.perf_counter()
        self.last: dict[str, Any] = {}

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.last.update(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def summary(self, **fields: Any) -> dict[str, Any]:
        """Write summary.json; `tokens` and `seconds` give tokens_per_s unless it is passed."""
        seconds = fields.pop("seconds", time.perf_counter() - self.start)
        out: dict[str, Any] = {"seconds": round(seconds, 3), **fields}
        if "tokens" in out and "tokens_per_s" not in out:
            out["tokens_per_s"] = round(out["tokens"] / max(seconds, 1e-9), 1)
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        out["final_metrics"] = {k: _clean(v) for k, v in self.last.items()}
        (self.out_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
        return out


def progress(disable: bool | None = None) -> Progress:
    """A Rich progress bar with count, rate-bearing text fields, elapsed and remaining time.

    Use `task = p.add_task("sft", total=n, rate="")` and `p.update(task, advance=1,
    rate=f"{tok_s:,.0f} tok/s")`. Disabled when COACHLM_NO_PROGRESS is set. Drawn on stderr, as
    other progress output is, so that a command's or a benchmark's stdout stays its result.
    """
    if disable is None:
        disable = bool(os.environ.get("COACHLM_NO_PROGRESS"))
    # Rich redraws from a thread of this process, 10 times a second by default: ~11 ms of CPU
    # per second on a terminal (~1% of a one-core training run); steps take ~0.1-1 s, so 2 do.
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=disable, console=Console(stderr=True), refresh_per_second=2,
    )
