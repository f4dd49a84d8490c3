"""Admin pages: projects, import, task creation and assignment, items with a gold toggle,
guidelines, labelers, quality tables, ratings leaderboard and export. Every route needs the admin
role (the quality tables also admit reviewers, read-only; the leaderboard names models, so it is
not for reviewers, who judge blind), and every form post the session's CSRF token."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from urllib.parse import urlencode
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coachlm.data import schema
from coachlm.data.io import READ_SUFFIXES
from coachlm.errors import CoachError
from coachlm.feedback import (accounts, assign, guidance, importer, items, quality, ratings,
                              review)
from coachlm.feedback.dashboard import SOURCES, rows_for
from coachlm.feedback.db import NotFound, StoreError
from coachlm.feedback.export import ExportConfig, export_records
from coachlm.feedback.tables import ROLES, TASK_KINDS, Label, Labeler, Project, Task
from coachlm.web.dashboard import check_source
from coachlm.web.deps import AdminUser, FormAdmin, ReviewerUser, render, store

router = APIRouter(prefix="/admin")
MAX_UPLOAD = 200 * 1024 * 1024


def _project(s: Session, project_id: int) -> Project:
    project = s.get(Project, project_id)
    if project is None:
        raise NotFound(f"no project {project_id}")
    return project


def _back(project_id: int, note: str) -> Response:
    return RedirectResponse(f"/admin/p/{project_id}?m={note}", status_code=303)


@router.get("")
def projects(request: Request, user: AdminUser) -> Response:
    with store(request).read() as s:
        rows = [(p, items.project_stats(s, p))
                for p in s.scalars(select(Project).order_by(Project.name))]
    return render(request, "admin/projects.html", projects=rows)


@router.post("/projects")
def create_project(request: Request, user: FormAdmin, name: Annotated[str, Form()],
                   description: Annotated[str, Form()] = "",
                   guidelines: Annotated[str, Form()] = "",
                   rating_scale: Annotated[int, Form()] = 7) -> Response:
    with store(request).write() as s:
        p = items.create_project(s, name, description, rating_scale, guidelines=guidelines)
    return _back(p.id, "created")


@router.get("/p/{project_id}")
def project(request: Request, project_id: int, user: AdminUser, m: str = "") -> Response:
    with store(request).read() as s:
        p = _project(s, project_id)
        stats = items.project_stats(s, p)
        g = items.guidelines(s, p)
        guide = guidance.get(p)
        labelers = s.scalars(select(Labeler).where(Labeler.active).order_by(Labeler.name)).all()
    return render(request, "admin/project.html", p=p, stats=stats, guideline=g, guide=guide,
                  labelers=labelers, kinds=TASK_KINDS, note=m)


ITEMS_PAGE = 100


@router.get("/p/{project_id}/items")
def items_page(request: Request, project_id: int, user: AdminUser, kind: str = "",
               gold: str = "", page: int = 0, m: str = "") -> Response:
    """Every item of the project, 100 a page, each with a gold toggle."""
    with store(request).read() as s:
        p = _project(s, project_id)
        q = select(Task).where(Task.project_id == p.id).order_by(Task.id)
        if kind:
            q = q.where(Task.kind == kind)
        if gold:
            q = q.where(Task.gold.is_not(None) if gold == "yes" else Task.gold.is_(None))
        tasks = s.scalars(q.offset(max(page, 0) * ITEMS_PAGE).limit(ITEMS_PAGE + 1)).all()
        counts = dict(s.execute(select(Label.task_id, func.count()).where(
            Label.task_id.in_([t.id for t in tasks])).group_by(Label.task_id)).all())
        rows = [(t, t.prompt.messages[-1]["content"], counts.get(t.id, 0))
                for t in tasks[:ITEMS_PAGE]]
    return render(request, "admin/items.html", p=p, rows=rows, kinds=TASK_KINDS, note=m,
                  f={"kind": kind, "gold": gold}, page=max(page, 0),
                  more=len(tasks) > ITEMS_PAGE)


@router.post("/p/{project_id}/items/{task_id}/gold")
def toggle_gold(request: Request, project_id: int, task_id: int, user: FormAdmin,
                mark: Annotated[bool, Form()] = False, kind: Annotated[str, Form()] = "",
                gold: Annotated[str, Form()] = "", page: Annotated[int, Form()] = 0) -> Response:
    """Mark an item gold with its labels' majority answer, or unmark it."""
    def do(s: Session) -> None:
        task = s.get(Task, task_id)
        if task is None or task.project_id != project_id:
            raise NotFound(f"no task {task_id} in project {project_id}")
        answer = review.majority_answer(s, task_id) if mark else None
        if mark and answer is None:
            raise StoreError(f"task {task_id} has no label to take the gold answer from; "
                             f"give it on /review/t/{task_id}")
        review.promote_to_gold(s, task_id, answer)

    store(request).run(do)
    back = urlencode({"kind": kind, "gold": gold, "page": page,
                      "m": f"{'gold' if mark else 'ungold'}-{task_id}"})
    return RedirectResponse(f"/admin/p/{project_id}/items?{back}#task-{task_id}",
                            status_code=303)


def _upload_records(data: bytes, filename: str) -> list[schema.Record]:
    """Records of an uploaded file in any format `coachlm data convert` reads (JSONL, JSON,
    Parquet, TRL and HH-RLHF shapes), chosen by its name; errors name the uploaded file."""
    name = Path(filename).name or "upload.jsonl"
    suffix = next((x for x in READ_SUFFIXES if name.lower().endswith(x)), ".jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return list(importer.read_file(path))
        except CoachError as e:
            raise StoreError(str(e).replace(str(path), name)) from None


@router.post("/p/{project_id}/import")
def import_file(request: Request, project_id: int, user: FormAdmin,
                file: Annotated[UploadFile, File()], gold: Annotated[bool, Form()] = False,
                n_labels: Annotated[int, Form()] = 1) -> Response:
    data = file.file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise StoreError("the file is too large to upload; use `coachlm label import`")
    records = _upload_records(data, file.filename or "upload.jsonl")
    with store(request).write() as s:
        counts = importer.import_records(s, _project(s, project_id), records, gold, n_labels)
    return _back(project_id, f"imported-{counts.records}")


@router.post("/p/{project_id}/tasks")
def create_tasks(request: Request, project_id: int, user: FormAdmin,
                 kind: Annotated[str, Form()], n_labels: Annotated[int, Form()] = 1,
                 max_per_prompt: Annotated[int, Form()] = 0, k: Annotated[int, Form()] = 0,
                 edit: Annotated[bool, Form()] = False) -> Response:
    spec = items.TaskSpec(kind, n_labels, max_per_prompt, k, edit)
    with store(request).write() as s:
        made = items.create_tasks(s, _project(s, project_id), spec)
    return _back(project_id, f"tasks-{made}")


@router.post("/p/{project_id}/assign")
def assign_tasks(request: Request, project_id: int, user: FormAdmin,
                 labeler: Annotated[list[int], Form()] = []) -> Response:  # noqa: B006
    with store(request).write() as s:
        labs = s.scalars(select(Labeler).where(Labeler.id.in_(labeler))).all()
        made = assign.assign_tasks(s, _project(s, project_id), labs)
    return _back(project_id, f"assigned-{made}")


@router.post("/p/{project_id}/guidelines")
def set_guidelines(request: Request, project_id: int, user: FormAdmin,
                   text: Annotated[str, Form()]) -> Response:
    with store(request).write() as s:
        items.add_guidelines(s, _project(s, project_id), text)
    return _back(project_id, "guidelines")


def _lines(text: str) -> dict[str, str]:
    """'KEY = meaning' per line (blank lines ignored) -> {KEY: meaning}."""
    out = {}
    for line in text.splitlines():
        key, sep, meaning = line.partition("=")
        if line.strip() and (not sep or not key.strip()):
            raise StoreError(f"each line must look like KEY = meaning, got {line.strip()!r}")
        if line.strip():
            out[key.strip()] = meaning.strip()
    return out


@router.post("/p/{project_id}/guidance")
def set_guidance(request: Request, project_id: int, user: FormAdmin,
                 anchors: Annotated[str, Form()] = "", flags: Annotated[str, Form()] = "",
                 skip_reasons: Annotated[str, Form()] = "",
                 quota: Annotated[int, Form()] = 0) -> Response:
    changes = {"anchors": _lines(anchors), "flag_descriptions": _lines(flags), "quota": quota,
               "skip_reasons": [r.strip() for r in skip_reasons.splitlines() if r.strip()]}
    with store(request).write() as s:
        guidance.update(_project(s, project_id), changes)
    return _back(project_id, "guidance")


@router.get("/p/{project_id}/quality")
def quality_page(request: Request, project_id: int, user: ReviewerUser,
                 source: str = "") -> Response:
    with store(request).read() as s:
        p = _project(s, project_id)
        report = quality.report(rows_for(s, p, check_source(source)))
    return render(request, "admin/quality.html", p=p, r=report, source=source)


@router.get("/p/{project_id}/ratings")
def ratings_page(request: Request, project_id: int, user: AdminUser,
                 rounds: int = 200, source: str = "") -> Response:
    sources = (check_source(source),) if source else ()
    with store(request).read() as s:
        p = _project(s, project_id)
        records = export_records(s, p, ExportConfig(kinds=("comparison", "ranking"),
                                                     sources=sources))
    matches = ratings.matches_from_records(records, ratings.by_model)
    board = ratings.leaderboard(matches, rounds=min(max(rounds, 0), 1000))
    elo = ratings.elo(matches)
    prompts = list(ratings.per_prompt(records, rounds=50).items())[:20]
    return render(request, "admin/ratings.html", p=p, board=board, elo=elo,
                  n_matches=len(matches), prompts=prompts, source=source, sources=SOURCES)


def export_config(kinds: str = "", exclude: str = "", min_agreement: float = 0.0,
                  min_gold_accuracy: float = 0.0, include_gold: bool = True,
                  sources: str = "") -> ExportConfig:
    split = lambda v: tuple(x.strip() for x in v.split(",") if x.strip())  # noqa: E731
    try:
        return ExportConfig(split(kinds), split(exclude), min_gold_accuracy, min_agreement,
                            include_gold, split(sources))
    except ValueError as e:
        raise StoreError(str(e)) from None


@router.get("/p/{project_id}/export")
def export(request: Request, project_id: int, user: AdminUser, kinds: str = "",
           exclude: str = "", min_agreement: float = 0.0, min_gold_accuracy: float = 0.0,
           include_gold: bool = False, sources: str = "") -> Response:
    cfg = export_config(kinds, exclude, min_agreement, min_gold_accuracy, include_gold, sources)
    return export_response(request, project_id, cfg)


def export_response(request: Request, project_id: int, cfg: ExportConfig) -> Response:
    with store(request).read() as s:
        p = _project(s, project_id)
        records = export_records(s, p, cfg)
    body = "".join(json.dumps(schema.to_dict(r), ensure_ascii=False) + "\n" for r in records)
    return Response(body, media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="{p.id}-labels.jsonl"'})


@router.get("/labelers")
def labelers(request: Request, user: AdminUser) -> Response:
    with store(request).read() as s:
        rows = s.scalars(select(Labeler).order_by(Labeler.name)).all()
    return render(request, "admin/labelers.html", labelers=rows, roles=ROLES, token="", who="")


@router.post("/labelers")
def create_labeler(request: Request, user: FormAdmin, name: Annotated[str, Form()],
                   password: Annotated[str, Form()], role: Annotated[str, Form()] = "labeler",
                   cost_per_label: Annotated[float, Form()] = 0.0) -> Response:
    hashed = accounts.hashed(password)  # slow: before the write transaction
    with store(request).write() as s:
        accounts.create_labeler(s, name, hashed, role, cost_per_label)
    return RedirectResponse("/admin/labelers", status_code=303)


@router.post("/labelers/{labeler_id}")
def update_labeler(request: Request, labeler_id: int, user: FormAdmin,
                   role: Annotated[str, Form()], cost_per_label: Annotated[float, Form()],
                   active: Annotated[bool, Form()] = False,
                   password: Annotated[str, Form()] = "") -> Response:
    hashed = accounts.hashed(password or None)  # slow: before the write transaction
    with store(request).write() as s:
        lab = s.get(Labeler, labeler_id)
        if lab is None:
            raise NotFound(f"no labeler {labeler_id}")
        if lab.id == user.id and (role != "admin" or not active):
            raise StoreError("you cannot remove your own admin role or deactivate yourself")
        accounts.update_labeler(s, lab.name, password=hashed, role=role,
                                cost_per_label=cost_per_label, active=active)
    return RedirectResponse("/admin/labelers", status_code=303)


@router.post("/labelers/{labeler_id}/token")
def new_token(request: Request, labeler_id: int, user: FormAdmin) -> Response:
    with store(request).write() as s:
        lab = s.get(Labeler, labeler_id)
        if lab is None:
            raise NotFound(f"no labeler {labeler_id}")
        token = accounts.issue_token(s, lab.name)
        name = lab.name
    # Shown once, on this page only; never logged or stored in the clear.
    with store(request).read() as s:
        rows = s.scalars(select(Labeler).order_by(Labeler.name)).all()
    return render(request, "admin/labelers.html", labelers=rows, roles=ROLES, token=token,
                  who=name)
