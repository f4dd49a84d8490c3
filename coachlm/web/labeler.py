"""Labeler pages: the queue, one page per assignment (comparison, ranking, rating, ideal
response), skip, and the project's guidelines.

A labeler only ever reaches their own assignments (anyone else's is "not found"). Responses are
shown blind (no model names) in the assignment's random order. A submit is committed before the
next page is shown; its client id (made in the browser, or in the page for script-less use)
makes a double click or a retried post count once.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.feedback import assign, flow, guidance, items, labels
from coachlm.feedback.db import Conflict, NotFound, StoreError
from coachlm.feedback.tables import DONE, Labeler, Project
from coachlm.web.deps import FormUser, SessionUser, User, render, store
from coachlm.web.task_view import task_view

router = APIRouter()
STRENGTHS = {1: "slightly better", 2: "better", 3: "much better"}


def _next_url(request: Request, user: User, project_id: int, note: str) -> str:
    def claim(s: Session) -> tuple[int | None, str | None]:
        nxt = flow.next_with_work(s, s.get(Labeler, user.id), s.get(Project, project_id))
        return (nxt.assignment.id if nxt.assignment else None), nxt.moved_to

    aid, moved = store(request).run(claim, durable=False)  # a lost claim is simply re-offered
    if aid is None:
        return f"/?m={note}"
    return f"/a/{aid}?m={note}" + (f"&moved={quote(moved)}" if moved else "")


def _go(request: Request, url: str) -> Response:
    """A redirect for a form post; for the page script's fetch, the address as JSON, so that a
    submit costs the same two round trips with or without the script."""
    if request.headers.get("x-coachlm-fetch"):
        return JSONResponse({"next": url})
    return RedirectResponse(url, status_code=303)


@router.get("/")
def queue(request: Request, user: SessionUser, m: str = "") -> Response:
    with store(request).read() as s:
        lab = s.get(Labeler, user.id)
        rows = [(p, assign.progress(s, lab, p), guidance.get(p).quota)
                for p in s.scalars(select(Project).order_by(Project.name))]
        skipped = [(a.id, a.task.prompt.messages[-1]["content"], a.skip_reason or "",
                    s.get(Project, a.task.project_id).name) for a in flow.skipped(s, lab)]
    rows = [(p, pr, q) for p, pr, q in rows if pr.done or pr.pending or pr.available]
    return render(request, "queue.html", projects=rows, note=m, skipped=skipped)


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
def show(request: Request, assignment_id: int, user: SessionUser, m: str = "",
         moved: str = "") -> Response:
    with store(request).read() as s:
        view = task_view(s, user, assignment_id)
    return render(request, f"task_{view.kind}.html", t=view, note=m, moved=moved,
                  client_id=uuid.uuid4().hex, strengths=STRENGTHS,
                  skip_reasons=view.guide.skip_reasons)


def _number(value: str) -> int | None:
    return int(value) if value.strip().isdigit() else None


def _again(request: Request, user: User, assignment_id: int, error: str,
           draft: dict[str, Any]) -> Response:
    """The task page again, for a form post the server refused (a script-less browser: e.g. a
    left/right choice without a strength), with the posted answer kept and the reason shown;
    400 so that nothing mistakes it for a stored label."""
    with store(request).read() as s:
        view = task_view(s, user, assignment_id)
    if len(draft["ranks"]) != len(view.texts):
        draft = {**draft, "ranks": []}
    if view.status == "pending" or view.revisable:
        view = view.with_draft(draft)
    return render(request, f"task_{view.kind}.html", 400, t=view, note="", moved="",
                  client_id=uuid.uuid4().hex, strengths=STRENGTHS,
                  skip_reasons=view.guide.skip_reasons, error=f"Not saved: {error}.")


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
           text: Annotated[str, Form()] = "", revise: Annotated[str, Form()] = "") -> Response:
    try:
        spent = float(elapsed_ms) / 1000 if elapsed_ms else None
    except ValueError:
        spent = None

    def save(s: Session) -> tuple[int, str]:
        lab = s.get(Labeler, user.id)
        a = assign.get_assignment(s, lab, assignment_id)
        answer = _answer(a.task.kind, choice, strength, ranks, score, flags, critique, text)
        project_id = a.task.project_id
        guidance.mark_read(s, lab.id, s.get(Project, project_id))  # it was on the page
        if revise and a.status == DONE:
            return project_id, "revised" if flow.revise(s, lab, a.id, client_id, answer,
                                                        spent)[1] else "already"
        try:
            labels.submit_label(s, lab, assignment_id, client_id, answer, spent)
        except Conflict:
            if a.status == DONE:  # Back + Enter, or a second tab: keep what was saved
                return project_id, "already"
            raise
        return project_id, "saved"

    try:
        project_id, note = store(request).run(save)  # committed here, before we answer
    except (NotFound, Conflict):
        raise
    except StoreError as e:  # the answer itself was refused: keep it on the page
        if request.headers.get("x-coachlm-fetch"):
            raise  # the script keeps the answer on its page and shows the message
        draft = {"choice": choice, "margin": _number(strength), "score": _number(score),
                 "ranks": [_number(r) for r in ranks], "flags": flags, "critique": critique,
                 "text": text}
        return _again(request, user, assignment_id, str(e), draft)
    if note == "already":
        return _go(request, f"/a/{assignment_id}?m=already")
    return _go(request, _next_url(request, user, project_id, note))


@router.post("/a/{assignment_id}/skip")
def skip(request: Request, assignment_id: int, user: FormUser,
         reason: Annotated[str, Form()] = "") -> Response:
    def do(s: Session) -> int:
        return flow.skip(s, s.get(Labeler, user.id), assignment_id, reason).task.project_id

    project_id = store(request).run(do)
    return RedirectResponse(_next_url(request, user, project_id, "skipped"), status_code=303)


@router.post("/a/{assignment_id}/revisit")
def revisit(request: Request, assignment_id: int, user: FormUser) -> Response:
    store(request).run(lambda s: flow.revisit(s, s.get(Labeler, user.id), assignment_id))
    return RedirectResponse(f"/a/{assignment_id}", status_code=303)
