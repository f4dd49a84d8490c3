"""The numbered steps of one PPO/GRPO/RLOO iteration, as functions of an `Experience`.

  1. generate   `rollout`: pure sampling (top_k 0, top_p 1) with the KV cache; then one no-grad
                pass for the policy's logprobs and values and one, adapter off, for the reference.
  2. score      `score_responses`: reward, optional normalization, clipping, no-EOS penalty.
  3. KL-shape   `shape_rewards`: -beta * KL on every response token, score on the last (EOS).
  4. advantages `ppo_advantages` (GAE + whitening) or `group_relative_advantages` (GRPO/RLOO).
  5. update     `update`: epochs x shuffled mini-batches of clipped policy (+ value) loss.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from coachlm.data.schema import Prompt
from coachlm.losses import ppo_clip, value_clip
from coachlm.models.lora import adapter_disabled
from coachlm.rl_math import (explained_variance, gae, group_advantages, kl_shaped_rewards,
                             masked_mean, masked_whiten)
from coachlm.rollout.experience import Experience, micro_batches, pack_rollout, policy_forward
from coachlm.rollout.rewards import Reward
from coachlm.rollout.sampling import Generation, SamplingConfig, generate
from coachlm.trainers.loop import TrainConfig, lr_at
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

    @property
    def has_critic(self) -> bool:
        return self.value_head is not None or self.critic is not None

    def forward(self, sequences: Tensor, attention_mask: Tensor, action_mask: Tensor,
                temperature: float, with_entropy: bool = False
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(logprobs, values, entropy), each (B, N): `policy_forward` plus the critic."""
        logprobs, values, entropy = policy_forward(self.policy, self.value_head, sequences,
                                                   attention_mask, action_mask, temperature,
                                                   with_entropy=with_entropy)
        if self.critic is not None:
            values = self.critic(sequences, attention_mask, action_mask)
        return logprobs, values, entropy


def reference_context(ac: ActorCritic, ref_model: nn.Module | None) -> Any:
    """(model, context) computing the reference policy: the same weights with the LoRA adapter
    off, or a separate frozen copy when fine-tuning every weight."""
    if ref_model is not None:
        return ref_model, contextlib.nullcontext()
    return ac.policy, adapter_disabled(ac.policy)


@torch.no_grad()
def rollout(ac: ActorCritic, ref_model: nn.Module | None, tokenizer: Any,
            prompt_ids: Sequence[Sequence[int]], cfg: PPOConfig, seed: int,
            autocast: Callable[[], Any]) -> tuple[Experience, Generation, float]:
    """# 1. generate: sample, then recompute logprobs / values / reference logprobs.

    Returns (experience, generation, mean token entropy of the policy on its samples).

    Logprobs are recomputed rather than taken from the sampler so that the first PPO epoch's
    ratio is exactly 1 (the same kernels as the update; OpenRLHF does the same).
    """
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_k=0, top_p=1.0, n=cfg.samples_per_prompt,
                          batch_size=cfg.episodes, seed=seed)
    gen = generate(ac.policy, tokenizer, prompt_ids, scfg)
    sequences, attention_mask, action_mask = pack_rollout(
        prompt_ids, gen.response_ids, gen.prompt_index, tokenizer.pad_token_id)
    logprobs, values, entropy, ref_logprobs = [], [], [], []
    chunks = micro_batches(len(gen.response_ids), cfg.micro_batch_size)
    with autocast():
        for rows in chunks:
            args = (sequences[rows], attention_mask[rows], action_mask[rows], cfg.temperature)
            lp, v, ent = ac(*args, with_entropy=True)
            logprobs.append(lp)
            values.append(v)
            entropy.append(ent)
        ref, ref_ctx = reference_context(ac, ref_model)
        with ref_ctx:
            for rows in chunks:
                args = (sequences[rows], attention_mask[rows], action_mask[rows], cfg.temperature)
                ref_logprobs.append(policy_forward(ref, None, *args)[0])
    exp = Experience(
        sequences=sequences, attention_mask=attention_mask, action_mask=action_mask,
        finished=torch.tensor(gen.finished, dtype=torch.bool),
        prompt_index=torch.tensor(gen.prompt_index, dtype=torch.long),
        logprobs=torch.cat(logprobs).float(), ref_logprobs=torch.cat(ref_logprobs).float(),
        values=torch.cat(values).float() if ac.has_critic else None)
    mean_entropy = float(masked_mean(torch.cat(entropy), action_mask))
    return exp, gen, mean_entropy


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
    """# 3. KL-shape: per-token -beta * KL, plus the score on the last response token."""
    exp.rewards, exp.kl = kl_shaped_rewards(exp.scores, exp.logprobs, exp.ref_logprobs,
                                            exp.action_mask, kl_coef, cfg.kl_estimator)


def ppo_advantages(exp: Experience, cfg: PPOConfig) -> None:
    """# 4. GAE (Schulman et al., 2016) on the shaped rewards, then whitened advantages."""
    advantages, exp.returns = gae(exp.rewards, exp.values, exp.action_mask, cfg.gamma, cfg.lam)
    exp.advantages = (masked_whiten(advantages, exp.action_mask) if cfg.whiten_advantages
                      else advantages)


def group_relative_advantages(exp: Experience, cfg: PPOConfig) -> None:
    """# 4. GRPO / RLOO: one sequence reward (score - beta * sum of token KL, as in RLOO,
    Ahmadian et al., 2024, sec. 3), a baseline from the other samples of the same prompt, and
    the sequence's advantage on each of its tokens. Rows are prompt-major, so groups are runs."""
    sequence_rewards = exp.rewards.sum(dim=1)  # (B,) = score - beta * sum_t KL_t
    advantages = group_advantages(sequence_rewards, cfg.samples_per_prompt, cfg.algo)  # (B,)
    mask = exp.action_mask.float()
    exp.advantages = advantages.unsqueeze(1) * mask  # (B, N)
    exp.returns = sequence_rewards.unsqueeze(1) * mask  # (B, N), logged only


def _micro_loss(ac: ActorCritic, e: Experience, cfg: PPOConfig,
                n_tokens: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Loss of one micro-batch, weighted so that the mini-batch is a token-level mean."""
    logprobs, values, _ = ac(e.sequences, e.attention_mask, e.action_mask,
                             cfg.temperature)  # (b, N)
    pg_loss, clipfrac, approx_kl = ppo_clip(logprobs, e.logprobs, e.advantages, e.action_mask,
                                            cfg.clip_eps)
    weight = e.action_mask.sum() / n_tokens
    loss = pg_loss
    stats = {"policy_loss": float(pg_loss.detach()), "clipfrac": float(clipfrac),
             "approx_kl": float(approx_kl)}
    if values is not None:
        vf_loss, vf_clipfrac = value_clip(values, e.values, e.returns, e.action_mask,
                                          cfg.value_clip_eps)
        loss = loss + cfg.vf_coef * vf_loss
        stats.update(value_loss=float(vf_loss.detach()), value_clipfrac=float(vf_clipfrac))
    w = float(weight)
    return loss * weight, {k: v * w for k, v in stats.items()}


def update(ac: ActorCritic, optimizer: torch.optim.Optimizer, exp: Experience, cfg: PPOConfig,
           tcfg: TrainConfig, opt_step: int, seed: int,
           autocast: Callable[[], Any]) -> tuple[dict[str, float], int]:
    """# 5. update: `ppo_epochs` passes over shuffled mini-batches, one optimizer step each.

    Returns (metrics averaged over optimizer steps, the new optimizer step count).
    """
    generator = torch.Generator().manual_seed(seed)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    n_updates = 0
    ac.train()
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(exp.sequences.shape[0], generator=generator)  # (B,)
        for mini in order.split(cfg.mini_batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(opt_step, tcfg)
            n_tokens = exp.action_mask[mini].sum().clamp(min=1)
            for micro in mini.split(cfg.micro_batch_size):
                with autocast():
                    loss, stats = _micro_loss(ac, exp.select(micro), cfg, n_tokens)
                loss.backward()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            opt_step, n_updates = opt_step + 1, n_updates + 1
    metrics = {k: v / n_updates for k, v in sums.items()}
    metrics["lr"] = lr_at(opt_step - 1, tcfg)
    return metrics, opt_step


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
    if exp.values is not None:
        out["explained_variance"] = float(explained_variance(exp.values, exp.returns, mask))
        out["value_mean"] = float(masked_mean(exp.values, mask))
    return out
