"""Where an RLOO/GRPO/PPO iteration's time goes in coachlm (issue 15): `torch.profiler` over
`train_ppo` on the model and prompts of `rl_vs_trl.py` (same arguments), operators summed by
self CPU time into the groups of `profile_steps.py`, per phase: sampling (`generate`), the
no-grad logprob passes (policy and reference, `_recompute`) and the update (`ppo_update`).
What the operators of a phase do not cover is Python and framework overhead (`other_python_ms`).
The first iteration is a warm-up, left out of the window.

    python benchmarks/profile_rl.py --preset world-25m --precision bf16 --steps 3 --threads 1

Prints one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from unittest import mock

from torch.profiler import ProfilerActivity, profile, record_function

import rl_vs_trl
from profile_steps import group_of
from coachlm.engine.accel import set_threads
from coachlm.trainers import ppo as ppo_module
from coachlm.trainers import ppo_steps
from coachlm.rollout import generators as generators_module

PHASES = ("generate", "recompute", "update")


class PhaseClock:
    """Wall and CPU seconds per phase, from the iteration `first` on (1-based); each phase's
    calls also run inside a profiler range of the phase's name."""

    def __init__(self, first: int) -> None:
        self.first, self.iteration = first, 0
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.prof = profile(activities=[ProfilerActivity.CPU])

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if name == "generate":
                self.iteration += 1
                if self.iteration == self.first:
                    self.prof.start()
            if self.iteration < self.first:
                return fn(*args, **kwargs)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                with record_function(name):
                    return fn(*args, **kwargs)
            finally:
                self.wall[name] += time.perf_counter() - t0
                self.cpu[name] += time.process_time() - c0
        return timed

    def report(self, iterations: int, top: int) -> dict[str, Any]:
        per_it = 1e-3 / iterations  # us over the window -> ms per iteration
        groups: dict[str, dict[str, float]] = {p: {} for p in PHASES}
        ops: dict[str, dict[str, float]] = {p: {} for p in PHASES}
        calls = dict.fromkeys(PHASES, 0)
        for e in self.prof.events():
            if not e.name.startswith("aten::") or e.self_cpu_time_total <= 0:
                continue
            phase, p = None, e.cpu_parent
            while p is not None and phase is None:
                phase = p.name if p.name in PHASES else None
                p = p.cpu_parent
            if phase is None:
                continue
            g = group_of(e.name)
            groups[phase][g] = groups[phase].get(g, 0.0) + e.self_cpu_time_total
            ops[phase][e.name] = ops[phase].get(e.name, 0.0) + e.self_cpu_time_total
            calls[phase] += 1
        out = {}
        for ph in PHASES:
            covered = sum(groups[ph].values()) * per_it
            cpu_ms = 1e3 * self.cpu[ph] / iterations
            out[ph] = {"wall_ms": round(1e3 * self.wall[ph] / iterations, 1),
                       "cpu_ms": round(cpu_ms, 1), "ops": round(calls[ph] / iterations),
                       "groups_ms": {g: round(v * per_it, 1) for g, v in
                                     sorted(groups[ph].items(), key=lambda kv: -kv[1])},
                       "other_python_ms": round(cpu_ms - covered, 1),
                       "top_ops": {k: round(v * per_it, 1) for k, v in
                                   sorted(ops[ph].items(), key=lambda kv: -kv[1])[:top]}}
        return out


def main(argv: list[str]) -> dict:
    args = rl_vs_trl.parse(argv)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    threads = set_threads(args.threads)
    cfg = rl_vs_trl.ppo_config(args, threads)
    clock = PhaseClock(first=2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, prompts = rl_vs_trl.world_setup(args, root, threads)
        counter = rl_vs_trl.CountingRubric({p[-1].content: 0 for p in prompts})
        tok, model, reward = rl_vs_trl.our_policy(base, cfg, counter)

        patches = [mock.patch.object(generators_module, "generate",
                                     clock.wrap("generate", generators_module.generate)),
                   mock.patch.object(ppo_steps, "_recompute",
                                     clock.wrap("recompute", ppo_steps._recompute)),
                   mock.patch.object(ppo_module, "ppo_update",
                                     clock.wrap("update", ppo_module.ppo_update))]
        with contextlib.ExitStack() as stack:
            for p in patches:
                stack.enter_context(p)
            result = ppo_module.train_ppo(model, tok, prompts, reward, cfg, root / "ours")
            clock.prof.stop()
    return {"setup": {"preset": args.preset, "precision": args.precision, "algo": args.algo,
                      "threads": threads, "iterations_profiled": cfg.steps - 1,
                      "episodes_per_iteration": cfg.episodes},
            "mean_response_tokens": round(result.summary["generated_tokens"] / (cfg.steps * cfg.episodes), 1),
            "phases": clock.report(cfg.steps - 1, top=8)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
