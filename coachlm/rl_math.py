"""Pure tensor math for RL on language models: masked statistics, KL estimators, KL-shaped
rewards, GAE, KL controllers and group baselines (GRPO/RLOO).

Conventions: B = batch (rows), T = response tokens, V = vocabulary. Responses are right-padded;
``mask`` is 1 on real response tokens and 0 on padding (and on everything after EOS). Every
function here is differentiable where that makes sense and never syncs with the device
(no ``.item()``) except the KL controllers, which take a Python float by design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is nonzero.

    Masked entries are selected out with ``torch.where`` rather than multiplied by 0, so a
    ``-inf``/``nan`` in padding (e.g. a logprob of a pad token) cannot poison the result.
    An all-masked reduction returns 0 instead of nan: an empty mini-batch contributes nothing.

    x: (...), mask: same shape as x (bool or {0, 1}). Returns a scalar, or x reduced over ``dim``.
    """
    mask = mask.bool()
    total = torch.where(mask, x, torch.zeros_like(x)).sum(dim=dim)
    count = mask.sum(dim=dim).clamp(min=1)
    return total / count


def aggregate(x: Tensor, mask: Tensor, how: Literal["token", "sequence"] = "token") -> Tensor:
    """Reduce a per-token loss (B, T) to a scalar: a token mean or a mean of per-sequence means.

    ``token``: every unmasked token weighs the same (long responses weigh more), as PPO
    implementations for language models do (Huang et al. 2023; Liu et al. 2025, "Dr. GRPO").
    ``sequence``: 1/G sum_i 1/|o_i| sum_t, the per-sequence mean of Shao et al. 2024
    ("DeepSeekMath", eq. 3), every response weighing the same; rows without tokens are left out.

    x, mask: (B, T). Returns a scalar.
    """
    if how == "token":
        return masked_mean(x, mask)
    if how == "sequence":
        has_tokens = mask.bool().any(dim=1)  # (B,)
        return masked_mean(masked_mean(x, mask, dim=1), has_tokens)
    raise ValueError(f"unknown aggregation {how!r}; expected 'token' or 'sequence'")


def aggregation_weight(mask: Tensor, how: Literal["token", "sequence"] = "token") -> Tensor:
    """How much a micro-batch with ``mask`` (b, T) weighs in its mini-batch's ``aggregate``:
    its number of tokens (``token``) or of non-empty rows (``sequence``). Returns a scalar, so
    that sum over micro-batches of aggregate(micro) * weight(micro) / weight(mini) equals
    aggregate(mini)."""
    if how == "token":
        return mask.sum()
    return mask.bool().any(dim=1).sum()


def masked_var(x: Tensor, mask: Tensor, dim: int | None = None, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over masked positions; ``unbiased`` applies Bessel's n / (n - 1).

    With fewer than two unmasked entries the (biased) variance is 0 and is returned as is.
    x, mask: same shape. Returns a scalar, or x reduced over ``dim``.
    """
    mean = masked_mean(x, mask, dim=dim)
    if dim is not None:
        mean = mean.unsqueeze(dim)
    var = masked_mean((x - mean) ** 2, mask, dim=dim)
    if unbiased:
        n = mask.bool().sum(dim=dim)
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalize ``x`` to mean 0 / std 1 using statistics of the unmasked entries only.

    Advantage whitening as in OpenAI lm-human-preferences ``whiten`` (population variance) and
    Huang et al. 2023, "The N Implementation Details of RLHF with PPO". With ``shift_mean=False``
    the mean is added back (only the scale changes), which is how lm-human-preferences whitens
    rewards. Masked entries are set to 0 in the output so they cannot leak into later sums.

    x, mask: (B, T). Returns (B, T).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=False)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[returns - values] / Var[returns] over masked tokens (a critic diagnostic).

    1 is a perfect critic, 0 is no better than a constant, negative is worse. Returns nan when
    the returns have zero variance, as cleanrl's ``explained_var`` does.
    values, returns, mask: (B, T). Returns a scalar.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    return torch.where(var_returns > 0, 1 - var_residual / var_returns, torch.full_like(var_returns, torch.nan))


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last axis.

    H = -sum_v p_v log p_v with 0 log 0 = 0, so vocabulary entries filtered to -inf (top-k,
    banned tokens) contribute nothing instead of nan.
    logits: (B, T, V). Returns (B, T).
    """
    logp = F.log_softmax(logits, dim=-1)  # (B, T, V)
    probs = logp.exp()
    return -torch.where(probs > 0, probs * logp, torch.zeros_like(logp)).sum(dim=-1)


# ---------------------------------------------------------------------------------------------
# KL estimators (Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html)
# Samples come from the policy whose log-probs are ``logprobs``; each estimates KL(pi || ref).
# ---------------------------------------------------------------------------------------------


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi(x) - log ref(x): unbiased, high variance, can be negative per token. (B, T)"""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi(x) - log ref(x))^2: biased, low variance, always >= 0. (B, T)"""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = (r - 1) - log r with r = ref(x) / pi(x): unbiased, low variance, always >= 0. (B, T)

    ``expm1`` keeps r - 1 accurate when the two policies are close (the usual case).
    """
    log_r = ref_logprobs - logprobs  # (B, T)
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_shaped_rewards(
    score: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float | Tensor,
    estimator: Literal["k1", "k2", "k3"] = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token PPO rewards: -kl_coef * KL on every response token, plus the reward model's
    score on the last real token of each row.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", sec. 2
    (R = r - beta * log(pi / rho)); the per-token placement follows OpenAI lm-human-preferences
    and Huang et al. 2023, "The N Implementation Details of RLHF with PPO". Putting the score on
    the last unmasked token (the EOS, once the caller truncates at the stop token) is what makes
    GAE credit the whole response.

    score: (B,), logprobs / ref_logprobs / mask: (B, T).
    Returns (rewards, kl), both (B, T) and 0 on masked tokens.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
    mask = mask.bool()
    kl = KL_ESTIMATORS[estimator](logprobs, ref_logprobs)  # (B, T)
    kl = torch.where(mask, kl, torch.zeros_like(kl))
    rewards = -kl_coef * kl  # (B, T)
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = torch.where(mask, positions, -1).amax(dim=1)  # (B,) -1 for an empty row
    has_tokens = last >= 0  # (B,)
    bonus = torch.where(has_tokens, score.to(rewards.dtype), torch.zeros_like(score, dtype=rewards.dtype))
    rewards = rewards.scatter_add(1, last.clamp(min=0).unsqueeze(1), bonus.unsqueeze(1))
    return rewards, kl


# ---------------------------------------------------------------------------------------------
# Generalized advantage estimation
# ---------------------------------------------------------------------------------------------


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over right-padded responses.

    Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", eq. 16:
    A_t = sum_l (gamma * lam)^l delta_{t+l}, delta_t = r_t + gamma * V_{t+1} - V_t,
    computed backwards as A_t = delta_t + gamma * lam * A_{t+1}. The value after the last real
    token is 0 (the episode ends at EOS), which the ``mask[:, t + 1]`` factor implements; padding
    therefore never leaks into real tokens. Returns = A + V are the critic's regression targets.
    Defaults gamma=1, lam=0.95 follow Huang et al. 2023 / lm-human-preferences. Pass rollout-time
    (detached) values: advantages and returns are targets, not part of the graph.

    rewards, values, mask: (B, T). Returns (advantages, returns), both (B, T), 0 on padding.
    """
    mask_f = mask.to(values.dtype)
    rewards = rewards * mask_f
    values = values * mask_f
    T = rewards.shape[1]
    advantages_reversed = []
    last_gae = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(T)):
        if t + 1 < T:
            not_last, next_value = mask_f[:, t + 1], values[:, t + 1]  # (B,), already 0 on padding
        else:
            not_last, next_value = torch.zeros_like(last_gae), torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        last_gae = delta + gamma * lam * not_last * last_gae
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask_f  # (B, T)
    returns = (advantages + values) * mask_f  # (B, T)
    return advantages, returns


# ---------------------------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019, sec. 2.2)
# ---------------------------------------------------------------------------------------------


@dataclass
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op; present so trainers can treat both controllers alike."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """Adapts beta so the measured KL tracks ``target`` (Ziegler et al. 2019, sec. 2.2):

    e_t = clip(KL_t / target - 1, -0.2, 0.2);  beta_{t+1} = beta_t * (1 + K_beta * e_t),
    with K_beta = n_steps / horizon, as in lm-human-preferences ``AdaptiveKLController``.
    """

    init_kl_coef: float
    target: float
    horizon: float
    value: float = field(init=False)

    def __post_init__(self) -> None:
        if self.target <= 0 or self.horizon <= 0:
            raise ValueError("AdaptiveKLController needs target > 0 and horizon > 0")
        self.value = float(self.init_kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """current_kl: mean per-sequence KL of the last batch; n_steps: episodes in that batch."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


# ---------------------------------------------------------------------------------------------
# Group baselines for critic-free policy gradients
# ---------------------------------------------------------------------------------------------


def group_advantages(
    rewards: Tensor,
    group_size: int,
    method: Literal["grpo", "rloo"] = "grpo",
    scale_std: bool = True,
    eps: float = 1e-4,
) -> Tensor:
    """Per-response advantages from the other responses to the same prompt.

    - ``grpo``: Shao et al. 2024, "DeepSeekMath", eq. 3 with sec. 4.1.2 (outcome supervision):
      A_i = (r_i - mean(r)) / (std(r) + eps), with the unbiased std and eps = 1e-4 as in TRL's
      GRPOTrainer. ``scale_std=False`` drops the division (Liu et al. 2025, "Dr. GRPO").
    - ``rloo``: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization
      for Learning from Human Feedback in LLMs", sec. 3 (following Kool et al. 2019):
      A_i = r_i - (1 / (k - 1)) * sum_{j != i} r_j. Unscaled, so ``scale_std`` does not apply.

    rewards: (B,), consecutive runs of ``group_size`` responses to one prompt. Returns (B,).
    """
    if group_size < 2:
        raise ValueError("group baselines need group_size >= 2 responses per prompt")
    if rewards.dim() != 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"rewards must be (B,) with B divisible by group_size={group_size}")
    grouped = rewards.view(-1, group_size)  # (B / k, k)
    if method == "grpo":
        advantages = grouped - grouped.mean(dim=1, keepdim=True)
        if scale_std:
            advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    elif method == "rloo":
        baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (B / k, k)
        advantages = grouped - baseline
    else:
        raise ValueError(f"unknown method {method!r}; expected 'grpo' or 'rloo'")
    return advantages.reshape(-1)
