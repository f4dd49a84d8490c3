"""What a labeler is shown for one assignment, read in one go: the prompt, the responses in the
assignment's shown order, the project's scale and flags, and the stored answer translated back
into shown terms. Two queries, no per-labeler progress counts: the JSON API answers with this
alone; the web page (`web.task_view`) adds progress, guidelines and review state to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from coachlm.feedback.db import NotFound
from coachlm.feedback.tables import MAX_ID, Assignment, Label, Project, Prompt, Task
from coachlm.feedback.tables import Response as ResponseRow


@dataclass(frozen=True)
class AssignmentView:
    id: int
    kind: str
    status: str
    project: str
    project_id: int
    messages: list[dict[str, str]]
    texts: list[str]  # responses in shown order
    scale: int
    flags: list[str]
    answer: dict[str, Any] | None  # the submitted answer, in shown terms


def shown_answer(kind: str, answer: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """A canonical answer re-expressed in the order the responses were shown."""
    if kind == "comparison" and answer["choice"] in ("a", "b"):
        return {**answer, "choice": ("first", "second")[order.index("ab".index(answer["choice"]))]}
    if kind == "ranking":
        return {**answer, "ranks": [answer["ranks"][i] for i in order]}
    return answer


_VIEW = (select(Assignment.status, Assignment.shown_order, Assignment.labeler_id, Task.kind,
                Task.response_ids, Project.name, Project.id.label("project_id"),
                Project.rating_scale, Project.flags, Prompt.messages, Label.answer)
         .join(Task, Assignment.task_id == Task.id).join(Project, Task.project_id == Project.id)
         .join(Prompt, Task.prompt_id == Prompt.id)
         .outerjoin(Label, Label.assignment_id == Assignment.id)
         .where(Assignment.id == bindparam("id")))
_TEXTS = select(ResponseRow.id, ResponseRow.text).where(
    ResponseRow.id.in_(bindparam("ids", expanding=True)))


def assignment_view(s: Session, labeler_id: int, assignment_id: int) -> AssignmentView:
    """One of the labeler's own assignments (anyone else's is not found)."""
    row = s.execute(_VIEW, {"id": assignment_id}).one_or_none() \
        if 1 <= assignment_id <= MAX_ID else None
    if row is None or row.labeler_id != labeler_id:
        raise NotFound(f"no assignment {assignment_id} for this labeler")
    texts = dict(s.execute(_TEXTS, {"ids": list(row.response_ids)}).all())
    order = list(row.shown_order)
    return AssignmentView(
        assignment_id, row.kind, row.status, row.name, row.project_id, row.messages,
        [texts[row.response_ids[i]] for i in order], row.rating_scale, list(row.flags),
        shown_answer(row.kind, row.answer, order) if row.answer is not None else None)
