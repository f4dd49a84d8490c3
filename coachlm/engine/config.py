"""Optimization and placement settings of the one training loop, and its learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimization and bookkeeping settings shared by all trainers.

    `batch_size` counts *sequences* per micro-batch (packed blocks of `seq_len` tokens when
    pretraining, examples for SFT); one optimizer step sees `batch_size * grad_accum` sequences
    in each process, so `batch_size * grad_accum * processes` in all (the usual data-parallel
    convention: a run on N processes with `grad_accum` divided by N sees the same batches).
    `warmup_steps` (if > 0) wins over `warmup_ratio` (a fraction of `max_steps`).
    `threads` None uses the cores this process may run on, divided among the processes of a
    machine.
    `device`: auto (CUDA when visible, else CPU), cpu, or cuda (an error when none is visible).
    `bf16` None (auto) turns bf16 autocast on only where bf16 matmuls are faster than fp32:
    CUDA GPUs that support bf16 and CPUs with AMX tiles. On AVX-512 CPUs without AMX, oneDNN's
    bf16 matmuls measured ~1.8x *slower* than fp32 for the world-small model, so auto keeps fp32.
    `fp16` runs fp16 autocast with a dynamic loss scale (GPUs without bf16).
    """

    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.1
    max_steps: int = 200
    batch_size: int = 16
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    bf16: bool | None = None
    fp16: bool = False
    device: Device = "auto"
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas}"),
            (self.eps > 0, f"eps must be > 0, got {self.eps}"),
            (self.schedule in ("cosine", "linear", "constant"),
             f"schedule must be cosine, linear or constant, got {self.schedule!r}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0 or null, got {self.max_grad_norm}"),
            (not (self.fp16 and self.bf16), "bf16 and fp16 exclude each other"),
            (self.device in ("auto", "cpu", "cuda"),
             f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0 (0: no checkpoints)"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0: evaluate only at the end)"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.warmup >= self.max_steps and self.schedule != "constant":
            raise ValueError(f"warm-up ({self.warmup} steps) must be shorter than max_steps "
                             f"({self.max_steps}) for a decaying schedule")

    @property
    def warmup(self) -> int:
        return self.warmup_steps or round(self.warmup_ratio * self.max_steps)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based).

    Linear warm-up over the first W steps (lr * (step + 1) / W), then cosine (Loshchilov &
    Hutter, 2017, "SGDR", without restarts), linear, or constant decay from lr to
    lr * min_lr_ratio, reached at step max_steps.
    """
    w = cfg.warmup
    if step < w:
        return cfg.lr * (step + 1) / w
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - w) / (cfg.max_steps - w)  # 0 at the end of warm-up, -> 1 at max_steps
    floor = cfg.lr * cfg.min_lr_ratio
    shape = 1 - t if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * t))
    return floor + (cfg.lr - floor) * shape
