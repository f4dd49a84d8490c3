"""A rollout batch as tensors (`Experience`) and the forward passes that fill it.

Layout, as in OpenRLHF's `Experience`: each row is the LEFT-padded prompt followed by the
RIGHT-padded response, `sequences` (B, P + N). Response-side tensors are (B, N) and aligned with
the response tokens: column t is response token t. `action_mask` is 1 on real response tokens,
up to and including the first stop token, and 0 after it: sampling stops a row at its first stop
token and nothing after it is ever scored, rewarded or trained on (Huang et al., 2023, "The N
Implementation Details of RLHF with PPO": truncate at the stop token, mask after EOS).

Values follow the usual convention: V_t is read from the hidden state that predicts response
token t (column P - 1 + t), the state before the action, from the same forward pass that yields
logprobs. Logits are divided by the sampling temperature before the softmax, so recomputed
logprobs are those of the sampling distribution (Huang et al., 2023, temperature detail).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from coachlm.models.logprobs import (accepts_logits_to_keep, logprobs_from_logits,
                                     position_ids_from_mask)
from coachlm.rl_math import entropy_from_logits


@dataclass
class Experience:
    """One rollout, B = episodes (prompt x sample), P = padded prompt width, N = response width."""

    sequences: Tensor  # (B, P + N) long: left-padded prompt, then right-padded response
    attention_mask: Tensor  # (B, P + N) long: 1 on real prompt and response tokens
    action_mask: Tensor  # (B, N) bool: 1 on response tokens up to and including the stop token
    finished: Tensor  # (B,) bool: the response ended with a stop token (EOS)
    prompt_index: Tensor  # (B,) long: which prompt of the rollout each row answers
    logprobs: Tensor  # (B, N) fp32: log pi_old(token), the policy that sampled
    ref_logprobs: Tensor  # (B, N) fp32: log pi_ref(token), the frozen starting policy
    values: Tensor | None = None  # (B, N) fp32: V_old(state before token); None without a critic
    scores: Tensor | None = None  # (B,) fp32: reward after normalization, clipping, EOS penalty
    kl: Tensor | None = None  # (B, N) fp32: per-token KL estimate, 0 after EOS
    rewards: Tensor | None = None  # (B, N) fp32: -beta * KL per token + score on the last token
    advantages: Tensor | None = None  # (B, N) fp32
    returns: Tensor | None = None  # (B, N) fp32: GAE targets for the critic

    @property
    def prompt_width(self) -> int:
        return self.sequences.shape[1] - self.action_mask.shape[1]

    @property
    def response_lengths(self) -> Tensor:
        return self.action_mask.sum(dim=1)  # (B,)

    def select(self, rows: Tensor) -> "Experience":
        """The rows `rows` (K,) of every tensor field (a mini- or micro-batch)."""
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: (v[rows] if isinstance(v, Tensor) else v)
                                for k, v in picked.items()})


def pack_rollout(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                 prompt_index: Sequence[int], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(sequences (B, P + N), attention_mask (B, P + N), action_mask (B, N)) of a rollout.

    `prompt_ids[prompt_index[b]]` and `response_ids[b]` form row b. A row's response is kept up
    to and including its first stop token (the sampler already ends it there), so no token
    after EOS exists; the columns after a row's end are padding with action_mask 0.
    """
    B = len(response_ids)
    P = max(len(prompt_ids[i]) for i in prompt_index)
    N = max(1, max(len(r) for r in response_ids))
    sequences = torch.full((B, P + N), pad_id, dtype=torch.long)  # (B, P + N)
    attention_mask = torch.zeros(B, P + N, dtype=torch.long)  # (B, P + N)
    action_mask = torch.zeros(B, N, dtype=torch.bool)  # (B, N)
    for b, (i, resp) in enumerate(zip(prompt_index, response_ids)):
        p = prompt_ids[i]
        sequences[b, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attention_mask[b, P - len(p):P + len(resp)] = 1
        if resp:
            sequences[b, P:P + len(resp)] = torch.tensor(resp, dtype=torch.long)
            action_mask[b, :len(resp)] = True
    return sequences, attention_mask, action_mask


def policy_forward(model: Any, value_head: nn.Module | None, sequences: Tensor,
                   attention_mask: Tensor, action_mask: Tensor, temperature: float,
                   with_entropy: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(logprobs, values, entropy) of the response tokens from one forward pass.

    sequences, attention_mask: (B, P + N); action_mask: (B, N). Returns (B, N) tensors, 0 where
    action_mask is 0; values is None without a value head, entropy None unless asked for.
    Only the N logit rows that predict response tokens reach the LM head (`logits_to_keep`).
    """
    N = action_mask.shape[1]
    keep = {"logits_to_keep": N + 1} if accepts_logits_to_keep(model) else {}
    out = model(input_ids=sequences, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False,
                output_hidden_states=value_head is not None, **keep)
    logits = out.logits[:, -(N + 1):-1]  # (B, N, V): position P - 1 + t predicts token t
    labels = sequences[:, -N:]  # (B, N)
    logprobs = logprobs_from_logits(logits, labels, temperature)  # (B, N)
    zero = torch.zeros_like(logprobs)
    logprobs = torch.where(action_mask, logprobs, zero)
    values = entropy = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, -(N + 1):-1]  # (B, N, d)
        values = torch.where(action_mask, value_head(hidden).squeeze(-1).float(), zero)  # (B, N)
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.float() / temperature)  # (B, N)
            entropy = torch.where(action_mask, entropy, zero)
    return logprobs, values, entropy


def micro_batches(n_rows: int, size: int) -> list[Tensor]:
    """Consecutive row-index chunks (K,) of at most `size` rows."""
    return [torch.arange(s, min(s + size, n_rows)) for s in range(0, n_rows, size)]
