"""Assignment: each task goes to `n_labels` different labelers, never to one labeler twice.

Two ways, both safe under concurrency because the database enforces the rules itself
(unique (task, labeler) and unique (task, slot), slot in 0..n_labels-1):

- `assign_tasks` deals a project's tasks out up front, round-robin over the least loaded;
- `next_assignment` hands a labeler their oldest pending assignment, or claims a free slot on
  the next task they have not seen (how Label Studio's "overlap" works). Two labelers racing
  for the last slot of a task: one insert fails on the unique constraint and is retried.

Each assignment fixes a random order in which the task's responses are shown (blind, with no
model names), so that position bias can be measured and averaged out.

The claim path (`next_assignment_id`) is SQLAlchemy Core: the JSON API calls it for every item,
and loading ORM objects cost more than the queries; `next_assignment` wraps it for ORM callers.

Expiry: a pending assignment older than its project's `assignment_ttl_s` loses its slot
(status "expired") when someone next claims work in that project, so an absent labeler cannot
hold items for ever. A late answer to an expired assignment is still kept if the task has a
free slot at that moment (`retake_slot`); otherwise it is refused with a Conflict.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from coachlm.feedback.db import NotFound, StoreError
from coachlm.feedback.tables import (DONE, EXPIRED, MAX_ID, PENDING, SKIPPED, Assignment, Labeler,
                                     Project, Task, utcnow)


def _shown_order(n: int, rng: random.Random) -> list[int]:
    order = list(range(n))
    rng.shuffle(order)
    return order


# The claim path in SQLAlchemy Core, statements built once: building a statement, and loading
# ORM objects, costs more Python time than SQLite takes to run the query (issue 12: the claim
# and submit of one label took ~18 ms of server CPU through the ORM). Values are bound per call.
_A, _T = Assignment.__table__, Task.__table__
_TAKEN = select(_A.c.slot).where(_A.c.task_id == bindparam("task"), _A.c.slot.is_not(None))
_PENDING = (select(_A.c.id).join(_T, _A.c.task_id == _T.c.id).where(
    _A.c.labeler_id == bindparam("labeler"), _A.c.status == PENDING,
    _T.c.project_id == bindparam("project")).order_by(_A.c.id).limit(1))
_OPEN = (select(_T.c.id, _T.c.n_labels, _T.c.response_ids).where(
    _T.c.project_id == bindparam("project"), _T.c.filled < _T.c.n_labels,
    _T.c.id.not_in(select(_A.c.task_id).where(_A.c.labeler_id == bindparam("labeler"))))
    .order_by(_T.c.id).limit(1))
_OPEN_SKIP, _OPEN_WAIT = _OPEN.with_for_update(skip_locked=True), _OPEN.with_for_update()
_STALE = (select(_A.c.id, _A.c.task_id).join(_T, _A.c.task_id == _T.c.id).where(
    _A.c.status == PENDING, _T.c.project_id == bindparam("project"),
    _A.c.created_at < bindparam("cutoff")).with_for_update(of=_A, skip_locked=True))
_NEW = insert(_A)
_FILL = update(_T).where(_T.c.id == bindparam("tid")).values(
    filled=_T.c.filled + bindparam("delta"))  # atomic in SQL, never read-modify-write
_EXPIRE = update(_A).where(_A.c.id == bindparam("aid")).values(
    status=EXPIRED, slot=None, done_at=bindparam("now"))


def _free_slot(s: Session, task: Task | Row[Any]) -> int | None:
    taken = set(s.scalars(_TAKEN, {"task": task.id}))
    return next((i for i in range(task.n_labels) if i not in taken), None)


def assign_tasks(s: Session, project: Project, labelers: Sequence[Labeler],
                 seed: int = 0) -> int:
    """Fill every free slot of the project's tasks from `labelers`, least loaded first, never
    giving a labeler the same task twice. Returns how many assignments were made."""
    if not labelers:
        raise StoreError("no labelers to assign to")
    rng = random.Random(seed)
    load = {lab.id: 0 for lab in labelers}
    made = 0
    for task in s.scalars(select(Task).where(Task.project_id == project.id).order_by(Task.id)):
        have = set(s.scalars(select(Assignment.labeler_id).where(Assignment.task_id == task.id)))
        while (slot := _free_slot(s, task)) is not None:
            free = [lab for lab in labelers if lab.id not in have]
            if not free:
                break
            lab = min(free, key=lambda x: (load[x.id], rng.random()))
            s.add(Assignment(task_id=task.id, labeler_id=lab.id, slot=slot,
                             shown_order=_shown_order(len(task.response_ids), rng)))
            task.filled = Task.filled + 1  # an atomic increment in SQL
            s.flush()
            have.add(lab.id)
            load[lab.id] += 1
            made += 1
    return made


def pending(s: Session, labeler: Labeler, project: Project) -> Assignment | None:
    found = s.scalar(_PENDING, {"labeler": labeler.id, "project": project.id})
    return None if found is None else s.get(Assignment, found)


def claim_id(s: Session, labeler_id: int, project_id: int,
             rng: random.Random | None = None) -> int | None:
    """Claim a free slot on the oldest task this labeler has never had; its assignment id
    (None if there is none).

    PostgreSQL: the task row is locked FOR UPDATE SKIP LOCKED, the job-queue idiom, so that
    concurrent claimers take different tasks instead of colliding on one slot; if every open
    task is locked at that instant, wait for one rather than wrongly report an empty queue.
    SQLite: writers are serialized, so the first open task is simply free.
    """
    flush_orm(s)
    ids = {"project": project_id, "labeler": labeler_id}
    task = s.execute(_OPEN_SKIP, ids).first() or s.execute(_OPEN_WAIT, ids).first()
    if task is None:
        return None
    slot = _free_slot(s, task)
    if slot is None:
        return None
    # The unique (task, slot) constraint stays the last line of defence against a race.
    new = s.execute(_NEW, {"task_id": task.id, "labeler_id": labeler_id, "slot": slot,
                           "status": PENDING, "created_at": utcnow(), "shown_order":
                           _shown_order(len(task.response_ids), rng or random.Random())})
    s.execute(_FILL, {"tid": task.id, "delta": 1})
    return new.inserted_primary_key[0]


def expire_stale(s: Session, project_id: int, ttl_s: int) -> int:
    """Free the slots of the project's pending assignments older than `ttl_s`; how many.
    PostgreSQL: rows another transaction holds (a submit in progress) are skipped."""
    if not ttl_s:
        return 0
    now = utcnow()
    stale = s.execute(_STALE, {"project": project_id,
                               "cutoff": now - timedelta(seconds=ttl_s)}).all()
    if stale:
        s.execute(_EXPIRE, [{"aid": a_id, "now": now} for a_id, _ in stale])
        s.execute(_FILL, [{"tid": task_id, "delta": -1} for _, task_id in stale])
    return len(stale)


def next_assignment_id(s: Session, labeler_id: int, project: Project | Row[Any]) -> int | None:
    """The labeler's oldest pending assignment in `project`, else a newly claimed one (after
    expiring stale assignments, whose slots are then free to claim): its id. Core statements
    only; `s` may hold ORM changes (they are flushed first)."""
    flush_orm(s)
    found = s.scalar(_PENDING, {"labeler": labeler_id, "project": project.id})
    if found is None:
        expire_stale(s, project.id, project.assignment_ttl_s)
        found = claim_id(s, labeler_id, project.id)
    return found


def claim(s: Session, labeler: Labeler, project: Project,
          rng: random.Random | None = None) -> Assignment | None:
    """`claim_id` for ORM callers: the new Assignment (None if there is no free task)."""
    found = claim_id(s, labeler.id, project.id, rng)
    return None if found is None else _loaded(s, found)


def expire(s: Session, project: Project) -> int:
    return expire_stale(s, project.id, project.assignment_ttl_s)


def flush_orm(s: Session) -> None:
    """Send the session's pending ORM changes before Core statements read the same rows."""
    if s.new or s.dirty or s.deleted:
        s.flush()


def _loaded(s: Session, assignment_id: int) -> Assignment:
    """The assignment as an ORM object, refreshed (Core statements may have changed its row
    or its task's row behind the session's back)."""
    a = s.get(Assignment, assignment_id, populate_existing=True)
    task = s.identity_map.get(Session.identity_key(Task, a.task_id))
    if task is not None:
        s.expire(task)
    return a


def retake_slot(s: Session, a: Assignment) -> bool:
    """Give an expired assignment a free slot of its task again (False: the task is full)."""
    task = s.scalar(select(Task).where(Task.id == a.task_id).with_for_update())
    slot = _free_slot(s, task)
    if slot is None:
        return False
    a.slot, a.status = slot, PENDING
    task.filled = Task.filled + 1
    s.flush()
    return True


def next_assignment(s: Session, labeler: Labeler, project: Project | None) -> Assignment | None:
    """`next_assignment_id` for ORM callers (the pages, the pipeline): the Assignment."""
    if project is None:
        raise NotFound("no such project")
    found = next_assignment_id(s, labeler.id, project)
    return None if found is None else _loaded(s, found)


def get_assignment(s: Session, labeler: Labeler, assignment_id: int,
                   lock: bool = False) -> Assignment:
    """One of `labeler`'s own assignments; anyone else's is reported as not found.
    `lock`: lock its row for this transaction (PostgreSQL FOR UPDATE)."""
    if not 1 <= assignment_id <= MAX_ID:
        raise NotFound(f"no assignment {assignment_id} for {labeler.name}")
    q = select(Assignment).where(Assignment.id == assignment_id)
    a = s.scalar(q.with_for_update() if lock else q)
    if a is None or a.labeler_id != labeler.id:
        raise NotFound(f"no assignment {assignment_id} for {labeler.name}")
    return a


def skip(s: Session, labeler: Labeler, assignment_id: int) -> None:
    """Give the task back: its slot is freed for another labeler, never re-offered to this one."""
    a = get_assignment(s, labeler, assignment_id)
    if a.status == PENDING:
        a.status, a.slot, a.done_at = SKIPPED, None, utcnow()
        a.task.filled = Task.filled - 1


@dataclass(frozen=True)
class Progress:
    done: int
    pending: int
    available: int  # tasks with a free slot this labeler could still claim


def progress(s: Session, labeler: Labeler, project: Project) -> Progress:
    counts = dict(s.execute(select(Assignment.status, func.count()).join(Task).where(
        Assignment.labeler_id == labeler.id, Task.project_id == project.id)
        .group_by(Assignment.status)).all())
    mine = select(Assignment.task_id).where(Assignment.labeler_id == labeler.id)
    available = s.scalar(select(func.count()).select_from(Task).where(
        Task.project_id == project.id, Task.id.not_in(mine), Task.filled < Task.n_labels)) or 0
    return Progress(counts.get(DONE, 0), counts.get(PENDING, 0), available)
