"""The store labeler: people (in the web app) or programmatic labelers (through the store API)
label the groups.

`StoreLabeler.label(groups)`:
  1. posts the groups to a feedback-store project: the prompts, the samples as responses (with
     their model and version) and one task per item: every pair of a group (comparisons; at most
     `max_pairs_per_group`, a seeded choice), one ranking of the group (rankings), or one rating
     per sample (ratings), each wanting `n_labels` labels;
  2. waits, polling every `poll_s`, until `quota` labels have been submitted on these tasks
     (default: every slot of every task) or `deadline_s` has passed;
  3. returns the labels submitted so far on these tasks as canonical records, with their
     provenance (labeler, source, time spent, the order shown, the guidelines version) and
     `meta["cost"]` (the labeler's cost per label) and `meta["sample_ids"]`.
Posting is idempotent (the store keys prompts, responses and tasks by content), so a second call
with the same groups reuses the same tasks and returns their labels without asking again.
At the deadline `label` returns what it has (possibly nothing); `last` says how it went.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coachlm.data.schema import Record, Response, Source, as_prompt
from coachlm.feedback.db import Store, StoreError
from coachlm.feedback.export import to_record
from coachlm.feedback.items import add_prompt, add_response, add_task, create_project
from coachlm.feedback.quality import load_labels
from coachlm.feedback.tables import Label, Project, Task
from coachlm.labelers.base import FeedbackKind, SampleGroup, check_kind

_TASK_KIND = {"comparisons": "comparison", "rankings": "ranking", "ratings": "rating"}


@dataclass(frozen=True)
class StoreLabelerConfig:
    project: str
    kind: FeedbackKind = "comparisons"
    n_labels: int = 1  # labels wanted per task, each from a different labeler
    max_pairs_per_group: int = 0  # comparisons: at most this many pairs per group (0: all)
    quota: int | None = None  # labels to wait for; None: every slot of every posted task
    deadline_s: float = 3600.0  # stop waiting after this long and return what is there
    poll_s: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_kind(self.kind)
        if self.n_labels < 1 or self.deadline_s < 0 or self.poll_s <= 0:
            raise ValueError("need n_labels >= 1, deadline_s >= 0 and poll_s > 0")
        if self.quota is not None and self.quota < 0:
            raise ValueError("quota must be >= 0")


@dataclass(frozen=True)
class Collection:
    """How the last `label` call went."""

    tasks: int
    wanted: int
    collected: int
    seconds: float
    timed_out: bool


class StoreLabeler:
    """Labels by whoever works on `cfg.project` in the store (see the module docstring)."""

    source: Source = "human"

    def __init__(self, store: Store, cfg: StoreLabelerConfig,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.store, self.cfg, self.clock, self.sleep = store, cfg, clock, sleep
        self.id = f"store:{cfg.project}"
        self.last: Collection | None = None

    def label(self, groups: Sequence[SampleGroup]) -> list[Record]:
        start = self.clock()
        task_ids = self.post(groups)
        wanted = self.cfg.quota if self.cfg.quota is not None else len(task_ids) * self.cfg.n_labels
        collected = self.count(task_ids)
        while collected < wanted and self.clock() - start < self.cfg.deadline_s:
            self.sleep(min(self.cfg.poll_s, max(self.cfg.deadline_s - (self.clock() - start), 0)))
            collected = self.count(task_ids)
        records = self.collect(task_ids)
        self.last = Collection(len(task_ids), wanted, collected, self.clock() - start,
                               collected < wanted)
        return records

    # ------------------------------------------------------------------------ the three steps

    def post(self, groups: Sequence[SampleGroup]) -> list[int]:
        """Put the groups into the project as tasks; returns their task ids (existing reused)."""
        return self.store.run(lambda s: self._post(s, groups))

    def _post(self, s: Session, groups: Sequence[SampleGroup]) -> list[int]:
        project = s.scalar(select(Project).where(Project.name == self.cfg.project))
        project = project or create_project(s, self.cfg.project)
        rng = random.Random(self.cfg.seed)
        kind = _TASK_KIND[self.cfg.kind]
        ids: list[int] = []
        for g in groups:
            prompt, _ = add_prompt(s, project, g.prompt, dict(g.samples[0].meta))
            rows = [add_response(s, prompt, x.response, {"sample_id": x.id})[0].id
                    for x in g.samples]
            rows = list(dict.fromkeys(rows))  # identical samples are one response
            for members in self._items(rows, rng):
                ids.append(add_task(s, project, kind, prompt, members, self.cfg.n_labels)[0].id)
        return list(dict.fromkeys(ids))

    def _items(self, rows: list[int], rng: random.Random) -> list[list[int]]:
        if self.cfg.kind == "ratings":
            return [[r] for r in rows]
        if len(rows) < 2:
            return []
        if self.cfg.kind == "rankings":
            return [rows]
        pairs = [[x, y] for i, x in enumerate(rows) for y in rows[i + 1:]]
        if self.cfg.max_pairs_per_group and len(pairs) > self.cfg.max_pairs_per_group:
            pairs = rng.sample(pairs, self.cfg.max_pairs_per_group)
        return pairs

    def count(self, task_ids: Sequence[int]) -> int:
        """Labels submitted so far on these tasks."""
        if not task_ids:
            return 0
        with self.store.read() as s:
            return s.scalar(select(func.count()).select_from(Label)
                            .where(Label.task_id.in_(list(task_ids)))) or 0

    def collect(self, task_ids: Sequence[int]) -> list[Record]:
        """The labels on these tasks as canonical records, in submission order."""
        wanted = set(task_ids)
        with self.store.read() as s:
            project = s.scalar(select(Project).where(Project.name == self.cfg.project))
            if project is None:
                raise StoreError(f"no project named {self.cfg.project!r}")
            rows = [r for r in load_labels(s, project) if r.task_id in wanted]
            tasks = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(wanted)))}
            out = []
            for r in rows:
                task = tasks[r.task_id]
                responses = _responses(task, r.response_ids)
                rec = to_record(r, project, as_prompt(task.prompt.messages),
                                [x for x, _ in responses], None)
                meta = {**rec.meta, "cost": r.cost, "sample_ids": [i for _, i in responses]}
                out.append(replace(rec, meta=meta))
        return out


def _responses(task: Task, response_ids: list[int]) -> list[tuple[Response, str | None]]:
    """The task's responses as schema Responses, with the id of the sample each came from."""
    by_id = {r.id: r for r in task.prompt.responses}
    return [(Response(by_id[i].text, by_id[i].model, by_id[i].model_version),
             (by_id[i].meta or {}).get("sample_id")) for i in response_ids]
