"""What a labeling lead reads in ten seconds: each quality metric with its threshold, a flag
when it is crossed and a one-line meaning; progress and ETA; labels per day; mean rating per
model; and the most disputed items. Any view can be restricted to one source of labels
(human, ai, simulated), so that people and AI labelers are never silently mixed.

Thresholds: Krippendorff's alpha >= 0.667 is the lowest he accepts for tentative conclusions
(Krippendorff, "Content Analysis", 2004, §11.4); position bias and speed are flagged where a
labeler's behaviour cannot be explained by the items (first-shown share outside 0.35-0.65 on
8+ decisive comparisons, beyond what a fair coin would give; a median under 3 s per item is shorter than reading two answers).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coachlm.feedback import quality
from coachlm.feedback.agreement import item_agreement
from coachlm.feedback.quality import LabelRow
from coachlm.feedback.tables import Project, Response, Task, utcnow

SOURCES = ("human", "ai", "simulated")
MIN_ALPHA = 0.667
BIAS_BAND = (0.35, 0.65)
MIN_DECISIVE = 8
MIN_SECONDS = 3.0
MIN_GOLD = 0.7


@dataclass(frozen=True)
class Metric:
    name: str
    value: str
    threshold: str
    flagged: bool
    meaning: str


@dataclass(frozen=True)
class Progress:
    wanted: int  # label slots over all tasks
    done: int
    per_hour: float  # labels per hour over the last 24 h with labels
    eta_hours: float  # NaN when nothing is being labeled

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.wanted if self.wanted else 100.0


def _fmt(x: float, pct: bool = False) -> str:
    if x != x:
        return "—"
    return f"{100 * x:.0f}%" if pct else f"{x:.3f}"


def _decisive(rows: Sequence[LabelRow]) -> dict[str, tuple[int, int]]:
    """labeler -> (decisive comparisons won by the first-shown response, decisive comparisons)."""
    out: dict[str, tuple[int, int]] = {}
    for r in rows:
        if r.kind == "comparison" and r.answer["choice"] in ("a", "b"):
            k, n = out.get(r.labeler, (0, 0))
            out[r.labeler] = (k + ("ab"[r.shown_order[0]] == r.answer["choice"]), n + 1)
    return out


def biased(k: int, n: int) -> bool:
    """Outside the band on enough comparisons, and not chance: |k - n/2| beyond the two-sided
    95% normal bound of a fair coin (sd sqrt(n)/2)."""
    return (n >= MIN_DECISIVE and not BIAS_BAND[0] <= k / n <= BIAS_BAND[1]
            and abs(k - n / 2) > 1.96 * math.sqrt(n) / 2)


def metrics(r: quality.QualityReport, rows: Sequence[LabelRow] = ()) -> list[Metric]:
    out = [Metric(f"Agreement ({k.kind}, α)", _fmt(k.alpha), f"≥ {MIN_ALPHA}",
                  k.alpha == k.alpha and k.alpha < MIN_ALPHA,
                  f"{k.items} items with 2+ labels; below {MIN_ALPHA} labels agree too little "
                  "to train on: clarify the guidelines or drop the kind") for k in r.kinds]
    out.append(Metric("Position bias (first shown wins)", _fmt(r.first_rate, True),
                      f"{BIAS_BAND[0]:.0%}–{BIAS_BAND[1]:.0%}",
                      r.first_rate == r.first_rate and not BIAS_BAND[0] <= r.first_rate <= BIAS_BAND[1],
                      "50% means screen position does not sway the choice"))
    decisive = _decisive(rows)
    for q in r.labelers:
        k, n = decisive.get(q.name, (0, 0))
        if biased(k, n):
            out.append(Metric(f"{q.name}: first shown wins", f"{k}/{n}",
                              f"{BIAS_BAND[0]:.0%}–{BIAS_BAND[1]:.0%}", True,
                              "this labeler picks by screen position more than chance explains"))
        if q.median_time_s == q.median_time_s and q.median_time_s < MIN_SECONDS:
            out.append(Metric(f"{q.name}: median time per item", f"{q.median_time_s:.2f} s",
                              f"≥ {MIN_SECONDS:.0f} s", True,
                              "faster than anyone can read two answers: check their labels"))
        if q.gold_total and q.gold_correct / q.gold_total < MIN_GOLD:
            out.append(Metric(f"{q.name}: gold accuracy", f"{q.gold_correct}/{q.gold_total}",
                              f"≥ {MIN_GOLD:.0%}", True,
                              "misses items with a known answer: retrain or exclude in export"))
    return out


@dataclass(frozen=True)
class Pace:
    """One labeler's pace: labels so far, per hour, what is left for them and when it is done."""

    name: str
    done: int
    per_hour: float  # over the last 24 h with this labeler's labels; NaN with fewer than 2
    left: int  # their quota minus what they did, or else an even share of the project's rest
    eta_hours: float  # NaN when they are not labeling now


def _recent(rows: Sequence[LabelRow], now: datetime) -> list[LabelRow]:
    return [r for r in rows if r.created_at >= now - timedelta(hours=24)]


def _per_hour(recent: Sequence[LabelRow], now: datetime) -> float:
    """Labels per hour since the first of the last 24 h's labels (2+ needed for a rate)."""
    if len(recent) < 2:
        return float("nan")
    span_h = max((now - min(r.created_at for r in recent)).total_seconds() / 3600, 1 / 60)
    return len(recent) / span_h


def _eta(left: int, per_hour: float) -> float:
    if not left:
        return 0.0
    return left / per_hour if per_hour == per_hour and per_hour > 0 else math.nan


def progress(s: Session, project: Project, rows: Sequence[LabelRow],
             now: datetime | None = None) -> Progress:
    wanted = s.scalar(select(func.sum(Task.n_labels)).where(Task.project_id == project.id)) or 0
    per_hour = _per_hour(_recent(rows, now or utcnow()), now or utcnow())
    return Progress(int(wanted), len(rows), per_hour, _eta(max(wanted - len(rows), 0), per_hour))


def paces(rows: Sequence[LabelRow], prog: Progress, quota: int = 0,
          now: datetime | None = None) -> list[Pace]:
    """Per labeler ETA. With a quota, each labeler has quota - done left; without, the
    project's remaining labels are shared evenly by the labelers active in the last 24 h (by
    everyone who labeled, when nobody is active), so that a slow labeler shows a late ETA."""
    now = now or utcnow()
    mine: dict[str, list[LabelRow]] = defaultdict(list)
    for r in rows:
        mine[r.labeler].append(r)
    recent = {name: _recent(rs, now) for name, rs in mine.items()}
    active = [n for n, rs in recent.items() if rs] or list(mine)
    rest = max(prog.wanted - prog.done, 0)
    out = []
    for name in sorted(mine):
        done = len(mine[name])
        if quota:
            left = max(quota - done, 0)
        else:
            left = math.ceil(rest / len(active)) if name in active else 0
        rate = _per_hour(recent[name], now)
        out.append(Pace(name, done, rate, left, _eta(left, rate)))
    return out


def per_day(rows: Sequence[LabelRow], days: int = 14, now: datetime | None = None
            ) -> list[tuple[str, int]]:
    now = now or utcnow()
    counts = Counter(r.created_at.date() for r in rows)
    return [((d := (now - timedelta(days=i)).date()).strftime("%m-%d"), counts.get(d, 0))
            for i in range(days - 1, -1, -1)]


def model_ratings(s: Session, rows: Sequence[LabelRow]) -> list[tuple[str, float, int]]:
    """(model, mean rating score normalised to 0..1, ratings) from rating labels."""
    scores: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r.kind == "rating":
            scores[r.response_ids[0]].append((r.answer["score"] - 1) / max(r.answer["scale"] - 1, 1))
    if not scores:
        return []
    models = dict(s.execute(select(Response.id, Response.model).where(Response.id.in_(scores))).all())
    per: dict[str, list[float]] = defaultdict(list)
    for rid, xs in scores.items():
        per[models.get(rid) or "unknown"].extend(xs)
    return sorted(((m, sum(x) / len(x), len(x)) for m, x in per.items()), key=lambda t: -t[1])


def disputed(rows: Sequence[LabelRow], n: int = 10) -> list[tuple[int, float, int]]:
    """(task id, share agreeing with the most common answer, labels) for the least agreed items."""
    by_task: dict[int, dict[str, str]] = defaultdict(dict)
    for r in rows:
        if r.kind != "demonstration":  # free text has no agreement to measure
            by_task[r.task_id][r.labeler] = json.dumps([r.answer.get(k) for k in
                                                        ("choice", "ranks", "score")])
    multi = {t: by for t, by in by_task.items() if len(by) >= 2}
    agree = item_agreement(multi)
    worst = sorted(agree.items(), key=lambda kv: (kv[1], -len(multi[kv[0]]), kv[0]))
    return [(t, a, len(multi[t])) for t, a in worst[:n] if a < 1.0]


def rows_for(s: Session, project: Project, source: str = "") -> list[LabelRow]:
    rows = quality.load_labels(s, project)
    return [r for r in rows if r.source == source] if source else rows
