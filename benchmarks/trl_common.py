"""TRL TrainingArguments shared by the `*_vs_trl.py` benchmarks: one place for the settings that
keep each comparison fair (CPU or GPU as coachlm, no checkpoints, no reporting, no gradient
checkpointing, no dataloader workers, no progress bars) and for the usual optimizer settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def trl_args(root: Path, steps: int, batch_size: int, lr: float, precision: str,
             **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a TRL config class; `overrides` win (e.g. scheduler, betas)."""
    common = dict(
        output_dir=str(root / "trl"), max_steps=steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, learning_rate=lr, lr_scheduler_type="cosine",
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=1.0, bf16=precision == "bf16", fp16=False,
        use_cpu=not torch.cuda.is_available(), seed=0, data_seed=0, save_strategy="no",
        report_to="none", gradient_checkpointing=False, dataloader_num_workers=0,
        dataloader_pin_memory=False, disable_tqdm=True)
    return {**common, **overrides}
