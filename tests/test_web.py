"""The labeling web app through FastAPI's test client: labeling flow, security, the JSON API."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from coachlm.data import schema
from coachlm.feedback import accounts, db, importer, items
from coachlm.feedback.throttle import ThrottleConfig
from coachlm.feedback.tables import Assignment, Label, Labeler
from coachlm.web.app import WebConfig, create_app

EVIL = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


@pytest.fixture()
def app(tmp_path):
    st = db.open_store(str(tmp_path / "web.db"))
    with st.write() as s:
        p = items.create_project(s, "demo", guidelines="Prefer the correct answer.")
        prompt = schema.as_prompt([{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello! How can I help?"},
                                   {"role": "user", "content": "What is 2+2?"}])
        recs = [schema.Sample(prompt=prompt, response=schema.Response(t, m))
                for t, m in (("4", "sft"), (EVIL, "base"), ("four", "rlhf"))]
        importer.import_records(s, p, recs)
        items.create_tasks(s, p, items.TaskSpec("comparison", n_labels=2))
        accounts.create_labeler(s, "ann", "ann-password")
        accounts.create_labeler(s, "bob", "bob-password")
        accounts.create_labeler(s, "root", "root-password", role="admin")
    application = create_app(WebConfig(store="unused", throttle=ThrottleConfig(free=3, base_s=60)), st)
    yield application
    st.close()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def login(app, name: str, password: str, address: str = "testclient") -> tuple[TestClient, str]:
    c = TestClient(app, client=(address, 50000))
    page = c.get("/login")
    r = c.post("/login", data={"name": name, "password": password, "csrf": csrf_of(page.text),
                               "next": "/"})
    assert r.status_code == 200 and "Sign out" in r.text, r.text
    return c, csrf_of(r.text)


def start(c: TestClient, csrf: str):
    r = c.post("/p/1/start", data={"csrf": csrf})
    assert r.status_code == 200 and "/a/" in str(r.url)
    return r, int(re.search(r"/a/(\d+)", str(r.url)).group(1))


def n_labels(app) -> int:
    with app.state.store.read() as s:
        return s.scalar(select(func.count()).select_from(Label))


def test_label_flow_multi_turn_blind_and_time(app):
    c, csrf = login(app, "ann", "ann-password")
    r, aid = start(c, csrf)
    assert "Hello! How can I help?" in r.text and 'class="turn assistant"' in r.text
    assert "sft" not in r.text and "rlhf" not in r.text  # blind: no model names
    assert "/p/1/guidelines" in r.text
    cid = re.search(r'name="client_id" value="(\w+)"', r.text).group(1)
    form = {"csrf": csrf, "client_id": cid, "choice": "second", "strength": "3",
            "elapsed_ms": "4500"}
    r2 = c.post(f"/a/{aid}", data=form)
    assert r2.status_code == 200 and "Saved." in r2.text
    r3 = c.post(f"/a/{aid}", data=form)  # a retried post: the same label, not a second one
    assert r3.status_code == 200 and n_labels(app) == 1
    with app.state.store.read() as s:
        label = s.scalar(select(Label))
        a = s.get(Assignment, aid)
        assert label.time_spent_s == 4.5 and label.answer["margin"] == 3.0
        assert label.answer["choice"] == "ab"[a.shown_order[1]]  # "second" on screen
    assert "You have answered this item." in c.get(f"/a/{aid}").text
    g = c.get("/p/1/guidelines")
    assert "Prefer the correct answer." in g.text


def test_script_in_a_response_renders_as_text(app):
    c, csrf = login(app, "ann", "ann-password")
    for _ in range(3):  # every pair includes the evil response at least once in 3 items
        r, aid = start(c, csrf)
        if "pwned" in r.text:
            break
        cid = re.search(r'name="client_id" value="(\w+)"', r.text).group(1)
        c.post(f"/a/{aid}", data={"csrf": csrf, "client_id": cid, "choice": "tie"})
    assert "&lt;script&gt;alert(" in r.text and "&lt;/script&gt;" in r.text  # markdown escapes it
    assert "<script>alert" not in r.text and "<img src=x" not in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_labeler_cannot_touch_another_labelers_assignment(app):
    bob, bob_csrf = login(app, "bob", "bob-password")
    _, bob_aid = start(bob, bob_csrf)
    ann, ann_csrf = login(app, "ann", "ann-password")
    assert ann.get(f"/a/{bob_aid}").status_code == 404
    r = ann.post(f"/a/{bob_aid}", data={"csrf": ann_csrf, "client_id": "x" * 32, "choice": "tie"},
                 follow_redirects=False)
    assert r.status_code == 404 and n_labels(app) == 0
    assert ann.post(f"/a/{bob_aid}/skip", data={"csrf": ann_csrf}).status_code == 404
    with app.state.store.write() as s:
        token = accounts.issue_token(s, "ann")
    h = {"Authorization": f"Bearer {token}"}
    assert ann.get(f"/api/assignments/{bob_aid}", headers=h).status_code == 404
    r = ann.post(f"/api/assignments/{bob_aid}/label", headers=h,
                 json={"client_id": "y" * 32, "answer": {"choice": "tie"}})
    assert r.status_code == 404 and n_labels(app) == 0


def test_labeler_cannot_reach_admin_pages(app):
    c, csrf = login(app, "ann", "ann-password")
    for path in ("/admin", "/admin/p/1", "/admin/labelers", "/admin/p/1/quality",
                 "/admin/p/1/ratings", "/admin/p/1/export"):
        assert c.get(path).status_code == 403, path
    r = c.post("/admin/labelers", data={"csrf": csrf, "name": "mallory", "password": "12345678",
                                        "role": "admin"})
    assert r.status_code == 403
    with app.state.store.read() as s:
        assert s.scalar(select(Labeler).where(Labeler.name == "mallory")) is None
    with app.state.store.write() as s:
        token = accounts.issue_token(s, "ann")
    r = c.get("/api/projects/demo/export", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403
    anon = TestClient(app)
    r = anon.get("/admin", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert anon.get("/api/projects").status_code == 401


def test_form_posts_without_csrf_token_are_refused(app):
    c, csrf = login(app, "ann", "ann-password")
    r, aid = start(c, csrf)
    cid = re.search(r'name="client_id" value="(\w+)"', r.text).group(1)
    for bad in ({}, {"csrf": "forged"}):
        r = c.post(f"/a/{aid}", data={"client_id": cid, "choice": "tie", **bad})
        assert r.status_code == 403
    assert n_labels(app) == 0
    assert c.post("/p/1/start", data={}).status_code == 403
    assert c.post("/logout", data={}).status_code == 403
    fresh = TestClient(app)
    r = fresh.post("/login", data={"name": "ann", "password": "ann-password"})
    assert r.status_code == 403 and "Sign out" not in r.text


def test_login_rate_limit_and_cookie_flags(app):
    c = TestClient(app)
    token = csrf_of(c.get("/login").text)
    for _ in range(3):
        r = c.post("/login", data={"name": "ann", "password": "wrong", "csrf": token})
        assert r.status_code == 401
        token = csrf_of(r.text)
    r = c.post("/login", data={"name": "ann", "password": "ann-password", "csrf": token})
    assert r.status_code == 429 and "Too many failed sign-ins" in r.text
    # The back-off is per (name, address): ann herself, from her own address, is not locked out.
    login(app, "ann", "ann-password", address="10.0.0.7")
    bob = TestClient(app, base_url="https://testserver")
    token = csrf_of(bob.get("/login").text)
    r = bob.post("/login", data={"name": "bob", "password": "bob-password", "csrf": token,
                                 "next": "//evil.example/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # no open redirect
    cookie = next(v for k, v in r.headers.multi_items()
                  if k == "set-cookie" and v.startswith("coachlm_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" in cookie


def test_api_import_label_idempotent_stats_export(app):
    c = TestClient(app)
    with app.state.store.write() as s:
        admin = {"Authorization": f"Bearer {accounts.issue_token(s, 'root')}"}
    assert c.post("/api/projects", headers=admin, json={"name": "api"}).status_code == 201
    recs = [schema.to_dict(schema.Sample(prompt=schema.as_prompt("p"),
                                         response=schema.Response(t, m))) for t, m in
            (("x", "m1"), ("y", "m2"))]
    r = c.post("/api/projects/api/import", headers=admin, json={"records": recs})
    assert r.json()["responses"] == 2
    bad = c.post("/api/projects/api/import", headers=admin, json={"records": [{"kind": "x"}]})
    assert bad.status_code == 400 and "records[0].kind" in bad.json()["error"]
    r = c.post("/api/projects/api/tasks", headers=admin, json={"kind": "ranking", "n_labels": 1})
    assert r.json() == {"created": 1}
    tok = c.post("/api/labelers", headers=admin, json={"name": "ai-judge", "role": "labeler"})
    assert tok.status_code == 201
    lab = {"Authorization": "Bearer " + c.post("/api/labelers/ai-judge/token",
                                                headers=admin).json()["token"]}
    a = c.post("/api/projects/api/next", headers=lab).json()
    assert a["kind"] == "ranking" and sorted(a["responses"]) == ["x", "y"]
    body = {"client_id": "judge-0001", "answer": {"ranks": [1, 2]}, "time_spent_s": 0.2}
    first = c.post(f"/api/assignments/{a['id']}/label", headers=lab, json=body)
    again = c.post(f"/api/assignments/{a['id']}/label", headers=lab, json=body)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["label_id"] == again.json()["label_id"]
    assert c.post("/api/projects/api/next", headers=lab).status_code == 204
    stats = c.get("/api/projects/api/stats", headers=admin).json()
    assert stats["stats"]["labels"] == 1
    lines = c.get("/api/projects/api/export", headers=admin).text.splitlines()
    rec = schema.from_dict(json.loads(lines[0]))
    assert isinstance(rec, schema.Ranking) and rec.labeler == "ai-judge"
    assert rec.ranks[[r.text for r in rec.responses].index(a["responses"][0])] == 1


def test_admin_pages_import_tasks_export(app):
    c, csrf = login(app, "root", "root-password")
    for path in ("/admin", "/admin/p/1", "/admin/labelers", "/admin/p/1/quality",
                 "/admin/p/1/ratings"):
        assert c.get(path).status_code == 200, path
    gold = schema.Comparison(prompt=schema.as_prompt("gold?"), a=schema.Response("right"),
                             b=schema.Response("wrong"), choice="a")
    upload = io.BytesIO((json.dumps(schema.to_dict(gold)) + "\n").encode())
    r = c.post("/admin/p/1/import", data={"csrf": csrf, "gold": "true", "n_labels": "2"},
               files={"file": ("gold.jsonl", upload, "application/x-ndjson")})
    assert r.status_code == 200 and "imported-1" in str(r.url)
    r = c.post("/admin/p/1/tasks", data={"csrf": csrf, "kind": "rating", "n_labels": "1"})
    assert "tasks-5" in str(r.url)  # one per response: 3 samples + the 2 of the gold item
    r = c.post("/admin/labelers", data={"csrf": csrf, "name": "dan", "password": "dan-password",
                                        "role": "reviewer", "cost_per_label": "0.1"})
    assert r.status_code == 200 and "dan" in r.text
    r = c.post("/admin/labelers/4/token", data={"csrf": csrf})
    assert re.search(r'id="new-token">[\w-]{40,}<', r.text)
    r = c.get("/admin/p/1/export?include_gold=true")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")


def test_web_does_not_import_torch():
    code = ("import sys; import coachlm.web.app, coachlm.cli.label; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reviewer_sees_dashboards_only(app):
    with app.state.store.write() as s:
        accounts.create_labeler(s, "rev", "rev-password", role="reviewer")
    c, csrf = login(app, "rev", "rev-password")
    assert c.get("/admin/p/1/quality").status_code == 200
    assert c.get("/admin/p/1/dashboard").status_code == 200
    assert c.get("/admin/p/1/ratings").status_code == 403  # it names models: reviews are blind
    assert c.get("/admin").status_code == 403 and c.get("/admin/p/1/export").status_code == 403
    assert c.post("/admin/p/1/guidelines", data={"csrf": csrf, "text": "x"}).status_code == 403
