"""Peak RSS and speed of coachlm's reward-model training alone (issue 15): `rm_vs_trl.py`'s
coachlm side (world comparisons, a fresh preset backbone, its arguments), without TRL in the
process, so that the process's peak resident memory is the reward-model stage's (training, then
the normalization fit over the training responses). Prints one JSON object:

    python benchmarks/rm_rss.py --preset world-25m --precision bf16 --threads 1 --steps 20 --batch-size 8
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
from pathlib import Path

import rm_vs_trl
from coachlm.data.io import write_records
from coachlm.engine.config import TrainConfig


def main(argv: list[str]) -> dict:
    args = rm_vs_trl.parse(argv)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    threads = rm_vs_trl.set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records, _ = rm_vs_trl.world_data(args.pairs, root, args.preset)
        write_records(root / "train.jsonl", records[:-args.heldout])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        tcfg = TrainConfig(lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                           schedule="cosine", min_lr_ratio=0.0, warmup_steps=args.warmup,
                           max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                           max_grad_norm=1.0, bf16=args.precision == "bf16", seed=0,
                           log_every=10, threads=threads, checkpoint_every=0)
        run = rm_vs_trl.run_ours(args, root, tcfg, args.layouts.split(",")[0])
    return {"preset": args.preset, "precision": args.precision, "steps": args.steps,
            "batch_size": args.batch_size, "threads": threads,
            "peak_rss_mb_before_training": round(before / 1024),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "tokens_per_cpu_s": run["tokens_per_cpu_s"], "layout": run["layout"]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
