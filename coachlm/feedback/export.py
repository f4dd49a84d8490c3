"""Export a project's labels as canonical feedback records (the JSONL that `coachlm sft`,
`coachlm rm` and `coachlm dpo` read), with quality filters.

Filters, applied in this order: kinds; excluded labelers; labelers whose gold accuracy is below
`min_gold_accuracy` (labelers who answered no gold item are kept); then per item, the share of
its remaining labels that agree with its most common label must reach `min_agreement`.
Every record keeps its provenance: labeler, source, time spent, the order the responses were
shown in, and in `meta` the project, task id, the guidelines version in force, whether the
item is gold and its agreement.

Text that could not be encoded (a lone surrogate stored before input was checked) is written
as U+FFFD, so one bad label never breaks a whole export.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.data import schema
from coachlm.feedback import agreement as ag
from coachlm.feedback.db import StoreError
from coachlm.feedback.quality import LabelRow, gold_correct, load_labels
from coachlm.feedback.review import apply_reviews
from coachlm.feedback.tables import TASK_KINDS, Project, Prompt, Response
from coachlm.feedback.text import scrub


@dataclass(frozen=True)
class ExportConfig:
    kinds: tuple[str, ...] = ()  # empty: every kind
    exclude_labelers: tuple[str, ...] = ()
    min_gold_accuracy: float = 0.0  # drop every label of a labeler below this on gold items
    min_agreement: float = 0.0  # drop items whose labels agree less than this (0..1)
    include_gold: bool = True  # export labels on gold items too
    sources: tuple[str, ...] = ()  # e.g. ("human",); empty: every source

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in TASK_KINDS]
        if bad:
            raise ValueError(f"unknown kind {bad[0]!r}; kinds are {TASK_KINDS}")
        if not 0.0 <= self.min_agreement <= 1.0 or not 0.0 <= self.min_gold_accuracy <= 1.0:
            raise ValueError("min_agreement and min_gold_accuracy must be in [0, 1]")


def _filter(rows: list[LabelRow], cfg: ExportConfig) -> tuple[list[LabelRow], dict[int, float]]:
    rows = [r for r in rows if (not cfg.kinds or r.kind in cfg.kinds)
            and r.labeler not in cfg.exclude_labelers
            and (not cfg.sources or r.source in cfg.sources)]
    if cfg.min_gold_accuracy > 0:
        graded: dict[str, list[bool]] = defaultdict(list)
        for r in rows:
            if r.gold is not None and r.kind != "demonstration":
                graded[r.labeler].append(gold_correct(r.kind, r.answer, r.gold))
        bad = {n for n, g in graded.items() if sum(g) / len(g) < cfg.min_gold_accuracy}
        rows = [r for r in rows if r.labeler not in bad]
    if not cfg.include_gold:
        rows = [r for r in rows if r.gold is None]
    by_task: dict[int, dict[str, Any]] = defaultdict(dict)
    for r in rows:
        if r.kind != "demonstration":  # free text: no agreement to measure
            by_task[r.task_id][r.labeler] = json.dumps(r.answer.get("choice", r.answer.get(
                "ranks", r.answer.get("score"))))
    agreement = ag.item_agreement(by_task)
    rows = [r for r in rows if agreement.get(r.task_id, 1.0) >= cfg.min_agreement]
    return rows, agreement


def _response(row: Response) -> schema.Response:
    return schema.Response(*scrub((row.text, row.model, row.model_version)))


def to_record(r: LabelRow, project: Project, prompt: schema.Prompt,
              responses: list[schema.Response], agreement: float | None) -> schema.Record:
    meta = {"project": project.name, "task": r.task_id, "gold": r.gold is not None,
            "guidelines_version": r.guideline_version}
    if agreement is not None:
        meta["agreement"] = round(agreement, 4)
    if r.review:  # a reviewer's verdict: the audit trail travels with the record
        meta["review"] = r.review
    common = dict(id=r.client_id, prompt=prompt, labeler=r.labeler, source=r.source,
                  created_at=r.created_at.isoformat(timespec="seconds") + "+00:00",
                  time_spent_s=r.time_spent_s)
    a = r.answer
    if r.kind == "comparison":
        return schema.Comparison(**common, meta=meta, a=responses[0], b=responses[1],
                                 choice=a["choice"], margin=a.get("margin"),
                                 shown_order="ab" if r.shown_order[0] == 0 else "ba")
    if r.kind == "ranking":
        meta["shown_order"] = r.shown_order
        return schema.Ranking(**common, meta=meta, responses=tuple(responses),
                              ranks=tuple(a["ranks"]))
    if r.kind == "rating":
        return schema.Rating(**common, meta=meta, response=responses[0], score=a["score"],
                             scale=a["scale"], flags=tuple(a["flags"]), critique=a["critique"])
    if responses:  # an edited draft: keep which model wrote the draft
        meta["draft_model"] = responses[0].model
    return schema.Demonstration(**common, meta=meta, response=schema.Response(a["text"]))


def export_records(s: Session, project: Project, cfg: ExportConfig = ExportConfig()
                   ) -> list[schema.Record]:
    rows, agreement = _filter(apply_reviews(s, load_labels(s, project)), cfg)
    rows = [dataclasses.replace(r, answer=scrub(r.answer), labeler=scrub(r.labeler)) for r in rows]
    prompts = {p.id: schema.as_prompt(scrub(p.messages))
               for p in s.scalars(select(Prompt).where(Prompt.project_id == project.id))}
    responses = {r.id: _response(r) for r in s.scalars(
        select(Response).join(Prompt).where(Prompt.project_id == project.id))}
    return [to_record(r, project, prompts[r.prompt_id], [responses[i] for i in r.response_ids],
                      agreement.get(r.task_id)) for r in rows]


def write_jsonl(records: Iterable[schema.Record], path: str | Path) -> int:
    """Write records as JSONL atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(schema.to_dict(rec), ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e}") from None
    return n
