"""Issue 12, the platform findings left after session 3: a password reset revokes the API
token, pages scrub bad text stored before the input checks existed, and project names that no
route could reach are refused."""

from __future__ import annotations

import pytest
from label_fixtures import make_api
from sqlalchemy import update
from typer.testing import CliRunner

from coachlm.cli.label import label_app
from coachlm.data import schema
from coachlm.feedback import accounts, assign, db, importer, items, labels
from coachlm.feedback.tables import Label, Project, Prompt
from test_web import app, login  # noqa: F401  (the `app` fixture)

BAD = "old \ud800 text"  # a lone surrogate, as stores written before the checks may hold


def test_password_reset_revokes_the_api_token(tmp_path):
    api = make_api(str(tmp_path / "f.db"))
    assert api.client.get("/api/me", headers=api.labeler).status_code == 200
    c, csrf = login(api.client.app, "root", "root-password")
    with api.store.read() as s:
        ann = accounts.get_labeler(s, "ann").id
    r = c.post(f"/admin/labelers/{ann}", data={"csrf": csrf, "password": "a new password",
                                               "role": "labeler", "cost_per_label": "0",
                                               "active": "true"})
    assert r.status_code == 200, r.text
    assert api.client.get("/api/me", headers=api.labeler).status_code == 401
    # The CLI's reset does the same, and a newly issued token works.
    with api.store.write() as s:
        token = accounts.issue_token(s, "ann")
    assert api.client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json() == {
        "name": "ann", "role": "labeler"}
    res = CliRunner().invoke(label_app, ["users", "set", "ann", "--password", "third password",
                                         "--store", api.store.cfg.url])
    assert res.exit_code == 0, res.output
    assert api.client.get("/api/me", headers={"Authorization": f"Bearer {token}"}
                          ).status_code == 401
    api.store.close()


def test_pages_scrub_bad_text_stored_before_the_checks(app):  # noqa: F811
    # Text columns could never hold a lone surrogate, but JSON ones could (written as a
    # "\ud800" escape): prompts, answers, flags. Every page showing them answered 500.
    st = app.state.store
    with st.write() as s:
        p = items.create_project(s, "old")
        importer.import_records(s, p, [schema.Sample(prompt=schema.as_prompt("q"),
                                                     response=schema.Response("r"))])
        for kind in ("rating", "demonstration"):
            items.create_tasks(s, p, items.TaskSpec(kind))
        lab = accounts.get_labeler(s, "ann")
        done = []
        for answer in ({"score": 3, "critique": "fine"}, {"text": "fine"}):
            a = assign.next_assignment(s, lab, p)
            labels.submit_label(s, lab, a.id, f"scrub-test-{a.id}", answer)
            done.append((a.id, a.task_id))
        s.execute(update(Prompt).where(Prompt.project_id == p.id).values(
            messages=[{"role": "user", "content": BAD}]))
        s.execute(update(Project).where(Project.id == p.id).values(flags=[BAD]))
        (rating, rating_task), (demo, demo_task) = done
        s.execute(update(Label).where(Label.assignment_id == rating).values(
            answer={"score": 3, "scale": 7, "flags": [BAD], "critique": BAD}))
        s.execute(update(Label).where(Label.assignment_id == demo).values(answer={"text": BAD}))
        project_id = p.id
    c, _ = login(app, "ann", "ann-password")
    for path in ("/", f"/a/{rating}", f"/a/{demo}"):
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[-400:])
    assert "old \ufffd text" in c.get(f"/a/{demo}").text
    admin, _ = login(app, "root", "root-password")
    for path in (f"/review/t/{rating_task}", f"/review/t/{demo_task}",
                 f"/review/p/{project_id}", f"/admin/p/{project_id}"):
        r = admin.get(path)
        assert r.status_code == 200, (path, r.text[-400:])
        assert "/review/t/" not in path or "old \ufffd text" in r.text


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "cr\rhere", "nel\u0085here",
                                  "ls\u2028here"])
def test_project_names_no_route_could_reach_are_refused(tmp_path, name):
    api = make_api(str(tmp_path / "f.db"))
    r = api.client.post("/api/projects", headers=api.admin, json={"name": name})
    assert r.status_code == 400 and "line breaks or control characters" in r.json()["error"]
    with api.store.write() as s, pytest.raises(db.StoreError, match="control characters"):
        items.create_project(s, name)
    # Other unusual names stay allowed and reachable.
    ok = "café ☕ / ünïcode"
    assert api.client.post("/api/projects", headers=api.admin, json={"name": ok}
                           ).status_code == 201
    assert api.client.get(f"/api/projects/{ok}/stats", headers=api.admin).status_code == 200
    api.store.close()
