"""Runs inside vLLM's worker process (named by `VLLMGenerator` as vLLM's `worker_extension_cls`,
whose methods `LLM.collective_rpc` calls): loads the learner's weights into the engine's model.

Importing this module must not import vLLM (it is also imported by the worker before it is
mixed into vLLM's worker class)."""

from __future__ import annotations

from typing import Any, Sequence


class WeightSync:
    """Mixed into vLLM's worker: `self.model_runner` is the worker's model runner."""

    def load_coachlm_weights(self, weights: Sequence[tuple[str, Any]]) -> int:
        """Copy (Hugging Face name, tensor) pairs into the model with its own `load_weights`
        (which maps names to vLLM's fused layers, e.g. q/k/v into one qkv projection). Returns
        how many tensors it took."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        device = next(model.parameters()).device
        loaded = model.load_weights(weights=((n, t.to(device)) for n, t in weights))
        return len(loaded) if loaded is not None else len(weights)
