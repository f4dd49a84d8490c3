"""Benchmark: `coachlm dpo` against TRL's DPOTrainer, the same work through both, in one run.

Same model (a freshly initialized preset Llama, saved once and loaded by both), same tokenizer,
same preference pairs as the same token ids (tokenized once by `coachlm.trainers.dpo.read_pairs`
and handed to TRL pre-tokenized: its own tokenization is skipped, so both score exactly the same
tokens), same batch size, steps, learning-rate schedule, AdamW settings, clipping, beta, loss
(sigmoid DPO) and precision. Data: built-in-world comparisons judged by the rubric
(`world.make_comparisons`), or `--data FILE` (any preference file `coachlm dpo` reads, e.g.
HH-RLHF), with `--pairs` = steps x batch size, one epoch.
TRL-side choices, made to keep the comparison fair: gradient checkpointing off (coachlm does
not checkpoint), right padding (its only mode), its fused LM head (on by default). TRL runs in
two modes: "online", its default, where a reference model forwards every batch, and
"precompute" (`precompute_ref_log_probs=True`), which, like coachlm, scores every pair under the
reference once before training. Tokens are counted the same way by both: prompt + response
tokens of the chosen and of the rejected sequence of each pair (TRL's `num_tokens`).
Speed is reported per wall-clock second and per CPU second of the process (the second is less
sensitive to other processes on a shared machine), over training only (coachlm's optimizer
steps, TRL's `trainer.train()`), and end to end (loading, reference pass, training).
TRL's log lines go to stderr; stdout is the JSON alone. Usage:

    python benchmarks/dpo_vs_trl.py --steps 40 --batch-size 16 --precision fp32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from mfu import add_peak_arg, parameters, peak_gflops, utilization
from trl_common import trl_args
from coachlm.data.io import write_records
from coachlm.models.fast_ops import use_plain_ops
from coachlm.models.load import load_model, load_tokenizer, save_pretrained
from coachlm.models.presets import build_model, preset_vocab_size
from coachlm.models.tokenizer import train_tokenizer
from coachlm.trainers.dpo import DPOConfig, dpo, read_pairs
from coachlm.engine.accel import set_threads
from coachlm.engine.config import TrainConfig


def _final(rows: list[dict], keys: dict[str, str], last: int) -> dict[str, float]:
    """Means of the last `last` logged values of `keys` (ours name -> reported name). Both sides
    report the last 5 steps: coachlm logs every step, TRL every 5 steps the mean over those 5
    (averaging TRL's last few logs against coachlm's single last steps would favour coachlm)."""
    out = {}
    for ours, name in keys.items():
        vals = [r[ours] for r in rows if ours in r][-last:]
        if vals:
            out[name] = round(sum(vals) / len(vals), 4)
    return out


METRICS = {"loss": "loss", "rewards_accuracy": "accuracy", "rewards_margin": "margin"}
TRL_METRICS = {"loss": "loss", "rewards/accuracies": "accuracy", "rewards/margins": "margin"}


def run_ours(args: argparse.Namespace, root: Path, tcfg: TrainConfig) -> dict:
    cfg = DPOConfig(model=root / "base", data=(root / "train.jsonl",), out=root / "ours",
                    val_fraction=0.0, max_length=args.max_length, beta=args.beta,
                    layout=args.layout, compile=args.compile, train=tcfg)
    start, cpu = time.perf_counter(), time.process_time()
    result, _ = dpo(cfg)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = [json.loads(l) for l in (root / "ours" / "metrics.jsonl").read_text().splitlines()]
    return {"tokens": result.tokens, "train_seconds": round(result.seconds, 3),
            "end_to_end_seconds": round(wall, 3), "end_to_end_cpu_seconds": round(cpu, 3),
            "tokens_per_s": round(result.tokens / result.seconds, 1),
            "tokens_per_cpu_s": result.summary["tokens_per_cpu_s"],
            "layout": result.summary["layout"], "share_saving": result.summary["share_saving"],
            **_final(rows, METRICS, last=5)}


def run_trl(args: argparse.Namespace, root: Path, pairs: list, tok, precompute: bool) -> dict:
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        """TRL's trainer on ids tokenized by coachlm (TRL's tokenizing map is skipped)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    start, cpu0 = time.perf_counter(), time.process_time()
    model = load_model(root / "base", dtype=torch.float32, tokenizer=tok)
    use_plain_ops(model)  # TRL runs transformers' own modules, not coachlm's fast_ops
    data = Dataset.from_dict({"prompt_ids": [list(p.prompt_ids) for p in pairs],
                              "chosen_ids": [list(p.chosen_ids) for p in pairs],
                              "rejected_ids": [list(p.rejected_ids) for p in pairs]})
    targs = TRLConfig(**trl_args(
        root, args.steps, args.batch_size, args.lr, args.precision, warmup_steps=args.warmup,
        logging_steps=5, max_length=None, beta=args.beta, loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute))
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints its logs; keep stdout JSON
        trainer = PreTokenizedDPOTrainer(model=model, args=targs, train_dataset=data,
                                         processing_class=tok)
        t0, cpu = time.perf_counter(), time.process_time()
        trainer.train()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu
    wall, cpu_all = time.perf_counter() - start, time.process_time() - cpu0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    tokens = int(logs[-1]["num_tokens"])
    return {"tokens": tokens, "train_seconds": round(seconds, 3),
            "end_to_end_seconds": round(wall, 3), "end_to_end_cpu_seconds": round(cpu_all, 3),
            "tokens_per_s": round(tokens / seconds, 1), "tokens_per_cpu_s": round(tokens / cpu, 1),
            **_final(logs, TRL_METRICS, last=1)}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="world-small")
    p.add_argument("--data", type=Path, default=None, help="a preference file; default: world comparisons")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--layout", default="auto", choices=("auto", "pad", "pack", "share"))
    p.add_argument("--precision", "--dtype", dest="precision", choices=("fp32", "bf16"), default="fp32")
    add_peak_arg(p)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true",
                   help="coachlm side with DPOConfig.compile (compile time counts in its seconds)")
    p.add_argument("--trl-modes", default="online,precompute")
    args = p.parse_args(argv)
    if args.steps % 5:  # TRL logs (loss, token count) every 5 steps
        p.error("--steps must be a multiple of 5")
    return args


def _prepare(args: argparse.Namespace, root: Path) -> Path:
    """Write the training pairs and the starting model (with its tokenizer) under `root`."""
    from coachlm.data.io import read_records
    from coachlm.world import make_comparisons

    n = args.steps * args.batch_size
    if args.data is None:
        records = [c for c in make_comparisons(2 * n, seed=0) if c.choice in ("a", "b")][:n]
    else:
        records = []
        for r in read_records(args.data, kinds=["comparison", "ranking"]):
            records.append(r)
            if len(records) >= n:
                break
    texts = [r.prompt_text + "\n" + r.a.text + "\n" + r.b.text for r in records]
    tok = train_tokenizer(texts, preset_vocab_size(args.preset))
    shape = {"preset": args.preset, "max_position_embeddings": max(256, args.max_length)}
    save_pretrained(build_model(shape, tok, seed=0), tok, root / "base")
    write_records(root / "train.jsonl", records)
    return root / "base"


def main(argv: list[str]) -> dict:
    args = parse(argv)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    threads = set_threads(args.threads)
    peak = peak_gflops(args.peak, args.precision)
    cpu_peak = peak_gflops(args.peak, args.precision, per_cpu_second=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = _prepare(args, root)
        tok = load_tokenizer(base)
        params = parameters(base)
        tcfg = TrainConfig(lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                           schedule="cosine", min_lr_ratio=0.0, warmup_steps=args.warmup,
                           max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                           max_grad_norm=1.0, bf16=args.precision == "bf16", seed=0,
                           log_every=1, threads=threads)
        probe = DPOConfig(model=base, data=(root / "train.jsonl",), out=root / "x",
                          max_length=args.max_length)
        pairs, _ = read_pairs(probe.data, tok, probe)
        runs = {"ours": run_ours(args, root, tcfg)}
        for mode in [m for m in args.trl_modes.split(",") if m]:
            runs[f"trl_{mode}"] = run_trl(args, root, pairs, tok, precompute=mode == "precompute")
    for name, run in runs.items():  # TRL online forwards a live reference: 8N per token
        run.update(utilization(params, run["tokens_per_s"], peak, 8 if name == "trl_online" else 6,
                               tokens_per_cpu_s=run["tokens_per_cpu_s"], cpu_peak=cpu_peak))
    mean_tokens = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)
                      for p in pairs) / len(pairs)
    out = {"setup": {"preset": args.preset, "data": str(args.data or "world comparisons"),
                     "pairs": len(pairs), "steps": args.steps, "batch_size": args.batch_size,
                     "lr": args.lr, "beta": args.beta, "max_length": args.max_length,
                     "precision": args.precision, "threads": threads, "compile": args.compile,
                     "parameters": params, "peak_gflops": round(peak, 1),
                     "peak_gflops_per_cpu_s": round(cpu_peak, 1),
                     "mean_pair_tokens": round(mean_tokens, 1),
                     "torch": torch.__version__, "trl": __import__("trl").__version__},
           **runs}
    for name in runs:
        if name != "ours":
            out[f"speedup_over_{name}"] = {
                "tokens_per_s": round(runs["ours"]["tokens_per_s"] / runs[name]["tokens_per_s"], 2),
                "tokens_per_cpu_s": round(runs["ours"]["tokens_per_cpu_s"] / runs[name]["tokens_per_cpu_s"], 2),
                "end_to_end": round(runs[name]["end_to_end_seconds"] / runs["ours"]["end_to_end_seconds"], 2)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
