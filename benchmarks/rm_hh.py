"""Benchmark: reward models on real human preferences, the HH-RLHF harmlessness pairs.

Data: ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz, 2,312 pairs (Bai et al., 2022). In 5
of them the chosen and rejected transcripts differ before the last assistant turn, so they are
not a comparison of two responses to one prompt; `read_records(on_error=...)` skips them (a
reward model could still score both transcripts, but the pair would then also compare prompts).
The 2,307 valid pairs are shuffled with a fixed seed (numpy default_rng(0)) and split 2,000 train
/ 307 held out: the issue's 2,000 / 312 split less the 5 invalid pairs.

Two backbones of the same shape (Llama, dim 64, 5 layers, 8 query / 4 KV heads: stories260K's):
  (a) from scratch: random weights, a byte-level BPE tokenizer trained on the training
      transcripts (512 entries, as stories260K's);
  (b) pretrained: stories260K (TinyStories; ../shared/data/models/stories260K/hf).
Each trains with `coachlm.trainers.reward.rm` and is evaluated with `coachlm rm eval`'s
function on the held-out pairs. Prints one JSON object; skips with a message when ../shared is
absent. Usage:

    python benchmarks/rm_hh.py --epochs 2 --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from coachlm.data.io import read_records, write_records
from coachlm.eval.reward_eval import RMEvalConfig, run_rm_eval
from coachlm.models.load import load_model, load_tokenizer, save_pretrained
from coachlm.models.presets import build_model
from coachlm.models.tokenizer import train_tokenizer
from coachlm.engine.accel import set_threads
from coachlm.engine.config import TrainConfig
from coachlm.trainers.reward import RMConfig, rm

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HH = SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
STORIES = SHARED / "models" / "stories260K" / "hf"
STORIES_SHAPE = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=5,
                     num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)


def split(n_train: int, seed: int = 0) -> tuple[list, list, int]:
    """(train, held-out, invalid count): the valid pairs in a seeded random order."""
    invalid: list = []
    records = list(read_records(HH, on_error=invalid.append))
    order = np.random.default_rng(seed).permutation(len(records))
    shuffled = [records[i] for i in order]
    return shuffled[:n_train], shuffled[n_train:], len(invalid)


def scratch_backbone(root: Path, train) -> Path:
    texts = [t for r in train for t in ("\n".join(m.content for m in r.prompt), r.a.text, r.b.text)]
    tok = train_tokenizer(texts, vocab_size=512)
    save_pretrained(build_model(STORIES_SHAPE, tok, seed=0), tok, root / "scratch")
    return root / "scratch"


def stories_backbone(root: Path) -> Path:
    tok = load_tokenizer(STORIES)
    save_pretrained(load_model(STORIES, dtype=torch.float32, tokenizer=tok), tok, root / "stories")
    return root / "stories"


def train_and_eval(name: str, base: Path, root: Path, args: argparse.Namespace) -> dict:
    cfg = RMConfig(model=base, data=(root / "train.jsonl",), out=root / f"rm-{name}",
                   max_length=args.max_length, val_fraction=0.0, epochs=args.epochs,
                   layout=args.layout,
                   train=TrainConfig(lr=args.lr, weight_decay=0.0, warmup_ratio=0.05,
                                     batch_size=args.batch_size, seed=args.seed,
                                     bf16=args.bf16, threads=args.threads, log_every=10))
    result, final = rm(cfg)
    report = run_rm_eval(RMEvalConfig(model=final, data=(root / "heldout.jsonl",),
                                      max_length=args.max_length))
    s = result.summary
    return {"heldout_accuracy": round(report["accuracy"], 4), "heldout_pairs": report["n"],
            "mean_margin": round(report["mean_margin"], 4), "ece": round(report["ece"], 4),
            "train_accuracy_last": round(result.metrics.get("accuracy", float("nan")), 4),
            "steps": result.steps, "layout": s["layout"], "tokens_per_s": s["tokens_per_s"],
            "tokens_per_cpu_s": s["tokens_per_cpu_s"], "seconds": s["seconds"],
            "bf16": s["bf16"], "truncated_responses": s["records"]["truncated_responses"]}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--layout", default="auto")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", choices=("scratch", "stories260K"), default=None)
    return p.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse(argv)
    if not HH.is_file() or not STORIES.is_dir():
        print(json.dumps({"skipped": f"{HH} or {STORIES} is absent (../shared/data)"}))
        sys.exit(0)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    threads = set_threads(args.threads)
    train, held, invalid = split(2000)
    out: dict = {"setup": {"train_pairs": len(train), "heldout_pairs": len(held),
                           "invalid_pairs_skipped": invalid, "epochs": args.epochs, "lr": args.lr,
                           "batch_size": args.batch_size, "max_length": args.max_length,
                           "threads": threads, "torch": torch.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_records(root / "train.jsonl", train)
        write_records(root / "heldout.jsonl", held)
        if args.only in (None, "scratch"):
            out["scratch"] = train_and_eval("scratch", scratch_backbone(root, train), root, args)
        if args.only in (None, "stories260K"):
            out["stories260K"] = train_and_eval("stories", stories_backbone(root), root, args)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
