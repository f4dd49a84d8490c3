"""Writing a run's final model once, whatever the number of processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coachlm.engine.accel import Engine
from coachlm.models.load import save_pretrained


def save_final(engine: Engine, model: Any, tokenizer: Any, out: Path) -> Path:
    """The main process saves (HF format; LoRA merged, adapter in `adapter/`); every process
    returns once the files are complete."""
    with engine.full_params():  # FSDP / ZeRO-3: the whole weights, on every process
        if engine.is_main:
            save_pretrained(model, tokenizer, out)
    engine.barrier()
    return out
