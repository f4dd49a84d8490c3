"""Loss functions for RLHF, each a pure function of tensors that cites its paper.

Shapes: B = batch (pairs or sequences), T = tokens, V = vocabulary, N = responses in a ranking
batch. Pairwise losses return per-pair values (B,) so callers choose the reduction (and can
weight, log or filter pairs); token-level losses return masked means.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from coachlm.rl_math import aggregate, kl_k3, masked_mean

# ---------------------------------------------------------------------------------------------
# Language modelling
# ---------------------------------------------------------------------------------------------


def nll(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean next-token negative log-likelihood over masked tokens (SFT, pretraining).

    No shift happens here: ``logits[:, t]`` is scored against ``labels[:, t]``, so the caller
    passes ``logits[:, :-1]`` with ``labels = input_ids[:, 1:]`` and the matching mask (1 on
    response tokens only, for SFT with loss on the response). Labels at masked positions may
    hold anything (e.g. -100); they are never read.

    logits: (B, T, V), labels: (B, T) int, mask: (B, T). Returns a scalar.
    """
    safe_labels = torch.where(mask.bool(), labels, torch.zeros_like(labels))  # (B, T)
    token_nll = F.cross_entropy(logits.float().transpose(1, 2), safe_labels, reduction="none")  # (B, T)
    return masked_mean(token_nll, mask)


# ---------------------------------------------------------------------------------------------
# Reward model losses
# ---------------------------------------------------------------------------------------------


def bradley_terry(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """Pairwise reward-model loss -log sigmoid(r_c - r_r - m), per pair.

    Ouyang et al. 2022 (InstructGPT), eq. 1; the optional margin m (how much better the chosen
    response was rated) is from Touvron et al. 2023 (Llama 2), eq. 2. Identical to TRL's
    RewardTrainer loss before its ``.mean()``.

    chosen_rewards, rejected_rewards, margin: (B,). Returns (B,) unreduced.
    """
    logits = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        logits = logits - margin
    return -F.logsigmoid(logits)


def bradley_terry_soft(r_a: Tensor, r_b: Tensor, target: Tensor) -> Tensor:
    """Bradley-Terry against a soft label: the cross-entropy between the target probability
    p = P(a better than b) and the model's sigmoid(r_a - r_b), per pair:

        -[p log sigmoid(r_a - r_b) + (1 - p) log sigmoid(r_b - r_a)].

    Constitutional AI (Bai et al., 2022, sec. 4.1) trains its preference model on the feedback
    model's normalized option probabilities as such soft targets. p = 1 is `bradley_terry`
    without margin; p = 1/2 pulls the two rewards together.

    r_a, r_b, target: (B,). Returns (B,) unreduced.
    """
    d = r_a - r_b  # (B,)
    return -(target * F.logsigmoid(d) + (1 - target) * F.logsigmoid(-d))


def bradley_terry_tie(r_a: Tensor, r_b: Tensor, tie_mask: Tensor, log_nu: float | Tensor = 0.0) -> Tensor:
    """Pairwise loss that also learns from ties: the Davidson (1970) model.

    Davidson, "On Extending the Bradley-Terry Model to Accommodate Ties in Paired Comparison
    Experiments", JASA 65(329), 1970. With strengths pi = exp(r), d = (r_a - r_b) / 2 and a
    tie propensity nu = exp(log_nu) >= 0:

        P(a > b) = e^d / (e^d + e^-d + nu),   P(tie) = nu / (e^d + e^-d + nu).

    A tie pulls the two rewards together (P(tie) peaks at d = 0); nu = 0 (log_nu = -inf)
    recovers Bradley-Terry exactly, since e^d / (e^d + e^-d) = sigmoid(r_a - r_b). Davidson was
    chosen over Rao-Kupper (1967) because its tie probability depends on the rewards only through
    their difference, which keeps rewards shift-invariant as Bradley-Terry's are.
    ``log_nu`` may be a learnable tensor. Non-tie rows must have ``a`` as the preferred response.

    r_a, r_b: (B,), tie_mask: (B,) bool. Returns (B,) per-pair -log P(observed outcome).
    """
    d = (r_a - r_b) / 2  # (B,)
    log_nu = torch.as_tensor(log_nu, dtype=d.dtype, device=d.device).expand_as(d)  # (B,)
    log_z = torch.logsumexp(torch.stack([d, -d, log_nu]), dim=0)  # (B,)
    return torch.where(tie_mask.bool(), log_z - log_nu, log_z - d)


def ranking(rewards: Tensor, ranks: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """K-wise ranking loss: Bradley-Terry on every ordered pair within each prompt's group.

    Ouyang et al. 2022 (InstructGPT), eq. 1: loss = -1/C(K,2) * E[log sigmoid(r_w - r_l)] over
    all pairs of the K ranked responses to one prompt, with all pairs in one batch so each
    response is forwarded once and each prompt counts once (their fix for overfitting when
    pairs were shuffled as independent samples). Here each group's pair losses are averaged over
    the pairs it actually contributes (C(K,2) when all ranks differ), then groups are averaged.
    Ties (equal rank) and unranked responses (rank < 0) form no pair. For K = 2 this is the mean
    of ``bradley_terry``.

    rewards: (N,), ranks: (N,) int, lower is better, < 0 means unranked; group_ids: (N,) int.
    Returns (loss scalar, number of pairs used). The loss is 0 when no group has a pair.
    """
    ranked = ranks >= 0  # (N,)
    same_group = group_ids.unsqueeze(1) == group_ids.unsqueeze(0)  # (N, N)
    # better[i, j]: response i is ranked strictly above response j for the same prompt.
    better = same_group & ranked.unsqueeze(1) & ranked.unsqueeze(0) & (ranks.unsqueeze(1) < ranks.unsqueeze(0))
    pair_loss = -F.logsigmoid(rewards.unsqueeze(1) - rewards.unsqueeze(0))  # (N, N)
    pair_loss = torch.where(better, pair_loss, torch.zeros_like(pair_loss))
    unique_groups, group_index = torch.unique(group_ids, return_inverse=True)  # (G,), (N,)
    n_groups = unique_groups.numel()
    group_loss = rewards.new_zeros(n_groups).index_add(0, group_index, pair_loss.sum(dim=1))  # (G,)
    group_pairs = rewards.new_zeros(n_groups).index_add(0, group_index, better.sum(dim=1).to(rewards.dtype))
    has_pairs = group_pairs > 0  # (G,)
    per_group = group_loss / group_pairs.clamp(min=1)  # (G,)
    return masked_mean(per_group, has_pairs), better.sum()


# ---------------------------------------------------------------------------------------------
# Direct preference optimization
# ---------------------------------------------------------------------------------------------


def _logratios(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-pair log pi/ref of the chosen and of the rejected response, each (B,)."""
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


def dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sigmoid DPO loss, optionally conservative (cDPO).

    Rafailov et al. 2023, "Direct Preference Optimization", eq. 7:
    L = -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]).
    ``label_smoothing`` = eps assumes each label is flipped with probability eps (Mitchell 2023,
    "A note on DPO with noisy preferences & relationship to IPO"):
    L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h). TRL's "sigmoid" loss had this
    form in its 0.x releases; TRL 1.16's "sigmoid" ignores label_smoothing (its "aot" loss keeps
    the cDPO form, and its "robust" loss is the different, unbiased rDPO estimator).

    logps are summed over response tokens (the sequence log-likelihood), all (B,).
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); the implicit rewards
    beta * log pi/ref are detached, for logging and accuracy only.
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = chosen_logratios - rejected_logratios  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def ipo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Identity preference optimization loss (h - 1 / (2 beta))^2.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17, with h the same log-ratio difference as DPO and beta their tau.
    The squared loss scales with whatever the caller passes: TRL 1.16 (``loss_type="ipo"``)
    divides each response's log-ratio by its number of completion tokens before taking the
    difference, i.e. it expects per-token *average* logps (confirmed with the IPO authors per
    TRL's comment). Pass ``logps_sum / n_tokens`` for policy and reference to match TRL and the
    paper's experiments; pass sums for the literal sequence-level form.

    All inputs (B,). Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)), the
    rewards being detached beta * log-ratios as in ``dpo``.
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = chosen_logratios - rejected_logratios  # (B,)
    losses = (logits - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------


def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    aggregation: Literal["token", "sequence"] = "token",
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate policy loss, per token, reduced by ``rl_math.aggregate``: a token mean
    (the default) or, for GRPO as in DeepSeekMath eq. 3, a mean of per-sequence means.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7:
    L = -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)], rho = pi / pi_old, written as the max of
    the negated terms as in cleanrl. Diagnostics (detached): clipfrac, the fraction of tokens
    where the clipped term is active, and approx_kl = k3 estimate of KL(pi_old || pi) on samples
    from pi_old, ``((rho - 1) - log rho)`` as in cleanrl (Schulman 2020, "Approximating KL").

    `weights` (B, T), optional, no gradient: each token's clipped term is multiplied by it, the
    truncated importance weight min(pi_old / mu, C) of a rollout that another engine sampled
    from mu (`coachlm.importance`; Yao et al., 2025, eq. 5).

    logprobs, old_logprobs, advantages, mask: (B, T). Returns (loss, clipfrac, approx_kl) scalars.
    """
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    pg_loss_unclipped = -advantages * ratio  # (B, T)
    pg_loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(pg_loss_unclipped, pg_loss_clipped)  # (B, T)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        clipfrac = masked_mean((pg_loss_clipped > pg_loss_unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean(kl_k3(old_logprobs, logprobs), mask)
    return loss, clipfrac, approx_kl


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    beta: float,
    aggregation: Literal["token", "sequence"] = "sequence",
) -> tuple[Tensor, Tensor]:
    """GRPO's KL term: beta * D_KL[pi_theta || pi_ref] added to the loss, not to the reward.

    Shao et al. 2024, "DeepSeekMath", eq. 3 (the term -beta * D_KL inside the per-token sum) with
    eq. 4, the k3 estimator D_KL = ref / pi - log(ref / pi) - 1 on the current policy's
    logprobs (Schulman 2020, "Approximating KL"). Keeping the KL out of the advantages keeps its
    weight beta whatever the group's score spread: folded into a reward that is then divided by
    the group's std, its weight would be beta / std, unbounded when the scores tie.
    ``aggregation`` reduces the tokens as the policy loss does (``rl_math.aggregate``).

    logprobs (with grad), ref_logprobs, mask: (B, T). Returns (beta * KL, KL) scalars; the
    second is detached, for logging.
    """
    kl = aggregate(kl_k3(logprobs, ref_logprobs), mask, aggregation)
    return beta * kl, kl.detach()


def value_clip(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    aggregation: Literal["token", "sequence"] = "token",
) -> tuple[Tensor, Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clip - R)^2), reduced by ``rl_math.aggregate``
    (a token mean by default), as the policy loss is.

    V_clip = V_old + clip(V - V_old, -eps, eps): the critic may not move further than eps from
    the rollout-time values, mirroring the policy clip. From OpenAI baselines ppo2 and
    lm-human-preferences; see Huang et al. 2022, "The 37 Implementation Details of PPO" (detail
    9) and Huang et al. 2023, "The N Implementation Details of RLHF with PPO".

    values, old_values, returns, mask: (B, T). Returns (loss, clipfrac) scalars.
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)  # (B, T)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * aggregate(torch.maximum(loss_unclipped, loss_clipped), mask, aggregation)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return loss, clipfrac
