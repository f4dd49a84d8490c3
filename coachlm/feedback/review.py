"""Review: a reviewer accepts a label, rejects it with a note the labeler sees, corrects it, or
adjudicates the item; and promotes an item to gold. Every verdict is a new `Review` row (an audit
trail: nothing is overwritten).

What the export makes of it (`apply_reviews`): a rejected label is left out; a corrected label is
exported with the reviewer's answer; an adjudicated item is exported once, with the adjudicated
answer under the reviewer's name, and `meta.review` lists the labels it replaced. The latest
verdict on a label counts. The queue puts gold misses first, then the least agreed items.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.feedback import items
from coachlm.feedback.agreement import item_agreement
from coachlm.feedback.db import NotFound, StoreError
from coachlm.feedback.labels import check_answer
from coachlm.feedback.quality import LabelRow, gold_correct
from coachlm.feedback.tables import Label, Labeler, Project, Review, Task

VERDICTS = ("accept", "reject", "correct", "adjudicate")


def add_review(s: Session, reviewer: Labeler, label_id: int, verdict: str, note: str = "",
               answer: dict[str, Any] | None = None) -> Review:
    """Record a verdict; `answer` (canonical terms) is required to correct or adjudicate."""
    if reviewer.role not in ("reviewer", "admin"):
        raise StoreError("reviewing needs the reviewer or admin role")
    if verdict not in VERDICTS:
        raise StoreError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    label = s.get(Label, label_id)
    if label is None:
        raise NotFound(f"no label {label_id}")
    if verdict == "reject" and not note.strip():
        raise StoreError("a rejection needs a note for the labeler")
    checked = None
    if verdict in ("correct", "adjudicate"):
        task = s.get(Task, label.task_id)
        project = s.get(Project, task.project_id)
        checked = check_answer(task.kind, answer, len(task.response_ids), project.rating_scale,
                               project.flags)
    review = Review(label_id=label.id, reviewer_id=reviewer.id, verdict=verdict,
                    note=note.strip()[:5000], answer=checked)
    s.add(review)
    s.flush()
    return review


def promote_to_gold(s: Session, task_id: int, answer: dict[str, Any] | None) -> Task:
    """Make the item gold with `answer` (canonical), or unmark it (None)."""
    task = s.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    items.set_gold(s, task, answer)
    return task


def majority_answer(s: Session, task_id: int) -> dict[str, Any] | None:
    """The item's most common answer among its labels (by choice, ranks or score; the earliest
    label wins a tie), as the gold answer a one-click toggle marks; None without labels or for
    an ideal response, whose gold needs a written answer."""
    task = s.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    if task.kind == "demonstration":
        return None
    answers = list(s.scalars(select(Label.answer).where(Label.task_id == task_id)
                             .order_by(Label.id)))
    if not answers:
        return None
    keys = [json.dumps([a.get(k) for k in ("choice", "ranks", "score")]) for a in answers]
    best = max(keys, key=lambda k: (keys.count(k), -keys.index(k)))
    return answers[keys.index(best)]


def latest_reviews(s: Session, label_ids: Sequence[int]) -> dict[int, tuple[Review, str]]:
    """label id -> (its latest review, the reviewer's name)."""
    out: dict[int, tuple[Review, str]] = {}
    for rv, name in s.execute(select(Review, Labeler.name).join(Labeler, Review.reviewer_id ==
                              Labeler.id).where(Review.label_id.in_(label_ids)).order_by(Review.id)):
        out[rv.label_id] = (rv, name)
    return out


def apply_reviews(s: Session, rows: list[LabelRow]) -> list[LabelRow]:
    """The labels to export once reviews are taken into account (see the module docstring)."""
    ids = dict(s.execute(select(Label.client_id, Label.id).where(
        Label.client_id.in_([r.client_id for r in rows]))).all())
    reviews = latest_reviews(s, list(ids.values()))
    verdict = {r.client_id: reviews.get(ids.get(r.client_id)) for r in rows}
    adjudicated: dict[int, tuple[Review, str]] = {}
    for r in rows:
        v = verdict[r.client_id]
        if v and v[0].verdict == "adjudicate":
            adjudicated[r.task_id] = max(adjudicated.get(r.task_id, v), v, key=lambda x: x[0].id)
    out, seen = [], set()
    for r in rows:
        if r.task_id in adjudicated:
            if r.task_id not in seen:
                seen.add(r.task_id)
                rv, name = adjudicated[r.task_id]
                replaced = [x.client_id for x in rows if x.task_id == r.task_id]
                out.append(dataclasses.replace(
                    r, client_id=f"adjudicated-{rv.id}", answer=rv.answer, labeler=name,
                    source="human", time_spent_s=None, cost=0.0,
                    review={"verdict": "adjudicate", "by": name, "replaces": replaced,
                            "note": rv.note}))
            continue
        v = verdict[r.client_id]
        if v and v[0].verdict == "reject":
            continue
        if v and v[0].verdict == "correct":
            r = dataclasses.replace(r, answer=v[0].answer, review={
                "verdict": "correct", "by": v[1], "original": r.answer, "note": v[0].note})
        elif v:
            r = dataclasses.replace(r, review={"verdict": v[0].verdict, "by": v[1]})
        out.append(r)
    return out


@dataclass(frozen=True)
class QueueItem:
    task_id: int
    kind: str
    why: str  # "gold miss", "disagreement", "unreviewed"
    agreement: float
    labels: int
    reviewed: int


def _key(r: LabelRow) -> str:
    return json.dumps([r.answer.get(k) for k in ("choice", "ranks", "score", "text")])


def queue(s: Session, rows: Sequence[LabelRow]) -> list[QueueItem]:
    """Every labeled item, gold misses first, then disagreements (least agreed first)."""
    by_task: dict[int, list[LabelRow]] = defaultdict(list)
    for r in rows:
        by_task[r.task_id].append(r)
    agree = item_agreement({t: {r.labeler: _key(r) for r in rs} for t, rs in by_task.items()})
    ids = dict(s.execute(select(Label.client_id, Label.id).where(
        Label.client_id.in_([r.client_id for r in rows]))).all())
    reviewed = latest_reviews(s, list(ids.values()))
    out = []
    for t, rs in by_task.items():
        miss = any(r.gold is not None and r.kind != "demonstration"
                   and not gold_correct(r.kind, r.answer, r.gold) for r in rs)
        why = "gold miss" if miss else "disagreement" if agree[t] < 1.0 else "unreviewed"
        done = sum(ids.get(r.client_id) in reviewed for r in rs)
        out.append(QueueItem(t, rs[0].kind, why, agree[t], len(rs), done))
    rank = {"gold miss": 0, "disagreement": 1, "unreviewed": 2}
    return sorted(out, key=lambda q: (q.reviewed >= q.labels, rank[q.why], q.agreement, q.task_id))
