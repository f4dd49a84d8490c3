"""Model FLOPs utilization (MFU) for the training benchmarks: one place for the FLOP count and
for the peak it is divided by.

FLOPs per token follow Kaplan et al. (2020, "Scaling Laws for Neural Language Models", sec. 2.1):
a forward pass costs 2N per token (N = distinct parameters; a tied LM head counts once, and it
is a real matmul), a backward twice that, so a trained token costs 6N, and a token that a live
reference model also forwards costs 8N (TRL's online DPO). Attention's sequence-length term is
left out (small at these lengths), so MFU is a nominal figure, the same rule for both sides of
a comparison. The peak is `benchmarks/peak.py`'s matmul peak of the run's precision: read from
`--peak FILE` (its JSON), or measured briefly in-process when no file is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from peak import matmul_gflops


def add_peak_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peak", type=Path, default=None,
                        help="benchmarks/peak.py JSON for MFU (default: measure briefly now)")


def peak_gflops(path: Path | None, precision: str, per_cpu_second: bool = False) -> float:
    """The matmul peak of `precision` ("fp32"/"bf16") per wall second, or per CPU second: from
    peak.py's JSON, or measured now (in the same run and under the same load as the benchmark)."""
    if path is not None:
        data = json.loads(path.read_text())
        key = f"{precision}_gflops_per_cpu_s" if per_cpu_second else f"{precision}_gflops"
        return float(data.get(key, data[f"{precision}_gflops"]))  # older files: wall only
    return matmul_gflops(precision, size=1024, rounds=3, min_seconds=0.2,
                         per_cpu_second=per_cpu_second)


def parameters(model_or_dir) -> int:
    """Distinct parameters of a model (or of a saved model directory); tied weights once."""
    if isinstance(model_or_dir, (str, Path)):
        from coachlm.models.load import load_model
        model_or_dir = load_model(Path(model_or_dir), dtype=torch.float32)
    return sum(p.numel() for p in model_or_dir.parameters())


def utilization(params: int, tokens_per_s: float, peak: float, flops_per_token: int = 6,
                forward_tokens_per_s: float = 0.0,
                tokens_per_cpu_s: float | None = None,
                cpu_peak: float | None = None) -> dict[str, float]:
    """Model GFLOP/s and MFU of `tokens_per_s` trained tokens at `flops_per_token` x N each,
    plus `forward_tokens_per_s` tokens forwarded without training (2N each: sampling).
    With `tokens_per_cpu_s` (1 thread), also `mfu_per_cpu_s`: the same per second the process
    really ran, the figure that holds on a shared machine, over `cpu_peak` (the peak per CPU
    second, `peak_gflops(..., per_cpu_second=True)`; without it, `peak`: then pass a peak taken
    at low load)."""
    gflops = params * (flops_per_token * tokens_per_s + 2 * forward_tokens_per_s) / 1e9
    out = {"model_gflop_per_s": round(gflops, 2), "mfu": round(gflops / peak, 4)}
    if tokens_per_cpu_s is not None:
        out["mfu_per_cpu_s"] = round(params * flops_per_token * tokens_per_cpu_s / 1e9
                                     / (cpu_peak or peak), 4)
    return out
