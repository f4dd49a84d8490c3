"""The one training loop: AdamW, warm-up + cosine schedule, exact gradient accumulation,
clipping, mixed precision, several processes, atomic checkpoints with exact resume, metrics and
a progress bar. Pretraining, SFT, reward models, DPO and the PPO/GRPO/RLOO update all step
through `update`; `train` drives it for the trainers that read a batch source.

A trainer is composed, not subclassed: it hands `train` a model, a *batch source* (anything with
`next_batch`, `state_dict`, `load_state_dict`) and a *loss function* `loss_fn(model, batch) ->
LossOut`, and the loop does the rest.

Gradient accumulation is exact. A loss function returns a *sum* of per-item losses (per token
for language modelling, per pair for preference losses) and the number of items; the loop
back-propagates the sums of all micro-batches and then divides the gradients by the step's
total item count. The update therefore equals the one a single big batch with a token-level mean
would give, however the tokens are spread over micro-batches (a plain average of micro-batch
means would over-weight tokens of short micro-batches) -- and however they are spread over
processes: each step's micro-batches are dealt round-robin to the N processes (micro-batch i to
process i mod N, so no item is seen twice), the wrapper averages the gradients over processes,
and the loop multiplies them by N / (the item count summed over processes).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from coachlm.config import to_dict
from coachlm.engine.accel import Engine
from coachlm.engine.checkpoint import (check_resume_settings, latest_checkpoint,
                                       load_checkpoint, save_checkpoint)
from coachlm.engine.config import TrainConfig, lr_at
from coachlm.errors import CoachError
from coachlm.models.modes import eval_mode
from coachlm.runlog import RunLog, progress


class BatchSource(Protocol):
    """An endless, resumable stream of micro-batches (`skip_batch`, if present, advances past
    one without building it: the batches other processes take)."""

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


LossFn = Callable[[nn.Module, Any], LossOut]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    metrics: dict[str, Any]  # the last logged values (train and eval)
    summary: dict[str, Any]  # empty on processes other than the main one


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
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
    # The fused kernel updates each tensor in one pass; the foreach path runs ~8 passes over
    # all parameters per step. Measured on CPU at world-25m (1 thread): 26-29 vs 188-200 ms of
    # CPU per step, ~13% of an SFT step (benchmarks/profile_steps.py, issue 15).
    kind = {"fused": True} if _fused_ok(decay + no_decay) else {"foreach": True}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas,
                             eps=cfg.eps, **kind)


def _fused_ok(params: Sequence[Tensor]) -> bool:
    """Whether torch's fused AdamW takes these parameters (floating, all on CPU or all on one
    CUDA-like device; meta tensors, as under some sharded setups, are left to foreach)."""
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda", "xpu", "mps"} \
        and all(p.is_floating_point() for p in params)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Trainee:
    """A model being trained: the model itself, the loss module under accelerate's wrapper,
    the optimizer (accelerate's wrapper around it and the plain one, for checkpoints)."""

    engine: Engine
    model: nn.Module
    wrapped: nn.Module
    optimizer: Any
    raw_optimizer: torch.optim.Optimizer
    params: list[Tensor]


def prepare(engine: Engine, model: nn.Module, loss_fn: LossFn,
            optimizer: torch.optim.Optimizer) -> Trainee:
    wrapped, opt = engine.prepare(model, loss_fn, optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return Trainee(engine, model, wrapped, opt, optimizer, params)


def update(t: Trainee, micro_batches: Sequence[Any], lr: float,
           max_grad_norm: float | None) -> tuple[dict[str, float], int]:
    """One optimizer step on this process's `micro_batches` (its share of the step): set lr,
    forward/backward each (gradients synchronized on the last), scale the gradients by
    processes / global item count, clip, step. Returns (metrics, tokens of all processes)."""
    eng = t.engine
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    if eng.deepspeed:
        return _update_deepspeed(t, micro_batches, lr)
    count, tokens, loss_sum, sums = 0, 0, 0.0, {}
    for i, batch in enumerate(micro_batches):
        with eng.no_sync(t.wrapped, sync=i == len(micro_batches) - 1):
            with eng.autocast():
                out = t.wrapped(eng.to_device(batch))
            eng.backward(out.loss_sum)
        count, tokens = count + out.count, tokens + out.tokens
        loss_sum += float(out.loss_sum.detach())
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    count, tokens, loss_sum, sums = _global(eng, count, tokens, loss_sum, sums)
    # The wrapper averaged over processes; N / count turns that into the global item mean.
    scale = eng.world_size / count if count > 0 else 1.0
    grad_norm = eng.step(t.optimizer, t.params, scale,
                         max_grad_norm if max_grad_norm is not None else float("inf"))
    return _metrics(count, loss_sum, sums, lr, grad_norm), tokens


def _global(eng: Engine, count: int, tokens: int, loss_sum: float,
            sums: dict[str, float]) -> tuple[int, int, float, dict[str, float]]:
    """Item count, tokens, loss and metric sums added over all processes."""
    if eng.world_size == 1:
        return count, tokens, loss_sum, sums
    totals = eng.sum([count, tokens, loss_sum, *sums.values()])
    return int(totals[0]), int(totals[1]), totals[2], dict(zip(sums, totals[3:]))


def _metrics(count: int, loss_sum: float, sums: Mapping[str, float], lr: float,
             grad_norm: float) -> dict[str, float]:
    n = max(count, 1)
    return {"loss": loss_sum / n, **{k: v / n for k, v in sums.items()},
            "lr": lr, "grad_norm": grad_norm}


def _update_deepspeed(t: Trainee, micro_batches: Sequence[Any], lr: float
                      ) -> tuple[dict[str, float], int]:
    """`update` under DeepSpeed, which steps inside its backward and keeps the gradients
    (partitioned, under ZeRO) to itself: the global item count must scale the loss *before*
    the backward, so a step is one micro-batch per process, its count added over processes
    between the forward and the backward. Clipping is DeepSpeed's (`gradient_clipping` in its
    config). Untested here (no GPUs, no deepspeed): see the README, 'Several GPUs'."""
    if len(micro_batches) != 1:
        raise CoachError("under DeepSpeed a step takes one micro-batch per process: set "
                         "grad_accum to 1 (PPO: micro_batch_size = mini_batch_size / processes)")
    eng = t.engine
    with eng.autocast():
        out = t.wrapped(eng.to_device(micro_batches[0]))
    loss = float(out.loss_sum.detach())
    count, tokens, loss_sum, sums = _global(eng, out.count, out.tokens, loss,
                                            {k: float(v) for k, v in out.metrics.items()})
    # DeepSpeed averages the gradients over processes: N / count gives the global item mean.
    eng.backward(out.loss_sum * (eng.world_size / max(count, 1)))
    norm = t.wrapped.get_global_grad_norm() if hasattr(t.wrapped, "get_global_grad_norm") else None
    return _metrics(count, loss_sum, sums, lr, float("nan") if norm is None else float(norm)), tokens


def my_micro_batches(batches: BatchSource, grad_accum: int, engine: Engine) -> list[Any]:
    """This process's micro-batches of one step: of the step's grad_accum x N, those with
    index = rank (mod N); every process advances the source past all of them."""
    mine = []
    skip = getattr(batches, "skip_batch", batches.next_batch)
    for i in range(grad_accum * engine.world_size):
        if i % engine.world_size == engine.rank:
            mine.append(batches.next_batch())
        else:
            skip()
    return mine


def evaluate(model: nn.Module, eval_fn: EvalFn, engine: Engine) -> dict[str, float]:
    """Run `eval_fn` in eval mode, without gradients, under the training precision (every
    process runs the whole evaluation on the unwrapped model)."""
    with engine.full_params(), eval_mode(model), torch.no_grad(), engine.autocast():
        return {k: float(v) for k, v in eval_fn(model).items()}


# Settings that fix the data order and the update: a resumed run must keep them. The
# micro-batches per step (grad_accum x processes) are checked apart: a run may resume on a
# different number of processes with grad_accum changed to match.
_RESUME_KEYS = ("seed", "batch_size")


def _restore(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             batches: BatchSource, cfg: TrainConfig, engine: Engine) -> dict[str, Any] | None:
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return None
    state = load_checkpoint(ckpt, model, optimizer)
    check_resume_settings(ckpt, state["train_config"], cfg, _RESUME_KEYS, prefix="train.")
    saved = state.get("micro_batches", state["train_config"]["grad_accum"])
    now = cfg.grad_accum * engine.world_size
    if saved != now:
        raise CoachError(f"cannot resume from {ckpt}: a step took {saved} micro-batches "
                         f"(grad_accum x processes), now {cfg.grad_accum} x {engine.world_size}; "
                         "set train.grad_accum so that the product is the same")
    batches.load_state_dict(state["data"])
    return state


def checkpoint(engine: Engine, out_dir: Path, step: int, model: nn.Module,
               optimizer: torch.optim.Optimizer, state: Mapping[str, Any], keep: int) -> None:
    """Write checkpoint `step`: every process takes part (under FSDP each writes its shard of
    the weights and optimizer state; whole tensors are written once), the main process writes
    the run state (the others' are the same); every process continues once it is complete."""
    if engine.deepspeed:
        return  # refused up front when asked for (`check_checkpointing`)
    save_checkpoint(out_dir, step, model, optimizer, state, keep, is_main=engine.is_main,
                    barrier=engine.barrier)


def check_checkpointing(engine: Engine, every: int) -> None:
    if every and engine.deepspeed:
        raise CoachError("checkpoints are not written under DeepSpeed (its optimizer states live "
                         "inside its own engine): set checkpoint_every: 0")


def train(model: nn.Module, batches: BatchSource, loss_fn: LossFn, cfg: TrainConfig,
          out_dir: str | Path, *, eval_fn: EvalFn | None = None, resume: bool = False,
          on_step: Callable[[int, Mapping[str, float]], None] | None = None,
          description: str = "train", extra_summary: Mapping[str, Any] | None = None,
          engine: Engine | None = None) -> TrainResult:
    """Train `model` in place for `cfg.max_steps` optimizer steps.

    Writes (from the main process) `out_dir/metrics.jsonl`, `out_dir/summary.json` and, every
    `checkpoint_every` steps and at the end, `out_dir/checkpoints/step-N`. With `resume=True`
    it continues from the latest checkpoint exactly (no checkpoint: starts afresh). `eval_fn(model)`
    runs every `eval_every` steps and at the end. `on_step(step, metrics)` is called after each
    step. `extra_summary` adds fields (data sizes, ...) to summary.json. `engine` None: one
    from `cfg` (device, precision). Saving the final model is the caller's (`out_dir/final`).
    """
    out_dir = Path(out_dir)
    engine = engine or Engine.from_config(cfg)
    check_checkpointing(engine, cfg.checkpoint_every)
    threads = engine.threads(cfg.threads)
    model = engine.place(model)
    optimizer = make_optimizer(model, cfg)
    seed_everything(cfg.seed)
    trainee = prepare(engine, model, loss_fn, optimizer)
    # After `prepare`: a checkpoint loads into the run's own layout (FSDP shards or whole).
    state = _restore(out_dir, model, optimizer, batches, cfg, engine) if resume else None
    step = state["step"] if state else 0
    tokens = state["tokens"] if state else 0
    seconds = state["seconds"] if state else 0.0  # training time only: no eval, no checkpoints
    # CPU seconds of this process over the same steps: on a shared machine, less sensitive than
    # wall time to other processes' load.
    cpu_seconds = state.get("cpu_seconds", 0.0) if state else 0.0
    log = RunLog(out_dir, resume=state is not None, from_step=step) if engine.is_main else None
    last: dict[str, Any] = {}  # the latest training metrics
    evals: dict[str, float] = {}  # the latest evaluation
    model.train()
    with progress(disable=None if engine.is_main else True) as bar:
        task = bar.add_task(description, total=cfg.max_steps, completed=step, rate="")
        while step < cfg.max_steps:
            t0, c0 = time.perf_counter(), time.process_time()
            mine = my_micro_batches(batches, cfg.grad_accum, engine)
            metrics, n_tokens = update(trainee, mine, lr_at(step, cfg), cfg.max_grad_norm)
            seconds += time.perf_counter() - t0
            cpu_seconds += time.process_time() - c0
            step, tokens = step + 1, tokens + n_tokens
            last.update(metrics, tokens=tokens, tokens_per_s=tokens / max(seconds, 1e-9))
            if log and (step % cfg.log_every == 0 or step == cfg.max_steps):
                log.log(step, last)
            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 \
                    and step < cfg.max_steps:
                evals = evaluate(model, eval_fn, engine)
                if log:
                    log.log(step, evals)
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
                checkpoint(engine, out_dir, step, model, optimizer, {
                    "data": batches.state_dict(), "tokens": tokens, "seconds": seconds,
                    "cpu_seconds": cpu_seconds, "train_config": to_dict(cfg),
                    "micro_batches": cfg.grad_accum * engine.world_size}, cfg.keep_checkpoints)
            bar.update(task, advance=1, rate=f"{last['tokens_per_s']:,.0f} tok/s")
            if on_step is not None:
                on_step(step, metrics)
    engine.release(trainee.wrapped)
    if eval_fn is not None:
        evals = evaluate(model, eval_fn, engine)
        if log:
            log.log(step, evals)
    summary: dict[str, Any] = {}
    if log:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        summary = log.summary(steps=step, tokens=tokens, seconds=seconds,
                              cpu_seconds=round(cpu_seconds, 3),
                              tokens_per_cpu_s=round(tokens / max(cpu_seconds, 1e-9), 1),
                              trainable_params=trainable, total_params=total, threads=threads,
                              bf16=engine.bf16, precision=engine.precision,
                              device=str(engine.device), processes=engine.world_size,
                              distributed=engine.distributed_type, **(extra_summary or {}))
    return TrainResult(step, tokens, seconds, {**last, **evals}, summary)
