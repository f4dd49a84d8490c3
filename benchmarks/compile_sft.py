"""What `compile` costs and saves in SFT: compile CPU seconds (cold and warm cache) and CPU per
step, per way of compiling (issue 15).

Each mode trains the same preset model on the same packed world batches through coachlm's own
loop (`engine.train` with SFT's loss), each in a fresh process (dynamo's state is per process):
`eager`; `layers` (`models.compiled.compile_layers`: each decoder layer, one shared graph);
`body` (the whole transformer body as one graph, `body.compile(dynamic=True)`, the way before
regional compile). Every compiled mode runs twice on one fresh cache directory: `cold` (empty)
then `warm` (the same directory again, as a second run of the same shape would find it).
CPU seconds of each step count the process and its children (inductor's C++ compiler runs as
child processes). Per mode: `step_cpu_s`, the median over the second half of the steps;
`compile_cpu_s`, the steps' total minus steps x that median (the extra the first steps cost);
`break_even_steps`, compile_cpu_s over the per-step saving against eager. Prints one JSON object.

    python benchmarks/compile_sft.py --preset world-25m --precision bf16 --steps 30 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("eager", "layers", "body")


def _cpu() -> float:
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child(args: argparse.Namespace) -> dict:
    """One training run in this process; the CPU seconds of each step."""
    import torch

    from sft_vs_trl import world_demos
    from coachlm.data.chat import encode_example
    from coachlm.data.collate import ExampleBatches
    from coachlm.engine.accel import set_threads
    from coachlm.engine.config import TrainConfig
    from coachlm.engine.loop import train
    from coachlm.models.attention import use_fp32_attention
    from coachlm.models.compiled import compile_layers, use_cache_dir
    from coachlm.models.presets import build_model, preset_vocab_size
    from coachlm.models.tokenizer import train_tokenizer
    from coachlm.trainers.lm_loss import causal_lm_loss

    set_threads(args.threads)
    demos = world_demos(args.examples, seed=0)
    tok = train_tokenizer([d.prompt[-1].content + "\n" + d.response.text for d in demos],
                          preset_vocab_size(args.preset))
    model = build_model(args.preset, tok, seed=0)
    use_fp32_attention(model)
    if args.child == "layers":
        compile_layers(model)
    elif args.child == "body":
        use_cache_dir()
        torch._inductor.config.compile_threads = 1
        model.model.compile(dynamic=True)
    examples = [encode_example(tok, d.prompt, d.response.text, args.max_length) for d in demos]
    batches = ExampleBatches(examples, args.batch_size, tok.pad_token_id, seed=0, pack=True,
                             width_multiple=64)
    cfg = TrainConfig(lr=1e-3, warmup_steps=2, max_steps=args.steps, batch_size=args.batch_size,
                      bf16=args.precision == "bf16", seed=0, log_every=1, threads=args.threads,
                      checkpoint_every=0)
    cpu: list[float] = []
    last = [_cpu()]

    def on_step(step: int, metrics: dict) -> None:
        now = _cpu()
        cpu.append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory() as out:
        result = train(model, batches, causal_lm_loss, cfg, out, on_step=on_step)
    return {"step_cpu": cpu, "tokens": result.tokens, "loss": float(result.metrics["loss"])}


def summarize(run: dict, eager_step: float | None) -> dict:
    cpu = run["step_cpu"]
    steady = statistics.median(cpu[len(cpu) // 2:])
    out = {"step_cpu_s": round(steady, 3), "first_step_cpu_s": round(cpu[0], 1),
           "total_cpu_s": round(sum(cpu), 1), "compile_cpu_s": round(sum(cpu) - len(cpu) * steady, 1),
           "tokens_per_cpu_s": round(run["tokens"] / sum(cpu), 1), "final_loss": round(run["loss"], 4)}
    if eager_step is not None and eager_step > steady:
        out["break_even_steps"] = round(out["compile_cpu_s"] / (eager_step - steady))
    return out


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="world-25m")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    runs: dict[str, dict] = {}
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here), str(here.parent),
                                                        os.environ.get("PYTHONPATH", "")]))
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as cache:
            env["COACHLM_COMPILE_CACHE"] = cache
            env.pop("TORCHINDUCTOR_CACHE_DIR", None)
            for temp in ("cold", "warm") if mode != "eager" else ("",):
                t = time.perf_counter()
                done = subprocess.run([sys.executable, __file__, *argv, "--child", mode], env=env,
                                      check=True, capture_output=True, text=True)
                run = json.loads(done.stdout)
                run["wall_s"] = round(time.perf_counter() - t, 1)
                runs[f"{mode}_{temp}".rstrip("_")] = run
    eager = runs.get("eager")
    eager_step = statistics.median(eager["step_cpu"][len(eager["step_cpu"]) // 2:]) if eager else None
    return {"setup": {k: v for k, v in vars(args).items() if k != "child"},
            "cpu": "process + children CPU seconds per step", **{
                name: {**summarize(run, eager_step if name != "eager" else None),
                       "wall_s": run["wall_s"]} for name, run in runs.items()}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
