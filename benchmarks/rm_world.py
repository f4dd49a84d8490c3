"""Benchmark: a reward model trained on simulated-labeler comparisons of the built-in world.

Training pairs are the world's typical comparison mix (`world.make_pairs`: ideal vs degraded,
two degraded responses, near ties), each judged by one simulated labeler of a pool of 8 at the
default noise (`LabelerConfig`: 73% inter-labeler agreement, InstructGPT's; length and position
biases). Held-out pairs come from another seed, drop every prompt seen in training, and are
labeled by a separate pool. The reward model (`coachlm rm`, on a pretrained or SFT backbone) is
evaluated twice on them (`coachlm rm eval`): against the rubric's noise-free preference (pairs
it scores equal left out) and against the noisy labels. Prints one JSON object. Usage:

    coachlm world --out W && coachlm pretrain --corpus W/corpus.txt --out P train.max_steps=300
    python benchmarks/rm_world.py --model P/final          # or an SFT model

Held-out prompts seen in training are dropped, so fewer than --heldout-pairs remain (the
world's task space is small: about 40% of fresh pairs repeat a training prompt).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from coachlm.data.io import write_records
from coachlm.eval.reward_eval import RMEvalConfig, run_rm_eval
from coachlm.engine.accel import set_threads
from coachlm.engine.config import TrainConfig
from coachlm.trainers.reward import RMConfig, rm
from coachlm.world import make_labelers, make_pairs, parse_prompt


def labeled(n: int, seed: int, n_labelers: int, exclude: set[str] = frozenset()) -> list:
    """Simulated-labeler comparisons of `n` world pairs (prompts in `exclude` dropped)."""
    pool = make_labelers(n_labelers, seed=seed)
    pairs = [(p, a, b) for p, a, b in make_pairs(n, seed=seed) if p not in exclude]
    return [pool[i % n_labelers].compare(p, a, b, meta={"family": family(p)})
            for i, (p, a, b) in enumerate(pairs)]


def family(prompt: str) -> str:
    task = parse_prompt(prompt)
    return task.family if task else "unknown"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="backbone: pretrained or SFT model")
    p.add_argument("--train-pairs", type=int, default=16000)
    p.add_argument("--heldout-pairs", type=int, default=2000)
    p.add_argument("--labelers", type=int, default=8)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--layout", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep", type=Path, default=None, help="keep the run (and data) here")
    return p.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse(argv)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    threads = set_threads(args.threads)
    train = labeled(args.train_pairs, seed=0, n_labelers=args.labelers)
    seen = {r.prompt[-1].content for r in train}
    held = labeled(args.heldout_pairs, seed=1, n_labelers=args.labelers, exclude=seen)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        write_records(root / "train.jsonl", train)
        write_records(root / "heldout.jsonl", held)
        cfg = RMConfig(model=args.model, data=(root / "train.jsonl",), out=root / "rm",
                       epochs=args.epochs, layout=args.layout, val_fraction=0.02,
                       train=TrainConfig(lr=args.lr, weight_decay=0.0, warmup_ratio=0.05,
                                         batch_size=args.batch_size, threads=threads,
                                         log_every=10))
        result, final = rm(cfg)
        evals = {against: run_rm_eval(RMEvalConfig(model=final, data=(root / "heldout.jsonl",),
                                                   against=against))
                 for against in ("rubric", "labels")}
    s = result.summary
    brief = {k: {"accuracy": round(e["accuracy"], 4), "pairs": e["n"], "ece": round(e["ece"], 4),
                 "mean_margin": round(e["mean_margin"], 4), "left_out": e["left_out"],
                 "per_family": {f: round(m["accuracy"], 4) for f, m in e["per_family"].items()}}
             for k, e in evals.items()}
    return {"setup": {"model": str(args.model), "train_comparisons": len(train),
                      "heldout_comparisons": len(held), "labelers": args.labelers,
                      "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size},
            "vs_noise_free_rubric": brief["rubric"], "vs_noisy_labels": brief["labels"],
            "train": {"steps": result.steps, "layout": s["layout"], "tokens_per_s": s["tokens_per_s"],
                      "seconds": s["seconds"], "bf16": s["bf16"],
                      "val_accuracy": round(result.metrics.get("val_accuracy", float("nan")), 4)}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
