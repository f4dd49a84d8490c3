"""The labeler interface: Sample groups in, canonical feedback records out.

A `SampleGroup` is one prompt with the 2..K policy samples to judge. A `Labeler` turns a list
of groups into Comparison / Ranking / Rating records (`coachlm.data.schema`) with full
provenance: `source` (human | ai | simulated), `labeler` (an id), each response's model and
version (kept from the samples), `time_spent_s`, and in `meta` the cost (`meta["cost"]`, in the
store's currency; absent on simulated labels, which are free), the ids of the judged samples and, for AI labels, the
principle id and the soft label (`meta["principle"]`, `meta["probability"]`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, runtime_checkable

from coachlm.data.schema import Prompt, Record, Response, Sample, Source
from coachlm.errors import CoachError

FeedbackKind = Literal["comparisons", "rankings", "ratings"]
FEEDBACK_KINDS = ("comparisons", "rankings", "ratings")


@dataclass(frozen=True)
class SampleGroup:
    """One prompt and the samples of it to judge (each keeps its model and version)."""

    prompt: Prompt
    samples: tuple[Sample, ...]

    @property
    def responses(self) -> tuple[Response, ...]:
        return tuple(s.response for s in self.samples)

    def pairs(self) -> list[tuple[Sample, Sample]]:
        """Every unordered pair of samples, in sample order: (0,1), (0,2), ..., (K-2,K-1)."""
        return [(x, y) for i, x in enumerate(self.samples) for y in self.samples[i + 1:]]


def group_samples(samples: Sequence[Sample], min_size: int = 1) -> list[SampleGroup]:
    """Samples grouped by prompt (the whole conversation), groups and samples in first-seen
    order; groups with fewer than `min_size` samples are dropped."""
    groups: dict[Prompt, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.prompt].append(s)
    return [SampleGroup(p, tuple(g)) for p, g in groups.items() if len(g) >= min_size]


def flatten(groups: Sequence[SampleGroup]) -> list[Sample]:
    return [s for g in groups for s in g.samples]


def check_kind(kind: str) -> FeedbackKind:
    if kind not in FEEDBACK_KINDS:
        raise CoachError(f"feedback kind must be one of {', '.join(FEEDBACK_KINDS)}, got {kind!r}")
    return kind  # type: ignore[return-value]


@runtime_checkable
class Labeler(Protocol):
    """Anything that labels Sample groups: `records = labeler.label(groups)`.

    `id` names the labeler (or the pool) and `source` says what it is. `label` returns canonical
    records; it may block (the store labeler waits for people), and it never mutates `groups`.
    """

    id: str
    source: Source

    def label(self, groups: Sequence[SampleGroup]) -> list[Record]: ...


def label_samples(labeler: Labeler, samples: Sequence[Sample]) -> list[Record]:
    """Group `samples` by prompt and label the groups that have at least two samples."""
    return labeler.label(group_samples(samples, min_size=2))
