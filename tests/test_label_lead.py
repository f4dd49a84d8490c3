"""The lead's and reviewer's side, what session 3 left (issue 14, items 5 and 6): an ETA per
labeler on the dashboard, a gold toggle on every row of the admin items page, and blind review
(no page a reviewer can open names the model behind a response)."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from sqlalchemy import select
from test_label_review import _ann_labels_task_2, app  # noqa: F401  (the `app` fixture)
from test_web import login

from coachlm.feedback import accounts, guidance
from coachlm.feedback import dashboard as dash
from coachlm.feedback.quality import LabelRow
from coachlm.feedback.tables import Project, Response, Task, utcnow

NOW = utcnow()


def _row(labeler: str, minutes_ago: float) -> LabelRow:
    return LabelRow(client_id=f"{labeler}-{minutes_ago}", task_id=1, kind="comparison",
                    answer={"choice": "a", "margin": None}, gold=None, labeler=labeler,
                    source="human", shown_order=[0, 1], time_spent_s=5.0, cost=0.0,
                    guideline_version=None, created_at=NOW - timedelta(minutes=minutes_ago),
                    prompt_id=1, response_ids=[1, 2])


def test_pace_per_labeler_shares_what_is_left_or_uses_the_quota():
    # fast: 6 labels in the last hour; slow: 2 in the last hour; idle: labeled 3 days ago.
    rows = ([_row("fast", m) for m in (60, 50, 40, 30, 20, 10)] + [_row("slow", m) for m in (60, 5)]
            + [_row("idle", 3 * 24 * 60)])
    prog = dash.Progress(wanted=29, done=9, per_hour=8.0, eta_hours=2.5)
    fast, idle, slow = dash.paces(rows, prog, now=NOW)
    assert (fast.name, idle.name, slow.name) == ("fast", "idle", "slow")
    assert fast.per_hour == 6.0 and slow.per_hour == 2.0 and math.isnan(idle.per_hour)
    assert fast.left == slow.left == 10 and idle.left == 0  # 20 left, shared by the 2 active
    assert fast.eta_hours == 10 / 6 and slow.eta_hours == 5.0 and idle.eta_hours == 0.0
    fast, idle, slow = dash.paces(rows, prog, quota=8, now=NOW)
    assert (fast.left, slow.left, idle.left) == (2, 6, 7) and slow.eta_hours == 3.0
    assert math.isnan(idle.eta_hours)  # a quota to fill, and no pace to fill it at


def test_dashboard_shows_each_labelers_eta(app):
    _ann_labels_task_2(app)
    with app.state.store.write() as s:
        guidance.update(s.get(Project, 1), {"quota": 3})
    rev, _ = login(app, "rev", "rev-password")
    page = rev.get("/admin/p/1/dashboard").text
    table = page[page.index('id="paces"'):]
    table = table[:table.index("</table>")]
    assert re.search(r"<td>ann</td><td>1</td><td>—</td><td>2</td><td>—</td>", table), table
    assert "their quota of 3" in page


def test_items_page_toggles_gold_per_row(app):
    _ann_labels_task_2(app)  # ann: task 2 is "first" (shown b, a) = b, strength 2
    with app.state.store.write() as s:
        accounts.create_labeler(s, "root", "root-password", role="admin")
    root, csrf = login(app, "root", "root-password")
    page = root.get("/admin/p/1/items").text
    assert 'aria-label="Mark task 2 as gold"' in page and 'aria-label="Mark task 1 as gold"' in page
    r = root.post("/admin/p/1/items/2/gold",
                  data={"csrf": csrf, "mark": "true", "kind": "comparison"})
    assert r.status_code == 200 and "gold-2" in str(r.url) and "kind=comparison" in str(r.url)
    assert 'aria-label="Unmark task 2 as gold"' in r.text
    with app.state.store.read() as s:
        assert s.get(Task, 2).gold == {"choice": "b", "margin": 2.0}
        assert s.get(Task, 1).gold is None
    root.post("/admin/p/1/items/1/gold", data={"csrf": csrf, "mark": "true"})
    with app.state.store.read() as s:  # the judges said a, b, a: the majority is a
        assert s.get(Task, 1).gold == {"choice": "a", "margin": None}
    r = root.post("/admin/p/1/items/2/gold", data={"csrf": csrf})
    assert 'aria-label="Mark task 2 as gold"' in r.text
    with app.state.store.read() as s:
        assert s.get(Task, 2).gold is None

    def shown(query: str) -> list[str]:
        return re.findall(r'id="task-(\d+)"', root.get(f"/admin/p/1/items?{query}").text)

    assert shown("gold=yes") == ["1"] and shown("gold=no") == ["2"] and shown("") == ["1", "2"]
    assert root.post("/admin/p/1/items/2/gold", data={"mark": "true"}).status_code == 403  # CSRF
    rev, rcsrf = login(app, "rev", "rev-password")
    assert rev.get("/admin/p/1/items").status_code == 403
    assert rev.post("/admin/p/1/items/2/gold", data={"csrf": rcsrf, "mark": "true"}
                    ).status_code == 403


def test_an_item_without_labels_cannot_be_marked_by_toggle(app):
    with app.state.store.write() as s:
        accounts.create_labeler(s, "root", "root-password", role="admin")
    root, csrf = login(app, "root", "root-password")
    assert 'aria-label="Mark task 2 as gold"' not in root.get("/admin/p/1/items").text
    r = root.post("/admin/p/1/items/2/gold", data={"csrf": csrf, "mark": "true"})
    assert r.status_code == 400 and "/review/t/2" in r.text


def test_reviewer_never_sees_model_names(app):
    _ann_labels_task_2(app)
    with app.state.store.write() as s:  # names no page text would contain by chance
        for r in s.scalars(select(Response)):
            r.model = f"secret-model-{r.id}"
        accounts.create_labeler(s, "root", "root-password", role="admin")
    rev, _ = login(app, "rev", "rev-password")
    pages = ["/", "/review/p/1", "/review/t/1", "/review/t/2", "/admin/p/1/dashboard",
             "/admin/p/1/quality", "/review/p/1?why=disagreement"]
    for path in pages:
        r = rev.get(path)
        assert r.status_code == 200, path
        assert "secret-model" not in r.text, path
    assert rev.get("/admin/p/1/ratings").status_code == 403
    assert rev.get("/admin/p/1/export").status_code == 403
    root, _ = login(app, "root", "root-password")  # the lead still sees them
    assert "secret-model" in root.get("/admin/p/1/ratings").text
