"""What a labeler is shown for one assignment, read in one go: the prompt, the responses in the
assignment's shown order, the project's scale and flags, and the stored answer translated back
into shown terms. Two queries, no per-labeler progress counts: the JSON API answers with this
alone; the web page (`web.task_view`) adds progress, guidelines and review state to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy.orm import Session

from coachlm.feedback.db import NotFound
from coachlm.feedback.sql import Db, Sql
from coachlm.feedback.tables import MAX_ID


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
    shown_order: list[int]  # canonical index of the response shown in each position


def shown_answer(kind: str, answer: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """A canonical answer re-expressed in the order the responses were shown."""
    if kind == "comparison" and answer["choice"] in ("a", "b"):
        return {**answer, "choice": ("first", "second")[order.index("ab".index(answer["choice"]))]}
    if kind == "ranking":
        return {**answer, "ranks": [answer["ranks"][i] for i in order]}
    return answer


# Plain SQL on the driver connection (see sql.py): the claim route answers with this view.
# `{a}`: rows (id, task_id, status, shown_order, labeler_id) of assignments: the table itself,
# or on PostgreSQL the assignment a claim statement has just made (`assign.py`).
_VIEW = ("SELECT a.id, a.status, a.shown_order, a.labeler_id, t.kind, t.response_ids, p.name, "
         "p.id, p.rating_scale, p.flags, pr.messages, (SELECT l.answer FROM labels l "
         "WHERE l.assignment_id = a.id), (SELECT {texts} FROM responses r "
         "WHERE r.prompt_id = t.prompt_id) FROM {a} a "
         "JOIN tasks t ON a.task_id = t.id JOIN projects p ON t.project_id = p.id "
         "JOIN prompts pr ON t.prompt_id = pr.id")
# The prompt's responses as one JSON list of [id, text] pairs, in the same statement.
VIEW_PG = _VIEW.replace("{texts}", "json_agg(json_build_array(r.id, r.text))")
_BY_ID = Sql(_VIEW.format(texts="json_group_array(json_array(r.id, r.text))", a="assignments")
             + " WHERE a.id = ?", pg=VIEW_PG.format(a="assignments") + " WHERE a.id = ?")
VIEW_COLUMNS = 13


def assignment_view(s: Session, labeler_id: int, assignment_id: int) -> AssignmentView:
    """One of the labeler's own assignments (anyone else's is not found)."""
    db = Db.of(s)
    row = db.row(_BY_ID, (assignment_id,)) if 1 <= assignment_id <= MAX_ID else None
    if row is None or row[3] != labeler_id:
        raise NotFound(f"no assignment {assignment_id} for this labeler")
    return view_of(db, row)


def view_of(db: Db, row: Sequence[Any]) -> AssignmentView:
    """The view from a row of `_VIEW`'s columns."""
    assignment_id, status, order, _, kind, response_ids, name, project_id, scale, flags, \
        messages, answer, texts = row
    order, response_ids = db.parse(order), db.parse(response_ids)
    texts = dict(db.parse(texts) or [])  # the prompt's responses, by id
    answer = db.parse(answer)
    return AssignmentView(
        assignment_id, kind, status, name, project_id, db.parse(messages),
        [texts[response_ids[i]] for i in order], scale, list(db.parse(flags)),
        shown_answer(kind, answer, order) if answer is not None else None, order)
