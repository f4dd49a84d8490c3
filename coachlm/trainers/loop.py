"""The training loop every trainer shares: AdamW, warm-up + cosine schedule, exact gradient
accumulation, clipping, bf16 autocast, atomic checkpoints with exact resume, metrics and a
progress bar.

A trainer is composed, not subclassed: it hands `train` a model, a *batch source* (anything with
`next_batch`, `state_dict`, `load_state_dict`) and a *loss function* `loss_fn(model, batch) ->
LossOut`, and the loop does the rest.

Gradient accumulation is exact. A loss function returns a *sum* of per-item losses (per token
for language modelling, per pair for preference losses) and the number of items; the loop
back-propagates the sums of all micro-batches and then divides the gradients by the step's
total item count. The update therefore equals the one a single big batch with a token-level mean
would give, however the tokens are spread over micro-batches (a plain average of micro-batch
means would over-weight tokens of short micro-batches).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from coachlm.config import to_dict
from coachlm.data.chat import IGNORE_INDEX
from coachlm.data.collate import TokenBatch
from coachlm.errors import CoachError
from coachlm.models.modes import eval_mode
from coachlm.runlog import RunLog, progress
from coachlm.trainers.checkpoint import (check_resume_settings, latest_checkpoint,
                                         load_checkpoint, save_checkpoint)


@dataclass(frozen=True)
class TrainConfig:
    """Optimization and bookkeeping settings shared by all trainers.

    `batch_size` counts *sequences* per micro-batch (packed blocks of `seq_len` tokens when
    pretraining, examples for SFT); one optimizer step sees `batch_size * grad_accum` sequences.
    `warmup_steps` (if > 0) wins over `warmup_ratio` (a fraction of `max_steps`).
    `threads` None uses every core this process may run on.
    `bf16` None (auto) turns bf16 autocast on only where bf16 matmuls are faster than fp32:
    CUDA GPUs that support bf16 and CPUs with AMX tiles. On AVX-512 CPUs without AMX, oneDNN's
    bf16 matmuls measured ~1.8x *slower* than fp32 for the world-small model, so auto keeps fp32.
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


class BatchSource(Protocol):
    """An endless, resumable stream of micro-batches."""

    def next_batch(self) -> Any: ...

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: Mapping[str, int]) -> None: ...


@dataclass
class LossOut:
    """What a loss function returns for one micro-batch.

    `loss_sum` and each metric are *sums* over `count` items (tokens, pairs); the loop divides
    by the step's total count (see the module docstring). `tokens` counts the input tokens the
    micro-batch processed (non-padding), for tokens/s.
    """

    loss_sum: Tensor  # () scalar
    count: int
    tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


LossFn = Callable[[torch.nn.Module, Any], LossOut]
EvalFn = Callable[[torch.nn.Module], Mapping[str, float]]


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    metrics: dict[str, Any]  # the last logged values (train and eval)
    summary: dict[str, Any]


def causal_lm_loss(model: torch.nn.Module, batch: TokenBatch) -> LossOut:
    """Summed next-token cross-entropy over labelled tokens (all tokens when pretraining,
    response tokens for SFT).

    No attention mask is passed. Padded batches are right-padded, so under the causal mask a
    real token never attends to the padding after it, and positions 0..L-1 of each row are
    already right: skipping the mask keeps the fast causal kernel, and pad positions produce
    outputs no label reads. Packed batches carry restarting position ids, from which
    transformers builds the block-diagonal mask itself (only without a KV cache: use_cache=False).
    """
    targets = batch.labels[:, 1:]  # (B, T-1): the token each position predicts
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,) positions with a label
    inputs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    if len(keep) == targets.shape[1]:
        logits = model(**inputs).logits[:, :-1]  # (B, T-1, V)
    else:
        # Only positions some row has a label for go through the LM head (SFT prompts do not).
        logits = model(**inputs, logits_to_keep=keep).logits  # (B, K, V)
        targets = targets[:, keep]  # (B, K)
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    count = int((targets != IGNORE_INDEX).sum())
    return LossOut(loss_sum, count, batch.num_tokens)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter, 2019) with decoupled weight decay on matrices only.

    Norm gains, biases and embeddings (and an LM head tied to them) are not decayed: pulling
    them to zero does not regularize, it just shrinks scales and rare-token vectors (as in
    nanoGPT/minGPT and the GPT-3 recipe).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    if not decay and not no_decay:
        raise CoachError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas,
                             eps=cfg.eps, foreach=True)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Resolve `cfg.bf16` (None: auto) for `device`; see TrainConfig."""
    if cfg.bf16 is not None:
        return cfg.bf16
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and amx is not None and bool(amx())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> int:
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def _accumulate(model: torch.nn.Module, batches: BatchSource, loss_fn: LossFn,
                cfg: TrainConfig, device_type: str, bf16: bool) -> tuple[int, int, float, dict[str, float]]:
    """Forward/backward over grad_accum micro-batches; returns (count, tokens, loss_sum, metric sums)."""
    count, tokens, loss_sum, sums = 0, 0, 0.0, {}
    for _ in range(cfg.grad_accum):
        batch = batches.next_batch()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            out = loss_fn(model, batch)
        out.loss_sum.backward()
        count, tokens = count + out.count, tokens + out.tokens
        loss_sum += float(out.loss_sum.detach())
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return count, tokens, loss_sum, sums


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   batches: BatchSource, loss_fn: LossFn, cfg: TrainConfig,
                   step: int, bf16: bool | None = None) -> tuple[dict[str, float], int]:
    """One update: set lr, accumulate, scale grads by 1/count, clip, step. Returns (metrics, tokens).

    `bf16` None resolves `cfg.bf16` (see `use_bf16`)."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(model.parameters()).device
    bf16 = use_bf16(cfg, device) if bf16 is None else bf16
    count, tokens, loss_sum, sums = _accumulate(model, batches, loss_fn, cfg, device.type, bf16)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grads = [p.grad for p in params if p.grad is not None]
    if count > 0 and grads:
        torch._foreach_mul_(grads, 1.0 / count)
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    n = max(count, 1)
    metrics = {"loss": loss_sum / n, **{k: v / n for k, v in sums.items()},
               "lr": lr, "grad_norm": grad_norm}
    return metrics, tokens


def evaluate(model: torch.nn.Module, eval_fn: EvalFn, bf16: bool) -> dict[str, float]:
    """Run `eval_fn` in eval mode, without gradients, under the training precision."""
    device_type = next(model.parameters()).device.type
    with eval_mode(model), torch.no_grad(), \
            torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        return {k: float(v) for k, v in eval_fn(model).items()}


# Settings that fix the data order and the update: a resumed run must keep them.
_RESUME_KEYS = ("seed", "batch_size", "grad_accum")


def _restore(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             batches: BatchSource, cfg: TrainConfig) -> dict[str, Any] | None:
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return None
    state = load_checkpoint(ckpt, model, optimizer)
    check_resume_settings(ckpt, state["train_config"], cfg, _RESUME_KEYS, prefix="train.")
    batches.load_state_dict(state["data"])
    return state


def train(model: torch.nn.Module, batches: BatchSource, loss_fn: LossFn, cfg: TrainConfig,
          out_dir: str | Path, *, eval_fn: EvalFn | None = None, resume: bool = False,
          on_step: Callable[[int, Mapping[str, float]], None] | None = None,
          description: str = "train", extra_summary: Mapping[str, Any] | None = None) -> TrainResult:
    """Train `model` in place for `cfg.max_steps` optimizer steps.

    Writes `out_dir/metrics.jsonl`, `out_dir/summary.json` and, every `checkpoint_every` steps
    and at the end, `out_dir/checkpoints/step-N`. With `resume=True` it continues from the
    latest checkpoint exactly (no checkpoint: starts afresh). `eval_fn(model)` runs every
    `eval_every` steps and at the end. `on_step(step, metrics)` is called after each step.
    `extra_summary` adds fields (data sizes, ...) to summary.json.
    Saving the final model is the caller's (the trainers write `out_dir/final`).
    """
    out_dir = Path(out_dir)
    threads = set_threads(cfg.threads)
    bf16 = use_bf16(cfg, next(model.parameters()).device)
    optimizer = make_optimizer(model, cfg)
    state = _restore(out_dir, model, optimizer, batches, cfg) if resume else None
    if state is None:
        seed_everything(cfg.seed)
    step = state["step"] if state else 0
    tokens = state["tokens"] if state else 0
    seconds = state["seconds"] if state else 0.0  # training time only: no eval, no checkpoints
    # CPU seconds of this process over the same steps: on a shared machine, less sensitive than
    # wall time to other processes' load.
    cpu_seconds = state.get("cpu_seconds", 0.0) if state else 0.0
    log = RunLog(out_dir, resume=state is not None, from_step=step)
    last: dict[str, Any] = {}  # the latest training metrics
    evals: dict[str, float] = {}  # the latest evaluation
    model.train()
    with progress() as bar:
        task = bar.add_task(description, total=cfg.max_steps, completed=step, rate="")
        while step < cfg.max_steps:
            t0, c0 = time.perf_counter(), time.process_time()
            metrics, n_tokens = optimizer_step(model, optimizer, batches, loss_fn, cfg, step, bf16)
            seconds += time.perf_counter() - t0
            cpu_seconds += time.process_time() - c0
            step, tokens = step + 1, tokens + n_tokens
            last.update(metrics, tokens=tokens, tokens_per_s=tokens / max(seconds, 1e-9))
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                log.log(step, last)
            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 \
                    and step < cfg.max_steps:
                evals = evaluate(model, eval_fn, bf16)
                log.log(step, evals)
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
                save_checkpoint(out_dir, step, model, optimizer, {
                    "data": batches.state_dict(), "tokens": tokens, "seconds": seconds,
                    "cpu_seconds": cpu_seconds, "train_config": to_dict(cfg)}, cfg.keep_checkpoints)
            bar.update(task, advance=1, rate=f"{last['tokens_per_s']:,.0f} tok/s")
            if on_step is not None:
                on_step(step, metrics)
    if eval_fn is not None:
        evals = evaluate(model, eval_fn, bf16)
        log.log(step, evals)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    summary = log.summary(steps=step, tokens=tokens, seconds=seconds,
                          cpu_seconds=round(cpu_seconds, 3),
                          tokens_per_cpu_s=round(tokens / max(cpu_seconds, 1e-9), 1),
                          trainable_params=trainable, total_params=total, threads=threads,
                          bf16=bf16, **(extra_summary or {}))
    return TrainResult(step, tokens, seconds, {**last, **evals}, summary)
