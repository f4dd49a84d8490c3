"""Pending assignments expire after their project's TTL and are given to someone else; a late
answer is kept while the task still has a free slot, and refused with a clear 409 otherwise."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from coachlm.data import schema
from coachlm.feedback import accounts, assign, db, importer, items, labels
from coachlm.feedback.tables import EXPIRED, Assignment, Label, Task, utcnow
from coachlm.web.app import WebConfig, create_app


def _age(st: db.Store, assignment_id: int, seconds: float) -> None:
    """Make an assignment look claimed `seconds` ago (instead of sleeping in the test)."""
    with st.write() as s:
        s.get(Assignment, assignment_id).created_at = utcnow() - timedelta(seconds=seconds)


def _store(url: str, ttl: int, n_labels: int = 1) -> db.Store:
    st = db.open_store(url)
    with st.write() as s:
        p = items.create_project(s, "demo", assignment_ttl_s=ttl)
        importer.import_records(s, p, [schema.Sample(prompt=schema.as_prompt("q"),
                                                     response=schema.Response(t)) for t in "xy"])
        items.create_tasks(s, p, items.TaskSpec("comparison", n_labels=n_labels))
        for name in ("absent", "busy", "third"):
            accounts.create_labeler(s, name)
    return st


def _next(st: db.Store, name: str) -> int | None:
    def claim(s):
        a = assign.next_assignment(s, accounts.get_labeler(s, name), items.get_project(s, "demo"))
        return a.id if a else None
    return st.run(claim)


def _submit(st: db.Store, name: str, aid: int, client_id: str) -> bool:
    return st.run(lambda s: labels.submit_label(s, accounts.get_labeler(s, name), aid, client_id,
                                                {"choice": "first"})[1])


def test_expired_assignment_is_reassigned_and_late_answer_refused(store_url):
    st = _store(store_url, ttl=600)
    held = _next(st, "absent")
    assert _next(st, "busy") is None  # the only slot is held
    _age(st, held, 599)
    assert _next(st, "busy") is None  # not yet expired
    _age(st, held, 601)
    mine = _next(st, "busy")
    assert mine is not None and mine != held
    with st.read() as s:
        assert s.get(Assignment, held).status == EXPIRED and s.get(Assignment, held).slot is None
        assert s.scalar(select(Task.filled)) == 1
    assert _submit(st, "busy", mine, "busy-label-1")
    with pytest.raises(db.Conflict, match="expired"):  # the late answer has no slot left
        _submit(st, "absent", held, "late-label-1")
    with st.read() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 1
    st.close()


def test_late_answer_is_kept_while_a_slot_is_free(store_url):
    st = _store(store_url, ttl=60, n_labels=2)
    held = _next(st, "absent")
    _age(st, held, 120)
    other = _next(st, "busy")  # expires `held` (its slot is freed) and claims a slot itself
    with st.read() as s:
        assert s.get(Assignment, held).status == EXPIRED
    assert _submit(st, "absent", held, "late-label-2")  # one of the 2 slots is still free
    assert _next(st, "third") is None  # both slots are taken again
    with st.read() as s:
        assert s.scalar(select(Task.filled)) == 2
        assert s.get(Assignment, held).status == "done"
        assert s.get(Assignment, other).slot is not None
    st.close()


def test_ttl_zero_never_expires_and_api_late_submit_is_409(tmp_path):
    st = _store(str(tmp_path / "f.db"), ttl=0)
    held = _next(st, "absent")
    _age(st, held, 10**7)
    assert _next(st, "busy") is None
    st.close()
    st = _store(str(tmp_path / "g.db"), ttl=30)
    with st.write() as s:
        token = accounts.issue_token(s, "absent")
    c = TestClient(create_app(WebConfig(store="unused"), st))
    h = {"Authorization": f"Bearer {token}"}
    held = c.post("/api/projects/demo/next", headers=h).json()["id"]
    _age(st, held, 31)
    assert _next(st, "busy") is not None
    r = c.post(f"/api/assignments/{held}/label", headers=h,
               json={"client_id": "late-label-3", "answer": {"choice": "tie"}})
    assert r.status_code == 409 and "expired" in r.json()["error"]
    st.close()


def test_cli_sets_the_assignment_ttl(tmp_path):
    from typer.testing import CliRunner

    from coachlm.cli.label import label_app

    store = str(tmp_path / "f.db")
    _store(store, ttl=3600).close()
    r = CliRunner().invoke(label_app, ["project", "-p", "demo", "--assignment-ttl", "90",
                                       "--store", store])
    assert r.exit_code == 0 and "assignment TTL 90 s" in r.output
    r = CliRunner().invoke(label_app, ["project", "-p", "demo", "--assignment-ttl", "-1",
                                       "--store", store])
    assert isinstance(r.exception, db.StoreError)
