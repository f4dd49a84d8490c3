"""Reward-model training on comparisons and K-wise rankings (`coachlm rm`).

Steps (`rm`):
  1. read preference records (Comparison, Ranking; canonical, TRL or HH-RLHF files, Parquet,
     HF datasets) and group them by prompt (`data.reward_batches.build_groups`), so that every
     judgement of a prompt shares one batch and each response is forwarded once;
  2. split off held-out prompts (or read `val_data`), truncate to `max_length`;
  3. build the model: backbone + scalar head (`models.reward`), optionally LoRA;
  4. train with the engine (`coachlm.engine`) on `rm_loss`: Bradley-Terry per comparison (optional margin,
     Touvron et al., 2023), the K-wise ranking loss per ranking (Ouyang et al., 2022, eq. 1),
     ties skipped or modelled (Davidson, 1970), soft labels (an AI labeler's P(a better) in
     meta.probability) against their target (`losses.bradley_terry_soft`; Bai et al., 2022),
     each record counting once; `ai_share` sets the mix of AI and human/simulated records;
  5. fit the normalization (mean 0 / std 1 on reference responses) and save to `out/final`.

Reference responses for the normalization: `normalize_on`, a file of Sample records from the
policy that RL will start from (what Ziegler et al., 2019 normalize on), or by default the
distinct responses of the training comparisons, which match that policy only insofar as the
comparisons were made on its samples. `normalize_max` fits on a seeded sample of whole prompts
instead (`sample_groups`): scoring all ~3,400 training responses took 32 s of a 76 s HH-RLHF run.

Layout ("auto"): prefix sharing ("share") when the model scores shared-prefix packs exactly
like separate sequences (checked on the model itself), else right-padded rows ("pad"); see
`models.reward.choose_layout` for the measurements. Tokens/s counts the prompt + response
tokens of every scored sequence, as an unshared trainer processes them.

Outputs under `out`: config.yaml, metrics.jsonl, summary.json, checkpoints/, final/.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from coachlm import config
from coachlm.data.io import PREFERENCE_KINDS, read_records
from coachlm.data.invalid import InvalidRecords
from coachlm.data.reward_batches import (Group, GroupBatches, RewardBatch, build_groups,
                                         scoring_groups, share_saving, truncate_group)
from coachlm.data.schema import Record
from coachlm.data.split import held_out
from coachlm.errors import CoachError, DataError
from coachlm.memory import release_free_memory
from coachlm.losses import bradley_terry, bradley_terry_soft, bradley_terry_tie, ranking
from coachlm.models.compiled import compile_for_run, mark_compiled
from coachlm.models.load import load_tokenizer
from coachlm.models.reward import (RewardModel, build_reward_model, choose_layout,
                                   fit_normalization, load_reward_model, save_reward_model,
                                   score_items, score_sequences, update_normalization)
from coachlm.runlog import warn
from coachlm.trainers.epochs import steps_for_epochs
from coachlm.engine.accel import Engine, to_device
from coachlm.engine.loop import LossOut, TrainResult, train
from coachlm.trainers.configs import RMConfig


# ------------------------------------------------------------------------------------ data


def mix_sources(records: list[Record], ai_share: float, seed: int) -> tuple[list[Record], dict]:
    """A seeded subsample of `records` in which those with source "ai" make up `ai_share` (as
    nearly as whole records allow), keeping every record of the scarcer side; order is kept."""
    ai = [i for i, r in enumerate(records) if r.source == "ai"]
    other = [i for i, r in enumerate(records) if r.source != "ai"]
    if not ai or not other:
        raise CoachError(f"ai_share={ai_share} needs both AI-labelled and other records; got "
                         f"{len(ai)} AI and {len(other)} other")
    rng = np.random.default_rng(seed)
    n_ai = min(len(ai), round(len(other) * ai_share / (1 - ai_share)))
    n_other = min(len(other), round(n_ai * (1 - ai_share) / ai_share))
    keep = set(rng.choice(ai, max(n_ai, 1), replace=False).tolist()) | set(
        rng.choice(other, max(n_other, 1), replace=False).tolist())
    kept = [r for i, r in enumerate(records) if i in keep]
    return kept, {"mixed_ai": max(n_ai, 1), "mixed_other": max(n_other, 1),
                  "mixed_dropped": len(records) - len(kept)}


def read_groups(paths: Sequence[Path], tok: Any, cfg: RMConfig,
                mix: bool = False) -> tuple[list[Group], Counter, list[str]]:
    """Preference records of `paths` as truncated groups; (groups, counts, skipped errors).
    With `mix` and `cfg.ai_share`, the records are first subsampled to that share of AI labels."""
    invalid = InvalidRecords(cfg.skip_invalid)
    with invalid.strict_hint():
        records = [r for path in paths
                   for r in read_records(path, kinds=PREFERENCE_KINDS, on_error=invalid.on_error)]
    invalid.warn()
    mixed: dict = {}
    if mix and cfg.ai_share is not None:
        records, mixed = mix_sources(records, cfg.ai_share, cfg.train.seed)
    groups, counts = build_groups(records, tok, ties=cfg.ties == "davidson",
                                  margin_scale=cfg.margin_scale,
                                  max_responses=cfg.max_group_responses, soft=cfg.soft_labels)
    counts.update(mixed)
    if not groups:
        raise DataError(", ".join(map(str, paths)), None, None,
                        f"no usable preferences (counts: {dict(counts)})")
    cut = identical = 0
    for i, g in enumerate(groups):
        groups[i], c = truncate_group(g, cfg.max_length)
        cut += c
        identical += len(g.comparisons) - len(groups[i].comparisons)
    counts["truncated_responses"] = cut
    counts["skipped_identical"] += identical
    counts["skipped_invalid"] = invalid.count
    return groups, counts, invalid.first(None)


def split_groups(groups: list[Group], val_fraction: float, seed: int
                 ) -> tuple[list[Group], list[Group], str | None]:
    """A seeded random split by full prompt (`data.split.held_out`), so no held-out prompt is
    trained on (a prompt with more than `max_group_responses` responses spans several groups:
    they stay on one side). Returns (train, val, note: why there is no validation split)."""
    held, note = held_out([g.key for g in groups], val_fraction, seed)
    return ([g for g, h in zip(groups, held) if not h], [g for g, h in zip(groups, held) if h],
            note)


# ------------------------------------------------------------------------------------ loss


def _ranking_accuracy(rewards: Tensor, batch: RewardBatch) -> Tensor:
    """Sum over ranking records of the fraction of their ordered pairs scored in order."""
    r = rewards[batch.rank_index]  # (M,)
    ranks, group = batch.rank_ranks, batch.rank_group
    better = (group[:, None] == group[None]) & (ranks[:, None] >= 0) & (ranks[None] >= 0) \
        & (ranks[:, None] < ranks[None])  # (M, M)
    right = better & (r[:, None] > r[None])
    per = torch.zeros(batch.n_rankings).index_add(0, group, right.sum(1).float())
    pairs = torch.zeros(batch.n_rankings).index_add(0, group, better.sum(1).float())
    return (per / pairs.clamp(min=1)).sum()


def rm_loss(model: RewardModel, batch: RewardBatch, ties: str = "skip",
            tie_log_nu: float = 0.0) -> LossOut:
    """Summed per-record loss; each comparison and each ranking record counts once.

    Comparisons: Bradley-Terry -log sigmoid(r_a - r_b - margin) (`losses.bradley_terry`), or with
    ties="davidson" the Davidson tie model for all comparisons (`losses.bradley_terry_tie`).
    Rankings: `losses.ranking`, the mean over a record's C(K,2) ordered pairs (tied ranks form
    no pair). Metrics, summed over records: accuracy (a comparison scored in order counts 1, a
    tie 0; a ranking counts its fraction of pairs in order) and the margin r_a - r_b of decisive
    comparisons.
    """
    rewards = model.rewards(batch)  # (N,)
    dev = rewards.device
    a, b = batch.pair_a.to(dev), batch.pair_b.to(dev)
    r_a, r_b = rewards[a], rewards[b]  # (C,)
    if ties == "davidson":
        pair_loss = bradley_terry_tie(r_a, r_b, batch.pair_tie.to(dev), tie_log_nu)
    else:
        pair_loss = bradley_terry(r_a, r_b, batch.pair_margin.to(dev))
    target, soft = batch.pair_target.to(dev), batch.pair_soft.to(dev)
    if bool(soft.any()):
        pair_loss = torch.where(soft, bradley_terry_soft(r_a, r_b, target), pair_loss)
    loss_sum = pair_loss.sum()
    count = len(a) + batch.n_rankings
    with torch.no_grad():
        # A soft label counts as decided for the likelier response (none at exactly 1/2).
        decisive = ~batch.pair_tie.to(dev) & (target != 0.5)
        right = torch.where(target > 0.5, r_a > r_b, r_b > r_a)
        accuracy = (right & decisive).sum().float()
        margin = torch.where(target > 0.5, r_a - r_b, r_b - r_a)[decisive].sum()
    if batch.n_rankings:
        rank_loss, _ = ranking(rewards[batch.rank_index.to(dev)], batch.rank_ranks.to(dev),
                               batch.rank_group.to(dev))
        loss_sum = loss_sum + rank_loss * batch.n_rankings
        with torch.no_grad():
            accuracy = accuracy + _ranking_accuracy(rewards.detach().cpu(), batch)
    return LossOut(loss_sum, count, batch.num_tokens,
                   {"accuracy": float(accuracy), "margin": float(margin)})


def val_metrics(model: RewardModel, batches: GroupBatches, loss_fn: Any) -> Mapping[str, float]:
    """Held-out loss and accuracy per record (the training loss, without gradients)."""
    total, correct, count = 0.0, 0.0, 0
    device = model.head.weight.device
    for _, batch in batches.epoch_batches():
        out = loss_fn(model, to_device(batch, device))
        total, correct, count = total + float(out.loss_sum), correct + out.metrics["accuracy"], count + out.count
    return {"val_loss": total / max(count, 1), "val_accuracy": correct / max(count, 1)}


# --------------------------------------------------------------------------- normalization


def reference_groups(cfg: RMConfig, tok: Any, train_groups: list[Group]) -> tuple[list[Group], dict]:
    """Groups of the reference responses the normalization is fitted on, and their provenance."""
    if cfg.normalize_on is None:
        return train_groups, {"source": "training responses"}
    records = read_records(cfg.normalize_on, kinds=["sample", "demonstration"])
    items = [(r.prompt, r.response.text) for r in records]
    groups, _, _ = scoring_groups(items, tok, cfg.max_length, cfg.max_group_responses)
    return groups, {"source": "samples", "path": str(cfg.normalize_on)}


def sample_groups(groups: list[Group], max_responses: int, seed: int) -> list[Group]:
    """A seeded random sample of whole groups holding at least `max_responses` responses (all
    groups when they hold fewer). Scoring every training response for the normalization took
    ~40% of a short HH-RLHF run; a mean and std need far fewer: with n responses their
    relative standard errors are ~1/sqrt(n) and ~1/sqrt(2n) (3% and 2% at n = 1,000)."""
    if sum(len(g.response_ids) for g in groups) <= max_responses:
        return groups
    out, n = [], 0
    for i in np.random.default_rng(seed).permutation(len(groups)):
        out.append(groups[i])
        n += len(groups[i].response_ids)
        if n >= max_responses:
            break
    return out


def fit_reference(model: RewardModel, groups: list[Group], pad_id: int, layout: str,
                  batch_size: int, bf16: bool) -> dict[str, float]:
    """Set model.gain/bias so the reference responses score mean 0, std 1; returns the stats."""
    batches = GroupBatches(groups, batch_size, pad_id, layout, shuffle=False)
    raw = score_sequences(model, batches.epoch_batches(), batches.num_sequences, bf16)
    model.gain, model.bias = fit_normalization(raw)
    return {"n": len(raw), "raw_mean": float(raw.mean()), "raw_std": float(raw.std(unbiased=False)),
            "gain": model.gain, "bias": model.bias}


# ------------------------------------------------------------------------------------- run


def rm(cfg: RMConfig, resume: bool = False) -> tuple[TrainResult, Path]:
    """`run_rm`, also returning the loop's TrainResult (metrics, tokens/s)."""
    engine = Engine.from_config(cfg.train)
    tok = load_tokenizer(cfg.model)
    groups, counts, skipped = read_groups(cfg.data, tok, cfg, mix=True)
    val_note = None
    if cfg.val_data:
        train_g = groups
        val_g, val_counts, _ = read_groups(cfg.val_data, tok, cfg)
        counts.update({f"val_{k}": v for k, v in val_counts.items()})
    else:
        train_g, val_g, val_note = split_groups(groups, cfg.val_fraction, cfg.train.seed)
        if val_note:
            warn(val_note)
    model = engine.place(build_reward_model(cfg.model, tok, cfg.lora, seed=cfg.train.seed))
    layout = choose_layout(cfg.layout, model, tok.pad_token_id)
    batches = GroupBatches(train_g, cfg.train.batch_size, tok.pad_token_id, layout,
                           seed=cfg.train.seed, bucket_batches=cfg.bucket_batches)
    tcfg = steps_for_epochs(cfg.train, cfg.epochs, len(batches), engine.world_size)
    compiled = compile_for_run(cfg.compile, model, tcfg.max_steps, tcfg.batch_size,
                               engine.bf16, engine.device.type)
    # config.yaml records the resolved length (epochs folded into max_steps) and compile:
    # reloadable as is.
    cfg = dataclasses.replace(cfg, train=tcfg, layout=layout, epochs=None, compile=compiled)
    if engine.is_main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        config.save(cfg, cfg.out / "config.yaml")
    loss_fn = partial(rm_loss, ties=cfg.ties, tie_log_nu=cfg.tie_log_nu)
    val = GroupBatches(val_g, tcfg.batch_size, tok.pad_token_id, layout, shuffle=False) if val_g else None
    result = train(model, batches, loss_fn, tcfg, cfg.out,
                   eval_fn=(lambda m: val_metrics(m, val, loss_fn)) if val else None,
                   resume=resume, description="rm",
                   extra_summary={"train_prompts": len(train_g), "val_prompts": len(val_g),
                                  "layout": layout, "share_saving": round(share_saving(train_g), 4),
                                  "batches_per_epoch": len(batches), "records": dict(counts),
                                  "validation": val_note or "held out",
                                  "skipped_examples": skipped[:5]},
                   engine=engine)
    if compiled:
        mark_compiled(model, engine.bf16)
    ref, provenance = reference_groups(cfg, tok, train_g)
    if cfg.normalize_max is not None:
        ref = sample_groups(ref, cfg.normalize_max, tcfg.seed)
    final = cfg.out / "final"
    with engine.full_params():  # FSDP / ZeRO-3: the whole weights, on every process
        stats = fit_reference(model, ref, tok.pad_token_id, layout, tcfg.batch_size, engine.bf16)
        if engine.is_main:
            save_reward_model(model, tok, final, {**provenance, **stats})
    engine.barrier()
    return result, final


def run_rm(cfg: RMConfig, resume: bool = False) -> Path:
    """Train a reward model per `cfg`; returns the final model directory (`cfg.out / "final"`)."""
    final = rm(cfg, resume)[1]
    release_free_memory()  # the stage's freed buffers leave with it (coachlm.memory)
    return final


@dataclass(frozen=True)
class NormalizeConfig:
    """`coachlm rm normalize`: refit a saved reward model's gain and bias on `data`."""

    model: Path
    data: Path
    batch_size: int = 64
    max_length: int = 512
    bf16: bool = False


def run_normalize(cfg: NormalizeConfig) -> dict[str, Any]:
    """Score the reference samples in `cfg.data` and rewrite the model's normalization."""
    model, tok = load_reward_model(cfg.model), load_tokenizer(cfg.model)
    records = read_records(cfg.data, kinds=["sample", "demonstration"])
    raw, cut = score_items(model, tok, [(r.prompt, r.response.text) for r in records],
                           batch_size=cfg.batch_size, max_length=cfg.max_length, bf16=cfg.bf16)
    gain, bias = fit_normalization(raw)
    stats = {"source": "samples", "path": str(cfg.data), "n": len(raw),
             "raw_mean": float(raw.mean()), "raw_std": float(raw.std(unbiased=False)),
             "gain": gain, "bias": bias, "truncated_responses": cut}
    update_normalization(cfg.model, gain, bias, stats)
    return stats
