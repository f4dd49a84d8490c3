"""What one assignment page shows, read in one transaction: the conversation, the responses in
the assignment's blind order, the labeler's answer (in shown terms), whether it can still be
revised, the guidelines (and whether they changed since this labeler read them), the project's
rating anchors and flag descriptions, progress toward the quota, and the previous item."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.feedback import assign, flow, guidance
from coachlm.feedback.tables import Guideline, Label, Labeler, Project, Review
from coachlm.feedback.tables import Response as ResponseRow
from coachlm.web.deps import User


@dataclass(frozen=True)
class TaskView:
    id: int
    kind: str
    status: str
    project: str
    project_id: int
    messages: list[dict[str, str]]
    texts: list[str]  # responses in shown order
    scale: int
    flags: list[str]
    answer: dict[str, Any] | None  # the submitted answer, in shown order
    done: int
    available: int
    quota: int
    revisable: bool  # answered, and not reviewed yet
    prev_id: int | None
    review_note: str
    guideline: Guideline | None
    guideline_changed: str  # "", "new" or "changed" (since this labeler last read them)
    guide: guidance.Guidance


def shown_answer(kind: str, answer: dict[str, Any], order: list[int]) -> dict[str, Any]:
    if kind == "comparison" and answer["choice"] in ("a", "b"):
        pos = order.index("ab".index(answer["choice"]))
        return {**answer, "choice": ("first", "second")[pos]}
    if kind == "ranking":
        return {**answer, "ranks": [answer["ranks"][i] for i in order]}
    return answer


def _review_note(s: Session, label: Label | None) -> tuple[bool, str]:
    if label is None:
        return False, ""
    last = s.scalar(select(Review).where(Review.label_id == label.id)
                    .order_by(Review.id.desc()).limit(1))
    if last is None:
        return False, ""
    return True, last.note if last.verdict == "reject" else ""


def task_view(s: Session, user: User, assignment_id: int) -> TaskView:
    lab = s.get(Labeler, user.id)
    a = assign.get_assignment(s, lab, assignment_id)
    task, project = a.task, s.get(Project, a.task.project_id)
    rows = {r.id: r for r in s.scalars(select(ResponseRow).where(
        ResponseRow.id.in_(task.response_ids)))}
    texts = [rows[task.response_ids[i]].text for i in a.shown_order]
    label = s.scalar(select(Label).where(Label.assignment_id == a.id))
    answer = shown_answer(task.kind, label.answer, a.shown_order) if label else None
    is_reviewed, note = _review_note(s, label)
    prog = assign.progress(s, lab, project)
    g, changed = guidance.changed_since_read(s, lab.id, project)
    guide = guidance.get(project)
    return TaskView(a.id, task.kind, a.status, project.name, project.id, task.prompt.messages,
                    texts, project.rating_scale, list(project.flags), answer, prog.done,
                    prog.available, guide.quota, label is not None and not is_reviewed,
                    flow.previous(s, lab, a), note, g, changed, guide)
