"""Issue 12: what a probe of `coachlm label serve` found, each finding with its test (SQLite
and a real PostgreSQL where the finding was on both)."""

from __future__ import annotations

import io
import json
import re
import tracemalloc
import uuid

import pytest
from label_fixtures import Api, make_api
from sqlalchemy import select
from typer.testing import CliRunner

from coachlm.cli.label import label_app
from coachlm.data import schema
from coachlm.feedback import accounts, db, importer, items
from coachlm.feedback.tables import Assignment, Label, Labeler
from coachlm.web.app import create_app
from test_web import app, csrf_of, login  # noqa: F401  (the `app` fixture)

SURROGATE = '"bad \\ud800 text"'  # JSON for a string holding a lone surrogate


@pytest.fixture()
def api(store_url) -> Api:
    a = make_api(store_url)
    yield a
    a.store.close()


def _raw(api: Api, path: str, body: str, headers: dict) -> object:
    return api.client.post(path, content=body.encode(), headers={
        **headers, "content-type": "application/json"})


# --- High: lone surrogates --------------------------------------------------------------


def test_lone_surrogate_is_refused_and_export_survives_stored_ones(api, tmp_path):
    demo = api.next_of_kind("demonstration")
    r = _raw(api, f"/api/assignments/{demo['id']}/label",
             '{"client_id": "surrogate-1", "answer": {"text": %s}}' % SURROGATE, api.labeler)
    assert r.status_code == 422 and "surrogate" in r.json()["error"]
    rating = api.next_of_kind("rating")
    r = _raw(api, f"/api/assignments/{rating['id']}/label",
             '{"client_id": "surrogate-2", "answer": {"score": 3, "critique": %s}}' % SURROGATE,
             api.labeler)
    assert r.status_code == 422 and "surrogate" in r.json()["error"]
    rec = json.dumps(schema.to_dict(schema.Sample(prompt=schema.as_prompt("q"),
                                                  response=schema.Response("PLACEHOLDER"))))
    r = _raw(api, "/api/projects/demo/import",
             '{"records": [%s]}' % rec.replace('"PLACEHOLDER"', SURROGATE), api.admin)
    assert r.status_code == 422 and "surrogate" in r.json()["error"]
    with api.store.read() as s:
        assert s.scalar(select(Label)) is None
    # A store written before the check holds one: exports still work (U+FFFD in its place).
    with api.store.write() as s:
        a = s.get(Assignment, demo["id"])
        a.status = "done"
        s.add(Label(client_id="old-label-1", assignment_id=a.id, task_id=a.task_id,
                    labeler_id=a.labeler_id, answer={"text": "old \ud800 text"}))
    r = api.client.get("/api/projects/demo/export", headers=api.admin)
    assert r.status_code == 200 and "old \ufffd text" in r.text
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(label_app, ["export", str(out), "-p", "demo", "--store",
                                         api.store.cfg.url])
    assert res.exit_code == 0, res.output
    assert schema.from_dict(json.loads(out.read_text())).response.text == "old \ufffd text"


# --- Medium ------------------------------------------------------------------------------


def test_failed_sign_ins_keep_no_per_name_memory(app):  # noqa: F811
    c = TestClient_(app)
    token = csrf_of(c.get("/login").text)
    c.post("/login", data={"name": "warm-up", "password": "x", "csrf": token})
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20):  # 20 new names of 500 kB each: 10 MB if the names were kept
        r = c.post("/login", data={"name": f"{i}" + "n" * 500_000, "password": "x",
                                   "csrf": token})
        assert r.status_code != 413  # the body limit did not answer for the sign-in route
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # Well below the 10 MB: ~1.1 MB of other state (caches of the app and the test client)
    # was seen to grow once, so the bound is not at 1 MB
    assert grown < 2_500_000, grown


def TestClient_(app, address: str = "testclient"):  # noqa: N802, F811
    from fastapi.testclient import TestClient

    return TestClient(app, client=(address, 50000))


def test_throttle_is_shared_by_processes_and_backs_off_per_address(app):  # noqa: F811
    # A second app on the same store stands for a second server process.
    other = create_app(app.state.config, app.state.store)
    c1 = TestClient_(app, "10.0.0.1")
    token = csrf_of(c1.get("/login").text)
    for _ in range(3):
        r = c1.post("/login", data={"name": "root", "password": "guess", "csrf": token})
        assert r.status_code == 401
        token = csrf_of(r.text)
    c2 = TestClient_(other, "10.0.0.1")
    token2 = csrf_of(c2.get("/login").text)
    r = c2.post("/login", data={"name": "root", "password": "root-password", "csrf": token2})
    assert r.status_code == 429  # the other process knows about the failures
    login(other, "root", "root-password", address="10.0.0.2")  # the admin is not locked out


def test_body_limit_answers_413_before_parsing_or_auth(app):  # noqa: F811
    c = TestClient_(app)
    big = b'{"records": [' + b'{"kind": "prompt", "prompt": "x"},' * 100_000 + b'{}]}'
    assert len(big) > 2 * 2**20
    for path in ("/api/projects/demo/import", "/api/assignments/1/label", "/login"):
        r = c.post(path, content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413, (path, r.status_code)

    def chunks():  # no Content-Length: the bytes are counted
        for _ in range(40):
            yield b"x" * 100_000

    r = c.post("/api/assignments/1/label", content=chunks(),
               headers={"content-type": "application/json"})
    assert r.status_code == 413
    with app.state.store.write() as s:
        admin = {"Authorization": f"Bearer {accounts.issue_token(s, 'root')}"}
        ann = {"Authorization": f"Bearer {accounts.issue_token(s, 'ann')}"}
    r = c.post("/api/projects/demo/import", content=big, headers={
        **ann, "content-type": "application/json"})
    assert r.status_code == 413  # a large import only from an admin
    r = c.post("/api/projects/demo/import", content=big, headers={
        **admin, "content-type": "application/json"})
    assert r.status_code == 400 and "records[100000]" in r.json()["error"]


def test_password_hashing_runs_outside_the_write_lock(app, monkeypatch):  # noqa: F811
    st, held = app.state.store, []
    real_verify, real_hash = accounts.HASHER.verify, accounts.HASHER.hash

    class Spy:
        def verify(self, *a):
            held.append(st._lock.locked())
            return real_verify(*a)

        def hash(self, *a):
            held.append(st._lock.locked())
            return real_hash(*a)

        def check_needs_rehash(self, h):
            return False

    monkeypatch.setattr(accounts, "HASHER", Spy())
    login(app, "ann", "ann-password")
    c, csrf = login(app, "root", "root-password")
    c.post("/admin/labelers", data={"csrf": csrf, "name": "dan", "password": "dan-password"})
    with st.read() as s:
        assert s.scalar(select(Labeler).where(Labeler.name == "dan")) is not None
    assert len(held) >= 3 and not any(held)


def test_imported_ai_labels_are_never_filed_under_a_person(tmp_path):
    st = db.open_store(str(tmp_path / "f.db"))
    rec = schema.Comparison(prompt=schema.as_prompt("q?"), a=schema.Response("x"),
                            b=schema.Response("y"), choice="a", labeler="ann", source="ai")
    with st.write() as s:
        accounts.create_labeler(s, "ann", "ann-password")
        p = items.create_project(s, "demo")
        assert importer.import_records(s, p, [rec]).labels == 1
    with st.read() as s:
        from coachlm.feedback.export import export_records

        out = export_records(s, items.get_project(s, "demo"))
        ann = accounts.get_labeler(s, "ann")
        assert s.scalar(select(Label).where(Label.labeler_id == ann.id)) is None
    assert [(r.labeler, r.source) for r in out] == [("ann (ai)", "ai")]
    st.close()


# --- Low: 500s that must be clear 4xx answers --------------------------------------------

BAD_ANSWERS = {
    "comparison": [{"choice": ["first"]}, {"choice": {"x": 1}},
                   {"choice": "first", "margin": int("9" * 400)}],
    "rating": [{"score": int("9" * 400)}, {"score": 3, "flags": 7}, {"score": 3, "flags": [1]},
               {"score": 3, "critique": {"not": "text"}}, {"score": 3, "critique": 12}],
    "demonstration": [{"text": ["a list"]}, {"text": "nul \x00 byte"}],
}


@pytest.mark.parametrize("kind", sorted(BAD_ANSWERS))
def test_bad_answers_get_4xx_not_500(api, kind):
    a = api.next_of_kind(kind)
    for answer in BAD_ANSWERS[kind]:
        r = api.client.post(f"/api/assignments/{a['id']}/label", headers=api.labeler,
                            json={"client_id": uuid.uuid4().hex, "answer": answer})
        assert r.status_code in (400, 422), (answer, r.status_code, r.text)
    r = api.client.post(f"/api/assignments/{a['id']}/label", headers=api.labeler,
                        json={"client_id": uuid.uuid4().hex, "answer": {"choice": "tie"},
                              "time_spent_s": int("9" * 400)})
    assert r.status_code < 500
    for big in (2**63, 2**70, 0):
        assert api.client.get(f"/api/assignments/{big}", headers=api.labeler).status_code == 422
        r = api.client.post(f"/api/assignments/{big}/label", headers=api.labeler,
                            json={"client_id": uuid.uuid4().hex, "answer": {}})
        assert r.status_code == 422


def test_admin_input_limits(api):
    for body in ('{"name": "x1", "cost_per_label": NaN}', '{"name": "x2", "cost_per_label": -1}',
                 '{"name": "x3", "cost_per_label": Infinity}', '{"name": "x\\u0000"}'):
        r = _raw(api, "/api/labelers", body, api.admin)
        assert r.status_code in (400, 422), (body, r.status_code)
    r = api.client.post("/api/projects", headers=api.admin,
                        json={"name": "huge", "rating_scale": 300_000})
    assert r.status_code == 400 and "rating_scale" in r.json()["error"]
    r = api.client.post("/api/projects/demo/tasks", headers=api.admin,
                        json={"kind": "ranking", "k": 1})
    assert r.status_code == 400 and "at least 2" in r.json()["error"]
    assert api.client.post("/api/projects/nope/next", headers=api.labeler).status_code == 404


def test_web_pages_of_missing_things_are_4xx(store_url):
    api = make_api(store_url)
    c, csrf = login(api.client.app, "ann", "ann-password")
    assert c.post("/p/999/start", data={"csrf": csrf}).status_code == 404
    assert c.get(f"/a/{2**63}").status_code in (404, 422)
    anon = TestClient_(api.client.app)
    token = csrf_of(anon.get("/login").text)
    r = anon.post("/login", data={"name": "ann\x00", "password": "x" * 9, "csrf": token})
    assert r.status_code == 401  # a NUL in the name (PostgreSQL cannot even compare it)
    api.store.close()


def test_sign_in_does_the_same_hash_work_for_every_kind_of_failure(tmp_path, monkeypatch):
    st = db.open_store(str(tmp_path / "f.db"))
    with st.write() as s:
        accounts.create_labeler(s, "on", "password-1")
        accounts.create_labeler(s, "off", "password-2").active = False
        accounts.create_labeler(s, "tokenonly", None)
    calls = []
    real = accounts.HASHER.verify

    class Count:
        def verify(self, h, p):
            calls.append(h)
            return real(h, p)

        def __getattr__(self, name):
            return getattr(accounts.HASHER.__class__, name)

    for name in ("on", "off", "tokenonly", "nobody", "x" * 5000):
        monkeypatch.setattr(accounts, "HASHER", Count())
        calls.clear()
        assert accounts.sign_in(st, name, "wrong-password") is None
        assert len(calls) == 1, name  # one argon2 verification each, found or not
    st.close()


def test_resent_client_id_with_another_answer_is_a_409_naming_the_label(api):
    a = api.next_of_kind("comparison")
    body = {"client_id": "resend-0001", "answer": {"choice": "first"}}
    first = api.client.post(f"/api/assignments/{a['id']}/label", headers=api.labeler, json=body)
    assert first.status_code == 201
    same = api.client.post(f"/api/assignments/{a['id']}/label", headers=api.labeler, json=body)
    assert same.status_code == 200
    body["answer"] = {"choice": "second"}
    r = api.client.post(f"/api/assignments/{a['id']}/label", headers=api.labeler, json=body)
    assert r.status_code == 409 and f"label {first.json()['label_id']}" in r.json()["error"]


def test_project_names_with_a_slash_are_reachable(api):
    r = api.client.post("/api/projects", headers=api.admin, json={"name": "team/a b"})
    assert r.status_code == 201
    recs = [schema.to_dict(schema.Sample(prompt=schema.as_prompt("p"),
                                         response=schema.Response(t))) for t in ("x", "y")]
    name = "team%2Fa%20b"
    assert api.client.post(f"/api/projects/{name}/import", headers=api.admin,
                           json={"records": recs}).status_code == 200
    assert api.client.post(f"/api/projects/{name}/tasks", headers=api.admin,
                           json={"kind": "comparison"}).json() == {"created": 1}
    assert api.next("team/a b")["project"] == "team/a b"
    assert api.client.get(f"/api/projects/{name}/stats", headers=api.admin).status_code == 200


def test_upload_reimport_keeps_line_separators_and_labels(app):  # noqa: F811
    st = app.state.store
    odd = "line\u2028separator and next\u0085line"
    rec = schema.Comparison(prompt=schema.as_prompt(odd), a=schema.Response(odd + " a"),
                            b=schema.Response("b"), choice="a", labeler="judge", source="ai")
    with st.write() as s:
        importer.import_records(s, items.get_project(s, "demo"), [rec])
    c, csrf = login(app, "root", "root-password")
    exported = c.get("/admin/p/1/export").content
    assert "\u2028".encode() in exported
    r = c.post("/admin/projects", data={"csrf": csrf, "name": "copy"})
    copy_id = int(re.search(r"/admin/p/(\d+)", str(r.url)).group(1))
    r = c.post(f"/admin/p/{copy_id}/import", data={"csrf": csrf},
               files={"file": ("e.jsonl", io.BytesIO(exported), "application/x-ndjson")})
    assert r.status_code == 200 and "imported-1" in str(r.url)
    again = c.get(f"/admin/p/{copy_id}/export").text
    back = schema.from_dict(json.loads(again))
    assert back.prompt == rec.prompt and back.labeler == "judge" and back.choice == "a"


def test_cli_refuses_to_demote_the_only_admin(tmp_path):
    store = str(tmp_path / "f.db")
    st = db.open_store(store)
    with st.write() as s:
        accounts.create_labeler(s, "root", "root-password", role="admin")
    st.close()
    r = CliRunner().invoke(label_app, ["users", "set", "root", "--role", "labeler",
                                       "--store", store])
    assert isinstance(r.exception, db.StoreError) and "only active admin" in str(r.exception)
