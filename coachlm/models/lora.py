"""LoRA adapters via peft (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

With LoRA only ~1% of the weights train, and the reference policy of RLHF is the same network
with the adapter switched off (`adapter_disabled`): no second copy of the model in memory.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from coachlm.errors import CoachError

# All attention and MLP projections: adapting every linear layer works best (Dettmers et al.,
# 2023, QLoRA). Qwen2 and Mistral use the Llama names.
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")


@dataclass(frozen=True)
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # off: policy and reference forward passes must be deterministic
    target_modules: tuple[str, ...] | None = None  # None: chosen from the architecture

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def default_targets(model: torch.nn.Module) -> tuple[str, ...]:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    return GPT2_TARGETS if model_type == "gpt2" else LLAMA_TARGETS


def apply_lora(model: torch.nn.Module, cfg: LoRAConfig) -> PeftModel:
    """Wrap `model` with fresh LoRA adapters (B = 0, so the output is unchanged at first)."""
    targets = cfg.target_modules or default_targets(model)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if not names & set(targets):
        raise CoachError(f"none of the LoRA target modules {list(targets)} exist in this "
                         f"{type(model).__name__}; set lora.target_modules")
    peft_cfg = PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=[t for t in targets if t in names],
        # GPT-2 stores its projections as Conv1D, with the weight transposed.
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    return get_peft_model(model, peft_cfg)


def trainable_fraction(model: torch.nn.Module) -> float:
    """Trainable parameters / all parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable / max(total, 1)


@contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """Run the base model (the RLHF reference policy) by switching the LoRA adapter off."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"adapter_disabled needs a peft LoRA model, got {type(model).__name__}; "
                        "without LoRA the reference policy must be a separate frozen copy")
    with model.disable_adapter():
        yield model


def merge_lora(model: PeftModel) -> torch.nn.Module:
    """Fold the adapter into the base weights and return the plain model (in place)."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"merge_lora needs a peft LoRA model, got {type(model).__name__}")
    return model.merge_and_unload()
