"""Labeler pages: the queue, one page per assignment (comparison, ranking, rating, ideal
response), skip, and the project's guidelines.

A labeler only ever reaches their own assignments (anyone else's is "not found"). Responses are
shown blind (no model names) in the assignment's random order. A submit is committed before the
next page is shown; its client id (made in the browser, or in the page for script-less use)
makes a double click or a retried post count once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.feedback import assign, items, labels
from coachlm.feedback.db import StoreError
from coachlm.feedback.tables import Assignment, Label, Labeler, Project, Response as ResponseRow
from coachlm.web.deps import FormUser, SessionUser, User, render, store

router = APIRouter()
STRENGTHS = {1: "slightly better", 2: "better", 3: "much better"}


@dataclass(frozen=True)
class TaskView:
    """Everything an assignment page shows, read in one transaction."""

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


def _shown_answer(kind: str, answer: dict[str, Any], order: list[int]) -> dict[str, Any]:
    if kind == "comparison" and answer["choice"] in ("a", "b"):
        pos = order.index("ab".index(answer["choice"]))
        return {**answer, "choice": ("first", "second")[pos]}
    if kind == "ranking":
        return {**answer, "ranks": [answer["ranks"][i] for i in order]}
    return answer


def task_view(s: Session, user: User, assignment_id: int) -> TaskView:
    lab = s.get(Labeler, user.id)
    a = assign.get_assignment(s, lab, assignment_id)
    task, project = a.task, s.get(Project, a.task.project_id)
    rows = {r.id: r for r in s.scalars(select(ResponseRow).where(
        ResponseRow.id.in_(task.response_ids)))}
    texts = [rows[task.response_ids[i]].text for i in a.shown_order]
    label = s.scalar(select(Label).where(Label.assignment_id == a.id))
    answer = _shown_answer(task.kind, label.answer, a.shown_order) if label else None
    prog = assign.progress(s, lab, project)
    return TaskView(a.id, task.kind, a.status, project.name, project.id, task.prompt.messages,
                    texts, project.rating_scale, list(project.flags), answer, prog.done,
                    prog.available)


def _next_url(request: Request, user: User, project_id: int, note: str) -> str:
    def claim(s: Session) -> Assignment | None:
        return assign.next_assignment(s, s.get(Labeler, user.id), s.get(Project, project_id))

    a = store(request).run(claim, durable=False)  # a lost claim is simply re-offered
    return f"/a/{a.id}?m={note}" if a else f"/?m={note}"


@router.get("/")
def queue(request: Request, user: SessionUser, m: str = "") -> Response:
    with store(request).read() as s:
        lab = s.get(Labeler, user.id)
        rows = [(p, assign.progress(s, lab, p))
                for p in s.scalars(select(Project).order_by(Project.name))]
    rows = [(p, pr) for p, pr in rows if pr.done or pr.pending or pr.available]
    return render(request, "queue.html", projects=rows, note=m)


@router.post("/p/{project_id}/start")
def start(request: Request, project_id: int, user: FormUser) -> Response:
    return RedirectResponse(_next_url(request, user, project_id, "start"), status_code=303)


@router.get("/p/{project_id}/guidelines")
def guidelines(request: Request, project_id: int, user: SessionUser) -> Response:
    with store(request).read() as s:
        project = s.get(Project, project_id)
        if project is None:
            return render(request, "error.html", 404, status_code=404, message="no such project")
        g = items.guidelines(s, project)
    return render(request, "guidelines.html", project=project, guideline=g)


@router.get("/a/{assignment_id}")
def show(request: Request, assignment_id: int, user: SessionUser, m: str = "") -> Response:
    with store(request).read() as s:
        view = task_view(s, user, assignment_id)
    return render(request, f"task_{view.kind}.html", t=view, note=m, client_id=uuid.uuid4().hex,
                  strengths=STRENGTHS)


def _answer(kind: str, choice: str, strength: str, ranks: list[str], score: str,
            flags: list[str], critique: str, text: str) -> dict[str, Any]:
    if kind == "comparison":
        if choice in ("first", "second") and not strength:  # never a margin nobody chose
            raise StoreError("choose how much better the response is (1, 2 or 3)")
        return {"choice": choice, "margin": strength if choice in ("first", "second") else None}
    if kind == "ranking":
        return {"ranks": ranks}
    if kind == "rating":
        return {"score": score, "flags": flags, "critique": critique}
    return {"text": text}


@router.post("/a/{assignment_id}")
def submit(request: Request, assignment_id: int, user: FormUser,
           client_id: Annotated[str, Form()], elapsed_ms: Annotated[str, Form()] = "",
           choice: Annotated[str, Form()] = "", strength: Annotated[str, Form()] = "",
           ranks: Annotated[list[str], Form()] = [], score: Annotated[str, Form()] = "",  # noqa: B006
           flags: Annotated[list[str], Form()] = [], critique: Annotated[str, Form()] = "",  # noqa: B006
           text: Annotated[str, Form()] = "") -> Response:
    try:
        spent = float(elapsed_ms) / 1000 if elapsed_ms else None
    except ValueError:
        spent = None

    def save(s: Session) -> int:
        lab = s.get(Labeler, user.id)
        a = assign.get_assignment(s, lab, assignment_id)
        answer = _answer(a.task.kind, choice, strength, ranks, score, flags, critique, text)
        labels.submit_label(s, lab, assignment_id, client_id, answer, spent)
        return a.task.project_id

    project_id = store(request).run(save)  # committed here, before we answer
    return RedirectResponse(_next_url(request, user, project_id, "saved"), status_code=303)


@router.post("/a/{assignment_id}/skip")
def skip(request: Request, assignment_id: int, user: FormUser) -> Response:
    def do(s: Session) -> int:
        lab = s.get(Labeler, user.id)
        assign.skip(s, lab, assignment_id)
        return s.get(Assignment, assignment_id).task.project_id

    project_id = store(request).run(do)
    return RedirectResponse(_next_url(request, user, project_id, "skipped"), status_code=303)
