"""The `label` stage: feedback on a stage's samples, from simulated labelers directly or through
the feedback store (tasks in a project; people in the web app, or simulated labelers working
through the same store API), so that every label of every round lives in the store with its
project (round), source and labeler.

Through the store: (1) post the sample groups as tasks (idempotent: the store keys prompts,
responses and tasks by content); (2) simulated workers, if asked, claim and answer assignments,
one transaction per label, each with a client id derived from its assignment, so a label is
acknowledged only once committed and a retry after a crash returns it instead of adding a
second; (3) wait until the quota is labeled or the deadline passes, showing progress (Ctrl-C
and kill are safe: labels are in the store, and running again posts nothing new and waits for
the rest); (4) export the labels of these tasks as canonical records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coachlm.labelers import SimulatedConfig, SimulatedLabelers, StoreLabeler, StoreLabelerConfig


@dataclass(frozen=True)
class LabelConfig:
    samples: Path
    out: Path
    simulated: SimulatedConfig = field(default_factory=SimulatedConfig)  # who, when simulated
    store: str | None = None  # a feedback-store URL: label through the store
    project: str = "feedback"  # the store project the tasks go to (a loop: one per round)
    workers: Literal["simulated", "people"] = "simulated"  # store: who answers the tasks
    n_labels: int = 1  # store: labels wanted per task
    max_pairs_per_group: int = 0  # store comparisons: at most this many pairs per group
    quota: int | None = None  # store: labels to wait for (None: every slot)
    deadline_s: float = 3600.0  # store: stop waiting for people after this long
    poll_s: float = 2.0
    # modeled seconds a simulated labeler spends per pairwise judgment (a ranking of K: K-1),
    # for the report's cost figures; the classic figure is ~10 s per comparison.
    simulated_seconds: float = 10.0


def _answer(sim: Any, task: Any, shown_order: list[int], seconds: float) -> tuple[dict, float]:
    """A simulated labeler's answer to one assignment, in screen order, as people give it."""
    from coachlm.data.schema import Response, as_prompt

    by_id = {r.id: r for r in task.prompt.responses}
    shown = [by_id[task.response_ids[i]] for i in shown_order]
    responses = [Response(r.text, r.model, r.model_version) for r in shown]
    prompt = as_prompt(task.prompt.messages)
    if task.kind == "comparison":
        rec = sim.compare(prompt, responses[0], responses[1])
        choice = {"a": "first", "b": "second"}.get(rec.choice, rec.choice)
        return {"choice": choice, "margin": rec.margin}, seconds
    if task.kind == "ranking":
        return {"ranks": list(sim.rank(prompt, responses).ranks)}, seconds * (len(responses) - 1)
    raise ValueError(f"simulated store workers answer comparisons and rankings, not {task.kind}")


def simulated_workers(store: Any, project: str, cfg: SimulatedConfig, seconds: float) -> int:
    """Simulated labelers label every open task of `project` through the store API (claim,
    then submit, in one transaction per label); returns how many labels they added.

    Every label is a function of the store's state, not of this process's history, so that a
    run killed mid-way (kill -9) and run again ends with the labels of an uninterrupted run:
    whose turn it is follows from the number of labels already in the project (round-robin),
    the order the store shows the responses in and the labeler's own random draws are seeded
    by (labeler, task), and the client id names the labeler and the task (a retry of a
    committed label returns it instead of adding one)."""
    import random

    from sqlalchemy import func, select

    from coachlm.feedback.accounts import create_labeler
    from coachlm.feedback.assign import claim, expire, pending
    from coachlm.feedback.items import get_project
    from coachlm.feedback.labels import submit_label
    from coachlm.feedback.tables import Label, Labeler, Task
    from coachlm.world.labelers import make_labelers

    pool = make_labelers(cfg.n_labelers, cfg.seed, cfg.population)
    names = [f"sim-{cfg.seed}-{i}" for i in range(len(pool))]

    def step(s: Any) -> bool | None:
        proj = get_project(s, project)
        done = s.scalar(select(func.count(Label.id)).join(Task, Task.id == Label.task_id)
                        .where(Task.project_id == proj.id))
        for k in range(len(pool)):  # the labeler whose turn it is, else the next who can
            sim, name = pool[(done + k) % len(pool)], names[(done + k) % len(pool)]
            lab = s.query(Labeler).filter_by(name=name).one_or_none()
            lab = lab or create_labeler(s, name, source="simulated")
            # the store's next_assignment, with a seeded order of the responses on screen
            a = pending(s, lab, proj)
            if a is None:
                expire(s, proj)
                a = claim(s, lab, proj, random.Random(f"{cfg.seed}:{name}:{project}:{done}"))
            if a is not None:
                sim.rng = random.Random(f"{cfg.seed}:{name}:{a.task_id}")
                answer, spent = _answer(sim, a.task, list(a.shown_order), seconds)
                client = f"{name}-task-{a.task_id:08d}"
                return submit_label(s, lab, a.id, client, answer, spent)[1]
        return None

    added = 0
    while (created := store.run(step)) is not None:
        added += int(created)
    return added


def _wait(lab: StoreLabeler, task_ids: list[int], wanted: int, cfg: LabelConfig) -> int:
    from coachlm.pipeline.cache import console
    from coachlm.runlog import progress

    start, got = time.monotonic(), lab.count(task_ids)
    with progress() as bar:
        t = bar.add_task(f"labels in {cfg.project}", total=wanted, completed=got, rate="")
        while got < wanted and time.monotonic() - start < cfg.deadline_s:
            time.sleep(cfg.poll_s)
            got = lab.count(task_ids)
            bar.update(t, completed=got)
    if got < wanted:  # people did not finish in time: go on with what they labeled
        console.print(f"[yellow]deadline: {got} of {wanted} labels in {cfg.project} after "
                      f"{cfg.deadline_s:g} s; going on with these {got}[/]")
    return got


def run_label(cfg: LabelConfig) -> dict[str, Any]:
    from collections import Counter

    from coachlm.data.io import read_records, write_records
    from coachlm.feedback.db import open_store
    from coachlm.labelers import group_samples

    # an empty samples file: nothing to label (two versions that answered every prompt alike)
    samples = list(read_records(cfg.samples, kinds=["sample"])) if cfg.samples.stat().st_size else []
    groups = group_samples(samples, min_size=2)
    if cfg.store is None:
        records = SimulatedLabelers(cfg.simulated).label(groups)
        metrics: dict[str, Any] = {}
    else:
        store = open_store(cfg.store)
        lab = StoreLabeler(store, StoreLabelerConfig(
            project=cfg.project, kind=cfg.simulated.kind, n_labels=cfg.n_labels,
            max_pairs_per_group=cfg.max_pairs_per_group, quota=cfg.quota,
            deadline_s=cfg.deadline_s, poll_s=cfg.poll_s, seed=cfg.simulated.seed))
        task_ids = lab.post(groups)
        if cfg.workers == "simulated":
            simulated_workers(store, cfg.project, cfg.simulated, cfg.simulated_seconds)
        wanted = cfg.quota if cfg.quota is not None else len(task_ids) * cfg.n_labels
        got = _wait(lab, task_ids, wanted, cfg)
        records = lab.collect(task_ids)
        metrics = {"project": cfg.project, "tasks": len(task_ids), "wanted": wanted,
                   "collected": got, "deadline_passed": got < wanted}
    path = cfg.out / f"{cfg.simulated.kind}.jsonl"
    write_records(path, records)
    metrics.update(records=len(records), by_source=dict(Counter(r.source for r in records)),
                   by_labeler=dict(Counter(r.labeler or "?" for r in records)))
    return {"data": str(path), "metrics": metrics}
