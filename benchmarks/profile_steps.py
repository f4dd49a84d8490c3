"""Where a training step's time goes (issue 15): `torch.profiler` over the steady-state steps of
coachlm's and TRL's SFT, reward-model or DPO training, run by the matching `*_vs_trl.py`
benchmark (the same model, data, batch and steps on both sides).

Each side is profiled from the start of its step `--skip + 1` to the start of its last step, so
the window holds whole steps: the data path between steps, forward, backward, clipping and the
optimizer. coachlm's step is `coachlm.engine.loop.update`; TRL's is `Trainer.training_step` (one
per optimizer step: no accumulation) plus the optimizer work around it. Operators are summed by
self CPU time into groups (matmuls, attention, norms, elementwise, optimizer, ...); what the
operators do not cover is Python and framework overhead (`other_python_ms`).

    python benchmarks/profile_steps.py sft --preset world-25m --steps 10 --batch-size 8
    python benchmarks/profile_steps.py dpo --preset world-25m --steps 10 --batch-size 8 -- --no-precompute

Arguments after the method name go to the benchmark script. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

# Operator name fragments -> group, first match wins (aten names, as the profiler reports them).
GROUPS = (
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")),
    ("optimizer", ("_foreach", "adam", "aten::lerp", "aten::addcdiv", "aten::addcmul")),
    ("norm", ("rsqrt", "aten::pow", "aten::mean", "norm")),
    ("loss", ("cross_entropy", "nll_loss", "log_softmax", "logsigmoid")),
    ("embedding", ("embedding",)),
    ("copy/layout", ("copy_", "aten::cat", "contiguous", "clone", "aten::to", "_to_copy",
                     "index", "gather", "scatter", "masked", "aten::where", "fill_", "zero_")),
    ("elementwise", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::neg", "silu",
                     "aten::cos", "aten::sin", "sigmoid", "aten::exp", "aten::sum")),
)


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other_ops"


class Window:
    """A profiler that starts at the `first`-th call of a step function and stops at the
    `last`-th (1-based), so that it covers whole steps."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.calls = first, last, 0
        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.wall = self.cpu = 0.0
        self.steps = last - first

    def tick(self) -> None:
        self.calls += 1
        if self.calls == self.first:
            self.wall, self.cpu = time.perf_counter(), time.process_time()
            self.prof.start()
        elif self.calls == self.last:
            self.prof.stop()
            self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            self.tick()
            return fn(*args, **kwargs)
        return step

    def report(self, top: int) -> dict[str, Any]:
        events = [e for e in self.prof.key_averages() if e.self_cpu_time_total > 0]
        per_step = 1e-3 / self.steps  # us over the window -> ms per step
        groups: dict[str, float] = {}
        calls = 0
        for e in events:
            groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
            calls += e.count
        covered = sum(groups.values()) * per_step
        step_ms = 1e3 * self.wall / self.steps
        rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
        return {"steps": self.steps, "step_ms": round(step_ms, 1),
                "cpu_ms_per_step": round(1e3 * self.cpu / self.steps, 1),
                "ops_per_step": round(calls / self.steps),
                "groups_ms": {g: round(v * per_step, 1) for g, v in
                              sorted(groups.items(), key=lambda kv: -kv[1])},
                "other_python_ms": round(step_ms - covered, 1),
                "top_ops": [{"op": e.key, "ms": round(e.self_cpu_time_total * per_step, 2),
                             "calls": round(e.count / self.steps, 1)} for e in rows]}


@contextmanager
def patched(owner: Any, name: str, window: Window) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, window.wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def trainer_classes(method: str) -> list[Any]:
    import trl

    return [{"sft": trl.SFTTrainer, "rm": trl.RewardTrainer, "dpo": trl.DPOTrainer}[method]]


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=("sft", "rm", "dpo"))
    p.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the window")
    p.add_argument("--top", type=int, default=15)
    args, rest = p.parse_known_args(argv)
    rest = [a for a in rest if a != "--"]
    bench = __import__({"sft": "sft_vs_trl", "rm": "rm_vs_trl", "dpo": "dpo_vs_trl"}[args.method])
    steps = bench.parse(rest).steps
    import coachlm.engine.loop as loop

    ours, theirs = Window(args.skip + 1, steps), Window(args.skip + 1, steps)
    with patched(loop, "update", ours):
        with patched(trainer_classes(args.method)[0], "training_step", theirs):
            result = bench.main(rest)
    return {"setup": result["setup"], "speedups": {k: v for k, v in result.items() if k.startswith("speedup")},
            "ours": ours.report(args.top), "trl": theirs.report(args.top)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
