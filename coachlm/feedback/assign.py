"""Assignment: each task goes to `n_labels` different labelers, never to one labeler twice.

Two ways, both safe under concurrency because the database enforces the rules itself
(unique (task, labeler) and unique (task, slot), slot in 0..n_labels-1):

- `assign_tasks` deals a project's tasks out up front, round-robin over the least loaded;
- `next_assignment` hands a labeler their oldest pending assignment, or claims a free slot on
  the next task they have not seen (how Label Studio's "overlap" works). Two labelers racing
  for the last slot of a task: one insert fails on the unique constraint and is retried.

Each assignment fixes a random order in which the task's responses are shown (blind, with no
model names), so that position bias can be measured and averaged out.

The claim path (`next_assignment_id`, `next_view`) is plain SQL on the driver connection
(`sql.py`): the JSON API calls it for every item, and the ORM and Core cost more than the
queries; on PostgreSQL it is one statement (`_CLAIM_PG`). `next_assignment` wraps it for ORM
callers.

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

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from coachlm.feedback import views
from coachlm.feedback.db import NotFound, StoreError
from coachlm.feedback.tables import (DONE, MAX_ID, PENDING, SKIPPED, Assignment, Labeler,
                                     Project, Task, utcnow)
from coachlm.feedback.sql import Db, Sql


def _shown_order(n: int, rng: random.Random) -> list[int]:
    order = list(range(n))
    rng.shuffle(order)
    return order


# The claim path as plain SQL on the driver connection (`sql.py`): through the ORM a label's
# claim and submit took ~18 ms of server CPU, through Core ~9 ms (issue 12). Claiming is one
# UPDATE that picks the oldest open task this labeler has never had and counts the slot in
# the same statement (PostgreSQL: the task row is locked FOR NO KEY UPDATE SKIP LOCKED, the
# job-queue idiom, so that concurrent claimers take different tasks), then one INSERT.
_PENDING = ("SELECT a.id FROM assignments a JOIN tasks t ON a.task_id = t.id "
            "WHERE a.labeler_id = ? AND a.status = 'pending' AND t.project_id = p.id "
            "ORDER BY a.id LIMIT 1")
# A project's id and time-to-live with the labeler's oldest pending assignment there.
_NEXT = "SELECT p.id, p.assignment_ttl_s, ({pending}) FROM projects p WHERE p.{key} = ?"
_NEXT_BY_ID = Sql(_NEXT.format(pending=_PENDING, key="id"))
_NEXT_BY_NAME = Sql(_NEXT.format(pending=_PENDING, key="name"))
_EXPIRE = Sql("UPDATE assignments SET status = 'expired', slot = NULL, done_at = ? "
              "WHERE id IN (SELECT a.id FROM assignments a JOIN tasks t ON a.task_id = t.id "
              "WHERE a.status = 'pending' AND t.project_id = ? AND a.created_at < ?{lock}) "
              "RETURNING task_id", lock=" FOR UPDATE OF a SKIP LOCKED")
_OPEN = ("UPDATE tasks SET filled = filled + 1 WHERE id = (SELECT t.id FROM tasks t "
         "WHERE t.project_id = ? AND t.filled < t.n_labels AND t.id NOT IN "
         "(SELECT task_id FROM assignments WHERE labeler_id = ?) ORDER BY t.id LIMIT 1{lock}) "
         "RETURNING id, n_labels, response_ids")
# If every open task is locked at that instant, wait for one rather than wrongly report an
# empty queue (PostgreSQL; SQLite runs only the first). The lock is FOR NO KEY UPDATE, the
# lock an UPDATE of `filled` takes anyway: FOR UPDATE also conflicts with the FOR KEY SHARE
# lock that inserting a label or an assignment takes on its task (the foreign key check), so
# a claim and another transaction's submit on one task waited for each other, and two server
# workers' group-commit batches deadlocked (a 1 s stall, issue 12).
_TASK_LOCK = " FOR NO KEY UPDATE"
_OPEN_SKIP = Sql(_OPEN, _TASK_LOCK + " SKIP LOCKED")
_OPEN_WAIT = Sql(_OPEN, _TASK_LOCK)
_TAKE = Sql("UPDATE tasks SET filled = filled + 1 WHERE id = ? AND filled < n_labels "
            "RETURNING n_labels")
_FILL = Sql("UPDATE tasks SET filled = filled + ? WHERE id = ?")  # atomic in SQL
_TAKEN = Sql("SELECT slot FROM assignments WHERE task_id = ? AND slot IS NOT NULL")
_NEW = Sql("INSERT INTO assignments (task_id, labeler_id, slot, status, shown_order, "
           "created_at) VALUES (?, ?, ?, 'pending', ?, ?) RETURNING id")
_RETAKE = Sql("UPDATE assignments SET slot = ?, status = 'pending' WHERE id = ?")

# PostgreSQL: a whole claim is ONE statement (data-modifying CTEs, which SQLite lacks: there
# the steps above run one by one): the project; the labeler's oldest pending assignment there;
# whether any pending assignment is stale (then nothing is claimed: the caller expires them
# first, so that their slots can be claimed; the check is an index range scan that finds
# nothing unless something is stale); else the claim of a free slot on the next task, with a
# random shown order; and the view of the assignment handed out (`views.py`). Every statement
# is a sequential round trip in a group commit's transaction, and a label was ~9 of them
# (issue 12). A slot chosen here may have been taken by a transaction that committed after
# this statement's snapshot (the task's row lock is current, the slot read is not): the insert
# then does nothing, and the caller picks the slot again with a fresh snapshot.
_CLAIM_PG = """WITH p AS (SELECT id, assignment_ttl_s FROM projects WHERE {key} = ?),
own AS MATERIALIZED (SELECT id, task_id FROM assignments WHERE labeler_id = ?
  AND status = 'pending'),
mine AS (SELECT own.id FROM own JOIN tasks t ON own.task_id = t.id JOIN p
  ON t.project_id = p.id ORDER BY own.id LIMIT 1),
old AS MATERIALIZED (SELECT task_id FROM assignments WHERE ? AND status = 'pending'
  AND created_at < ?::timestamp - (SELECT assignment_ttl_s FROM p) * interval '1 second'
  AND (SELECT assignment_ttl_s FROM p) > 0),
stale AS (SELECT 1 FROM old JOIN tasks t ON old.task_id = t.id JOIN p ON t.project_id = p.id
  LIMIT 1),
task AS (UPDATE tasks SET filled = filled + 1 WHERE id = (SELECT t.id FROM tasks t JOIN p
  ON t.project_id = p.id WHERE t.filled < t.n_labels
  AND t.id NOT IN (SELECT task_id FROM assignments WHERE labeler_id = ?)
  AND NOT EXISTS (SELECT 1 FROM mine) AND NOT EXISTS (SELECT 1 FROM stale)
  ORDER BY t.id LIMIT 1 FOR NO KEY UPDATE OF t SKIP LOCKED) RETURNING id, n_labels, response_ids),
new AS (INSERT INTO assignments (task_id, labeler_id, slot, status, shown_order, created_at)
  SELECT task.id, ?, f.slot, 'pending', (SELECT json_agg(i ORDER BY random())
    FROM generate_series(0, json_array_length(task.response_ids) - 1) i), ?
  FROM task, LATERAL (SELECT min(i) AS slot FROM generate_series(0, task.n_labels - 1) i
    WHERE i NOT IN (SELECT slot FROM assignments WHERE task_id = task.id AND slot IS NOT NULL)
  ) f WHERE f.slot IS NOT NULL ON CONFLICT DO NOTHING
  RETURNING id, task_id, status, shown_order, labeler_id),
given AS (SELECT * FROM new UNION ALL SELECT id, task_id, status, shown_order, labeler_id
  FROM assignments WHERE id = (SELECT id FROM mine))
SELECT p.id, p.assignment_ttl_s, EXISTS (SELECT 1 FROM stale), task.id, task.n_labels,
  task.response_ids, v.* FROM p LEFT JOIN task ON true LEFT JOIN ({view}) v ON true"""
_CLAIM_BY = {key: Sql(_CLAIM_PG.format(key=key, view=views.VIEW_PG.format(a="given")))
             for key in ("id", "name")}


def _slot(db: Db, task_id: int, n_labels: int) -> int | None:
    """The lowest free slot of a task (its slots are 0..n_labels-1)."""
    taken = {r[0] for r in db.rows(_TAKEN, (task_id,))}
    return next((i for i in range(n_labels) if i not in taken), None)


def _free_slot(s: Session, task: Task | Row[Any]) -> int | None:
    return _slot(Db.of(s), task.id, task.n_labels)


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
    found = Db.of(s).row(_NEXT_BY_ID, (labeler.id, project.id))
    return None if found is None or found[2] is None else s.get(Assignment, found[2])


def claim_id(s: Session, labeler_id: int, project_id: int,
             rng: random.Random | None = None) -> int | None:
    """Claim a free slot on the oldest task this labeler has never had; its assignment id
    (None if there is none). The unique (task, slot) and (task, labeler) constraints stay the
    last line of defence against a race (a violation is retried by `Store.run`)."""
    flush_orm(s)
    db = Db.of(s)
    task = db.row(_OPEN_SKIP, (project_id, labeler_id))
    if task is None and db.pg:
        task = db.row(_OPEN_WAIT, (project_id, labeler_id))
    return None if task is None else _take(db, labeler_id, *task, rng=rng)


def _take(db: Db, labeler_id: int, task_id: int, n_labels: int, response_ids: Any,
          rng: random.Random | None = None) -> int | None:
    """The assignment of a free slot of a task whose count already includes it."""
    slot = _slot(db, task_id, n_labels)
    if slot is None:  # `filled` disagreed with the slots (never expected): undo the count
        db.do(_FILL, (-1, task_id))
        return None
    order = _shown_order(len(db.parse(response_ids)), rng or random.Random())
    return db.row(_NEW, (task_id, labeler_id, slot, db.json(order), db.time(utcnow())))[0]


def expire_stale(s: Session, project_id: int, ttl_s: int) -> int:
    """Free the slots of the project's pending assignments older than `ttl_s`; how many.
    PostgreSQL: rows another transaction holds (a submit in progress) are skipped."""
    if not ttl_s:
        return 0
    db, now = Db.of(s), utcnow()
    stale = db.rows(_EXPIRE, (db.time(now), project_id,
                              db.time(now - timedelta(seconds=ttl_s))))
    if stale:
        db.many(_FILL, [(-1, task_id) for task_id, in stale])
    return len(stale)


def next_assignment_id(s: Session, labeler_id: int, project: Project | str) -> int | None:
    """The labeler's oldest pending assignment in `project` (an ORM object, or a project's
    name: NotFound if there is none), else a newly claimed one (after expiring stale
    assignments, whose slots are then free to claim): its id. Plain SQL only; `s` may hold ORM
    changes (they are flushed first)."""
    found = _next(s, labeler_id, project)
    return None if found is None else found[0]


def next_view(s: Session, labeler_id: int, project: str) -> views.AssignmentView | None:
    """`next_assignment_id`, as the labeler sees it (on PostgreSQL, in the same statement)."""
    found = _next(s, labeler_id, project)
    if found is None:
        return None
    assignment_id, row = found
    return views.view_of(Db.of(s), row) if row else views.assignment_view(
        s, labeler_id, assignment_id)


def _next(s: Session, labeler_id: int, project: Project | str
          ) -> tuple[int, Sequence[Any] | None] | None:
    """`next_assignment_id` with the view's row when the statement read it (PostgreSQL)."""
    flush_orm(s)
    db, key = Db.of(s), project if isinstance(project, str) else project.id
    if db.pg:
        return _next_pg(s, db, labeler_id, key)
    found = db.row(_NEXT_BY_NAME if isinstance(key, str) else _NEXT_BY_ID, (labeler_id, key))
    if found is None:
        raise NotFound(f"no project named {project!r}")
    project_id, ttl_s, pending_id = found
    if pending_id is not None:
        return pending_id, None
    expire_stale(s, project_id, ttl_s)
    claimed = claim_id(s, labeler_id, project_id)
    return None if claimed is None else (claimed, None)


def _next_pg(s: Session, db: Db, labeler_id: int, key: int | str
             ) -> tuple[int, Sequence[Any] | None] | None:
    q, check = _CLAIM_BY["name" if isinstance(key, str) else "id"], True
    while True:
        now = utcnow()
        row = db.row(q, (key, labeler_id, check, now, labeler_id, labeler_id, now))
        if row is None:
            raise NotFound(f"no project named {key!r}")
        project_id, ttl_s, stale, task_id, n_labels, response_ids, *view = row
        if view[0] is not None:  # the pending assignment, or the one just claimed
            return view[0], view
        if not stale:
            break
        expire_stale(s, project_id, ttl_s)  # then claim, without checking again
        check = False
    if task_id is not None:  # its slot was taken after this statement's snapshot
        claimed = _take(db, labeler_id, task_id, n_labels, response_ids)
    else:  # no free task, or each one locked at that instant: wait for one (`claim_id`)
        claimed = claim_id(s, labeler_id, project_id)
    return None if claimed is None else (claimed, None)


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


def retake_slot(s: Session, assignment_id: int, task_id: int) -> bool:
    """Give an expired assignment a free slot of its task again (False: the task is full)."""
    db = Db.of(s)
    task = db.row(_TAKE, (task_id,))  # counts the slot, and locks the task on PostgreSQL
    slot = None if task is None else _slot(db, task_id, task[0])
    if slot is None:
        if task is not None:
            db.do(_FILL, (-1, task_id))
        return False
    db.do(_RETAKE, (slot, assignment_id))
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
