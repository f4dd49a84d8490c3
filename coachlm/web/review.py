"""Reviewer pages: a data browser and review queue per project (filter by kind, labeler, gold,
reason, reviewed), an item page with every label, critique, edit, revision and verdict, and the
forms to accept, reject with a note, correct, adjudicate, and mark or unmark gold.
Reviewers and admins only; every post carries the CSRF token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coachlm.feedback import review
from coachlm.feedback.dashboard import rows_for
from coachlm.feedback.db import NotFound, StoreError
from coachlm.feedback.tables import (SKIPPED, Assignment, Label, LabelRevision, Labeler, Project,
                                     Task)
from coachlm.feedback.tables import Response as ResponseRow
from coachlm.web.dashboard import check_source
from coachlm.web.deps import Forbidden, FormUser, ReviewerUser, User, render, store

router = APIRouter(prefix="/review")


def form_reviewer(user: FormUser) -> User:
    if not user.is_reviewer:
        raise Forbidden("this needs the reviewer or admin role")
    return user


FormReviewer = Annotated[User, Depends(form_reviewer)]


@router.get("/p/{project_id}")
def browse(request: Request, project_id: int, user: ReviewerUser, kind: str = "",
           labeler: str = "", why: str = "", gold: str = "", source: str = "",
           reviewed: str = "", flagged: str = "", skipped: str = "") -> Response:
    check_source(source)
    with store(request).read() as s:
        p = s.get(Project, project_id)
        if p is None:
            raise NotFound(f"no project {project_id}")
        rows = rows_for(s, p, source)
        names = sorted({r.labeler for r in rows})
        if kind:
            rows = [r for r in rows if r.kind == kind]
        if labeler:
            rows = [r for r in rows if r.labeler == labeler]
        if gold:
            rows = [r for r in rows if (r.gold is not None) == (gold == "yes")]
        if flagged:  # ratings that carry a flag (harmful, made-up facts, ...)
            rows = [r for r in rows if r.kind == "rating" and r.answer.get("flags")]
        if skipped:  # items some labeler skipped
            gave_up = set(s.scalars(select(Assignment.task_id).where(Assignment.status == SKIPPED)))
            rows = [r for r in rows if r.task_id in gave_up]
        queue = review.queue(s, rows)
    if why:
        queue = [q for q in queue if q.why == why]
    if reviewed:
        queue = [q for q in queue if (q.reviewed >= q.labels) == (reviewed == "yes")]
    return render(request, "review/browse.html", p=p, queue=queue[:500], total=len(queue),
                  names=names, f={"kind": kind, "labeler": labeler, "why": why, "gold": gold,
                                  "source": source, "reviewed": reviewed, "flagged": flagged,
                                  "skipped": skipped})


def _item(s: Session, task_id: int) -> dict[str, Any]:
    task = s.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    rows = {r.id: r for r in s.scalars(select(ResponseRow).where(
        ResponseRow.id.in_(task.response_ids)))}
    labels = s.execute(select(Label, Labeler.name, Labeler.source).join(
        Labeler, Label.labeler_id == Labeler.id).where(Label.task_id == task.id)
        .order_by(Label.id)).all()
    ids = [lb.id for lb, _, _ in labels]
    history: dict[int, list] = {i: [] for i in ids}
    for rv, name in s.execute(select(review.Review, Labeler.name).join(
            Labeler, review.Review.reviewer_id == Labeler.id)
            .where(review.Review.label_id.in_(ids)).order_by(review.Review.id)):
        history[rv.label_id].append((rv, name))
    revisions = dict(s.execute(select(LabelRevision.label_id, func.count()).where(
        LabelRevision.label_id.in_(ids)).group_by(LabelRevision.label_id)).all())
    return {"task": task, "messages": task.prompt.messages, "project": s.get(Project, task.project_id),
            "responses": [rows[i] for i in task.response_ids], "labels": labels,
            "history": history, "revisions": revisions}


@router.get("/t/{task_id}")
def item(request: Request, task_id: int, user: ReviewerUser, m: str = "") -> Response:
    with store(request).read() as s:
        ctx = _item(s, task_id)
    return render(request, "review/item.html", note=m, verdicts=review.VERDICTS, **ctx)


def _answer(kind: str, choice: str, margin: str, ranks: str, score: str, text: str,
            flags: list[str], critique: str) -> dict[str, Any] | None:
    if kind == "comparison":
        return {"choice": choice, "margin": margin or None} if choice else None
    if kind == "ranking":
        return {"ranks": [x.strip() or None for x in ranks.split(",")]} if ranks.strip() else None
    if kind == "rating":
        return {"score": score, "flags": flags, "critique": critique} if score else None
    return {"text": text} if text.strip() else None




@router.post("/l/{label_id}")
def verdict(request: Request, label_id: int, user: FormReviewer, verdict: Annotated[str, Form()],
            note: Annotated[str, Form()] = "", choice: Annotated[str, Form()] = "",
            margin: Annotated[str, Form()] = "", ranks: Annotated[str, Form()] = "",
            score: Annotated[str, Form()] = "", text: Annotated[str, Form()] = "",
            flags: Annotated[list[str], Form()] = [],  # noqa: B006
            critique: Annotated[str, Form()] = "") -> Response:
    def do(s: Session) -> int:
        label = s.get(Label, label_id)
        if label is None:
            raise NotFound(f"no label {label_id}")
        kind = s.get(Task, label.task_id).kind
        answer = _answer(kind, choice, margin, ranks, score, text, flags, critique)
        if verdict in ("correct", "adjudicate") and answer is None:
            raise StoreError(f"to {verdict}, give the answer")
        review.add_review(s, s.get(Labeler, user.id), label_id, verdict, note, answer)
        return label.task_id

    task_id = store(request).run(do)
    return RedirectResponse(f"/review/t/{task_id}?m={verdict}", status_code=303)


@router.post("/t/{task_id}/gold")
def gold(request: Request, task_id: int, user: FormReviewer, unmark: Annotated[str, Form()] = "",
         choice: Annotated[str, Form()] = "", margin: Annotated[str, Form()] = "",
         ranks: Annotated[str, Form()] = "", score: Annotated[str, Form()] = "",
         text: Annotated[str, Form()] = "") -> Response:
    def do(s: Session) -> None:
        task = s.get(Task, task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        answer = None if unmark else _answer(task.kind, choice, margin, ranks, score, text, [], "")
        if not unmark and answer is None:
            raise StoreError("give the gold answer")
        review.promote_to_gold(s, task_id, answer)

    store(request).run(do)
    return RedirectResponse(f"/review/t/{task_id}?m={'ungold' if unmark else 'gold'}",
                            status_code=303)
