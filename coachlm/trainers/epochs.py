"""Training length given in epochs, shared by the trainers whose configs take `epochs` (SFT,
DPO, reward models)."""

from __future__ import annotations

import dataclasses
import math

from coachlm.errors import CoachError
from coachlm.engine.config import TrainConfig


def steps_for_epochs(train: TrainConfig, epochs: float | None, batches_per_epoch: int,
                     processes: int = 1) -> TrainConfig:
    """`train` with `max_steps` set to the optimizer steps that `epochs` passes over
    `batches_per_epoch` micro-batches take (`grad_accum` micro-batches a step in each of
    `processes`, at least one step); `train` itself when `epochs` is None."""
    if epochs is None:
        return train
    steps = max(1, math.ceil(epochs * batches_per_epoch / (train.grad_accum * processes)))
    try:
        return dataclasses.replace(train, max_steps=steps)
    except ValueError as e:  # e.g. warm-up no longer shorter than the run
        raise CoachError(f"epochs={epochs} gives {steps} steps: train: {e}") from None
