"""Direct Preference Optimization (`coachlm dpo`): sigmoid DPO, conservative DPO and IPO.

DPO (Rafailov et al., 2023) trains the policy straight from preference pairs, with no reward
model and no sampling: the implicit reward of a response is beta * log pi(y|x) / ref(y|x), and
the loss is Bradley-Terry on the implicit rewards of the chosen and rejected responses
(`coachlm.losses.dpo`; label smoothing gives conservative DPO; `loss: ipo` gives IPO, Azar et
al., 2023, on per-token average logps as TRL and the IPO authors use).

Steps (`dpo`), and `nll_weight` adds RPO's NLL term on the chosen response (Pang et al., 2024):
  1. read preference records (Comparison, Ranking; canonical, TRL, HH-RLHF; a ranking expands to
     all its pairs), tokenize them through the chat template, hold out a fraction of prompts;
  2. load the policy from any local causal LM (an SFT checkpoint), optionally with LoRA;
  3. reference logps: computed once before training in one no-grad pass over every pair and
     cached beside the run (`out/ref_logps-<key>.pt`, key = hash of the pairs' tokens and the
     reference weights), so no reference model is in memory while training; or, with LoRA and
     `reference: adapter`, recomputed each step by the same weights with the adapter disabled.
     Both give the same loss (tested);
  4. train with the one engine (`engine.loop.train`) on `pair_loss`, chosen and rejected sharing one
     batch in the layout `choose_layout` picks (`coachlm.data.pairs`);
  5. save the final model to `out/final` (HF format; with LoRA merged, adapter in `adapter/`).

Log-probabilities: the backbone runs once over the batch, and the LM head only at the positions
that predict response tokens (the prompt needs no logits), in fp32 log-softmax
(`coachlm.trainers.dpo_logps`).
Outputs under `out`: config.yaml, metrics.jsonl, summary.json, checkpoints/, ref_logps-*.pt, final/.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch

from coachlm import config
from coachlm.data.io import PREFERENCE_KINDS, preference_pairs, read_records
from coachlm.data.invalid import InvalidRecords
from coachlm.data.pairs import Pair, PairBatch, PairBatches, encode_pairs, share_saving
from coachlm.data.split import held_out
from coachlm.errors import CoachError, DataError
from coachlm.losses import dpo as dpo_loss
from coachlm.losses import ipo as ipo_loss
from coachlm.models.attention import use_fp32_attention
from coachlm.models.compiled import compile_for_run, mark_compiled
from coachlm.models.load import load_model, load_tokenizer
from coachlm.memory import release_free_memory
from coachlm.models.lora import adapter_disabled, apply_lora
from coachlm.runlog import warn
from coachlm.models.logprobs import head_matches
from coachlm.trainers.dpo_logps import cached_reference, choose_layout, sequence_logps
from coachlm.trainers.epochs import steps_for_epochs
from coachlm.engine.accel import Engine, to_device
from coachlm.engine.loop import LossOut, TrainResult, train
from coachlm.trainers.final import save_final
from coachlm.trainers.configs import DPOConfig

# ------------------------------------------------------------------------------- the loss


def pair_loss(model: Any, batch: PairBatch, cfg: DPOConfig) -> LossOut:
    """Summed DPO/IPO loss over the batch's pairs, with the implicit-reward metrics (sums)."""
    b = batch.num_pairs
    # 1. reference logps: cached in the batch, or the same weights with the adapter disabled
    if cfg.reference == "adapter":
        with torch.no_grad(), adapter_disabled(model):
            ref = sequence_logps(model, batch)  # (2B,)
        ref_chosen, ref_rejected = ref[:b], ref[b:]
    else:
        if batch.ref_chosen_logps is None:
            raise ValueError("the batch carries no cached reference logps")
        ref_chosen, ref_rejected = batch.ref_chosen_logps, batch.ref_rejected_logps
    # 2. policy logps, chosen and rejected from one forward pass
    logps = sequence_logps(model, batch)  # (2B,)
    chosen_logps, rejected_logps = logps[:b], logps[b:]
    ref_chosen, ref_rejected = ref_chosen.to(logps.device), ref_rejected.to(logps.device)
    # 3. the loss per pair
    n_c = batch.chosen_lengths.to(logps.device).clamp(min=1)  # (B,)
    if cfg.loss == "ipo":
        # Azar et al. 2023 with per-token average logps (TRL's and the IPO authors' convention).
        n_r = batch.rejected_lengths.to(logps.device).clamp(min=1)  # (B,)
        losses, _, _ = ipo_loss(chosen_logps / n_c, rejected_logps / n_r,
                                ref_chosen / n_c, ref_rejected / n_r, cfg.beta)
        chosen_rewards = cfg.beta * (chosen_logps - ref_chosen).detach()
        rejected_rewards = cfg.beta * (rejected_logps - ref_rejected).detach()
    else:
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen_logps, rejected_logps, ref_chosen, ref_rejected, cfg.beta, cfg.label_smoothing)
    nll = -chosen_logps / n_c  # (B,) per-token NLL of each chosen response
    if cfg.nll_weight:
        losses = losses + cfg.nll_weight * nll
    # 4. metrics: sums over pairs (the loop divides by the step's pair count)
    metrics = {
        "rewards_chosen": float(chosen_rewards.sum()),
        "rewards_rejected": float(rejected_rewards.sum()),
        "rewards_margin": float((chosen_rewards - rejected_rewards).sum()),
        "rewards_accuracy": float((chosen_rewards > rejected_rewards).sum()),
        "logps_chosen": float(chosen_logps.detach().sum()),
        "logps_rejected": float(rejected_logps.detach().sum()),
        "nll_chosen": float(nll.detach().sum()),
    }
    return LossOut(losses.sum(), b, batch.num_tokens, metrics)


def evaluate_pairs(model: Any, batches: PairBatches, cfg: DPOConfig) -> dict[str, float]:
    """Held-out loss, preference accuracy, margin and implicit rewards (means over pairs)."""
    total, count, sums = 0.0, 0, Counter()
    device = next(model.parameters()).device
    for batch in batches.epoch_batches():
        out = pair_loss(model, to_device(batch, device), cfg)
        total, count = total + float(out.loss_sum), count + out.count
        sums.update(out.metrics)
    n = max(count, 1)
    return {"val_loss": total / n, "val_accuracy": sums["rewards_accuracy"] / n,
            "val_margin": sums["rewards_margin"] / n,
            "val_rewards_chosen": sums["rewards_chosen"] / n,
            "val_rewards_rejected": sums["rewards_rejected"] / n}

# ------------------------------------------------------------------------------------ data


def read_pairs(paths: Sequence[Path], tok: Any, cfg: DPOConfig) -> tuple[list[Pair], Counter]:
    """The preference pairs in `paths`, tokenized and truncated; (pairs, counts)."""
    invalid = InvalidRecords(cfg.skip_invalid)

    low = 0

    def pairs():
        nonlocal low
        for path in paths:
            records = read_records(path, kinds=PREFERENCE_KINDS, on_error=invalid.on_error)
            for pp in preference_pairs(records):
                if cfg.min_margin is not None and pp.margin is not None and pp.margin < cfg.min_margin:
                    low += 1
                    continue
                yield pp

    with invalid.strict_hint():
        out, counts = encode_pairs(pairs(), tok, cfg.max_length)
    invalid.warn()
    counts["skipped_invalid"], counts["skipped_low_margin"] = invalid.count, low
    if not out:
        raise DataError(", ".join(map(str, paths)), None, None,
                        f"no usable preference pairs (counts: {dict(counts)})")
    return out, counts


def split_by_prompt(pairs: list[Pair], val_fraction: float, seed: int
                    ) -> tuple[list[Pair], list[Pair], str | None]:
    """Hold out a seeded fraction of the *full* prompts (`data.split.held_out`), so no held-out
    prompt is trained on. Returns (train, val, note: why there is no validation split)."""
    held, note = held_out([p.key for p in pairs], val_fraction, seed)
    return ([p for p, h in zip(pairs, held) if not h], [p for p, h in zip(pairs, held) if h],
            note)


# ------------------------------------------------------------------------------------- run


def _model(cfg: DPOConfig, tok: Any) -> torch.nn.Module:
    model = load_model(cfg.model, dtype=torch.float32, tokenizer=tok)
    if not head_matches(model):
        raise CoachError(f"{type(model).__name__} transforms its logits beyond the LM head "
                         "(scaling or soft-capping), which DPO's log-probabilities do not apply")
    # bf16 autocast on CPU: attention in fp32 is faster (models.attention); the policy's and the
    # reference's forwards (cached or adapter-disabled) both run through this model
    use_fp32_attention(model)
    if cfg.lora is not None:
        with torch.random.fork_rng():  # LoRA init must not shift the run's seeded RNG streams
            torch.manual_seed(cfg.train.seed)
            model = apply_lora(model, cfg.lora)
    return model


def dpo(cfg: DPOConfig, resume: bool = False) -> tuple[TrainResult, Path]:
    """`run_dpo`, also returning the loop's TrainResult (metrics, tokens/s)."""
    # 1. pairs, tokenized; held-out prompts
    engine = Engine.from_config(cfg.train)
    tok = load_tokenizer(cfg.model)
    pairs, counts = read_pairs(cfg.data, tok, cfg)
    val_note = None
    if cfg.val_data:
        train_pairs, (val_pairs, _) = pairs, read_pairs(cfg.val_data, tok, cfg)
    else:
        train_pairs, val_pairs, val_note = split_by_prompt(pairs, cfg.val_fraction, cfg.train.seed)
        if val_note:
            warn(val_note)
    # 2. the policy, and the batch layout it runs fastest and exactly
    model = engine.place(_model(cfg, tok))
    layout = choose_layout(cfg.layout, model, train_pairs, tok.pad_token_id)
    # 3. reference logps, once, before training (unless the adapter-disabled weights give them);
    # the main process computes and caches them, the others then read the cache
    ref, cache, reused = None, None, False
    if cfg.reference == "cached":
        with engine.main_first():
            ref, cache, reused = cached_reference(
                model, cfg.model, cfg.out, train_pairs + val_pairs, tok.pad_token_id, layout,
                cfg.train.batch_size, engine.bf16, adapter=cfg.lora is not None)
    tcfg = cfg.train
    batches = PairBatches(train_pairs, tcfg.batch_size, tok.pad_token_id, layout, seed=tcfg.seed,
                          bucket_batches=cfg.bucket_batches,
                          ref_logps=None if ref is None else ref[:len(train_pairs)])
    tcfg = steps_for_epochs(cfg.train, cfg.epochs, len(batches), engine.world_size)
    # after the cached reference's no-grad forwards (those stay eager anyway)
    compiled = compile_for_run(cfg.compile, model, tcfg.max_steps, tcfg.batch_size,
                               engine.bf16, engine.device.type)
    cfg = dataclasses.replace(cfg, train=tcfg, layout=layout, epochs=None,  # resolved length
                              compile=compiled)
    if engine.is_main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        config.save(cfg, cfg.out / "config.yaml")
    val = PairBatches(val_pairs, tcfg.batch_size, tok.pad_token_id, layout, shuffle=False,
                      ref_logps=None if ref is None else ref[len(train_pairs):]) if val_pairs else None
    # 4. train
    result = train(model, batches, partial(pair_loss, cfg=cfg), tcfg, cfg.out,
                   eval_fn=(lambda m: evaluate_pairs(m, val, cfg)) if val else None,
                   resume=resume, description="dpo",
                   extra_summary={"train_pairs": len(train_pairs), "val_pairs": len(val_pairs),
                                  "layout": layout, "share_saving": round(share_saving(train_pairs), 3),
                                  "reference": cfg.reference, "reference_cache": str(cache or ""),
                                  "reference_cache_reused": reused, "data_counts": dict(counts),
                                  "batches_per_epoch": len(batches),
                                  "validation": val_note or "held out"},
                   engine=engine)
    if compiled:
        mark_compiled(model, engine.bf16)
    # 5. save
    return result, save_final(engine, model, tok, cfg.out / "final")


def run_dpo(cfg: DPOConfig, resume: bool = False) -> Path:
    """Train per `cfg`; returns the final model directory (`cfg.out / "final"`)."""
    final = dpo(cfg, resume)[1]
    release_free_memory()  # the stage's freed buffers leave with it (coachlm.memory)
    return final

