"""CPU time of reward-model and DPO forward+backward on real batches, variants A/B in one process
(issue 15): row-width rounding, batch layouts, the reward model's last layer at its scored
positions only.

The same model (a fresh preset Llama, as `rm_vs_trl.py`/`dpo_vs_trl.py` build it, fast ops and
"sdpa_fp32" attention as training runs it) and the same groups of world comparisons (batches of
`--batch-size` prompts) run forward + backward under each variant in turn, round after round,
so that all variants see the same load; no optimizer step (the same for every variant).
Reports per variant the median over rounds of CPU ms per batch and counted tokens (prompt +
response of every sequence, TRL's count) per CPU second.

Variants, comma-separated, each `layout:width_multiple[:full]` (layout pad, pack, share, or
cheapest: per batch the layout of fewest rows x width among pack and share); `full` runs the
last layer at every position (reward model), or its MLP (DPO):

    python benchmarks/pair_ab.py rm --preset world-25m \
        --variants share:1:full,share:16:full,share:16,cheapest:16
    python benchmarks/pair_ab.py dpo --preset world-25m --variants share:1,share:16,pack:16
    python benchmarks/pair_ab.py dpo --preset world-25m --variants share:16:full,share:16

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable
from unittest.mock import patch

import torch
import torch.nn.functional as F

from coachlm.data import pairs as pair_data
from coachlm.data import reward_batches
from coachlm.engine.accel import set_threads
from coachlm.models import last_layer


def _cheapest(collate: Callable[..., Any], items: list, pad_id: int, width: int) -> Any:
    batches = [collate(items, layout, pad_id, width_multiple=width) for layout in ("pack", "share")]
    return min(batches, key=lambda b: b.input_ids.numel())


def _batch_maker(collate: Callable, items: list, n: int, count: int,
                 pad_id: int) -> Callable[[str], list]:
    """`count` batches of `n` items, collated in a variant's "layout:width_multiple"."""

    def batches(variant: str) -> list:
        layout, width = variant.split(":")[:2]
        chunks = [items[i * n:(i + 1) * n] for i in range(count)]
        if layout == "cheapest":
            return [_cheapest(collate, c, pad_id, int(width)) for c in chunks]
        return [collate(c, layout, pad_id, width_multiple=int(width)) for c in chunks]
    return batches


def rm_setup(args: argparse.Namespace, root: Path) -> tuple[Any, Callable[[str], list], Callable]:
    from rm_vs_trl import world_data
    from coachlm.data.reward_batches import build_groups, truncate_group
    from coachlm.models.load import load_tokenizer
    from coachlm.models.reward import build_reward_model

    records, base = world_data(args.pairs, root, args.preset)
    tok = load_tokenizer(base)
    groups = [truncate_group(g, 512)[0] for g in build_groups(records, tok)[0]]
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(0))
    groups = [groups[i] for i in order]
    model = build_reward_model(base, tok)
    n = args.batch_size

    batches = _batch_maker(reward_batches.collate, groups, n, args.batches, tok.pad_token_id)

    def step(variant: str, batch: Any) -> None:
        model.last_layer_at_scores = model_supports and not variant.endswith(":full")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            r = model.rewards(batch)  # (N,)
        F.logsigmoid(r[batch.pair_a] - r[batch.pair_b]).sum().neg().backward()
        model.zero_grad(set_to_none=True)

    model_supports = model.last_layer_at_scores
    return model, batches, step


def dpo_setup(args: argparse.Namespace, root: Path) -> tuple[Any, Callable[[str], list], Callable]:
    from dpo_vs_trl import _prepare
    from coachlm.models.load import load_tokenizer
    from coachlm.trainers.configs import DPOConfig
    from coachlm.trainers.dpo import _model, read_pairs
    from coachlm.trainers.dpo_logps import sequence_logps

    args.steps, args.data, args.max_length = args.batches, None, 256
    base = _prepare(args, root)
    tok = load_tokenizer(base)
    cfg = DPOConfig(model=base, data=(root / "train.jsonl",), out=root / "x", max_length=256)
    pairs, _ = read_pairs(cfg.data, tok, cfg)
    model = _model(cfg, tok)
    n = args.batch_size

    batches = _batch_maker(pair_data.collate, pairs, n, args.batches, tok.pad_token_id)

    def step(variant: str, batch: Any) -> None:
        full = variant.endswith(":full")  # the last layer's MLP at every position
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"), \
                (patch.object(last_layer, "supported", lambda _: False) if full else nullcontext()):
            logps = sequence_logps(model, batch)  # (2B,)
        b = batch.num_pairs
        F.logsigmoid(0.1 * (logps[:b] - logps[b:])).sum().neg().backward()
        model.zero_grad(set_to_none=True)

    return model, batches, step


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=("rm", "dpo"))
    p.add_argument("--preset", default="world-25m")
    p.add_argument("--variants", required=True)
    p.add_argument("--pairs", type=int, default=3000, help="world comparisons (rm)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=8, help="batches per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        model, batches, step = (rm_setup if args.method == "rm" else dpo_setup)(args, Path(tmp))
        model.train()
        data = {v: batches(v) for v in variants}
        for v in variants:  # warm-up: every shape once
            for b in data[v]:
                step(v, b)
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                t = time.process_time()
                for b in data[v]:
                    step(v, b)
                cpu[v].append(time.process_time() - t)
    out = {}
    for v in variants:
        tokens = sum(b.num_tokens for b in data[v])
        positions = sum(b.input_ids.numel() for b in data[v])
        sec = statistics.median(cpu[v])
        out[v] = {"cpu_ms_per_batch": round(1e3 * sec / len(data[v]), 1),
                  "tokens_per_cpu_s": round(tokens / sec, 1),
                  "row_positions": positions,
                  "distinct_shapes": len({tuple(b.input_ids.shape) for b in data[v]}),
                  "rounds_cpu_s": [round(c, 3) for c in cpu[v]]}
    return {"setup": {"method": args.method, "preset": args.preset, "batch_size": args.batch_size,
                      "batches": args.batches, "rounds": args.rounds, "precision": args.precision,
                      "threads": threads}, "variants": out}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(main(sys.argv[1:]), indent=2))
