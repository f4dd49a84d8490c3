"""Training checkpoints that resume *exactly*: same weights, optimizer moments, RNG streams and
data position, so an interrupted run finishes with bit-identical weights.

Layout: `out_dir/checkpoints/step-000120/` with
  model.pt      trainable parameters only (a LoRA run stores its adapter, not the frozen base,
                which the trainer rebuilds from its config)
  state.pt      optimizer state, step, token and time counters, batch-source state, RNG states
                of python `random`, numpy and torch.
A checkpoint is written to a hidden temporary directory and renamed into place, and rename is
atomic, so a process killed mid-write never leaves a half checkpoint that looks complete.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from coachlm.errors import CoachError

_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch, in types that `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out_dir: Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: Mapping[str, Any],
                    keep: int) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep`."""
    root = checkpoint_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(trainable_state(model), tmp / "model.pt")
    torch.save({**state, "step": step, "optimizer": optimizer.state_dict(), "rng": rng_state()},
               tmp / "state.pt")
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG states in place; return the rest of the saved state."""
    weights = torch.load(path / "model.pt", weights_only=True)
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        diff = sorted(set(weights) ^ expected)
        raise CoachError(f"checkpoint {path} does not match the model's trainable parameters "
                         f"(first difference: {diff[0]}); was the model or LoRA config changed?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    set_rng_state(state.pop("rng"))
    return state


def check_resume_settings(ckpt: Path, saved: Mapping[str, Any], cfg: Any, keys: tuple[str, ...],
                          prefix: str = "") -> None:
    """Refuse to resume from `ckpt` when a setting that fixes the data order or the update
    (`keys` of `cfg`) differs from the one the checkpoint was saved with."""
    for key in keys:
        if saved[key] != getattr(cfg, key):
            raise CoachError(f"cannot resume from {ckpt}: {prefix}{key} was {saved[key]!r}, now "
                             f"{getattr(cfg, key)!r}; use the same value or a new output directory")
