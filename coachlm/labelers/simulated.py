"""The built-in world's simulated labelers behind the labeler interface.

A pool of `n_labelers` simulated labelers (`coachlm.world.labelers`: the rubric plus noise and
per-labeler bias, ~73% agreement) ranks each group, compares every pair of it, or rates each
sample. Rankings and comparisons are exactly the records `world.simulate_rankings` /
`world.simulate_comparisons` make from the same samples and seed (the demo's feedback stage),
so swapping the direct call for this labeler changes no record (for the same reason they carry
no `meta["cost"]`: simulated labels are free).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from coachlm.data.schema import Record, Source
from coachlm.labelers.base import FeedbackKind, SampleGroup, check_kind, flatten
from coachlm.world.calibrate import LabelerConfig
from coachlm.world.labelers import make_labelers, simulate_comparisons, simulate_rankings


@dataclass(frozen=True)
class SimulatedConfig:
    kind: FeedbackKind = "rankings"
    n_labelers: int = 3
    per_item: int = 1  # distinct labelers judging each item
    seed: int = 0
    population: LabelerConfig = field(default_factory=LabelerConfig)

    def __post_init__(self) -> None:
        check_kind(self.kind)
        if not 1 <= self.per_item <= self.n_labelers:
            raise ValueError("per_item must be between 1 and n_labelers")


class SimulatedLabelers:
    """`label(groups)`: simulated feedback of `cfg.kind` on every group of >= 2 samples
    (ratings: every sample). Deterministic given the config and the groups."""

    source: Source = "simulated"

    def __init__(self, cfg: SimulatedConfig = SimulatedConfig()):
        self.cfg = cfg
        self.id = f"sim-pool-{cfg.seed}"

    def label(self, groups: Sequence[SampleGroup]) -> list[Record]:
        cfg = self.cfg
        samples = flatten([g for g in groups if len(g.samples) >= 2 or cfg.kind == "ratings"])
        if cfg.kind == "rankings":
            records: list[Record] = list(simulate_rankings(
                samples, n_labelers=cfg.n_labelers, per_item=cfg.per_item, seed=cfg.seed,
                cfg=cfg.population))
        elif cfg.kind == "comparisons":
            records = list(simulate_comparisons(
                samples, n_labelers=cfg.n_labelers, per_item=cfg.per_item, seed=cfg.seed,
                cfg=cfg.population))
        else:
            records = self._ratings(samples)
        return records

    def _ratings(self, samples: Sequence) -> list[Record]:
        pool = make_labelers(self.cfg.n_labelers, self.cfg.seed, self.cfg.population)
        rng = random.Random(f"{self.cfg.seed}:assign")
        return [lab.rate(s.prompt, s.response, meta={"sample_ids": [s.id]})
                for s in samples for lab in rng.sample(pool, self.cfg.per_item)]
