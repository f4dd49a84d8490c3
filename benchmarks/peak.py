"""This machine's matmul peak in fp32 and bf16 (GFLOP/s), the denominator of model FLOPs
utilization (MFU; Chowdhery et al., 2022, "PaLM", appendix B) in the training benchmarks.

Times square matmuls (2 n^3 FLOPs each) with the threads torch will use, after a warm-up,
and keeps the best of several timed rounds: a peak is what the hardware can do, so the fastest
round is the estimate least disturbed by other processes. On a shared machine it is still a
lower bound; say under what load it was taken. Prints one JSON object:

    python benchmarks/peak.py --size 1024 --threads 1 > peak.json
    python benchmarks/sft_vs_trl.py --preset world-25m --precision bf16 --peak peak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_gflops(precision: str, size: int = 1024, rounds: int = 5,
                  min_seconds: float = 0.2, per_cpu_second: bool = False) -> float:
    """Best-of-`rounds` GFLOP/s of `size` x `size` matmuls in `precision` ("fp32" or "bf16"),
    per wall-clock second, or per CPU second of this process (`per_cpu_second`).

    Both layouts are timed, `a @ b` and `a @ b.T` (F.linear, what a model's layers call): on
    CPUs without native bf16 they take different kernels (measured on an AVX2-only EPYC: 0.4 vs
    3.4 GFLOP/s in bf16), and the peak is the better one. Per CPU second is the denominator of a
    benchmark's MFU per CPU second: on a busy machine the wall-clock peak falls with the share
    of the cores this process gets, the CPU-second peak much less (measured at load ~6 on the 2
    cores: bf16 345 GFLOP/s per wall second, about 3x that per CPU second)."""
    clock = time.process_time if per_cpu_second else time.perf_counter
    a = torch.randn(size, size).to(DTYPES[precision])
    b = torch.randn(size, size).to(DTYPES[precision])
    best = 0.0
    for op in (torch.mm, torch.nn.functional.linear):
        op(a, b)  # warm-up: oneDNN/BLAS picks its kernel on first use
        for _ in range(rounds):
            n, t0 = 0, clock()
            while (elapsed := clock() - t0) < min_seconds or n == 0:
                op(a, b)
                n += 1
            best = max(best, 2 * size ** 3 * n / max(elapsed, 1e-9) / 1e9)
    return best


def measure(size: int = 1024, rounds: int = 5, min_seconds: float = 0.2,
            precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """The peak of each precision, per wall and per CPU second, with what it was measured on."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    out = {"threads": torch.get_num_threads(), "size": size, "rounds": rounds,
           "machine": platform.machine(), "cpus_usable": len(os.sched_getaffinity(0)),
           "amx": bool(amx()) if amx is not None else None, "torch": torch.__version__,
           "load_average_1m": round(os.getloadavg()[0], 2)}
    for p in precisions:
        out[f"{p}_gflops"] = round(matmul_gflops(p, size, rounds, min_seconds), 1)
        out[f"{p}_gflops_per_cpu_s"] = round(matmul_gflops(p, size, rounds, min_seconds, True), 1)
    return out


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024, help="matrix side (2 n^3 FLOPs per matmul)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.2, help="per round")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return measure(args.size, args.rounds, args.min_seconds)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
