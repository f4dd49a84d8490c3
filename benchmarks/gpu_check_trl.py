"""TRL on the same work as `gpu_check.py`'s SFT, reward model and DPO runs: the same ~0.5B
random-init Llama, the same records (tokenized by coachlm, as in `benchmarks/*_vs_trl.py`,
whose TRL runners this reuses), the same steps, batch size and precision. Reports tokens/s of
`trainer.train()`, peak GPU memory and MFU in `gpu_check.py`'s row format.

TRL's DPO runs with precomputed reference log-probs, as coachlm's cached reference does (6 N
FLOPs per trained token for both). TRL's PPO is not run: its trainer takes a separate reward and
value model and its own rollout loop, not the same work as coachlm's LoRA PPO.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import torch

MAX_LENGTH = 512  # the coachlm configs' default max_length (SFT, reward model, DPO)


def _args(steps: int, batch_size: int, precision: str) -> argparse.Namespace:
    """What the `*_vs_trl.py` runners read from their command line."""
    return argparse.Namespace(steps=steps, batch_size=batch_size, lr=1e-5, precision=precision,
                              warmup=0, max_length=MAX_LENGTH, beta=0.1,
                              trl_group_by_length=False)


def _sft(args: argparse.Namespace, root: Path, f: dict, tok: Any) -> dict:
    from sft_vs_trl import run_trl

    from coachlm.data.chat import encode_example
    from coachlm.data.io import read_records

    demos = list(read_records(f["sft"], kinds=["demonstration"]))
    examples = [encode_example(tok, d.prompt, d.response.text, MAX_LENGTH) for d in demos]
    return run_trl(args, root, examples, tok)


def _rm(args: argparse.Namespace, root: Path, f: dict, tok: Any) -> dict:
    from rm_vs_trl import run_trl

    from coachlm.data.io import read_records

    return run_trl(args, root, list(read_records(f["prefs"])), tok)


def _dpo(args: argparse.Namespace, root: Path, f: dict, tok: Any) -> dict:
    from dpo_vs_trl import run_trl

    from coachlm.trainers.dpo import DPOConfig, read_pairs

    probe = DPOConfig(model=f["base"], data=(f["prefs"],), out=root / "probe",
                      max_length=MAX_LENGTH)
    pairs, _ = read_pairs(probe.data, tok, probe)
    return run_trl(args, root, pairs, tok, precompute=True)


RUNS: dict[str, Callable[..., dict]] = {"sft": _sft, "rm": _rm, "dpo": _dpo}


def trl_rows(root: Path, f: dict, steps: int, batch_size: int, precision: str,
             peak_flops: Callable[[], float]) -> list[dict]:
    """One `gpu_check` row per TRL run (method "trl_sft", "trl_rm", "trl_dpo"). The runners
    log every 10 steps (DPO 5), and the tokens come from the last log: `steps` is rounded to a
    multiple of 10 (at least 10), so that the last log is the last step."""
    from coachlm.models.load import load_tokenizer

    steps = max(10, round(steps / 10) * 10)

    tok = load_tokenizer(f["base"])
    gpu = torch.cuda.is_available()
    rows = []
    for name, run in RUNS.items():
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        r = run(_args(steps, batch_size, precision), root, f, tok)  # root/base: the model
        seconds = r["train_seconds"]
        rows.append({"method": f"trl_{name}", "tokens_per_s": r["tokens_per_s"],
                     "seconds": seconds, "trained_tokens": r["tokens"], "generated_tokens": 0,
                     "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                     if gpu else None,
                     "mfu": round(6 * r["tokens"] * f["params"] / seconds / peak_flops(), 4)
                     if gpu else None,
                     "precision": precision, "steps": steps})
    return rows
