"""The JSON API (bearer-token auth), for scripts and AI labelers: the same operations as the
pages. A labeler token reaches only its own assignments; admin operations need an admin token.

Answers are given in shown order, as on the pages: a comparison's `choice` is "first",
"second", "tie" or "both_bad" (with optional `margin` 1..3); a ranking's `ranks` list the rank
of each response as listed; a rating has `score`, `flags`, `critique`; an ideal response `text`.
Every submission carries a client-generated `client_id`: resending it returns the same label
(and resending it with a different answer is a 409 naming the stored label). Submitting the
stored answer again under a new client id (a second tab, a lost response) is 200 with that label
and `"already_saved": true`; another answer to an answered item is a 409 that points to
`POST /api/assignments/ID/revise`, which replaces one's own answer until it is reviewed (the
replaced answer is kept for audit; 200 with `"revised": false` when nothing changed, 409 once
reviewed or when the item has no answer yet). Every body is checked for text that cannot be
stored (lone surrogates, NUL) before anything else; project names may contain "/" (the routes
take the rest of the path).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.data import schema
from coachlm.feedback import accounts, assign, flow, importer, items, labels, quality, views
from coachlm.feedback.db import Conflict, Store, StoreError
from coachlm.feedback.tables import DEFAULT_TTL_S, MAX_ID, Labeler, Project
from coachlm.feedback.text import check_tree
from coachlm.web.admin import export_config, export_response
from coachlm.web.deps import ApiAdmin, ApiUser, User, store

router = APIRouter(prefix="/api")
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


class Body(BaseModel):
    """A JSON body whose every string can be stored (no lone surrogate, no NUL)."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        try:
            check_tree(data)
        except StoreError as e:
            raise ValueError(str(e)) from None
        return data


class LabelIn(Body):
    client_id: str = Field(min_length=8, max_length=64)
    answer: dict[str, Any]
    time_spent_s: float | None = None


class ProjectIn(Body):
    name: str
    description: str = ""
    guidelines: str = ""
    rating_scale: int = 7
    assignment_ttl_s: int = DEFAULT_TTL_S


class ImportIn(Body):
    records: list[dict[str, Any]]
    gold: bool = False
    n_labels: int = 1


class TasksIn(Body):
    kind: str
    n_labels: int = 1
    max_per_prompt: int = 0
    k: int = 0
    edit: bool = True


class AssignIn(Body):
    labelers: list[str]


class LabelerIn(Body):
    name: str
    password: str | None = None
    role: str = "labeler"
    cost_per_label: float = 0.0


def _assignment_json(s: Session, user: User, assignment_id: int) -> dict[str, Any]:
    return _view_json(views.assignment_view(s, user.id, assignment_id))


def _view_json(v: views.AssignmentView) -> dict[str, Any]:
    return {"id": v.id, "kind": v.kind, "status": v.status, "project": v.project,
            "prompt": v.messages, "responses": v.texts, "rating_scale": v.scale,
            "flags": v.flags, "answer": v.answer}


def _project_named(s: Session, name: str) -> Project:
    return items.get_project(s, name)


@router.get("/me")
def me(user: ApiUser) -> dict[str, Any]:
    return {"name": user.name, "role": user.role}


@router.get("/projects")
def projects(request: Request, user: ApiUser) -> list[dict[str, Any]]:
    with store(request).read() as s:
        lab = s.get(Labeler, user.id)
        out = []
        for p in s.scalars(select(Project).order_by(Project.name)):
            pr = assign.progress(s, lab, p)
            out.append({"name": p.name, "done": pr.done, "pending": pr.pending,
                        "available": pr.available})
    return out


@router.post("/projects/{name:path}/next")
async def next_assignment(request: Request, name: str, user: ApiUser) -> Response:
    return await claim_next(store(request), user, name)


@router.get("/assignments/{assignment_id}")
def get_assignment(request: Request, assignment_id: Id, user: ApiUser) -> dict[str, Any]:
    with store(request).read() as s:
        return _assignment_json(s, user, assignment_id)


@router.post("/assignments/{assignment_id}/label")
async def submit(request: Request, assignment_id: Id, body: LabelIn, user: ApiUser) -> Response:
    return await submit_label(store(request), user, assignment_id, body)


# The two hot operations, called by the routes above and by `web.hot`, which serves the usual
# requests of both below FastAPI's routing and dependency injection.
async def claim_next(st: Store, user: User, name: str) -> Response:
    """The labeler's next assignment in project `name` (200), or 204 when there is none."""
    def claim(s: Session) -> dict[str, Any] | None:
        found = assign.next_view(s, user.id, name)
        if found is None:
            return None
        labels.remember(found)  # for the submit that follows
        return _view_json(found)

    # A lost claim is simply re-offered, so it need not wait for an fsync.
    found = await st.run_async(claim, durable=False)
    return JSONResponse(found) if found else Response(status_code=204)


async def submit_label(st: Store, user: User, assignment_id: int, body: LabelIn) -> Response:
    """Store a label: 201 when new, 200 with `already_saved` for an answer stored already."""
    try:
        label_id, created = await st.run_async(lambda s: labels.submit(
            s, user, assignment_id, body.client_id, body.answer, body.time_spent_s))
    except Conflict as e:  # nothing was written; an answered item may hold this very answer
        label_id, created = await st.run_async(
            lambda s: _already_saved(s, user, assignment_id, body.answer, e))
    out = {"label_id": label_id, "created": created}
    return JSONResponse(out if created else {**out, "already_saved": True},
                        status_code=201 if created else 200)


def _already_saved(s: Session, user: Any, assignment_id: int, answer: dict,
                   refused: Conflict) -> tuple[int, bool]:
    """The stored label when `answer` is the one already stored (a second tab, a lost
    response); otherwise the refusal, pointing to the revise route where one can revise."""
    lab = s.get(Labeler, user.id)
    stored = flow.answered_label(s, lab, assignment_id)
    if stored is None:  # skipped, expired, or a client id of another item
        raise refused
    if flow.same_answer(s, stored, answer):
        return stored.id, False
    raise Conflict(f"{refused}; the stored label is {stored.id}; to change it, POST "
                   f"/api/assignments/{assignment_id}/revise") from None


@router.post("/assignments/{assignment_id}/revise")
def revise(request: Request, assignment_id: Id, body: LabelIn, user: ApiUser) -> dict[str, Any]:
    def save(s: Session) -> tuple[int, bool]:
        label, changed = flow.revise(s, s.get(Labeler, user.id), assignment_id, body.client_id,
                                     body.answer, body.time_spent_s)
        return label.id, changed

    label_id, changed = store(request).run(save)
    return {"label_id": label_id, "revised": changed}


@router.post("/assignments/{assignment_id}/skip")
def skip(request: Request, assignment_id: Id, user: ApiUser) -> dict[str, Any]:
    store(request).run(lambda s: assign.skip(s, s.get(Labeler, user.id), assignment_id))
    return {"skipped": assignment_id}


@router.post("/projects", status_code=201)
def create_project(request: Request, body: ProjectIn, user: ApiAdmin) -> dict[str, Any]:
    with store(request).write() as s:
        p = items.create_project(s, body.name, body.description, body.rating_scale,
                                 guidelines=body.guidelines,
                                 assignment_ttl_s=body.assignment_ttl_s)
        return {"id": p.id, "name": p.name}


@router.post("/projects/{name:path}/import")
def import_records(request: Request, name: str, body: ImportIn, user: ApiAdmin) -> dict[str, Any]:
    records = []
    for i, d in enumerate(body.records):
        try:
            records.append(schema.from_dict(d))
        except schema.SchemaError as e:
            raise schema.SchemaError(f"records[{i}].{e.field}", e.message) from None
    with store(request).write() as s:
        counts = importer.import_records(s, _project_named(s, name), records, body.gold,
                                         body.n_labels)
    return vars(counts)


@router.post("/projects/{name:path}/tasks")
def create_tasks(request: Request, name: str, body: TasksIn, user: ApiAdmin) -> dict[str, Any]:
    spec = items.TaskSpec(body.kind, body.n_labels, body.max_per_prompt, body.k, body.edit)
    with store(request).write() as s:
        return {"created": items.create_tasks(s, _project_named(s, name), spec)}


@router.post("/projects/{name:path}/assign")
def assign_tasks(request: Request, name: str, body: AssignIn, user: ApiAdmin) -> dict[str, Any]:
    with store(request).write() as s:
        labs = [accounts.get_labeler(s, n) for n in body.labelers]
        return {"assigned": assign.assign_tasks(s, _project_named(s, name), labs)}


@router.get("/projects/{name:path}/export")
def export(request: Request, name: str, user: ApiAdmin, kinds: str = "", exclude: str = "",
           min_agreement: float = 0.0, min_gold_accuracy: float = 0.0, include_gold: bool = True,
           sources: str = "") -> Response:
    cfg = export_config(kinds, exclude, min_agreement, min_gold_accuracy, include_gold, sources)
    with store(request).read() as s:
        project_id = _project_named(s, name).id
    return export_response(request, project_id, cfg)


@router.get("/projects/{name:path}/stats")
def stats(request: Request, name: str, user: ApiAdmin) -> dict[str, Any]:
    with store(request).read() as s:
        p = _project_named(s, name)
        st = items.project_stats(s, p)
        q = quality.project_quality(s, p)
    nan = lambda x: None if x != x else x  # noqa: E731  (JSON has no NaN)
    return {"stats": vars(st),
            "agreement": [{"kind": k.kind, "items": k.items, "alpha": nan(k.alpha),
                           "fleiss": nan(k.fleiss)} for k in q.kinds],
            "labelers": [{k: nan(v) if isinstance(v, float) else v for k, v in vars(lq).items()}
                         for lq in q.labelers],
            "first_rate": nan(q.first_rate), "total_cost": q.total_cost}


@router.post("/labelers", status_code=201)
def create_labeler(request: Request, body: LabelerIn, user: ApiAdmin) -> dict[str, Any]:
    password = accounts.hashed(body.password)  # slow: before the write transaction
    with store(request).write() as s:
        lab = accounts.create_labeler(s, body.name, password, body.role, body.cost_per_label)
        return {"id": lab.id, "name": lab.name, "role": lab.role}


@router.post("/labelers/{name:path}/token")
def new_token(request: Request, name: str, user: ApiAdmin) -> dict[str, str]:
    with store(request).write() as s:
        return {"name": name, "token": accounts.issue_token(s, name)}
