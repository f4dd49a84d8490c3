"""kill -9 of the labeling server in the middle of a load: every label the server acknowledged
is stored, exactly once; labels in flight at the kill are stored at most once, and resending
them with their client ids after a restart makes acknowledged == stored (SQLite, PostgreSQL)."""

from __future__ import annotations

import signal
import threading
import uuid

import httpx
from feedback_support import label_server
from sqlalchemy import func, select

from coachlm.data import schema
from coachlm.feedback import accounts, db, importer, items
from coachlm.feedback.tables import Label

LABELERS = 6


def _prepare(url: str, prompts: int = 60) -> list[str]:
    st = db.open_store(url)
    with st.write() as s:
        p = items.create_project(s, "demo")
        importer.import_records(s, p, [
            schema.Sample(prompt=schema.as_prompt(f"q{i}"), response=schema.Response(f"r{i}.{j}"))
            for i in range(prompts) for j in range(2)])
        items.create_tasks(s, p, items.TaskSpec("comparison", n_labels=3))
        tokens = []
        for k in range(LABELERS):
            accounts.create_labeler(s, f"lab{k}")
            tokens.append(accounts.issue_token(s, f"lab{k}"))
    st.close()
    return tokens


def _labeler(base: str, token: str, acked: set, in_flight: dict, lock: threading.Lock) -> None:
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=30) as c:
        try:
            while True:
                r = c.post("/api/projects/demo/next", headers=h)
                if r.status_code == 204:
                    return
                a = r.json()
                body = {"client_id": uuid.uuid4().hex, "answer": {"choice": "tie"}}
                with lock:
                    in_flight[body["client_id"]] = (a["id"], token)
                r = c.post(f"/api/assignments/{a['id']}/label", headers=h, json=body)
                assert r.status_code in (200, 201), r.text
                with lock:
                    acked.add(body["client_id"])
                    del in_flight[body["client_id"]]
        except httpx.TransportError:  # the server is gone
            return


def test_kill_9_loses_no_acknowledged_label(store_url):
    tokens = _prepare(store_url)
    acked: set[str] = set()
    in_flight: dict[str, tuple[int, str]] = {}
    lock = threading.Lock()
    with label_server(store_url) as (proc, base):
        threads = [threading.Thread(target=_labeler, args=(base, t, acked, in_flight, lock))
                   for t in tokens]
        for t in threads:
            t.start()
        while len(acked) < 40 and any(t.is_alive() for t in threads):
            threading.Event().wait(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
        proc.wait(10)
        for t in threads:
            t.join(30)
    assert proc.returncode == -signal.SIGKILL and len(acked) >= 40
    st = db.open_store(store_url)
    with st.read() as s:
        stored = set(s.scalars(select(Label.client_id)))
        assert s.scalar(select(func.count()).select_from(Label)) == len(stored)  # no duplicate
    assert acked <= stored  # nothing acknowledged was lost
    assert stored - acked <= set(in_flight)  # nothing stored that was never sent
    st.close()
    # After a restart, the clients resend what was in flight (same client ids): stored once.
    with label_server(store_url) as (_, base), httpx.Client(base_url=base, timeout=30) as c:
        for client_id, (aid, token) in in_flight.items():
            r = c.post(f"/api/assignments/{aid}/label", json={
                "client_id": client_id, "answer": {"choice": "tie"}},
                headers={"Authorization": f"Bearer {token}"})
            assert r.status_code in (200, 201), r.text
            acked.add(client_id)
    st = db.open_store(store_url)
    with st.read() as s:
        assert set(s.scalars(select(Label.client_id))) == acked
        assert s.scalar(select(func.count()).select_from(Label)) == len(acked)
    st.close()


def test_two_worker_processes_share_one_sqlite_store(tmp_path):
    """`--workers 2`: separate processes write one SQLite file (queued on the writer file
    lock); every task still gets exactly its labels, none twice."""
    url = str(tmp_path / "f.db")
    tokens = _prepare(url, prompts=20)
    acked: set[str] = set()
    lock = threading.Lock()
    with label_server(url, "--workers", "2") as (_, base):
        threads = [threading.Thread(target=_labeler, args=(base, t, acked, {}, lock))
                   for t in tokens]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    st = db.open_store(url)
    with st.read() as s:
        per_task = s.execute(select(Label.task_id, func.count(),
                                    func.count(func.distinct(Label.labeler_id)))
                             .group_by(Label.task_id)).all()
        assert set(s.scalars(select(Label.client_id))) == acked
    assert len(per_task) == 20 and all(n == 3 and d == 3 for _, n, d in per_task)
    st.close()
