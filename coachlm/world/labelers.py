"""Simulated labelers: the rubric plus noise and per-labeler bias, writing canonical records.

Each labeler perceives a response's utility as

    v = rubric total + length_bias * len_feature + position_bias * [shown first] + eps,
    eps ~ N(0, noise^2)

(a Thurstone Case V model of paired comparison, Thurstone 1927), prefers the response with the
larger v, and calls a tie when |v_a - v_b| <= tie_threshold. Rankings sort by v, ratings map v
to a Likert score (plus a leniency offset). Biases are drawn per labeler from LabelerConfig,
mimicking the length preference (Singhal et al., 2023) and position bias of real labelers.

A single knob, `LabelerConfig.agreement`, sets the noise: `noise_for_agreement` finds the noise
at which two labelers drawn from the population agree on that fraction of the world's typical
comparison mix (`degrade.make_pairs`). The default 0.73 reproduces the 72.6 +- 1.5% agreement
among InstructGPT's training labelers (Ouyang et al., 2022, sec. 5.1 and appendix B.2).
"""

from __future__ import annotations

import functools
import math
import random
import uuid
from collections import defaultdict
from typing import Sequence

from coachlm.data.schema import Comparison, Prompt, Ranking, Rating, Response, Sample, as_prompt
from coachlm.world.calibrate import (LabelerConfig, draw_biases, length_feature,
                                     noise_for_agreement)
from coachlm.world.degrade import margin_level
from coachlm.world.rubric import PARTS, score

_FLAGS = dict(zip(PARTS, ("incorrect", "ignores_instruction", "does_not_stop", "harmful",
                          "verbose")))


@functools.lru_cache(maxsize=1 << 16)
def _utility(prompt_text: str, text: str) -> float:
    """The rubric total (cached: a pool of labelers judges the same pairs)."""
    return score(prompt_text, text).total


def _new_id(rng: random.Random) -> str:
    return uuid.UUID(int=rng.getrandbits(128)).hex


class SimulatedLabeler:
    """One simulated labeler; deterministic given (id, seed) and the order of calls."""

    def __init__(self, id: str, seed: int = 0, noise: float | None = None,
                 length_bias: float = 0.0, position_bias: float = 0.0, leniency: float = 0.0,
                 tie_threshold: float = 0.01, speed: float = 1.0,
                 cfg: LabelerConfig = LabelerConfig()):
        self.id, self.cfg = id, cfg
        self.noise = noise_for_agreement(cfg) if noise is None else noise
        self.length_bias, self.position_bias = length_bias, position_bias
        self.leniency, self.tie_threshold, self.speed = leniency, tie_threshold, speed
        self.rng = random.Random(f"{seed}:{id}")

    def __repr__(self) -> str:
        return (f"SimulatedLabeler({self.id!r}, noise={self.noise:.3f}, "
                f"length_bias={self.length_bias:.3f}, position_bias={self.position_bias:.3f})")

    def _perceive(self, prompt: Prompt, text: str, first: float = 0.0) -> float:
        u = _utility(prompt[-1].content, text)
        return (u + self.length_bias * length_feature(text) + self.position_bias * first
                + self.rng.gauss(0.0, self.noise))

    def _seconds(self, base: float, texts: Sequence[str]) -> float:
        words = sum(len(t.split()) for t in texts)
        median = self.speed * (base + self.cfg.seconds_per_word * words)
        return round(median * math.exp(self.rng.gauss(0.0, 0.5)), 1)

    def compare(self, prompt: str | Prompt, a: Response, b: Response,
                meta: dict | None = None) -> Comparison:
        prompt = as_prompt(prompt)
        order = self.rng.choice(("ab", "ba"))
        d = (self._perceive(prompt, a.text, float(order == "ab"))
             - self._perceive(prompt, b.text, float(order == "ba")))
        choice = "tie" if abs(d) <= self.tie_threshold else ("a" if d > 0 else "b")
        return Comparison(
            id=_new_id(self.rng), prompt=prompt, a=a, b=b, choice=choice,
            margin=None if choice == "tie" else margin_level(d), shown_order=order,
            labeler=self.id, source="simulated",
            time_spent_s=self._seconds(self.cfg.seconds_per_item, (a.text, b.text)),
            meta=dict(meta or {}))

    def rank(self, prompt: str | Prompt, responses: Sequence[Response],
             meta: dict | None = None) -> Ranking:
        """Rank K responses (1 = best); responses within tie_threshold share a rank."""
        prompt = as_prompt(prompt)
        k = len(responses)
        shown = self.rng.sample(range(k), k)
        first_bonus = {i: 1.0 - pos / max(k - 1, 1) for pos, i in enumerate(shown)}
        v = [self._perceive(prompt, r.text, first_bonus[i]) for i, r in enumerate(responses)]
        order = sorted(range(k), key=lambda i: -v[i])
        ranks = [0] * k
        for pos, i in enumerate(order):
            prev = order[pos - 1] if pos else None
            tied = prev is not None and v[prev] - v[i] <= self.tie_threshold
            ranks[i] = ranks[prev] if tied else pos + 1
        return Ranking(
            id=_new_id(self.rng), prompt=prompt, responses=tuple(responses), ranks=tuple(ranks),
            labeler=self.id, source="simulated",
            time_spent_s=self._seconds(self.cfg.seconds_per_item * (k - 1),
                                       [r.text for r in responses]),
            meta={**(meta or {}), "shown_order": shown})

    def rate(self, prompt: str | Prompt, response: Response, scale: int = 7,
             meta: dict | None = None) -> Rating:
        """A Likert score: perceived utility (plus leniency) mapped onto 1..scale."""
        prompt = as_prompt(prompt)
        rubric = score(prompt, response.text)
        v = self._perceive(prompt, response.text) + self.leniency
        value = 1 + round(min(max(v, 0.0), 1.0) * (scale - 1))
        flags = tuple(_FLAGS[p] for p, x in rubric.parts.items() if x < 1.0 and p in _FLAGS)
        critique = rubric.explanation.split(": ", 1)[-1] if flags else ""
        return Rating(
            id=_new_id(self.rng), prompt=prompt, response=response, score=value, scale=scale,
            flags=flags, critique=critique, labeler=self.id, source="simulated",
            time_spent_s=self._seconds(self.cfg.seconds_per_item * 0.7, (response.text,)),
            meta=dict(meta or {}))


def make_labelers(n: int, seed: int = 0, cfg: LabelerConfig = LabelerConfig()
                  ) -> list[SimulatedLabeler]:
    """A pool of `n` labelers with biases drawn from the population in `cfg`."""
    rng = random.Random(f"{seed}:labelers")
    noise = noise_for_agreement(cfg)
    return [SimulatedLabeler(f"sim-{seed}-{i}", seed=seed, noise=noise,
                             tie_threshold=cfg.tie_threshold, cfg=cfg, **draw_biases(rng, cfg))
            for i in range(n)]


def _groups(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Samples grouped by prompt, in first-seen order."""
    groups: dict[tuple, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[tuple((m.role, m.content) for m in s.prompt)].append(s)
    return list(groups.values())


def _meta(group: Sequence[Sample]) -> dict:
    first = group[0].meta
    meta = {k: first[k] for k in ("family", "task_id") if k in first}
    return {**meta, "sample_ids": [s.id for s in group]}


def simulate_comparisons(samples: Sequence[Sample], n_labelers: int = 3, per_item: int = 1,
                         seed: int = 0, cfg: LabelerConfig = LabelerConfig()
                         ) -> list[Comparison]:
    """Every pair of samples of each prompt, judged by `per_item` distinct labelers of a pool
    of `n_labelers` (responses keep their model and version)."""
    if not 1 <= per_item <= n_labelers:
        raise ValueError("per_item must be between 1 and n_labelers")
    pool = make_labelers(n_labelers, seed, cfg)
    rng = random.Random(f"{seed}:assign")
    out = []
    for group in _groups(samples):
        for x, y in ((x, y) for i, x in enumerate(group) for y in group[i + 1:]):
            for lab in rng.sample(pool, per_item):
                out.append(lab.compare(x.prompt, x.response, y.response, _meta((x, y))))
    return out


def simulate_rankings(samples: Sequence[Sample], n_labelers: int = 3, per_item: int = 1,
                      seed: int = 0, cfg: LabelerConfig = LabelerConfig()) -> list[Ranking]:
    """One K-wise ranking of each prompt's samples (prompts with >= 2 samples) per labeler."""
    if not 1 <= per_item <= n_labelers:
        raise ValueError("per_item must be between 1 and n_labelers")
    pool = make_labelers(n_labelers, seed, cfg)
    rng = random.Random(f"{seed}:assign")
    return [lab.rank(group[0].prompt, [s.response for s in group], _meta(group))
            for group in _groups(samples) if len(group) >= 2
            for lab in rng.sample(pool, per_item)]
