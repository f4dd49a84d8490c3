"""One JSON-able summary of a project: counts, agreement, labeler quality, leaderboard."""

from __future__ import annotations

from typing import Any

from coachlm.feedback import items, quality, ratings
from coachlm.feedback.export import ExportConfig, export_records


def project_summary(s: Any, project: str, rounds: int) -> dict[str, Any]:
    p = items.get_project(s, project)
    st = items.project_stats(s, p)
    q = quality.project_quality(s, p)
    records = export_records(s, p, ExportConfig(kinds=("comparison", "ranking")))
    board = ratings.leaderboard(ratings.matches_from_records(records), rounds=rounds)
    clean = lambda x: None if isinstance(x, float) and x != x else x  # noqa: E731
    return {"project": project, "stats": vars(st),
            "agreement": [{k: clean(v) for k, v in vars(ka).items()} for ka in q.kinds],
            "pairs": [{"a": a, "b": b, "kappa": clean(k), "items": n} for a, b, k, n in q.pairs],
            "labelers": [{k: clean(v) for k, v in vars(lq).items()} for lq in q.labelers],
            "first_shown_win_rate": clean(q.first_rate), "total_cost": q.total_cost,
            "leaderboard": [vars(x) for x in board]}
