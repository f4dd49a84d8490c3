"""The numbered steps of one PPO/GRPO/RLOO iteration, as functions of an `Experience`.

  1. generate   `rollout`: pure sampling (top_k 0, top_p 1) with the KV cache, the LoRA update
                merged into the weights; then one no-grad pass for the policy's logprobs and
                values and one, adapter off, for the reference, in the update's micro-batches
                (the policy's is skipped when the update's forward gives the same numbers:
                `old_logprobs_from_update`).
  2. score      `score_responses`: reward, optional normalization, clipping, no-EOS penalty.
  3. KL-shape   `shape_rewards`: -beta * KL on every response token, score on the last (EOS).
  4. advantages `ppo_advantages` (GAE + whitening) or `group_relative_advantages` (GRPO/RLOO).
  5. update     `ppo_update.ppo_update`: epochs x shuffled mini-batches of the clipped policy
                (+ value) loss `_micro_loss`, each an optimizer step of the one engine.

Speed (measured on world-small, `benchmarks/rl_vs_trl.py`): micro-batches are length-sorted and
trimmed, and share prompts when a prompt has several samples (`rollout.experience`); peft's LoRA
layers are swapped, for the length of a step, for plain modules computing the same function
(`lora_view`: merged weights to sample, a fused update to train, the base layer for the
reference), and put back untouched."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from coachlm.data.schema import Prompt
from coachlm.engine.accel import to_device
from coachlm.importance import truncated_importance_weights
from coachlm.losses import kl_penalty, ppo_clip, value_clip
from coachlm.models.lora import PeftModel, lora_view
from coachlm.models.modes import eval_mode
from coachlm.rl_math import (aggregation_weight, explained_variance, gae, group_advantages,
                             kl_shaped_rewards, masked_mean, masked_whiten)
from coachlm.rollout.experience import (Experience, SharedPrompts, pack_rollout, policy_forward,
                                        shared_prompts_supported, sorted_micro_batches)
from coachlm.rollout.rewards import Reward
from coachlm.rollout.generators import BuiltinGenerator, Generator
from coachlm.rollout.sampling import Generation, SamplingConfig, frozen_copy
from coachlm.trainers.ppo_config import PPOConfig


class ActorCritic(nn.Module):
    """The policy and, for PPO, its critic: a value head on the policy's last hidden state
    (shared trunk), or a separate critic (`trainers.critic.RewardModelCritic`).

    The shared head starts at zero (Huang et al., 2023): the first values are 0 and GAE starts
    from Monte-Carlo-like returns rather than from a random critic.
    """

    def __init__(self, policy: nn.Module, hidden_size: int | None, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.value_head = nn.Linear(hidden_size, 1) if hidden_size and critic is None else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        # Whether micro-batches share prompts (`experience.share_prompts`): decided by the first
        # rollout, from the samples per prompt and a check of the policy.
        self.shares_prompts: bool | None = None

    @property
    def has_critic(self) -> bool:
        return self.value_head is not None or self.critic is not None

    def forward(self, sequences: Tensor, attention_mask: Tensor, action_mask: Tensor,
                temperature: float, with_entropy: bool = False,
                shared: SharedPrompts | None = None, pad_id: int | None = None
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(logprobs, values, entropy), each (B, N): `policy_forward` plus the critic (which
        always reads the padded rows)."""
        logprobs, values, entropy = policy_forward(self.policy, self.value_head, sequences,
                                                   attention_mask, action_mask, temperature,
                                                   with_entropy=with_entropy, shared=shared,
                                                   pad_id=pad_id)
        if self.critic is not None:
            values = self.critic(sequences, attention_mask, action_mask)
        return logprobs, values, entropy


def reference_context(ac: ActorCritic, ref_model: nn.Module | None,
                      dtype: torch.dtype | None = None) -> Any:
    """(model, context) computing the reference policy: the same weights with the LoRA adapter
    off (its layers swapped for their base layers), or a separate frozen copy when fine-tuning
    every weight."""
    if ref_model is not None:
        return ref_model, contextlib.nullcontext()
    if not isinstance(ac.policy, PeftModel):
        raise TypeError(f"the reference of a {type(ac.policy).__name__} policy without LoRA must "
                        "be a separate frozen copy")
    return ac.policy, lora_view(ac.policy, "base", dtype)


def frozen_dtype(engine: Any) -> torch.dtype | None:
    """bf16 when the engine autocasts in bf16 (and holds whole weights): the frozen weights are
    then cast once per rollout or update rather than by every forward (`lora_view`, `cast_copy`)."""
    return torch.bfloat16 if engine.bf16 and not engine.sharded else None


def frozen_reference(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """The reference policy of full fine-tuning: a frozen copy of `model` taken before any
    update, in eval mode. With `dtype` (`frozen_dtype`: bf16 under autocast) the weights and
    biases of its Linear layers are cast once, straight into the copy (no fp32 copy kept):
    autocast would cast them again on every forward (it caches casts of weights that require
    grad only), and it computes every Linear in bf16 anyway, so the reference's numbers are
    the same bit for bit. Everything autocast keeps in fp32 (embeddings, norms, and so the
    residual stream) stays fp32, and so does a Linear weight shared with such a module (tied
    input and output embeddings)."""
    fp32 = {id(p) for m in model.modules() if type(m) is not nn.Linear
            for p in m.parameters(recurse=False)}
    linear = [] if dtype is None else [p for m in model.modules() if type(m) is nn.Linear
                                       for p in m.parameters(recurse=False) if id(p) not in fp32]
    return frozen_copy(model, dtype or torch.float32, linear).eval()


def _decide_sharing(ac: ActorCritic, cfg: PPOConfig, pad_id: int) -> bool:
    """Share prompts in the forward passes when a prompt has several samples and the policy
    computes them right that way (checked once, on the first rollout)."""
    if ac.shares_prompts is None:
        ac.shares_prompts = (cfg.samples_per_prompt > 1
                            and shared_prompts_supported(ac.policy, pad_id))
    return ac.shares_prompts


def _has_dropout(model: nn.Module) -> bool:
    """Whether `model` in train mode drops anything: a dropout module, or a config's dropout
    probability that attention applies functionally (e.g. Llama's attention_dropout)."""
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    cfg = getattr(model, "config", None)
    return any(("dropout" in k or "pdrop" in k) and isinstance(v, float) and v > 0
               for k, v in (vars(cfg).items() if cfg is not None else ()))


def old_logprobs_from_update(ac: ActorCritic, cfg: PPOConfig, generator: Any) -> bool:
    """Whether the update's own forward can give pi_old, so that the rollout's no-grad policy
    pass is skipped (GRPO with one optimizer step per rollout).

    With one epoch and the whole rollout as the one mini-batch, no optimizer step happens
    between sampling and the update's forward: on the same weights, micro-batches (the sorted
    order depends on the set of rows only), kernels (the fused LoRA view, the frozen weights'
    dtype, autocast) and no dropout, that forward's logprobs equal the no-grad pass's. Then
    pi_old = pi_theta.detach(): the ratio r = pi_theta / pi_old is 1 and the clipped objective's
    gradient (Schulman et al., 2017, eq. 7) is the plain policy gradient A * grad log pi_theta,
    with clipfrac and approx_kl 0, exactly as with the no-grad pass. It also needs nothing to
    read pi_old *before* the update: GRPO's advantages come from the scores alone (its KL is a
    loss term, measured for the logs after the update), there is no critic (values come from
    the no-grad pass), and no external engine's importance weights (min(pi_old / mu, C)).
    With N processes each forwards its rows of the one mini-batch (row i on process i mod N)
    and they share those rows' logprobs after the step, for the logged KL and entropy
    (`ppo_update`); there the no-grad pass ran on each process's sampled rows, other
    micro-batches, so its pi_old matched the update's to float noise only, and the skip's
    ratio is exactly 1."""
    return (cfg.algo == "grpo" and cfg.ppo_epochs == 1 and cfg.mini_batch_size == cfg.episodes
            and not ac.has_critic and generator is None and not _has_dropout(ac.policy))


def _recompute(ac: ActorCritic, ref_model: nn.Module | None, exp: Experience, cfg: PPOConfig,
               share: bool, dtype: torch.dtype | None = None,
               policy_pass: bool = True) -> Tensor | None:
    """Fill exp.logprobs, exp.values and exp.ref_logprobs (no grad), micro-batch by
    micro-batch, as the update will forward them (frozen weights cast once to `dtype` under
    autocast). Returns the policy's entropy (B, N). Without `policy_pass`
    (`old_logprobs_from_update`): the reference only; exp.logprobs stays None and the
    entropy is None, both left to the update's forward."""
    rows_all = torch.arange(exp.sequences.shape[0])
    # The experience stays on the host; each micro-batch goes to the model's device, its
    # results come back (as the update's micro-batches do through the engine).
    device = next(ac.parameters()).device
    batches = [(rows, *to_device(exp.micro_batch(rows, share), device)) for rows in
               sorted_micro_batches(rows_all, exp, cfg.micro_batch_size, by_prompt=share)]
    entropy = None
    if policy_pass:
        exp.logprobs = torch.zeros_like(exp.ref_logprobs)  # (B, N)
        entropy = _policy_pass(ac, exp, batches, cfg, dtype)
    ref, ref_ctx = reference_context(ac, ref_model, dtype)
    with eval_mode(ref), ref_ctx:
        for rows, e, shared in batches:
            lp = policy_forward(ref, None, e.sequences, e.attention_mask, e.action_mask,
                                cfg.temperature, shared=shared, pad_id=e.pad_id)[0]  # (b, n)
            exp.ref_logprobs[rows, :lp.shape[1]] = lp.float().cpu()
    return entropy


def _policy_pass(ac: ActorCritic, exp: Experience, batches: list, cfg: PPOConfig,
                 dtype: torch.dtype | None) -> Tensor:
    """Fill exp.logprobs and exp.values; returns the entropy (B, N)."""
    entropy = torch.zeros_like(exp.logprobs)  # (B, N)
    # Eval mode: a dropout left in the model (the update leaves it in train mode) must not
    # make the old logprobs, values and the KL to the reference noisy.
    with eval_mode(ac), lora_view(ac.policy, "fused", dtype):  # as the update computes it
        for rows, e, shared in batches:
            n = e.action_mask.shape[1]
            lp, v, ent = ac(e.sequences, e.attention_mask, e.action_mask, cfg.temperature,
                            with_entropy=True, shared=shared, pad_id=e.pad_id)  # (b, n) each
            exp.logprobs[rows, :n], entropy[rows, :n] = lp.float().cpu(), ent.float().cpu()
            if exp.values is not None:
                exp.values[rows, :n] = v.float().cpu()
    return entropy


@torch.no_grad()
def rollout(ac: ActorCritic, ref_model: nn.Module | None, tokenizer: Any,
            prompt_ids: Sequence[Sequence[int]], cfg: PPOConfig, seed: int,
            autocast: Callable[[], Any], row_offset: int = 0,
            generator: Generator | None = None, dtype: torch.dtype | None = None,
            policy_pass: bool = True) -> tuple[Experience, Generation, float | None]:
    """# 1. generate: sample, then recompute logprobs / values / reference logprobs.

    Returns (experience, generation, mean token entropy of the policy on its samples).
    Without `policy_pass` (`old_logprobs_from_update`) the policy's no-grad pass is skipped:
    exp.logprobs and the entropy are None, the update's forward gives them.
    `generator`: the sampling engine (`rollout.generators`); None: the built-in sampler on the
    policy's merged weights. `dtype` (bf16: the engine's autocast precision): the built-in
    sampler runs on a bf16 copy of the merged policy (`sampling.cast_copy`), and the no-grad
    passes use the frozen weights cast once (`lora_view`'s dtype).

    Logprobs are recomputed rather than taken from the sampler (which ran on merged weights)
    so that the first PPO epoch's ratio is exactly 1: the same kernels as the update, on the
    same micro-batches when a mini-batch is the whole rollout (OpenRLHF also recomputes).
    """
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_k=0, top_p=1.0, n=cfg.samples_per_prompt,
                          batch_size=cfg.episodes, seed=seed,
                          dtype="bf16" if dtype == torch.bfloat16 else "model")
    with lora_view(ac.policy, "merged", None if generator else dtype):
        sample = generator or BuiltinGenerator(ac.policy, tokenizer)
        gen = sample(prompt_ids, scfg, row_offset=row_offset)
    sequences, attention_mask, action_mask = pack_rollout(
        prompt_ids, gen.response_ids, gen.prompt_index, tokenizer.pad_token_id)
    B, N = action_mask.shape
    exp = Experience(
        sequences=sequences, attention_mask=attention_mask, action_mask=action_mask,
        finished=torch.tensor(gen.finished, dtype=torch.bool),
        prompt_index=torch.tensor(gen.prompt_index, dtype=torch.long),
        logprobs=None, ref_logprobs=torch.zeros(B, N),
        values=torch.zeros(B, N) if ac.has_critic else None, pad_id=tokenizer.pad_token_id)
    share = _decide_sharing(ac, cfg, tokenizer.pad_token_id)
    with autocast():
        entropy = _recompute(ac, ref_model, exp, cfg, share, dtype, policy_pass)
    if generator is not None and getattr(generator, "external", True) \
            and cfg.importance_cap is not None:
        exp.is_weights = truncated_importance_weights(
            exp.logprobs, sampler_logprobs(gen, action_mask.shape[1]), action_mask,
            cfg.importance_cap)
    return exp, gen, None if entropy is None else float(masked_mean(entropy, action_mask))


def sampler_logprobs(gen: Generation, width: int) -> Tensor:
    """(B, width) the engine's logprobs of the sampled tokens, right-padded with 0."""
    out = torch.zeros(len(gen.response_ids), width)
    for b, lp in enumerate(gen.logprobs):
        out[b, :min(len(lp), width)] = torch.tensor(lp[:width], dtype=torch.float32)
    return out


@dataclass
class RewardNorm:
    """Score normalization gain * raw + bias, fitted once on reference samples."""

    gain: float = 1.0
    bias: float = 0.0
    fitted: bool = False

    def fit(self, raw: Tensor) -> None:
        std = float(raw.std(unbiased=False))
        self.gain = 1.0 / std if std > 1e-8 else 1.0
        self.bias = -float(raw.mean()) * self.gain
        self.fitted = True


def score_responses(reward: Reward, prompts: Sequence[Prompt], texts: Sequence[str],
                    gen: Generation, cfg: PPOConfig, norm: RewardNorm) -> tuple[Tensor, Tensor]:
    """# 2. score: (raw, scores), both (B,); scores are normalized, clipped and EOS-penalized."""
    raw = reward([prompts[i] for i in gen.prompt_index], texts, gen.response_ids).float()  # (B,)
    if cfg.normalize_reward and not norm.fitted:
        norm.fit(raw)
    scores = raw * norm.gain + norm.bias if cfg.normalize_reward else raw.clone()
    if cfg.reward_clip is not None:
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
    if cfg.no_eos_penalty is not None:
        # Huang et al., 2023: a response cut at max_new_tokens must not look as good as one that
        # ends properly, else the policy learns to ramble.
        finished = torch.tensor(gen.finished, dtype=torch.bool)  # (B,)
        scores = torch.where(finished, scores, scores - cfg.no_eos_penalty)
    return raw, scores


def shape_rewards(exp: Experience, kl_coef: float, cfg: PPOConfig) -> None:
    """# 3. KL-shape: per-token -beta * KL, plus the score on the last response token. GRPO
    keeps its KL out of the reward (it is a loss term, `_micro_loss`): the score alone, and the
    KL measured for the logs and the KL controller (`measure_kl`; after the update when the
    update's forward gives pi_old)."""
    if cfg.algo == "grpo":
        zero = torch.zeros_like(exp.ref_logprobs)  # (B, N)
        exp.rewards = kl_shaped_rewards(exp.scores, zero, zero, exp.action_mask, 0.0)[0]
        measure_kl(exp, cfg)
        return
    exp.rewards, exp.kl = kl_shaped_rewards(exp.scores, exp.logprobs, exp.ref_logprobs,
                                            exp.action_mask, kl_coef, cfg.kl_kind)


def measure_kl(exp: Experience, cfg: PPOConfig) -> None:
    """exp.kl (B, N): the per-token KL estimate of pi_old to the reference, 0 after EOS; left
    None while pi_old is unknown (`old_logprobs_from_update`)."""
    if exp.logprobs is not None:
        exp.kl = kl_shaped_rewards(exp.scores, exp.logprobs, exp.ref_logprobs, exp.action_mask,
                                   0.0, cfg.kl_kind)[1]


def ppo_advantages(exp: Experience, cfg: PPOConfig) -> None:
    """# 4. GAE (Schulman et al., 2016) on the shaped rewards, then whitened advantages."""
    advantages, exp.returns = gae(exp.rewards, exp.values, exp.action_mask, cfg.gamma, cfg.lam)
    exp.advantages = (masked_whiten(advantages, exp.action_mask) if cfg.whiten_advantages
                      else advantages)


def group_relative_advantages(exp: Experience, cfg: PPOConfig) -> None:
    """# 4. GRPO / RLOO: a baseline from the other samples of the same prompt, and the
    sequence's advantage on each of its tokens. Rows are prompt-major, so groups are runs.

    RLOO's sequence reward is score - beta * sum of token KL (Ahmadian et al., 2024, sec. 3);
    its advantages are not rescaled, so the KL keeps its weight beta. GRPO's advantages come
    from the scores alone (Shao et al., 2024, eq. 3): `exp.rewards` holds no KL for GRPO, whose
    KL is a loss term, since dividing a KL-shaped reward by the group's std would weigh the KL
    by beta / std (unbounded when the scores tie)."""
    sequence_rewards = exp.rewards.sum(dim=1)  # (B,) GRPO: the score; RLOO: score - beta * KL
    advantages = group_advantages(sequence_rewards, cfg.samples_per_prompt, cfg.algo,
                                  scale_std=cfg.scale_std)  # (B,)
    mask = exp.action_mask.float()
    exp.advantages = advantages.unsqueeze(1) * mask  # (B, N)
    exp.returns = sequence_rewards.unsqueeze(1) * mask  # (B, N), logged only


def _micro_loss(ac: ActorCritic, e: Experience, shared: SharedPrompts | None, cfg: PPOConfig,
                mini_weight: Tensor, kl_coef: float,
                record: Callable[[Tensor, Tensor], None] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
    """Loss of one micro-batch, weighted so that the mini-batch's loss is its `aggregate`
    (`mini_weight`: the mini-batch's `aggregation_weight`). Without old logprobs
    (e.logprobs None, `old_logprobs_from_update`) pi_old is this forward's, detached, and
    `record` gets (those logprobs, the entropy), each (b, n), for the rollout's logs."""
    logprobs, values, entropy = ac(e.sequences, e.attention_mask, e.action_mask,
                                   cfg.temperature, with_entropy=e.logprobs is None,
                                   shared=shared, pad_id=e.pad_id)  # (b, n)
    old = e.logprobs
    if old is None:
        old = logprobs.detach()  # r = pi_theta / pi_old = 1 (Schulman et al., 2017, eq. 7)
        record(old, entropy)
    pg_loss, clipfrac, approx_kl = ppo_clip(logprobs, old, e.advantages, e.action_mask,
                                            cfg.clip_eps, cfg.aggregation, e.is_weights)
    weight = aggregation_weight(e.action_mask, cfg.aggregation) / mini_weight
    loss = pg_loss
    stats = {"policy_loss": float(pg_loss.detach()), "clipfrac": float(clipfrac),
             "approx_kl": float(approx_kl)}
    if cfg.algo == "grpo":  # DeepSeekMath eq. 3: + beta * KL(pi_theta || pi_ref), in the loss
        kl_loss, kl = kl_penalty(logprobs, e.ref_logprobs, e.action_mask, kl_coef,
                                 cfg.aggregation)
        loss = loss + kl_loss
        stats.update(kl_loss=float(kl_loss.detach()), policy_kl=float(kl))
    if values is not None:
        vf_loss, vf_clipfrac = value_clip(values, e.values, e.returns, e.action_mask,
                                          cfg.value_clip_eps, cfg.aggregation)
        loss = loss + cfg.vf_coef * vf_loss
        stats.update(value_loss=float(vf_loss.detach()), value_clipfrac=float(vf_clipfrac))
    w = float(weight)
    return loss * weight, {k: v * w for k, v in stats.items()}


def rollout_metrics(exp: Experience, raw: Tensor, entropy: float | None) -> dict[str, float]:
    """What a rollout looked like: rewards, KL, lengths, EOS rate, critic quality."""
    mask = exp.action_mask
    lengths = exp.response_lengths.float()  # (B,)
    out = {
        "reward_raw": float(raw.mean()), "reward_raw_std": float(raw.std(unbiased=False)),
        "reward": float(exp.scores.mean()),
        "kl": float(exp.kl.sum(dim=1).mean()),  # per sequence, the quantity the budget limits
        "response_length": float(lengths.mean()), "eos_rate": float(exp.finished.float().mean()),
        "return_mean": float(masked_mean(exp.returns, mask)),
    }
    if entropy is not None:
        out["entropy"] = entropy
    if exp.is_weights is not None:  # how far the engine's samples were off the learner's policy
        out["is_weight_mean"] = float(masked_mean(exp.is_weights, mask))
        out["is_weight_min"] = float(exp.is_weights[mask.bool()].min()) if mask.any() else 1.0
    if exp.values is not None:
        out["explained_variance"] = float(explained_variance(exp.values, exp.returns, mask))
        out["value_mean"] = float(masked_mean(exp.values, mask))
    return out
