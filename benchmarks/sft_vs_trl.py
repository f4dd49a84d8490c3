"""Benchmark: coachlm's SFT against TRL's SFTTrainer, the same work through both.

Same model (a freshly initialized preset Llama, saved once and loaded by both), same tokenizer,
same token sequences (encoded once with `coachlm.data.chat.encode_example` and handed to TRL
pre-tokenized with its completion mask, so both put loss on exactly the same tokens), same batch
size, steps, learning-rate schedule, AdamW settings, clipping, max length and precision.
TRL-side choices, made to keep the comparison fair: gradient checkpointing off (TRL turns it on
by default; coachlm does not checkpoint), no packing, no padding-free batching, right padding,
completion-only loss. Both count tokens the same way: non-padding input tokens processed.
Speed is reported per wall-clock second and per CPU second of the process (the second is less
sensitive to other processes on a shared machine), both over training only: coachlm's optimizer
steps, TRL's whole `trainer.train()`. TRL's log lines go to stderr; stdout is the JSON alone.
TRL samples batches at random; run with `--trl-group-by-length` to give it length-grouped
batches too (transformers' LengthGroupedSampler), the counterpart of coachlm's bucketing.
`--compile` trains coachlm's side with `SFTConfig.compile` (torch.compile), compile time included.

Afterwards both final models are scored with the same function on the same held-out examples.
Prints one JSON object. Usage:

    python benchmarks/sft_vs_trl.py --steps 60 --batch-size 16 --precision fp32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mfu import add_peak_arg, peak_gflops, utilization
from trl_common import trl_args
from coachlm.data.chat import encode_example
from coachlm.data.collate import ExampleBatches
from coachlm.data.io import write_records
from coachlm.data.schema import Demonstration, Message, Response
from coachlm.models.fast_ops import use_plain_ops
from coachlm.models.load import load_model, save_pretrained
from coachlm.models.presets import build_model, count_parameters, preset_vocab_size
from coachlm.models.tokenizer import train_tokenizer
from coachlm.engine.accel import set_threads
from coachlm.engine.config import TrainConfig
from coachlm.trainers.sft import SFTConfig, response_loss, sft


def world_demos(n: int, seed: int) -> list[Demonstration]:
    """Demonstrations of the built-in world's task families (prompt, ideal response)."""
    from coachlm.world.tasks import KINDS, ideal_response, prompt_text, sample_task

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        task = sample_task(rng.choice(sorted(KINDS)), rng)
        out.append(Demonstration(prompt=(Message("user", prompt_text(task, rng)),),
                                 response=Response(ideal_response(task, rng))))
    return out


def run_ours(args: argparse.Namespace, root: Path, tcfg: TrainConfig) -> dict:
    cfg = SFTConfig(model=root / "base", data=(root / "train.jsonl",), out=root / "ours",
                    max_length=args.max_length, val_fraction=0.0, compile=args.compile, train=tcfg,
                    **({} if args.pack_width_multiple is None
                       else {"pack_width_multiple": args.pack_width_multiple}))
    start, kids = time.perf_counter(), _children_cpu()
    result, final = sft(cfg)
    wall, kids = time.perf_counter() - start, _children_cpu() - kids
    rows = [json.loads(l) for l in (root / "ours" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r][-10:]
    # Steady state: the second half of the steps (past --compile's compiling), from the logged
    # cumulative tokens and tokens/s (training seconds = tokens / tokens_per_s); wall clock.
    steps = [r for r in rows if "tokens_per_s" in r]
    mid, end = steps[len(steps) // 2 - 1], steps[-1]
    steady = (end["tokens"] - mid["tokens"]) / (
        end["tokens"] / end["tokens_per_s"] - mid["tokens"] / mid["tokens_per_s"])
    # --compile: inductor runs the C++ compiler in child processes, whose CPU time the loop's
    # own process-time clock misses; it counts here.
    cpu = result.tokens / result.summary["tokens_per_cpu_s"] + kids
    return {"tokens": result.tokens, "train_seconds": round(result.seconds, 3),
            "end_to_end_seconds": round(wall, 3),
            "tokens_per_s": round(result.tokens / result.seconds, 1),
            "tokens_per_cpu_s": round(result.tokens / cpu, 1),
            "steady_tokens_per_s": round(steady, 1),
            "compiler_cpu_seconds": round(kids, 1),
            "final_loss": round(sum(losses) / len(losses), 4), "_model": final}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_trl(args: argparse.Namespace, root: Path, examples: list, tok) -> dict:
    from datasets import Dataset
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    start = time.perf_counter()
    model = load_model(root / "base", dtype=torch.float32, tokenizer=tok)
    use_plain_ops(model)  # TRL runs transformers' own modules, not coachlm's fast_ops
    data = Dataset.from_dict({
        "input_ids": [ids for ids, _ in examples],
        "completion_mask": [[0 if l == -100 else 1 for l in labels] for _, labels in examples]})
    targs = TRLConfig(**trl_args(
        root, args.steps, args.batch_size, args.lr, args.precision, warmup_steps=args.warmup,
        logging_steps=10, max_length=args.max_length, packing=False, padding_free=False,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if args.trl_group_by_length else "random"))
    trainer = SFTTrainer(model=model, args=targs, train_dataset=data, processing_class=tok)
    t0, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints its logs; keep stdout JSON
        trainer.train()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu
    wall = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    tokens = int(logs[-1]["num_tokens"])
    trainer.save_model(str(root / "trl" / "final"))
    return {"tokens": tokens, "train_seconds": round(seconds, 3), "end_to_end_seconds": round(wall, 3),
            "tokens_per_s": round(tokens / seconds, 1), "tokens_per_cpu_s": round(tokens / cpu, 1),
            "final_loss": round(logs[-1]["loss"], 4),
            "_model": root / "trl" / "final"}


def heldout_loss(model_dir: Path, tok, val: list, batch_size: int) -> float:
    model = load_model(model_dir, dtype=torch.float32, tokenizer=tok).eval()
    with torch.no_grad():
        return round(response_loss(model, ExampleBatches(val, batch_size, tok.pad_token_id,
                                                          shuffle=False))["val_loss"], 4)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="world-small")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--precision", "--dtype", dest="precision", choices=("fp32", "bf16"), default="fp32")
    add_peak_arg(p)
    p.add_argument("--examples", type=int, default=4000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--trl-group-by-length", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="coachlm side with SFTConfig.compile (compile time counts in its seconds)")
    p.add_argument("--pack-width-multiple", type=int, default=None,
                   help="coachlm side: SFTConfig.pack_width_multiple (default: the shipped one)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each, alternating; median reported")
    p.add_argument("--order", choices=("ours-first", "trl-first"), default="ours-first")
    args = p.parse_args(argv)
    if args.steps % 10:  # TRL logs (loss, token count) every 10 steps; both sides average those
        p.error("--steps must be a multiple of 10")
    return args


def main(argv: list[str]) -> dict:
    args = parse(argv)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    threads = set_threads(args.threads)
    peak = peak_gflops(args.peak, args.precision)
    cpu_peak = peak_gflops(args.peak, args.precision, per_cpu_second=True)
    demos = world_demos(args.examples + 200, seed=0)
    train_demos, val_demos = demos[:args.examples], demos[args.examples:]
    tok = train_tokenizer([d.prompt[-1].content + "\n" + d.response.text for d in demos],
                          preset_vocab_size(args.preset))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = build_model(args.preset, tok, seed=0)
        params = count_parameters(base)
        save_pretrained(base, tok, root / "base")
        del base
        write_records(root / "train.jsonl", train_demos)
        examples = [encode_example(tok, d.prompt, d.response.text, args.max_length) for d in train_demos]
        val = [encode_example(tok, d.prompt, d.response.text, args.max_length) for d in val_demos]
        tcfg = TrainConfig(lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                           schedule="cosine", min_lr_ratio=0.0, warmup_steps=args.warmup,
                           max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                           max_grad_norm=1.0, bf16=args.precision == "bf16", seed=0,
                           log_every=1, threads=threads)
        runs: dict[str, dict] = {}
        speeds: dict[str, list[float]] = {"ours": [], "trl": []}
        cpu_speeds: dict[str, list[float]] = {"ours": [], "trl": []}
        order = ["ours", "trl"] if args.order == "ours-first" else ["trl", "ours"]
        for _ in range(args.repeats):  # alternate, so that load from other processes hits both
            for name in order:
                runs[name] = run_ours(args, root, tcfg) if name == "ours" else run_trl(args, root, examples, tok)
                speeds[name].append(runs[name]["tokens_per_s"])
                cpu_speeds[name].append(runs[name]["tokens_per_cpu_s"])
        for name, run in runs.items():
            run["heldout_loss"] = heldout_loss(run.pop("_model"), tok, val, args.batch_size)
            run["tokens_per_s_runs"] = speeds[name]
            run["tokens_per_s"] = statistics.median(speeds[name])
            run["tokens_per_cpu_s_runs"] = cpu_speeds[name]
            run["tokens_per_cpu_s"] = statistics.median(cpu_speeds[name])
            run.update(utilization(params, run["tokens_per_s"], peak,  # 6N per trained token
                                   tokens_per_cpu_s=run["tokens_per_cpu_s"], cpu_peak=cpu_peak))
    mean_len = sum(len(ids) for ids, _ in examples) / len(examples)
    return {
        "setup": {"preset": args.preset, "steps": args.steps, "batch_size": args.batch_size,
                  "lr": args.lr, "max_length": args.max_length, "precision": args.precision,
                  "threads": threads, "repeats": args.repeats,
                  "parameters": params, "peak_gflops": round(peak, 1),
                  "peak_gflops_per_cpu_s": round(cpu_peak, 1), "train_examples": len(examples),
                  "mean_example_tokens": round(mean_len, 1),
                  "trl_sampler": "group_by_length" if args.trl_group_by_length else "random",
                  "compile": args.compile, "pack_width_multiple": args.pack_width_multiple,
                  "torch": torch.__version__, "trl": __import__("trl").__version__},
        "ours": runs["ours"], "trl": runs["trl"],
        "speedup_tokens_per_s": round(runs["ours"]["tokens_per_s"] / runs["trl"]["tokens_per_s"], 2),
        "speedup_tokens_per_cpu_s": round(
            runs["ours"]["tokens_per_cpu_s"] / runs["trl"]["tokens_per_cpu_s"], 2),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
