"""A labeling app over a small project with every task kind, on SQLite or PostgreSQL, with API
tokens for a labeler and an admin (shared by the hardening, fuzzing and expiry tests)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.testclient import TestClient

from coachlm.data import schema
from sqlalchemy import select

from coachlm.feedback import accounts, assign, db, importer, items
from coachlm.feedback.tables import Assignment, Task
from coachlm.feedback.throttle import ThrottleConfig
from coachlm.web.app import WebConfig, create_app


@dataclass
class Api:
    client: TestClient
    store: db.Store
    labeler: dict[str, str]  # Authorization headers
    admin: dict[str, str]

    def next(self, project: str = "demo") -> dict:
        r = self.client.post(f"/api/projects/{project}/next", headers=self.labeler)
        assert r.status_code == 200, r.text
        return r.json()

    def next_of_kind(self, kind: str) -> dict:
        """Give ann a new assignment on a task of `kind` (the queue itself is kind-blind)."""
        with self.store.write() as s:
            lab = accounts.get_labeler(s, "ann")
            mine = select(Assignment.task_id).where(Assignment.labeler_id == lab.id)
            task = s.scalar(select(Task).where(Task.kind == kind, Task.id.not_in(mine))
                            .order_by(Task.id).limit(1))
            a = Assignment(task_id=task.id, labeler_id=lab.id, slot=assign._free_slot(s, task),
                           shown_order=list(range(len(task.response_ids))))
            task.filled += 1
            s.add(a)
            s.flush()
            aid = a.id
        return self.client.get(f"/api/assignments/{aid}", headers=self.labeler).json()


def make_project(st: db.Store, name: str = "demo") -> None:
    with st.write() as s:
        p = items.create_project(s, name, guidelines="Prefer correct answers.")
        recs = [schema.Sample(prompt=schema.as_prompt(f"What is {i}+{i}?"),
                              response=schema.Response(t, m))
                for i in range(3) for t, m in ((str(2 * i), "sft"), (f"{i}{i}", "base"))]
        importer.import_records(s, p, recs)
        for kind in ("comparison", "rating", "demonstration"):
            items.create_tasks(s, p, items.TaskSpec(kind, n_labels=2))


def make_api(url: str, **cfg) -> Api:
    st = db.open_store(url)
    make_project(st)
    with st.write() as s:
        accounts.create_labeler(s, "ann", "ann-password")
        accounts.create_labeler(s, "root", "root-password", role="admin")
        lab, adm = accounts.issue_token(s, "ann"), accounts.issue_token(s, "root")
    app = create_app(WebConfig(store="unused", throttle=ThrottleConfig(free=3, base_s=60), **cfg),
                     st)
    return Api(TestClient(app, raise_server_exceptions=False), st,
               {"Authorization": f"Bearer {lab}"}, {"Authorization": f"Bearer {adm}"})
