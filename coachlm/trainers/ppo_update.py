"""# 5. update, through the one engine: `ppo_epochs` passes over shuffled mini-batches of the
rollout, one `engine.loop.update` step each, plus the gathering that lets several processes
share a rollout.

With N processes each one samples, recomputes and scores its share of the rollout's prompts;
`gather_experience` then gives every process the whole rollout, so that advantages are
whitened over the global batch and the KL controller sees the global mean KL (Huang et al.,
2023: whitening statistics over the whole batch); and each mini-batch is dealt out by rows
(row i to process i mod N), every process's micro-batch losses weighted by the mini-batch's
*global* token count, so the step equals the one-process step.
"""

from __future__ import annotations

import contextlib
from dataclasses import fields, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from coachlm.engine.accel import Engine
from coachlm.engine.config import TrainConfig, lr_at
from coachlm.engine.loop import LossOut, Trainee, update
from coachlm.models.lora import lora_view
from coachlm.rl_math import aggregation_weight, masked_mean
from coachlm.rollout.experience import Experience, sorted_micro_batches
from coachlm.trainers.ppo_config import PPOConfig
from coachlm.trainers.ppo_steps import ActorCritic, _micro_loss, frozen_dtype

# Response-side (B, N) fields, right-padded with zeros when gathered.
_RESPONSE = ("logprobs", "ref_logprobs", "values", "kl", "rewards", "advantages", "returns",
             "is_weights")


def ppo_loss(ac: ActorCritic, batch: tuple[Experience, Any, Tensor, float],
             cfg: PPOConfig) -> LossOut:
    """The engine's loss for one micro-batch (e, shared prompts, the mini-batch's global
    `aggregation_weight` n: its tokens, or its sequences with loss_aggregation "sequence", and
    GRPO's KL coefficient). `_micro_loss` returns the micro-batch's loss already weighted by its
    own weight m / n (and, without old logprobs, hands this forward's to `record`); as a *sum* over the micro-batch's m units that is loss * n (the engine
    divides by the global count, n), and its stats, weighted by m / n, are sums once
    multiplied by n."""
    e, shared, n_units, kl_coef, record = batch
    loss, stats = _micro_loss(ac, e, shared, cfg, n_units, kl_coef, record)
    n = float(n_units)
    return LossOut(loss * n, int(aggregation_weight(e.action_mask, cfg.aggregation)),
                   int(e.attention_mask.sum()), {k: v * n for k, v in stats.items()})


def ppo_update(t: Trainee, exp: Experience, cfg: PPOConfig, tcfg: TrainConfig, opt_step: int,
               seed: int, kl_coef: float = 0.0) -> tuple[dict[str, float], int]:
    """`ppo_epochs` passes over shuffled mini-batches, one optimizer step each. `kl_coef`: beta
    of GRPO's KL loss term (PPO and RLOO have their KL in the reward). Returns (metrics
    averaged over optimizer steps, the new optimizer step count).

    Without old logprobs (exp.logprobs None, `ppo_steps.old_logprobs_from_update`: one step on
    the whole rollout) the step's forward gives them: exp.logprobs is filled with its detached
    logprobs (each process's rows, shared among the processes) and metrics["entropy"] is the
    policy's mean token entropy on the rollout."""
    eng, ac = t.engine, t.model
    generator = torch.Generator().manual_seed(seed)
    logprobs = entropy = None  # (B, N) each, recorded from the forward without old logprobs
    if exp.logprobs is None:
        logprobs, entropy = torch.zeros_like(exp.ref_logprobs), torch.zeros_like(exp.ref_logprobs)
    share = bool(ac.shares_prompts)
    sums: dict[str, float] = {}
    n_updates = 0
    ac.train()
    # Sharded parameters exist whole only inside the wrapper's forward: there, peft's own LoRA
    # layers (the same function as the fused view, slower) must run.
    with contextlib.nullcontext() if eng.sharded else \
            lora_view(ac.policy, "fused", frozen_dtype(eng)):
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(exp.sequences.shape[0], generator=generator)  # (B,)
            for mini in order.split(cfg.mini_batch_size):
                n_units = aggregation_weight(exp.action_mask[mini], cfg.aggregation).clamp(min=1)
                mine = mini[eng.rank::eng.world_size]
                # This process's rows, regrouped by length (and prompt) and trimmed: the step's
                # loss is still the mini-batch's token (or sequence) mean.
                micro = [(*exp.micro_batch(m, share), n_units, kl_coef,
                          None if entropy is None else partial(_record, logprobs, entropy, m))
                         for m in sorted_micro_batches(mine, exp, cfg.micro_batch_size, share)]
                metrics, _ = update(t, micro, lr_at(opt_step, tcfg), cfg.max_grad_norm)
                metrics.pop("loss")
                metrics.pop("lr")
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                opt_step, n_updates = opt_step + 1, n_updates + 1
    out = {k: v / n_updates for k, v in sums.items()}
    out["lr"] = lr_at(opt_step - 1, tcfg)
    if entropy is not None:
        # Each process forwarded its own rows (the mini-batch was the whole rollout); the rest
        # are 0 here, so the sum over processes is every row, exactly.
        exp.logprobs, entropy = (_sum_over_processes(eng, x) for x in (logprobs, entropy))
        out["entropy"] = float(masked_mean(entropy, exp.action_mask))
    return out, opt_step


def _record(logprobs: Tensor, entropy: Tensor, rows: Tensor, logprobs_rows: Tensor,
            entropy_rows: Tensor) -> None:
    """Rows `rows` of `logprobs` and `entropy` (B, N) from a micro-batch's (b, n) ones."""
    n = logprobs_rows.shape[1]
    logprobs[rows, :n] = logprobs_rows.float().cpu()
    entropy[rows, :n] = entropy_rows.float().cpu()


def _sum_over_processes(engine: Engine, x: Tensor) -> Tensor:
    """(B, N) `x` summed over all processes."""
    if engine.world_size == 1:
        return x
    return engine.gather_rows(x).view(engine.world_size, *x.shape).sum(0)


def gather_experience(engine: Engine, exp: Experience, prompt_offset: int) -> Experience:
    """Every process's rows of the rollout, in rank order (= the one-process row order):
    prompts left-padded and responses right-padded to the widest, prompt indices made global."""
    if engine.world_size == 1:
        return exp
    p = exp.prompt_width
    prompt = engine.gather_rows(exp.sequences[:, :p], exp.pad_id, left=True)  # (B, P)
    response = engine.gather_rows(exp.sequences[:, p:], exp.pad_id)  # (B, N)
    mask_p = engine.gather_rows(exp.attention_mask[:, :p], 0, left=True)
    mask_r = engine.gather_rows(exp.attention_mask[:, p:], 0)
    fields_: dict[str, Any] = {
        "sequences": torch.cat([prompt, response], 1), "attention_mask": torch.cat([mask_p, mask_r], 1),
        "action_mask": engine.gather_rows(exp.action_mask.long(), 0).bool(),
        "finished": engine.gather_rows(exp.finished.long()).bool(),
        "prompt_index": engine.gather_rows(exp.prompt_index + prompt_offset),
    }
    if exp.scores is not None:
        fields_["scores"] = engine.gather_rows(exp.scores)
    for name in _RESPONSE:
        value = getattr(exp, name)
        if value is not None:
            fields_[name] = engine.gather_rows(value.float(), 0)
    assert {f.name for f in fields(exp)} >= set(fields_)
    return replace(exp, **fields_)
