"""Importing feedback records (`coachlm sample` output and any canonical records) into a project.

- PromptRecord: a prompt; Sample: a prompt and a response (with its model and version);
- Demonstration: a prompt and the demonstrated response (kept as a response);
- Comparison / Ranking / Rating: the prompt, the responses and a task of that kind; with
  `gold=True` the record's answer becomes the task's known (gold) answer, otherwise it is kept as
  a label by the record's labeler (e.g. an AI labeler, RLAIF), outside the task's human slots.

Re-importing a file adds nothing: rows are keyed by content and labels by the record id.
Importing an export of one project into another project of the same store keeps its labels:
a record id already used by a label of another project gets a derived id in this one.
Every string of every record is checked for text that cannot be stored (`text.check_tree`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.data import schema
from coachlm.errors import DataError
from coachlm.feedback.items import add_prompt, add_response, add_task, labeler_for_record
from coachlm.feedback.labels import check_answer, permute
from coachlm.feedback.tables import DONE, Assignment, Label, Project, Task
from coachlm.feedback.text import check_tree


@dataclass
class ImportCounts:
    records: int = 0
    prompts: int = 0
    responses: int = 0
    tasks: int = 0
    labels: int = 0
    gold: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def parse_lines(lines: Iterable[str], where: str = "<upload>") -> Iterator[schema.Record]:
    """Records from JSON lines (blank lines skipped); errors name the line and field."""
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield schema.from_dict(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(where, i, None, f"not valid JSON: {e.msg}") from None
        except schema.SchemaError as e:
            raise DataError(where, i, e.field, e.message) from None


def parse_text(text: str, where: str = "<upload>") -> Iterator[schema.Record]:
    """Records from a whole JSONL text. Lines end at "\n" only: `str.splitlines` would also
    split at U+2028, U+0085 and other characters that JSON strings may hold unescaped."""
    return parse_lines(text.split("\n"), where)


def read_file(path: str | Path) -> Iterator[schema.Record]:
    """Records from a file: via `coachlm.data.io` when present (JSONL, JSON, Parquet, saved
    datasets, TRL/HH-RLHF formats), else JSONL line by line."""
    try:
        from coachlm.data.io import read_records  # type: ignore[attr-defined]
    except ImportError:
        read_records = None
    if read_records is not None:
        yield from read_records(path)
        return
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    with path.open(encoding="utf-8") as f:
        yield from parse_lines(f, str(path))


def _answer(record: schema.Record) -> tuple[str, dict[str, Any], list[schema.Response]]:
    if isinstance(record, schema.Comparison):
        return "comparison", {"choice": record.choice, "margin": record.margin}, [record.a, record.b]
    if isinstance(record, schema.Ranking):
        return "ranking", {"ranks": list(record.ranks)}, list(record.responses)
    assert isinstance(record, schema.Rating)
    return "rating", {"score": record.score, "scale": record.scale, "flags": list(record.flags),
                      "critique": record.critique}, [record.response]


def _client_id(s: Session, task: Task, record_id: str) -> str | None:
    """The client id of this record's label in the task's project (None: already imported)."""
    derived = f"p{task.project_id}-" + hashlib.sha256(record_id.encode()).hexdigest()[:40]
    taken = dict(s.execute(select(Label.client_id, Task.project_id).join(
        Task, Label.task_id == Task.id).where(Label.client_id.in_([record_id, derived]))).all())
    if task.project_id in taken.values():
        return None
    return derived if record_id in taken or len(record_id) > 64 else record_id


def _label(s: Session, task: Task, record: schema.Record, answer: dict[str, Any],
           order: list[int]) -> int:
    client_id = _client_id(s, task, record.id)
    if client_id is None:
        return 0
    lab = labeler_for_record(s, record)
    if s.scalar(select(Assignment.id).where(Assignment.task_id == task.id,
                                            Assignment.labeler_id == lab.id)) is not None:
        return 0  # this labeler already answered this item
    # The order the record's labeler saw, as indices into the task's response order.
    seen = [1, 0] if getattr(record, "shown_order", None) == "ba" else list(range(len(order)))
    shown = [order.index(i) for i in seen]
    created = _parse_time(record.created_at)
    a = Assignment(task_id=task.id, labeler_id=lab.id, slot=None, status=DONE, shown_order=shown,
                   done_at=created)
    s.add(a)
    s.flush()
    s.add(Label(client_id=client_id, assignment_id=a.id, task_id=task.id, labeler_id=lab.id,
                answer=answer, time_spent_s=record.time_spent_s, cost=0.0,
                **({"created_at": created} if created else {})))
    return 1


def _parse_time(value: str | None) -> datetime | None:
    try:
        t = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t and t.tzinfo else t


def import_records(s: Session, project: Project, records: Iterable[schema.Record],
                   gold: bool = False, n_labels: int = 1) -> ImportCounts:
    """Add `records` to `project` (see the module docstring); returns what was added."""
    counts = ImportCounts()
    for record in records:
        counts.records += 1
        check_tree(schema.to_dict(record), f"record {counts.records}")
        kind_name = schema.KIND_OF[type(record)]
        counts.by_kind[kind_name] = counts.by_kind.get(kind_name, 0) + 1
        prompt, created = add_prompt(s, project, record.prompt, dict(record.meta))
        counts.prompts += created
        if isinstance(record, schema.PromptRecord):
            continue
        if isinstance(record, (schema.Sample, schema.Demonstration)):
            responses = [record.response]
        else:
            kind, answer, responses = _answer(record)
        ids = []
        for r in responses:
            row, created = add_response(s, prompt, r)
            ids.append(row.id)
            counts.responses += created
        if isinstance(record, (schema.Sample, schema.Demonstration)):
            continue
        if len(set(ids)) != len(ids):
            continue  # the same response twice: nothing to compare
        task, created = add_task(s, project, kind, prompt, ids, n_labels)
        counts.tasks += created
        scale = answer.get("scale", project.rating_scale)
        answer = check_answer(kind, answer, len(ids), scale)
        # The task may list the same responses in another order (made from an earlier record).
        order = [ids.index(i) for i in task.response_ids]
        answer = permute(kind, answer, order)
        if gold:
            task.gold = answer
            counts.gold += 1
        else:
            counts.labels += _label(s, task, record, answer, order)
    return counts
