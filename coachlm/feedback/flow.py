"""A labeler's way through the work: revise one's own label until it is reviewed (the replaced
answer is kept as a `LabelRevision`), skip with a reason and revisit skipped items, step back to
the previous item, and move on to the next project that has work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.feedback import assign, labels
from coachlm.feedback.db import Conflict, StoreError
from coachlm.feedback.tables import (DONE, PENDING, SKIPPED, Assignment, Label, LabelRevision,
                                     Labeler, Project, Review, Task)


def reviewed(s: Session, label_id: int) -> bool:
    return s.scalar(select(Review.id).where(Review.label_id == label_id).limit(1)) is not None


def revise(s: Session, labeler: Labeler, assignment_id: int, client_id: str, answer: dict,
           time_spent_s: float | None = None) -> tuple[Label, bool]:
    """Replace the answer of one's own label (in shown terms), keeping the old one for audit.

    Returns (label, changed). The same `client_id` sent again (a retry) changes nothing; an
    identical answer is not a revision; a reviewed label can no longer be changed."""
    a = assign.get_assignment(s, labeler, assignment_id)
    label = s.scalar(select(Label).where(Label.assignment_id == a.id).with_for_update())
    if label is None:
        raise Conflict("this item has no answer to revise")
    seen = s.scalar(select(LabelRevision.id).where(LabelRevision.label_id == label.id,
                                                   LabelRevision.client_id == client_id))
    if label.client_id == client_id or seen is not None:
        return label, False
    if reviewed(s, label.id):
        raise Conflict("this answer has been reviewed and can no longer be changed")
    task, project = a.task, s.get(Project, a.task.project_id)
    canonical = labels.check_answer(task.kind, labels.from_shown(task.kind, answer, a.shown_order),
                                    len(task.response_ids), project.rating_scale, project.flags)
    if canonical == label.answer:
        return label, False
    if s.scalar(select(Label.id).where(Label.client_id == client_id)) is not None:
        raise Conflict("this client_id was already used for another answer")
    s.add(LabelRevision(label_id=label.id, client_id=label.client_id, answer=label.answer,
                        time_spent_s=label.time_spent_s, created_at=label.created_at))
    label.client_id, label.answer = client_id, canonical
    if time_spent_s is not None and math.isfinite(float(time_spent_s)):
        label.time_spent_s = (label.time_spent_s or 0.0) + min(max(float(time_spent_s), 0.0), 86_400.0)
    s.flush()
    return label, True


def answered_label(s: Session, labeler: Labeler, assignment_id: int) -> Label | None:
    """The label of one's own answered item (None when it is not answered)."""
    a = assign.get_assignment(s, labeler, assignment_id)
    if a.status != DONE:
        return None
    return s.scalar(select(Label).where(Label.assignment_id == a.id))


def same_answer(s: Session, label: Label, answer: dict) -> bool:
    """Whether `answer` (shown terms) is the one `label` stores: a resubmission under a new
    client id (a second tab, a script that lost its response) that asks for nothing new."""
    a = s.get(Assignment, label.assignment_id)
    task, project = a.task, s.get(Project, a.task.project_id)
    try:
        canonical = labels.check_answer(task.kind, labels.from_shown(task.kind, answer,
                                                                     a.shown_order),
                                        len(task.response_ids), project.rating_scale,
                                        project.flags)
    except StoreError:
        return False
    return canonical == label.answer


def skip(s: Session, labeler: Labeler, assignment_id: int, reason: str = "") -> Assignment:
    """Skip (the slot goes back to the pool) and remember why."""
    assign.skip(s, labeler, assignment_id)
    a = s.get(Assignment, assignment_id)
    if a.status == SKIPPED:
        a.skip_reason = reason.strip()[:200] or None
    return a


def skipped(s: Session, labeler: Labeler) -> list[Assignment]:
    return list(s.scalars(select(Assignment).where(Assignment.labeler_id == labeler.id,
                                                   Assignment.status == SKIPPED)
                          .order_by(Assignment.id)))


def revisit(s: Session, labeler: Labeler, assignment_id: int) -> Assignment:
    """Take a skipped item back, if one of its slots is still free."""
    a = assign.get_assignment(s, labeler, assignment_id)
    if a.status != SKIPPED:
        raise Conflict("this item was not skipped")
    # FOR NO KEY UPDATE (key_share): FOR UPDATE would also block other transactions' label
    # inserts on this task (their foreign key check), a deadlock risk (`assign.py`).
    task = s.scalar(select(Task).where(Task.id == a.task_id).with_for_update(key_share=True))
    taken = set(s.scalars(select(Assignment.slot).where(Assignment.task_id == task.id,
                                                        Assignment.slot.is_not(None))))
    free = next((i for i in range(task.n_labels) if i not in taken), None)
    if free is None:
        raise StoreError("this item has meanwhile got all the labels it needs")
    a.status, a.slot, a.done_at, a.skip_reason = PENDING, free, None, None
    task.filled = Task.filled + 1
    s.flush()
    return a


def previous(s: Session, labeler: Labeler, a: Assignment) -> int | None:
    """The labeler's answered or skipped item before `a` in the same project."""
    return s.scalar(select(Assignment.id).join(Task).where(
        Assignment.labeler_id == labeler.id, Assignment.id < a.id,
        Assignment.status.in_((DONE, SKIPPED)), Task.project_id == a.task.project_id)
        .order_by(Assignment.id.desc()).limit(1))


@dataclass(frozen=True)
class Next:
    assignment: Assignment | None
    moved_to: str | None  # the other project it came from, when this one ran dry


def next_with_work(s: Session, labeler: Labeler, project: Project) -> Next:
    """The next item in `project`, else in the first other project (by name) that has work."""
    a = assign.next_assignment(s, labeler, project)
    if a is not None:
        return Next(a, None)
    for other in s.scalars(select(Project).where(Project.id != project.id).order_by(Project.name)):
        a = assign.next_assignment(s, labeler, other)
        if a is not None:
            return Next(a, other.name)
    return Next(None, None)
