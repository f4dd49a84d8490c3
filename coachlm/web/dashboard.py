"""The lead's dashboard (reviewers and admins): flagged metrics, progress and ETA (per project
and per labeler), SVG charts, per-model rating summaries (admins only: reviewers judge blind) and
the most disputed items, for one source of labels or all."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from coachlm.feedback import dashboard as dash
from coachlm.feedback import guidance, quality
from coachlm.feedback.db import NotFound, StoreError
from coachlm.feedback.tables import Project
from coachlm.web import charts
from coachlm.web.deps import ReviewerUser, render, store

router = APIRouter()


def check_source(source: str) -> str:
    if source and source not in dash.SOURCES:
        raise StoreError(f"source must be one of {dash.SOURCES} (or empty for all)")
    return source


@router.get("/admin/p/{project_id}/dashboard")
def dashboard(request: Request, project_id: int, user: ReviewerUser, source: str = "") -> Response:
    source = check_source(source)
    with store(request).read() as s:
        p = s.get(Project, project_id)
        if p is None:
            raise NotFound(f"no project {project_id}")
        rows = dash.rows_for(s, p, source)
        report = quality.report(rows)
        prog = dash.progress(s, p, rows)
        quota = guidance.get(p).quota
        # Blind review: which model wrote what is for the lead only, never for reviewers.
        models = dash.model_ratings(s, rows) if user.is_admin else []
    labelers = [(q.name, q.labels, str(q.labels)) for q in report.labelers]
    bias = [(q.name, q.first_rate, f"{q.first_rate:.0%}") for q in report.labelers
            if q.first_rate == q.first_rate]
    figs = [charts.columns("Labels per day (last 14 days)", dash.per_day(rows))]
    if labelers:
        figs.append(charts.hbars("Labels per labeler", labelers, max(n for _, n, _ in labelers)))
    if bias:
        figs.append(charts.hbars("First-shown answer wins (dashed: 50%)", bias, 1.0, ref=0.5))
    if models:
        figs.append(charts.hbars("Mean rating per model (0 worst, 1 best)",
                                 [(m, v, f"{v:.2f} (n={n})") for m, v, n in models], 1.0))
    return render(request, "admin/dashboard.html", p=p, source=source, sources=dash.SOURCES,
                  metrics=dash.metrics(report, rows), prog=prog,
                  paces=dash.paces(rows, prog, quota), quota=quota, figs=figs, models=models,
                  disputed=dash.disputed(rows), n_labels=len(rows))
