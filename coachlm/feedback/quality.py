"""Quality of a project's labels: agreement per task kind, Cohen's kappa per pair of labelers,
each labeler's gold accuracy, agreement with the majority, time, cost and position bias.

What is compared: a comparison's choice; a rating's score (interval metric for alpha); a
ranking, pair by pair (each pair of ranked responses is one item: which is better, or a tie).
Demonstrations are free text and have no agreement measure here.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Hashable

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.feedback import agreement as ag
from coachlm.feedback.tables import Assignment, Label, Labeler, Project, Task


@dataclass(frozen=True)
class LabelRow:
    """One stored label with what export and quality need about its task and labeler."""

    client_id: str
    task_id: int
    kind: str
    answer: dict[str, Any]
    gold: dict[str, Any] | None
    labeler: str
    source: str
    shown_order: list[int]
    time_spent_s: float | None
    cost: float
    guideline_version: int | None
    created_at: datetime
    prompt_id: int
    response_ids: list[int]
    review: dict[str, Any] | None = None  # set by review.apply_reviews for the export


def load_labels(s: Session, project: Project) -> list[LabelRow]:
    rows = s.execute(select(Label, Task, Labeler.name, Labeler.source, Assignment.shown_order)
                     .join(Task, Label.task_id == Task.id)
                     .join(Labeler, Label.labeler_id == Labeler.id)
                     .join(Assignment, Label.assignment_id == Assignment.id)
                     .where(Task.project_id == project.id).order_by(Label.id))
    return [LabelRow(lb.client_id, t.id, t.kind, lb.answer, t.gold, name, source, list(shown),
                     lb.time_spent_s, lb.cost, lb.guideline_version, lb.created_at, t.prompt_id,
                     list(t.response_ids))
            for lb, t, name, source, shown in rows]


def _pair_value(ranks: list[int | None], i: int, j: int) -> str | None:
    ri, rj = ranks[i], ranks[j]
    if ri is None or rj is None:
        return None
    return "<" if ri < rj else ">" if ri > rj else "="


def values(row_kind: str, answer: dict[str, Any], task_id: int) -> list[tuple[Hashable, Hashable]]:
    """The (item, value) pairs that one label contributes to agreement statistics."""
    if row_kind == "comparison":
        return [(task_id, answer["choice"])]
    if row_kind == "rating":
        return [(task_id, answer["score"])]
    if row_kind == "ranking":
        ranks = answer["ranks"]
        out = []
        for i in range(len(ranks)):
            for j in range(i + 1, len(ranks)):
                v = _pair_value(ranks, i, j)
                if v is not None:
                    out.append(((task_id, i, j), v))
        return out
    return []


def gold_correct(kind: str, answer: dict[str, Any], gold: dict[str, Any]) -> bool:
    """A comparison must match the gold choice; a rating be within 1 point of it; a ranking
    order every pair that the gold ranking orders the same way."""
    if kind == "comparison":
        return answer["choice"] == gold["choice"]
    if kind == "rating":
        return abs(answer["score"] - gold["score"]) <= gold.get("tolerance", 1)
    if kind == "ranking":
        n = len(gold["ranks"])
        return all(_pair_value(answer["ranks"], i, j) == g
                   for i in range(n) for j in range(i + 1, n)
                   if (g := _pair_value(gold["ranks"], i, j)) is not None)
    return True


def by_item(rows: list[LabelRow], kind: str) -> dict[Hashable, dict[str, Hashable]]:
    out: dict[Hashable, dict[str, Hashable]] = defaultdict(dict)
    for r in rows:
        if r.kind == kind:
            for item, v in values(r.kind, r.answer, r.task_id):
                out[item][r.labeler] = v
    return out


@dataclass(frozen=True)
class KindAgreement:
    kind: str
    items: int  # items with at least two labels
    alpha: float  # Krippendorff's alpha
    fleiss: float  # Fleiss' kappa, NaN unless every such item has the same number of labels


@dataclass(frozen=True)
class LabelerQuality:
    name: str
    labels: int
    gold_correct: int
    gold_total: int
    majority_agree: int
    majority_total: int
    median_time_s: float
    cost: float
    first_rate: float  # share of decisive comparisons won by the response shown first


@dataclass(frozen=True)
class QualityReport:
    kinds: list[KindAgreement]
    pairs: list[tuple[str, str, float, int]]  # labeler, labeler, Cohen's kappa, shared items
    labelers: list[LabelerQuality]
    total_cost: float
    first_rate: float  # over all labelers; 0.5 means no position bias


def _kind_agreement(kind: str, items: dict[Hashable, dict[str, Hashable]]) -> KindAgreement:
    multi = [list(by.values()) for by in items.values() if len(by) >= 2]
    sizes = {len(x) for x in multi}
    fleiss = ag.fleiss_kappa(multi) if len(sizes) == 1 else ag.NAN
    alpha = ag.krippendorff_alpha(multi, "interval" if kind == "rating" else "nominal")
    return KindAgreement(kind, len(multi), alpha, fleiss)


def _first_wins(rows: list[LabelRow]) -> tuple[int, int]:
    first = decisive = 0
    for r in rows:
        if r.kind == "comparison" and r.answer["choice"] in ("a", "b"):
            decisive += 1
            first += "ab"[r.shown_order[0]] == r.answer["choice"]
    return first, decisive


def report(rows: list[LabelRow]) -> QualityReport:
    kinds, majority, pairs = [], {}, []
    for kind in ("comparison", "ranking", "rating"):
        items = by_item(rows, kind)
        if not items:
            continue
        kinds.append(_kind_agreement(kind, items))
        for name, (a, t) in ag.majority_agreement(items).items():
            prev = majority.get(name, (0, 0))
            majority[name] = (prev[0] + a, prev[1] + t)
        pairs += [(r1, r2, k, n) for (r1, r2), (k, n) in ag.pairwise_kappas(items).items()]
    per: dict[str, list[LabelRow]] = defaultdict(list)
    for r in rows:
        per[r.labeler].append(r)
    labelers = []
    for name, mine in sorted(per.items()):
        graded = [gold_correct(r.kind, r.answer, r.gold) for r in mine
                  if r.gold is not None and r.kind != "demonstration"]
        times = [r.time_spent_s for r in mine if r.time_spent_s is not None]
        first, decisive = _first_wins(mine)
        agree, total = majority.get(name, (0, 0))
        labelers.append(LabelerQuality(
            name, len(mine), sum(graded), len(graded), agree, total,
            statistics.median(times) if times else ag.NAN, sum(r.cost for r in mine),
            first / decisive if decisive else ag.NAN))
    first, decisive = _first_wins(rows)
    return QualityReport(kinds, pairs, labelers, sum(r.cost for r in rows),
                         first / decisive if decisive else ag.NAN)


def project_quality(s: Session, project: Project) -> QualityReport:
    return report(load_labels(s, project))
