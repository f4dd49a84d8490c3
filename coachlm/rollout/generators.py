"""The generation-engine seam for rollouts: `coachlm sample` and PPO/GRPO/RLOO rollouts sample
through a `Generator`: the built-in KV-cache sampler, or vLLM (`rollout.vllm_engine`, an
optional engine in its own environment; see the README, 'vLLM rollouts').

An engine other than the learner computes slightly different logprobs (other kernels, other
precision); the learner then corrects with truncated importance weights
(`coachlm.importance.truncated_importance_weights`) rather than trusting the engine's numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol, Sequence

from coachlm.errors import CoachError
from coachlm.rollout.sampling import Generation, SamplingConfig, generate


class Generator(Protocol):
    """Samples `cfg.n` responses to each prompt (token ids); row r of the result draws from
    the stream numbered `row_offset + r`, so a shard of a rollout samples what the whole would."""

    def __call__(self, prompt_ids: Sequence[Sequence[int]], cfg: SamplingConfig, *,
                 row_offset: int = 0,
                 on_batch: Callable[[int, int], None] | None = None) -> Generation: ...

    # True: the engine's logprobs are not the learner's (other weights copy, kernels or
    # precision), so a rollout gets truncated importance weights (`PPOConfig.importance_cap`).
    external: bool

    def sync(self, model: Any) -> None:
        """Take the learner's current weights (after each update)."""

    def close(self) -> None:
        """Release the engine (processes, memory)."""


class BuiltinGenerator:
    """`rollout.sampling.generate` on the learner's own model: it always samples the live
    weights, so `sync` has nothing to copy."""

    external = False

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer

    def __call__(self, prompt_ids: Sequence[Sequence[int]], cfg: SamplingConfig, *,
                 row_offset: int = 0,
                 on_batch: Callable[[int, int], None] | None = None) -> Generation:
        return generate(self.model, self.tokenizer, prompt_ids, cfg, on_batch=on_batch,
                        row_offset=row_offset)

    def sync(self, model: Any) -> None:
        self.model = model

    def close(self) -> None:
        pass


def learner_weights(model: Any) -> dict[str, Any]:
    """The learner's weights as a plain causal LM's state dict (Hugging Face names): a peft LoRA
    model's update merged into its base weights (`lora_view`, no copy of the model), so an
    engine that knows nothing of LoRA samples what the learner would."""
    from coachlm.models.lora import PeftModel, lora_view

    if not isinstance(model, PeftModel):
        return {k: v.detach() for k, v in model.state_dict().items()}
    with lora_view(model, "merged"):
        return {k: v.detach() for k, v in model.get_base_model().state_dict().items()}


def make_generator(name: Literal["builtin", "vllm"], model: Any, tokenizer: Any,
                   **engine_options: Any) -> Generator | None:
    """The engine `name` for `model`; None for "builtin" (callers then sample the live model).
    "vllm" where vLLM is not installed is a CoachError (one line, exit 2)."""
    if not check_generator(name):
        return None
    from coachlm.rollout.vllm_engine import VLLMGenerator

    return VLLMGenerator(model, tokenizer, **engine_options)


def check_generator(name: str) -> bool:
    """Whether `name` is an engine other than the built-in one; a CoachError when it is unknown
    or not installed here (called before a command loads anything)."""
    if name == "builtin":
        return False
    if name != "vllm":
        raise CoachError(f"unknown generator {name!r}: builtin or vllm")
    from coachlm.rollout.vllm_engine import require_vllm

    require_vllm()
    return True
