"""Win rates as win / tie / loss counts with a bootstrap confidence interval, and the dev/test
split of held-out prompts.

A win rate alone hides how many comparisons were ties and how uncertain it is: 76% of 250
prompts is 76 +- 5 points. The interval is the percentile bootstrap over prompts (Efron &
Tibshirani, 1993, ch. 13): resample the per-prompt outcomes with replacement, recompute the
rate, take the 2.5th and 97.5th percentiles.

Settings chosen by looking at held-out numbers make those numbers optimistic, so held-out
prompts are split into a dev set (for choosing settings) and a test set (for reporting), half
and half within each task family, by a hash of the prompt id (stable under any reordering).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any, Sequence, TypeVar

import numpy as np

from coachlm.data.schema import PromptRecord

P = TypeVar("P", bound=PromptRecord)


def outcome(ours: float, theirs: float) -> float:
    """1 for a win, 0.5 for a tie, 0 for a loss."""
    return 1.0 if ours > theirs else 0.5 if ours == theirs else 0.0


def win_tie_loss(outcomes: Sequence[float], rounds: int = 1000, ci: float = 0.95,
                 seed: int = 0) -> dict[str, Any]:
    """Counts, the win rate (ties count half) and its percentile-bootstrap interval."""
    x = np.asarray(outcomes, dtype=float)  # (n,) 1 / 0.5 / 0
    n = len(x)
    out: dict[str, Any] = {"n": n, "wins": int((x == 1).sum()), "ties": int((x == 0.5).sum()),
                           "losses": int((x == 0).sum()), "rate": float(x.mean()) if n else 0.0}
    if n == 0 or rounds == 0:
        out["lo"] = out["hi"] = out["rate"]
        return out
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, (rounds, n))].mean(axis=1)  # (rounds,)
    alpha = (1 - ci) / 2 * 100
    lo, hi = np.percentile(means, [alpha, 100 - alpha])
    return {**out, "lo": float(lo), "hi": float(hi)}


def fmt(w: dict[str, Any]) -> str:
    """`76.0% [70.4, 81.2] (W/T/L 180/20/50)`."""
    return (f"{w['rate']:.1%} [{w['lo']:.1%}, {w['hi']:.1%}] "
            f"(W/T/L {w['wins']}/{w['ties']}/{w['losses']})")


def _rank(p: PromptRecord) -> str:
    return hashlib.sha256(f"split:{p.id}".encode()).hexdigest()


def split_dev_test(prompts: Sequence[P], test_fraction: float = 0.5) -> tuple[list[P], list[P]]:
    """(dev, test): within each family, the prompts whose id hashes lowest go to test."""
    by_family: dict[str, list[P]] = defaultdict(list)
    for p in prompts:
        by_family[str(p.meta.get("family", ""))].append(p)
    test_ids: set[str] = set()
    for group in by_family.values():
        k = int(len(group) * test_fraction + 0.5)  # half up: one prompt goes to test
        test_ids |= {p.id for p in sorted(group, key=_rank)[:k]}
    return ([p for p in prompts if p.id not in test_ids], [p for p in prompts if p.id in test_ids])
