"""What a run directory says, gathered for the report: per round the PPO curves (reward, KL,
length), the reward-model score against an independent judge (the rubric) on the samples PPO
logged during training, win rates with intervals, labels (by source, agreement, accuracy
against the rubric as gold, seconds and money per label), the leaderboard, sample tables, and
the reward-hacking watch's alarms.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coachlm.errors import CoachError

RL_KINDS = ("ppo", "grpo", "rloo")


@dataclass(frozen=True)
class ReportConfig:
    # None: the run a pipeline's `report` stage is part of (the stage fills it in)
    run_dir: Path | None = None
    out: Path | None = None  # default RUN_DIR/report.html
    # a pipeline's report stage: the outputs it comes after (its inputs, which order the stage
    # last and re-run it when they change); the report covers every finished stage of the run
    after: tuple[Path, ...] = ()
    # $0.10 for a 10-second comparison (the classic crowd-work figure) is $36 an hour
    rate_per_hour: float = 36.0
    length_drift: float = 0.5  # alarm when the mean response length moves by this fraction
    samples_shown: int = 5


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def stages(run_dir: Path | None) -> dict[str, dict[str, Any]]:
    if run_dir is None:
        raise CoachError("the report needs a run directory")
    run = run_dir / "run.json"
    if not run.is_file():
        raise CoachError(f"{run_dir} is not a pipeline run directory (no run.json)")
    names = json.loads(run.read_text())["stages"]
    return {n: json.loads((run_dir / n / "stage.json").read_text()) for n in names}


def round_of(name: str) -> int:
    m = re.match(r"r(\d+)/", name)
    return int(m.group(1)) if m else 0


def training(stage_dir: Path) -> dict[str, Any]:
    """PPO curves, and per logged step the mean reward-model score and rubric total of the
    samples PPO wrote (the rubric is a judge the policy never saw, unless trained on it)."""
    from coachlm.data.schema import as_prompt
    from coachlm.world.rubric import score

    rows = _jsonl(stage_dir / "metrics.jsonl")
    curves = {k: [r.get(k) for r in rows] for k in ("step", "reward", "reward_raw", "kl",
                                                      "response_length")}
    by_step: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for s in _jsonl(stage_dir / "samples.jsonl"):
        judged = score(as_prompt(s["prompt"]), s["response"]).total
        by_step[s["step"]].append((s["reward_raw"], judged))
    watch = {"step": sorted(by_step),
             "rm": [sum(a for a, _ in by_step[k]) / len(by_step[k]) for k in sorted(by_step)],
             "rubric": [sum(b for _, b in by_step[k]) / len(by_step[k]) for k in sorted(by_step)]}
    return {"curves": curves, "watch": watch}


def labels(path: Path, rate_per_hour: float) -> dict[str, Any]:
    """Counts by source and labeler, accuracy against the rubric's noise-free preference (the
    world's gold), agreement where an item has several labels, seconds and money per label."""
    from coachlm.data.io import PREFERENCE_KINDS, read_records
    from coachlm.feedback.agreement import krippendorff_alpha
    from coachlm.world.rubric import prefer

    records = list(read_records(path, kinds=PREFERENCE_KINDS))
    right: Counter = Counter()
    judged: Counter = Counter()
    items: dict[Any, list] = defaultdict(list)
    for r in records:
        pairs = ([r.chosen_rejected()] if hasattr(r, "chosen_rejected") else
                 [(r.responses[i], r.responses[j]) for i, j in r.pairs()])
        for pair in pairs:
            if pair is None:
                continue
            d = prefer(r.prompt, pair[0].text, pair[1].text)
            if d != 0:
                judged[r.labeler] += 1
                right[r.labeler] += d > 0
        key = (r.prompt, tuple(sorted(x.text for x in getattr(r, "responses", ()))) or
               tuple(sorted((r.a.text, r.b.text))))
        items[key].append(json.dumps(getattr(r, "ranks", None) or getattr(r, "choice", None)))
    multi = [v for v in items.values() if len(v) >= 2]
    seconds = [r.time_spent_s for r in records if r.time_spent_s is not None]
    per = sum(seconds) / len(seconds) if seconds else None
    return {"n": len(records), "by_source": dict(Counter(r.source for r in records)),
            "by_labeler": dict(Counter(r.labeler or "?" for r in records)),
            "gold_accuracy": {lab: right[lab] / judged[lab] for lab in judged},
            "gold_accuracy_all": sum(right.values()) / max(sum(judged.values()), 1),
            "alpha": krippendorff_alpha(multi) if multi else None, "items_multi": len(multi),
            "seconds_per_label": per,
            "money_per_label": None if per is None else per / 3600 * rate_per_hour,
            "cost_recorded": sum(float(r.meta.get("cost") or 0) for r in records)}
