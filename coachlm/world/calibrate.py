"""Calibrating simulated labelers: from a target inter-labeler agreement to their noise.

Under the Thurstone model of `labelers.py`, a labeler with length bias beta and position bias pi
judging a pair whose rubric utilities differ by d and length features by dl, shown in order o
(+1: a first, -1: b first), perceives

    D = d + beta * dl + pi * o + N(0, 2 noise^2)

and says "a" when D > tau, "b" when D < -tau, else "tie". Two labelers agree on an item with
probability sum_c P1(c) P2(c). Averaged over a population of labelers and the world's typical
comparison mix (`degrade.make_pairs`), that expected agreement falls monotonically with the
noise; `noise_for_agreement` inverts it by bisection. The default target 0.73 is the agreement
InstructGPT reports among its training labelers, 72.6 +- 1.5% (Ouyang et al., 2022, sec. 5.1).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

from coachlm.world.degrade import make_pairs
from coachlm.world.rubric import score

CALIBRATION_PAIRS = 600  # size of the reference mix
CALIBRATION_LABELERS = 32  # size of the reference population


@dataclass(frozen=True)
class LabelerConfig:
    """The population of simulated labelers."""

    agreement: float = 0.73  # pairwise agreement to reproduce (sets the noise)
    length_bias_mean: float = 0.04  # utility per unit of length feature (log words / log 100)
    length_bias_std: float = 0.04
    position_bias_mean: float = 0.02  # utility bonus of the response shown first
    position_bias_std: float = 0.02
    leniency_std: float = 0.05  # rating offset
    tie_threshold: float = 0.01
    seconds_per_item: float = 15.0  # median time on a comparison, before reading time
    seconds_per_word: float = 0.25

    def __post_init__(self) -> None:
        if not 0.5 < self.agreement < 1.0:
            raise ValueError("agreement must be in (0.5, 1)")
        if min(self.tie_threshold, self.length_bias_std, self.position_bias_std,
               self.leniency_std) < 0:
            raise ValueError("tie_threshold and bias spreads must be >= 0")


def length_feature(text: str) -> float:
    """log(1 + words) / log(100): about 0.4 for 5 words, 1 for 100."""
    return math.log1p(len(text.split())) / math.log(100)


def draw_biases(rng: random.Random, cfg: LabelerConfig) -> dict[str, float]:
    """One labeler's biases, drawn from the population."""
    return {"length_bias": rng.gauss(cfg.length_bias_mean, cfg.length_bias_std),
            "position_bias": rng.gauss(cfg.position_bias_mean, cfg.position_bias_std),
            "leniency": rng.gauss(0.0, cfg.leniency_std),
            "speed": math.exp(rng.gauss(0.0, 0.3))}


@functools.lru_cache(maxsize=4)
def reference_items(n: int = CALIBRATION_PAIRS, seed: int = 0) -> tuple[tuple[float, float], ...]:
    """(utility difference, length-feature difference) of each pair of the reference mix."""
    out = []
    for prompt, a, b in make_pairs(n, seed):
        d = score(prompt, a.text).total - score(prompt, b.text).total
        out.append((d, length_feature(a.text) - length_feature(b.text)))
    return tuple(out)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _choice_probs(d: float, dl: float, beta: float, pi: float, noise: float,
                  tau: float) -> tuple[float, float, float]:
    """(P(a), P(tie), P(b)) of one labeler on one item, averaged over the two shown orders."""
    s = max(noise, 1e-9) * math.sqrt(2.0)
    pa = pb = 0.0
    for order in (1.0, -1.0):
        mu = d + beta * dl + pi * order
        pa += 0.5 * (1.0 - _phi((tau - mu) / s))
        pb += 0.5 * _phi((-tau - mu) / s)
    return pa, 1.0 - pa - pb, pb


def expected_agreement(noise: float, cfg: LabelerConfig,
                       items: Sequence[tuple[float, float]] | None = None) -> float:
    """Mean over the reference population's labeler pairs and items of P(same choice)."""
    items = reference_items() if items is None else items
    rng = random.Random("calibration-population")
    pop = [draw_biases(rng, cfg) for _ in range(CALIBRATION_LABELERS)]
    k, total = len(pop), 0.0
    for d, dl in items:
        probs = [_choice_probs(d, dl, p["length_bias"], p["position_bias"], noise,
                               cfg.tie_threshold) for p in pop]
        for c in range(3):
            s = sum(p[c] for p in probs)
            q = sum(p[c] ** 2 for p in probs)
            total += (s * s - q) / (k * (k - 1))  # mean over distinct pairs of P_i(c) P_j(c)
    return total / len(items)


@functools.lru_cache(maxsize=32)
def noise_for_agreement(cfg: LabelerConfig = LabelerConfig()) -> float:
    """The noise at which the population agrees on `cfg.agreement` of the reference mix."""
    lo, hi = 1e-3, 3.0
    top, bottom = expected_agreement(lo, cfg), expected_agreement(hi, cfg)
    if not bottom <= cfg.agreement <= top:
        raise ValueError(f"agreement {cfg.agreement} is out of reach for these labeler biases "
                         f"(reachable: {bottom:.3f} to {top:.3f})")
    for _ in range(30):
        mid = math.sqrt(lo * hi)  # bisect on a log scale: noise spans three decades
        if expected_agreement(mid, cfg) > cfg.agreement:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def measure_agreement(labelers: Sequence[Any], pairs: Sequence[tuple[Any, Any, Any]]) -> float:
    """Empirical agreement: the fraction of items on which two labelers make the same choice
    ("a", "b" or "tie"), averaged over all pairs of `labelers`; `pairs` are (prompt, a, b)."""
    choices = [[lab.compare(p, a, b).choice for p, a, b in pairs] for lab in labelers]
    rates = [sum(x == y for x, y in zip(c1, c2)) / len(pairs)
             for c1, c2 in itertools.combinations(choices, 2)]
    return sum(rates) / len(rates)
