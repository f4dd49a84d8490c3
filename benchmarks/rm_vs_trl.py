"""Benchmark: coachlm's reward-model training against TRL's RewardTrainer, the same work through both.

Same model (one saved Llama backbone: a fresh preset on the built-in world, or the pretrained
stories260K on HH-RLHF), same tokenizer, same token sequences (encoded once by coachlm and
handed to TRL pre-tokenized as chosen_ids/rejected_ids), same pairs per batch (one comparison
per prompt, so a coachlm batch of B prompts is TRL's batch of B pairs), steps, learning-rate
schedule, AdamW settings, clipping and precision. TRL-side choices, to keep it fair: gradient
checkpointing off (TRL's default is on; coachlm never checkpoints), dropout off (as coachlm),
random batches (its default). Both count tokens the same way: the non-padding tokens of every
chosen and rejected sequence (prompt included), which is what TRL logs as num_tokens; coachlm
processes fewer when it shares prompts, which is the point. Speed is per wall-clock second and
per CPU second of the process, over training only; `--repeats N` alternates the runs and
reports medians (the machine may be shared). Afterwards both models score the same
held-out pairs (accuracy). TRL's log lines go to stderr; stdout is the JSON alone.

`--layouts pad,share,pack` times coachlm once per layout (the measurement behind
`models.reward.choose_layout`); the first is compared with TRL.

    python benchmarks/rm_vs_trl.py --data world --steps 60 --batch-size 16
    python benchmarks/rm_vs_trl.py --data hh --steps 40 --batch-size 16 --layouts auto,pad,share
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mfu import add_peak_arg, parameters, peak_gflops, utilization
from trl_common import trl_args
from coachlm.data.io import read_records, write_records
from coachlm.data.reward_batches import build_groups, truncate_group
from coachlm.data.schema import Comparison
from coachlm.eval.reward_eval import RMEvalConfig, run_rm_eval
from coachlm.models.load import load_model, load_tokenizer, save_pretrained
from coachlm.models.presets import build_model, preset_vocab_size
from coachlm.models.tokenizer import train_tokenizer
from coachlm.engine.accel import set_threads
from coachlm.engine.config import TrainConfig
from coachlm.trainers.reward import RMConfig, rm

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HH = SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
STORIES = SHARED / "models" / "stories260K" / "hf"


def one_per_prompt(records: list[Comparison]) -> list[Comparison]:
    seen, out = set(), []
    for r in records:
        if r.prompt not in seen and r.choice in ("a", "b"):
            seen.add(r.prompt)
            out.append(r)
    return out


def world_data(n: int, root: Path, preset: str) -> tuple[list[Comparison], Path]:
    from coachlm.world import make_labelers, make_pairs

    labelers = make_labelers(3, seed=0)
    records = [labelers[i % 3].compare(p, a, b) for i, (p, a, b) in enumerate(make_pairs(n, seed=0))]
    records = one_per_prompt(records)
    tok = train_tokenizer([r.prompt[-1].content + "\n" + r.a.text + "\n" + r.b.text
                           for r in records], preset_vocab_size(preset))
    save_pretrained(build_model(preset, tok, seed=0), tok, root / "base")
    return records, root / "base"


def hh_data(root: Path) -> tuple[list[Comparison], Path]:
    if not HH.is_file() or not STORIES.is_dir():
        sys.exit(f"skipped: {HH} or {STORIES} is absent (../shared/data)")
    records = one_per_prompt(list(read_records(HH, on_error=lambda e: None)))
    tok = load_tokenizer(STORIES)  # gains <pad>; the saved copy has the resized embeddings
    save_pretrained(load_model(STORIES, dtype=torch.float32, tokenizer=tok), tok, root / "base")
    return records, root / "base"


def run_ours(args, root: Path, tcfg: TrainConfig, layout: str) -> dict:
    cfg = RMConfig(model=root / "base", data=(root / "train.jsonl",), out=root / f"ours-{layout}",
                   max_length=args.max_length, val_fraction=0.0, epochs=None, layout=layout,
                   bucket_batches=args.bucket_batches, normalize_max=args.normalize_max,
                   compile=args.compile, train=tcfg)
    start = time.perf_counter()
    result, final = rm(cfg)
    return {"layout": result.summary["layout"], "tokens": result.tokens,
            "train_seconds": round(result.seconds, 3),
            "end_to_end_seconds": round(time.perf_counter() - start, 3),
            "tokens_per_s": round(result.tokens / result.seconds, 1),
            "tokens_per_cpu_s": result.summary["tokens_per_cpu_s"],
            "share_saving": result.summary["share_saving"], "_model": final}


def trl_dataset(records: list[Comparison], tok, max_length: int):
    from datasets import Dataset

    groups, _ = build_groups(records, tok)
    chosen, rejected = [], []
    for g in groups:
        g, _ = truncate_group(g, max_length)
        a, b, _, _ = g.comparisons[0]
        chosen.append(g.prompt_ids + g.response_ids[a])
        rejected.append(g.prompt_ids + g.response_ids[b])
    return Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})


def run_trl(args, root: Path, records: list[Comparison], tok) -> dict:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    start = time.perf_counter()
    model = AutoModelForSequenceClassification.from_pretrained(str(root / "base"), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    targs = RewardConfig(**trl_args(
        root, args.steps, args.batch_size, args.lr, args.precision, warmup_steps=args.warmup,
        logging_steps=10, max_length=None, disable_dropout=True))
    trainer = RewardTrainer(model=model, args=targs, processing_class=tok,
                            train_dataset=trl_dataset(records, tok, args.max_length))
    t0, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu
    logs = [h for h in trainer.state.log_history if "num_tokens" in h]
    tokens = int(logs[-1]["num_tokens"])
    return {"tokens": tokens, "train_seconds": round(seconds, 3),
            "end_to_end_seconds": round(time.perf_counter() - start, 3),
            "tokens_per_s": round(tokens / seconds, 1), "tokens_per_cpu_s": round(tokens / cpu, 1),
            "_model": trainer.model}


@torch.no_grad()
def trl_accuracy(model, records: list[Comparison], tok, max_length: int) -> float:
    data = trl_dataset(records, tok, max_length)
    model.eval()
    right = 0
    for c, r in zip(data["chosen_ids"], data["rejected_ids"]):
        right += int(model(input_ids=torch.tensor([c])).logits[0, 0] >
                     model(input_ids=torch.tensor([r])).logits[0, 0])
    return right / len(data)


def median_speeds(run: dict, wall: list[float], cpu: list[float]) -> None:
    run.update(tokens_per_s_runs=wall, tokens_per_s=statistics.median(wall),
               tokens_per_cpu_s_runs=cpu, tokens_per_cpu_s=statistics.median(cpu))


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("world", "hh"), default="world")
    p.add_argument("--preset", default="world-small", help="backbone shape for --data world")
    p.add_argument("--pairs", type=int, default=3000, help="world comparisons to generate")
    p.add_argument("--heldout", type=int, default=300)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--bucket-batches", type=int, default=4)
    p.add_argument("--normalize-max", type=int, default=None,
                   help="coachlm: fit the normalization on ~this many responses (default: all)")
    p.add_argument("--precision", "--dtype", dest="precision", choices=("fp32", "bf16"), default="fp32")
    add_peak_arg(p)
    p.add_argument("--layouts", default="auto", help="coachlm layouts to time, comma-separated")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1, help="runs of each, alternating; median reported")
    p.add_argument("--compile", action="store_true",
                   help="coachlm side with RMConfig.compile (compile time counts in its seconds)")
    return p.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse(argv)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    threads = set_threads(args.threads)
    peak = peak_gflops(args.peak, args.precision)
    cpu_peak = peak_gflops(args.peak, args.precision, per_cpu_second=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records, base = world_data(args.pairs, root, args.preset) if args.data == "world" else hh_data(root)
        train, held = records[:-args.heldout], records[-args.heldout:]
        write_records(root / "train.jsonl", train)
        write_records(root / "heldout.jsonl", held)
        tok = load_tokenizer(base)
        params = parameters(base)
        tcfg = TrainConfig(lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                           schedule="cosine", min_lr_ratio=0.0, warmup_steps=args.warmup,
                           max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                           max_grad_norm=1.0, bf16=args.precision == "bf16", seed=0,
                           log_every=10, threads=threads, checkpoint_every=0)
        ours: dict[str, dict] = {}
        trl: dict = {}
        speeds: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # alternate, so that load from other processes hits all
            for layout in args.layouts.split(","):
                run = run_ours(args, root, tcfg, layout)
                speeds.setdefault(layout, []).append(run["tokens_per_s"])
                speeds.setdefault(f"{layout}_cpu", []).append(run["tokens_per_cpu_s"])
                ours[layout] = run
            trl = run_trl(args, root, train, tok)
            speeds.setdefault("trl", []).append(trl["tokens_per_s"])
            speeds.setdefault("trl_cpu", []).append(trl["tokens_per_cpu_s"])
        for layout, run in ours.items():
            run["heldout_accuracy"] = run_rm_eval(RMEvalConfig(
                model=run.pop("_model"), data=(root / "heldout.jsonl",), max_length=args.max_length))["accuracy"]
            median_speeds(run, speeds[layout], speeds[f"{layout}_cpu"])
            run.update(utilization(params, run["tokens_per_s"], peak,
                                   tokens_per_cpu_s=run["tokens_per_cpu_s"], cpu_peak=cpu_peak))
        trl["heldout_accuracy"] = trl_accuracy(trl.pop("_model"), held, tok, args.max_length)
        median_speeds(trl, speeds["trl"], speeds["trl_cpu"])
        trl.update(utilization(params, trl["tokens_per_s"], peak,
                               tokens_per_cpu_s=trl["tokens_per_cpu_s"], cpu_peak=cpu_peak))
    first = ours[args.layouts.split(",")[0]]
    return {
        "setup": {"data": args.data, "backbone": args.preset if args.data == "world" else "stories260K",
                  "steps": args.steps, "batch_size_pairs": args.batch_size, "lr": args.lr,
                  "precision": args.precision, "max_length": args.max_length, "threads": threads,
                  "parameters": params, "peak_gflops": round(peak, 1),
                  "peak_gflops_per_cpu_s": round(cpu_peak, 1),
                  "bucket_batches": args.bucket_batches, "normalize_max": args.normalize_max,
                  "repeats": args.repeats, "compile": args.compile,
                  "train_pairs": len(train), "heldout_pairs": len(held),
                  "torch": torch.__version__, "trl": __import__("trl").__version__},
        "ours": ours, "trl": trl,
        "speedup_tokens_per_s": round(first["tokens_per_s"] / trl["tokens_per_s"], 2),
        "speedup_tokens_per_cpu_s": round(first["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"], 2),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
