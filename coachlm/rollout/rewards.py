"""Reward functions for RL: anything that scores (prompt, response) pairs with one number each.

A `Reward` is a callable `(prompts, responses, response_ids) -> Tensor (B,)`: the reward model
(`RewardModelReward`, its normalized score), the built-in world's hidden rubric
(`RubricReward`), any Python rule, or a weighted sum of them (`SumReward`), as issue 5 asks
("rule-based reward functions are accepted in place of, or added to, the reward model").
Response texts exclude special tokens (the final EOS); `response_ids` are the raw token ids.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch
from torch import Tensor

from coachlm.data.schema import Prompt
from coachlm.errors import CoachError


class Reward(Protocol):
    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str],
                 response_ids: Sequence[Sequence[int]]) -> Tensor: ...


class RubricReward:
    """The built-in world's rubric total, in [0, 1] (`coachlm.world.rubric.score`)."""

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str],
                 response_ids: Sequence[Sequence[int]]) -> Tensor:
        from coachlm.world.rubric import score

        return torch.tensor([score(p, r).total for p, r in zip(prompts, responses)],
                            dtype=torch.float32)  # (B,)


class RewardModelReward:
    """A coachlm reward model's normalized score (gain * raw + bias, `models.reward`).

    Texts are encoded with the reward model's own tokenizer and chat template
    (`model.tokenizer`, loaded with it), never the policy's: a reward model trained on another
    vocabulary or template would otherwise score token ids it never saw, silently. Passing a
    `tokenizer` that differs from the reward model's is an error.
    """

    def __init__(self, model: Any, tokenizer: Any = None, batch_size: int = 64,
                 max_length: int = 512, bf16: bool = False):
        own = getattr(model, "tokenizer", None)
        if own is None and tokenizer is None:
            raise CoachError("the reward model carries no tokenizer; load it with "
                             "models.reward.load_reward_model")
        if own is not None and tokenizer is not None and not same_tokenizer(own, tokenizer):
            raise CoachError("the tokenizer given differs from the reward model's own (vocabulary, "
                             "special tokens or chat template); score with the reward model's "
                             "tokenizer (leave it out)")
        self.model, self.tokenizer = model, own if own is not None else tokenizer
        self.batch_size, self.max_length, self.bf16 = batch_size, max_length, bf16

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str],
                 response_ids: Sequence[Sequence[int]]) -> Tensor:
        from coachlm.models.reward import score_items

        raw, _ = score_items(self.model, self.tokenizer, list(zip(prompts, responses)),
                             batch_size=self.batch_size, max_length=self.max_length,
                             bf16=self.bf16)  # (B,)
        return self.model.normalize(raw).float()


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers encode and render chats identically (vocabulary, specials, template)."""
    def key(t: Any) -> tuple:
        return (t.get_vocab(), t.eos_token_id, t.pad_token_id, t.bos_token_id,
                getattr(t, "chat_template", None))
    return a is b or key(a) == key(b)


class SumReward:
    """sum_i weight_i * reward_i(...): e.g. the reward model plus a rule."""

    def __init__(self, parts: Sequence[tuple[float, Reward]]):
        self.parts = list(parts)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str],
                 response_ids: Sequence[Sequence[int]]) -> Tensor:
        total = torch.zeros(len(responses))  # (B,)
        for weight, reward in self.parts:
            total = total + weight * reward(prompts, responses, response_ids).float()
        return total
