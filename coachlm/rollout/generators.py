"""The generation-engine seam for rollouts: `coachlm sample` and PPO/GRPO/RLOO rollouts sample
through a `Generator`, so that another engine (e.g. vLLM) can stand in for the built-in
KV-cache sampler. Only the built-in one exists today (see the README, 'Several processes').

An engine other than the learner computes slightly different logprobs (other kernels, other
precision); the learner then corrects with truncated importance weights
(`coachlm.importance.truncated_importance_weights`) rather than trusting the engine's numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from coachlm.rollout.sampling import Generation, SamplingConfig, generate


class Generator(Protocol):
    """Samples `cfg.n` responses to each prompt (token ids); row r of the result draws from
    the stream numbered `row_offset + r`, so a shard of a rollout samples what the whole would."""

    def __call__(self, prompt_ids: Sequence[Sequence[int]], cfg: SamplingConfig, *,
                 row_offset: int = 0,
                 on_batch: Callable[[int, int], None] | None = None) -> Generation: ...

    def sync(self, model: Any) -> None:
        """Take the learner's current weights (after each update)."""


class BuiltinGenerator:
    """`rollout.sampling.generate` on the learner's own model: it always samples the live
    weights, so `sync` has nothing to copy."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer

    def __call__(self, prompt_ids: Sequence[Sequence[int]], cfg: SamplingConfig, *,
                 row_offset: int = 0,
                 on_batch: Callable[[int, int], None] | None = None) -> Generation:
        return generate(self.model, self.tokenizer, prompt_ids, cfg, on_batch=on_batch,
                        row_offset=row_offset)

    def sync(self, model: Any) -> None:
        self.model = model
