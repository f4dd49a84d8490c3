"""Training checkpoints that resume *exactly*: same weights, optimizer moments, RNG streams and
data position, so an interrupted run finishes with bit-identical weights -- on any number of
processes, sharded (FSDP) or not.

Layout: `out_dir/checkpoints/step-000120/` with
  weights/      the trainable parameters (a LoRA run stores its adapter, not the frozen base,
                which the trainer rebuilds from its config) and the optimizer state, both keyed
                by parameter name, in torch.distributed.checkpoint (DCP) format: under FSDP each
                process writes its own shard; whole tensors (one process, DDP) are written once.
                DCP reads a checkpoint into whatever layout the loading run has, so a run
                written by 2 FSDP processes resumes in 1 plain process and vice versa.
  state.pt      step, token and time counters, batch-source state, RNG states of python
                `random`, numpy and torch (the main process's; every process resumes with them).
A checkpoint is written to a hidden temporary directory and renamed into place, and rename is
atomic, so a process killed mid-write never leaves a half checkpoint that looks complete. All
processes of a run must see the same `out_dir` (one machine, or a shared filesystem).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

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


def _state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """{"model": trainable parameters, "optimizer": its state}, keyed by parameter name (sharded
    tensors under FSDP), as DCP saves and loads them; gives an optimizer that has not stepped
    yet its (zero) state, so that a load has tensors to read into."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer,
                                        options=StateDictOptions(ignore_frozen_params=True))
    # ignore_frozen_params drops a frozen tensor under its first name only (torch 2.13): a
    # LoRA model's LM head, tied to the frozen embedding, would still be stored as lm_head.
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    return {"model": {k: v for k, v in model_sd.items() if k in trainable}, "optimizer": optim_sd}


@contextlib.contextmanager
def _one_process_quiet() -> Iterator[None]:
    """DCP warns on every save and load without a process group that it assumes one process:
    that is a plain run here, not a mistake."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_checkpoint(out_dir: Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: Mapping[str, Any], keep: int,
                    is_main: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep`.

    With several processes every one calls this (DCP's save is collective); `is_main` marks
    the one that writes state.pt and renames, `barrier` waits for all of them."""
    import torch.distributed.checkpoint as dcp

    root = checkpoint_dir(out_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    # DCP's writer fsyncs its files; its save returns on the main process (the coordinator)
    # only after every process has written its part and the main one the metadata.
    with _one_process_quiet():
        dcp.save(_state_dicts(model, optimizer), checkpoint_id=tmp / "weights")
    if is_main:
        torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
        with (tmp / "state.pt").open("rb") as fh:  # data on disk before the rename shows it
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
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
    """Restore weights, optimizer and RNG states in place (every process of a run calls it, on
    the model and optimizer as prepared for the run); return the rest of the saved state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if not (path / "weights").is_dir():
        raise CoachError(f"checkpoint {path} has no weights/ (written by an older coachlm, or "
                         "incomplete); resume from a newer checkpoint or start a new run")
    sd = _state_dicts(model, optimizer)
    saved = dcp.FileSystemReader(path / "weights").read_metadata().state_dict_metadata
    names = {k[len("model."):] for k in saved if k.startswith("model.")}
    if names != set(sd["model"]):
        diff = sorted(names ^ set(sd["model"]))
        raise CoachError(f"checkpoint {path} does not match the model's trainable parameters "
                         f"(first difference: {diff[0]}); was the model or LoRA config changed?")
    with _one_process_quiet():
        dcp.load(sd, checkpoint_id=path / "weights")
    # strict=False: the frozen weights are not in the checkpoint (the names were checked above)
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"],
                   options=StateDictOptions(strict=False))
    state = torch.load(path / "state.pt", weights_only=True)
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
