"""A seeded held-out split by prompt, shared by the reward-model and DPO trainers.

Items are keyed by their *full* prompt (before any truncation): truncation fits each prompt to
its own group's or pair's longest response, so one prompt can have several truncated forms, and
a split by truncated ids could put one prompt on both sides.
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

import numpy as np

from coachlm.errors import CoachError


def held_out(keys: Sequence[Hashable], val_fraction: float, seed: int
             ) -> tuple[list[bool], str | None]:
    """Which items (by prompt key, one per item) are held out, and a note when none can be.

    A seeded `val_fraction` of the distinct prompts (at least one when the fraction is > 0) is
    held out with all their items. Data of a single prompt cannot be split: it all trains and
    the note says there is no validation split. A fraction that would hold out every prompt of
    several is an error.
    """
    prompts = list(dict.fromkeys(keys))
    n_val = math.ceil(len(prompts) * val_fraction) if val_fraction > 0 else 0
    if n_val and len(prompts) == 1:
        return [False] * len(keys), (f"one prompt only: no validation split (val_fraction "
                                      f"{val_fraction} needs at least 2 prompts); training on all")
    if n_val >= len(prompts):
        raise CoachError(f"val_fraction {val_fraction} leaves no training prompts of {len(prompts)}")
    order = np.random.default_rng(seed).permutation(len(prompts))
    held = {prompts[i] for i in order[:n_val]}
    return [k in held for k in keys], None
