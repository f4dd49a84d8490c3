"""Truncated importance sampling for rollouts sampled by another engine than the learner.

When a generation engine (vLLM, another precision or kernel) samples the rollout, its token
probabilities mu differ slightly from the learner's pi_old for the same weights, so the samples
are off-policy for the learner. Truncated importance sampling reweights each token's
policy-gradient term by w = min(pi_old / mu, C): unbiased up to the truncation, with the
variance bounded by C (Ionides, 2008, "Truncated Importance Sampling"; IMPALA's truncated rho,
Espeholt et al., 2018; applied to the engine/learner mismatch of RL for LLMs by Yao et al., 2025,
"Your Efficient RL Framework Secretly Brings You Off-Policy RL Training").
"""

from __future__ import annotations

import torch
from torch import Tensor


def truncated_importance_weights(logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor,
                                 cap: float) -> Tensor:
    """w = min(exp(logprobs - sampler_logprobs), cap) on `mask`, 0 off it; no gradient.

    logprobs: (B, N) the learner's log pi_old of the sampled tokens; sampler_logprobs: (B, N)
    the engine's log mu of the same tokens; mask: (B, N) 1 on response tokens; cap: C > 0.
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    with torch.no_grad():
        ratio = torch.exp(logprobs.float() - sampler_logprobs.float())  # (B, N)
        return torch.where(mask.bool(), ratio.clamp(max=cap), torch.zeros_like(ratio))
