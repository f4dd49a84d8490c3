"""Tiny Llama configurations for the built-in world, built from scratch (nothing downloaded).

A preset fixes the shape of the network; the vocabulary and the special-token ids come from the
tokenizer. Dropout is off everywhere: the RLHF recipe needs identical forward passes for the
policy and its reference (Huang et al., 2023, "The N Implementation Details of RLHF with PPO").
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from coachlm.errors import CoachError
from coachlm.models.fast_ops import use_fast_ops

# Shape settings a preset (or a custom dict) may set; anything else is a typo.
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rope_theta",
              "tie_word_embeddings", "rms_norm_eps", "initializer_range")

PRESETS: dict[str, dict[str, Any]] = {
    # For tests: about 100k parameters with a 2k vocabulary (most of them in the embedding).
    "world-tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256),
    # The demo model: about 2.2M parameters with a 2k vocabulary. Measured on two shared CPU
    # cores, forward+backward runs at about 10k tokens/s in fp32, so pretraining on 3M tokens
    # takes about five minutes. (bf16 autocast is slower on CPUs without AMX.)
    "world-small": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                        num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256),
    # A larger option, about 3.7M parameters: roughly half the speed of world-small.
    "world-base": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256),
    # Real shapes for speed work (issue 15): about 25M parameters, 6 layers x 512, head dim 64,
    # MLP 4x. Meant for the 512-entry vocabulary of VOCAB_SIZES, so that the matmuls of the
    # blocks, not the LM head, dominate, as they do in larger models.
    "world-25m": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512),
}

# The tokenizer size each preset is meant for (2048 unless listed).
VOCAB_SIZES: dict[str, int] = {"world-25m": 512}


def preset_vocab_size(preset: str) -> int:
    """The BPE vocabulary size a preset is meant to be paired with (see `train_tokenizer`)."""
    preset_config(preset)  # an unknown name is a CoachError
    return VOCAB_SIZES.get(preset, 2048)


def preset_config(preset: str | Mapping[str, Any]) -> dict[str, Any]:
    """The shape settings of a preset name, or of a dict (optionally `{"preset": name, ...}`)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise CoachError(f"unknown model preset '{preset}' "
                             f"(valid presets: {', '.join(PRESETS)})")
        return dict(PRESETS[preset])
    settings = dict(preset)
    base = preset_config(settings.pop("preset")) if "preset" in settings else {}
    unknown = sorted(set(settings) - set(SHAPE_KEYS))
    if unknown:
        raise CoachError(f"unknown model setting '{unknown[0]}' "
                         f"(valid: preset, {', '.join(SHAPE_KEYS)})")
    return {**base, **settings}


def build_model(preset: str | Mapping[str, Any], tokenizer: Any,
                seed: int | None = None) -> LlamaForCausalLM:
    """A freshly initialized LlamaForCausalLM of the preset's shape, sized to `tokenizer`.

    `seed` makes the initialization reproducible without touching the global RNG state.
    """
    shape = preset_config(preset)
    rope_theta = shape.pop("rope_theta", 10000.0)
    shape.setdefault("tie_word_embeddings", True)
    shape.setdefault("num_key_value_heads", shape.get("num_attention_heads"))
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise CoachError(f"hidden_size {shape['hidden_size']} is not divisible by "
                         f"num_attention_heads {shape['num_attention_heads']}")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise CoachError("the tokenizer needs a pad token distinct from EOS")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
        **shape,
    )
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    use_fast_ops(model)  # fewer operators per block, exact in fp32 (models.fast_ops)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
