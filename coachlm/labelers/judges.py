"""Judges: things that score responses, or say which of two is better.

    judge.score(prompts, responses) -> [float]       # one number per (prompt, response)
    judge.prefer(prompt, a, b) -> float               # P(a is better than b), in [0, 1]

`RubricJudge` is the built-in world's hidden rubric (noise-free, 1/0/0.5 preferences);
`RewardModelJudge` a trained reward model, which scores with its own tokenizer and chat template
(`models.reward.load_reward_model` loads them with it) and prefers by the Bradley-Terry
probability sigmoid(r_a - r_b) of its raw scores; `ai.AIJudge` asks a feedback model (RL-CAI).
`JudgeReward(judge)` gives PPO a judge as its reward (`rollout.rewards.Reward`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from coachlm.data.schema import Prompt, as_prompt


@runtime_checkable
class Judge(Protocol):
    id: str

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]: ...

    def prefer(self, prompt: Prompt, a: str, b: str) -> float: ...


class RubricJudge:
    """The world's rubric total in [0, 1]; prefers the higher total (0.5 on a tie)."""

    id = "rubric"

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        from coachlm.world.rubric import score

        return [score(as_prompt(p), r).total for p, r in zip(prompts, responses)]

    def prefer(self, prompt: Prompt, a: str, b: str) -> float:
        sa, sb = self.score([prompt, prompt], [a, b])
        return 0.5 if sa == sb else float(sa > sb)


class RewardModelJudge:
    """A coachlm reward model directory; scores are normalized (gain * raw + bias)."""

    def __init__(self, path: str | Path, batch_size: int = 64, max_length: int = 512):
        from coachlm.models.reward import load_reward_model

        self.id = f"rm:{Path(path).resolve().name}"
        self.model = load_reward_model(path)
        self.batch_size, self.max_length = batch_size, max_length

    def _raw(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Any:
        from coachlm.models.reward import score_items

        items = [(as_prompt(p), r) for p, r in zip(prompts, responses)]
        raw, _ = score_items(self.model, self.model.tokenizer, items,
                             batch_size=self.batch_size, max_length=self.max_length)
        return raw  # (B,)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return self.model.normalize(self._raw(prompts, responses)).tolist()

    def prefer(self, prompt: Prompt, a: str, b: str) -> float:
        ra, rb = self._raw([prompt, prompt], [a, b]).tolist()
        return 1.0 / (1.0 + math.exp(-(ra - rb)))


class JudgeReward:
    """A judge as PPO's reward: `(prompts, responses, response_ids) -> Tensor (B,)`."""

    def __init__(self, judge: Judge):
        self.judge = judge

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str],
                 response_ids: Sequence[Sequence[int]]) -> Any:
        import torch

        return torch.tensor(self.judge.score(prompts, responses), dtype=torch.float32)  # (B,)
