"""LoRA settings (Hu et al., 2021), apart from `models.lora`, which loads torch and peft."""

from __future__ import annotations

from dataclasses import dataclass


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
