"""Projects, guidelines, prompts and responses, and the tasks made from them.

Imports are idempotent: prompts, responses and tasks carry a content hash (`key`), so importing
the same file twice adds nothing. Labeled records (comparisons, rankings, ratings) imported with
`gold=True` become gold items whose record answer is the known answer; imported without it,
their answer is kept as a label by the record's labeler (e.g. an AI labeler), so that human and
AI labels on the same items can be compared.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from coachlm.data import schema
from coachlm.feedback.accounts import create_labeler
from coachlm.feedback.db import NotFound, StoreError
from coachlm.feedback.labels import check_answer
from coachlm.feedback.tables import (DEFAULT_TTL_S, PENDING, TASK_KINDS, Assignment, Guideline,
                                     Label, Labeler, Project, Prompt, Response, Task)
from coachlm.feedback.text import check_text

DEFAULT_FLAGS = ("harmful", "fails_instruction", "made_up_facts", "unhelpful", "too_long")
MAX_SCALE = 100  # a rating scale is drawn as one button per point
MAX_LABELS = 100  # labels wanted per task
MAX_TEXT = 1_000_000  # guidelines, descriptions


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _check_long(text: str, where: str) -> str:
    if len(text) > MAX_TEXT:
        raise StoreError(f"{where} is longer than {MAX_TEXT:,} characters")
    return check_text(text, where)


def create_project(s: Session, name: str, description: str = "", rating_scale: int = 7,
                   flags: Iterable[str] = DEFAULT_FLAGS, guidelines: str = "",
                   assignment_ttl_s: int = DEFAULT_TTL_S) -> Project:
    """A new project. `assignment_ttl_s`: how long a claimed item stays reserved for its
    labeler before it is offered to someone else (0: for ever)."""
    name = _check_name(name)
    if s.scalar(select(Project).where(Project.name == name)) is not None:
        raise StoreError(f"project {name!r} already exists")
    if isinstance(rating_scale, bool) or not isinstance(rating_scale, int) or not (
            2 <= rating_scale <= MAX_SCALE):
        raise StoreError(f"rating_scale must be an integer from 2 to {MAX_SCALE}")
    _check_ttl(assignment_ttl_s)
    flags = [check_text(str(f), "a flag") for f in flags]
    project = Project(name=name, description=_check_long(description, "the description"),
                      rating_scale=rating_scale, flags=flags, assignment_ttl_s=assignment_ttl_s)
    s.add(project)
    s.flush()
    if guidelines:
        add_guidelines(s, project, guidelines)
    return project


def _check_name(name: str) -> str:
    """A project name that every route can reach: a name is part of API paths, and a line
    break (or another control character) in one would make the project unreachable there."""
    name = check_text(name.strip(), "a project name")
    if not name or len(name) > 100:
        raise StoreError("a project name must be 1 to 100 characters")
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise StoreError(f"a project name cannot contain line breaks or control characters "
                         f"(found U+{ord(bad):04X})")
    return name


def _check_ttl(ttl: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 10**8:
        raise StoreError("assignment_ttl_s must be a whole number of seconds >= 0 (0: never)")
    return ttl


def set_assignment_ttl(project: Project, ttl: int) -> None:
    """How long a claimed item stays reserved for its labeler (0: for ever); see assign.py."""
    project.assignment_ttl_s = _check_ttl(ttl)


_BY_NAME = select(Project).where(Project.name == bindparam("name"))


def get_project(s: Session, name: str) -> Project:
    project = s.scalar(_BY_NAME, {"name": name})
    if project is None:
        raise NotFound(f"no project named {name!r}")
    return project


def add_guidelines(s: Session, project: Project, text: str) -> Guideline:
    """A new version of the project's guidelines (earlier versions are kept)."""
    last = s.scalar(select(func.max(Guideline.version)).where(Guideline.project_id == project.id))
    g = Guideline(project_id=project.id, version=(last or 0) + 1,
                  text=_check_long(text, "the guidelines"))
    s.add(g)
    s.flush()
    return g


def guidelines(s: Session, project: Project) -> Guideline | None:
    return s.scalar(select(Guideline).where(Guideline.project_id == project.id)
                    .order_by(Guideline.version.desc()).limit(1))


def add_prompt(s: Session, project: Project, prompt: schema.Prompt,
               meta: dict[str, Any] | None = None) -> tuple[Prompt, bool]:
    """(prompt row, created): an identical conversation already in the project is reused."""
    messages = [{"role": m.role, "content": m.content} for m in schema.as_prompt(prompt)]
    key = _key(messages)
    row = s.scalar(select(Prompt).where(Prompt.project_id == project.id, Prompt.key == key))
    if row is None:
        row = Prompt(project_id=project.id, key=key, messages=messages, meta=dict(meta or {}))
        s.add(row)
        s.flush()
        return row, True
    return row, False


def add_response(s: Session, prompt: Prompt, response: schema.Response,
                 meta: dict[str, Any] | None = None) -> tuple[Response, bool]:
    key = _key(response.text, response.model, response.model_version)
    row = s.scalar(select(Response).where(Response.prompt_id == prompt.id, Response.key == key))
    if row is None:
        row = Response(prompt_id=prompt.id, key=key, text=response.text, model=response.model,
                       model_version=response.model_version, meta=dict(meta or {}))
        s.add(row)
        s.flush()
        return row, True
    return row, False


def _task_key(kind: str, prompt_id: int, response_ids: list[int]) -> str:
    # Order-free for comparisons/rankings/ratings: (a, b) and (b, a) are the same item.
    ids = response_ids if kind == "demonstration" else sorted(response_ids)
    return _key(kind, prompt_id, ids)


def add_task(s: Session, project: Project, kind: str, prompt: Prompt, response_ids: list[int],
             n_labels: int = 1, gold: dict[str, Any] | None = None) -> tuple[Task, bool]:
    """(task, created). An existing task with the same responses is returned as is."""
    if kind not in TASK_KINDS:
        raise StoreError(f"task kind must be one of {TASK_KINDS}, got {kind!r}")
    if not 1 <= n_labels <= MAX_LABELS:
        raise StoreError(f"n_labels must be from 1 to {MAX_LABELS}")
    key = _task_key(kind, prompt.id, response_ids)
    task = s.scalar(select(Task).where(Task.project_id == project.id, Task.key == key))
    if task is not None:
        return task, False
    task = Task(project_id=project.id, prompt_id=prompt.id, key=key, kind=kind,
                response_ids=list(response_ids), n_labels=n_labels, gold=gold)
    s.add(task)
    s.flush()
    return task, True


@dataclass(frozen=True)
class TaskSpec:
    """How to make tasks from a project's prompts and responses."""

    kind: str = "comparison"
    n_labels: int = 1  # labels wanted per task, each from a different labeler
    max_per_prompt: int = 0  # comparisons: at most this many pairs per prompt (0: all pairs)
    k: int = 0  # rankings: at most this many responses per ranking (0: all)
    edit: bool = True  # demonstrations: start from the prompt's first response as a draft
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise StoreError(f"task kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if not 1 <= self.n_labels <= MAX_LABELS:
            raise StoreError(f"n_labels must be from 1 to {MAX_LABELS}")
        if self.k == 1 or self.k < 0:
            raise StoreError("k (responses per ranking) must be 0 (all) or at least 2")
        if self.max_per_prompt < 0:
            raise StoreError("max_per_prompt must be 0 (all pairs) or more")


def _groups(spec: TaskSpec, prompt: Prompt, rng: random.Random) -> list[list[int]]:
    ids = [r.id for r in prompt.responses]
    if spec.kind == "comparison":
        pairs = [list(p) for p in itertools.combinations(ids, 2)]
        rng.shuffle(pairs)
        return pairs[: spec.max_per_prompt] if spec.max_per_prompt else pairs
    if spec.kind == "ranking":
        return [ids[: spec.k] if spec.k else ids] if len(ids) >= 2 else []
    if spec.kind == "rating":
        return [[i] for i in ids]
    return [ids[:1] if spec.edit else []]


def create_tasks(s: Session, project: Project, spec: TaskSpec) -> int:
    """Make `spec.kind` tasks over all the project's prompts; returns how many are new."""
    rng = random.Random(spec.seed)
    made = 0
    prompts = s.scalars(select(Prompt).where(Prompt.project_id == project.id).order_by(Prompt.id))
    for prompt in prompts:
        for ids in _groups(spec, prompt, rng):
            made += add_task(s, project, spec.kind, prompt, ids, spec.n_labels)[1]
    return made


def set_gold(s: Session, task: Task, answer: dict[str, Any] | None) -> None:
    """Mark `task` as a gold item with a known answer (canonical form), or unmark it (None).
    A rating is checked against its project's own scale and flags, as labels are."""
    if not answer:
        task.gold = None
        return
    project = s.get(Project, task.project_id)
    task.gold = check_answer(task.kind, answer, len(task.response_ids), project.rating_scale,
                             project.flags)


def labeler_for_record(s: Session, record: schema.Record) -> Labeler:
    """The labeler account that imported labels are filed under (created without a password).

    Labels are only ever filed under an account of the record's own source: an AI labeler
    named like a person gets its own account ("name (ai)"), so that its labels are never
    counted, or exported, as that person's."""
    name = record.labeler or f"{record.source}-labeler"
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    if lab is not None and lab.source != record.source:
        name = f"{name[:90]} ({record.source})"
        lab = s.scalar(select(Labeler).where(Labeler.name == name))
    return lab or create_labeler(s, name, source=record.source)


@dataclass(frozen=True)
class ProjectStats:
    prompts: int
    responses: int
    tasks: dict[str, int]  # per kind
    gold: int
    labels: int
    assignments_pending: int
    cost: float


def project_stats(s: Session, project: Project) -> ProjectStats:
    pid = project.id
    count = lambda q: s.scalar(q) or 0  # noqa: E731
    tasks = dict(s.execute(select(Task.kind, func.count()).where(Task.project_id == pid)
                           .group_by(Task.kind)).all())
    return ProjectStats(
        prompts=count(select(func.count()).select_from(Prompt).where(Prompt.project_id == pid)),
        responses=count(select(func.count()).select_from(Response).join(Prompt)
                        .where(Prompt.project_id == pid)),
        tasks=tasks,
        gold=count(select(func.count()).select_from(Task).where(Task.project_id == pid,
                                                                Task.gold.is_not(None))),
        labels=count(select(func.count()).select_from(Label).join(Task)
                     .where(Task.project_id == pid)),
        assignments_pending=count(select(func.count()).select_from(Assignment).join(Task).where(
            Task.project_id == pid, Assignment.status == PENDING)),
        cost=float(count(select(func.sum(Label.cost)).join(Task).where(Task.project_id == pid))),
    )
