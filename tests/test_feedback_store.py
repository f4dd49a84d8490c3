"""The feedback store on SQLite and on a real PostgreSQL server: migrations, import, assignment
overlap, concurrency, idempotent resubmission, gold, cost and export filters."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from feedback_support import new_database
from sqlalchemy import func, select, text

from coachlm.data import schema
from coachlm.feedback import accounts, assign, db, export, importer, items, labels, quality
from coachlm.feedback.tables import Assignment, Base, Label, Labeler, Task


def _samples(n_prompts: int, n_responses: int = 3) -> list[schema.Sample]:
    return [schema.Sample(prompt=schema.as_prompt(f"prompt {i}"),
                          response=schema.Response(f"answer {i}.{j}", f"model{j}", "v1"))
            for i in range(n_prompts) for j in range(n_responses)]


def _setup(st: db.Store, n_prompts: int = 3, n_labelers: int = 4, n_labels: int = 2,
           kind: str = "comparison") -> None:
    with st.write() as s:
        p = items.create_project(s, "demo")
        importer.import_records(s, p, _samples(n_prompts))
        items.create_tasks(s, p, items.TaskSpec(kind, n_labels=n_labels))
        for i in range(n_labelers):
            accounts.create_labeler(s, f"lab{i}", None, cost_per_label=0.25)


def _uid() -> str:
    return uuid.uuid4().hex


def test_migrations_match_models(store_url):
    st = db.open_store(store_url)
    head = db.head_revision()
    assert db.current_revision(st.engine) == head == "0003"
    with st.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        if st.is_sqlite:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    from alembic import command

    cfg = db._alembic_config()
    with st.engine.begin() as conn:  # the migration is reversible
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert db.current_revision(st.engine) is None
    db.upgrade(st.engine)
    assert db.current_revision(st.engine) == head
    st.close()


def test_import_is_idempotent_and_keeps_provenance(store_url):
    st = db.open_store(store_url)
    a, b = schema.Response("yes", "m1", "v2"), schema.Response("no", "m2")
    cmp_ab = schema.Comparison(prompt=schema.as_prompt("q?"), a=a, b=b, choice="a",
                               labeler="judge", source="ai", shown_order="ba")
    cmp_ba = schema.Comparison(prompt=schema.as_prompt("q?"), a=b, b=a, choice="a",
                               labeler="other-judge", source="ai")
    with st.write() as s:
        p = items.create_project(s, "demo")
        c1 = importer.import_records(s, p, _samples(2) + [cmp_ab, cmp_ba])
        c2 = importer.import_records(s, p, _samples(2) + [cmp_ab, cmp_ba])
    assert (c1.prompts, c1.responses, c1.tasks, c1.labels) == (3, 8, 1, 2)
    assert (c2.prompts, c2.responses, c2.tasks, c2.labels) == (0, 0, 0, 0)
    with st.read() as s:
        recs = export.export_records(s, items.get_project(s, "demo"))
    # Both labels are on one task; the second judge's "a" meant "no", so in the task's order
    # (yes, no) it is "b". Re-reading gives the record as it was given.
    by = {r.labeler: r for r in recs}
    assert by["judge"].choice == "a" and by["judge"].a == a and by["judge"].shown_order == "ba"
    assert by["other-judge"].choice == "b" and by["other-judge"].a == a
    assert by["judge"].source == "ai" and by["judge"].a.model_version == "v2"
    for r in recs:
        assert schema.from_dict(schema.to_dict(r)) == r
    st.close()


def test_assignment_overlap_no_labeler_twice(store_url):
    st = db.open_store(store_url)
    _setup(st, n_prompts=3, n_labelers=4, n_labels=3)  # 9 comparison tasks, 3 labels each
    with st.write() as s:
        p = items.get_project(s, "demo")
        labs = s.scalars(select(Labeler).order_by(Labeler.id)).all()
        assert assign.assign_tasks(s, p, labs) == 27
        assert assign.assign_tasks(s, p, labs) == 0  # every slot is full
    with st.read() as s:
        per_task = s.execute(select(Assignment.task_id, func.count(),
                                    func.count(func.distinct(Assignment.labeler_id)))
                             .group_by(Assignment.task_id)).all()
        assert len(per_task) == 9 and all(n == 3 and d == 3 for _, n, d in per_task)
        loads = s.execute(select(func.count()).select_from(Assignment)
                          .group_by(Assignment.labeler_id)).scalars().all()
        assert max(loads) - min(loads) <= 1
    with st.write() as s:  # a skip frees the slot for someone else, never for the skipper
        p = items.get_project(s, "demo")
        lab0 = accounts.get_labeler(s, "lab0")
        first = assign.pending(s, lab0, p)
        assign.skip(s, lab0, first.id)
        newbie = accounts.create_labeler(s, "newbie")
        got = assign.next_assignment(s, newbie, p)
        assert got.task_id == first.task_id
        assert assign.next_assignment(s, newbie, p).id == got.id  # pending first
        skipped_task = first.task_id
    with st.write() as s:
        lab0 = accounts.get_labeler(s, "lab0")
        p = items.get_project(s, "demo")
        seen = set()
        while (a := assign.next_assignment(s, lab0, p)) is not None:
            labels.submit_label(s, lab0, a.id, _uid(), {"choice": "tie"})
            seen.add(a.task_id)
        assert skipped_task not in seen
    st.close()


def _label_everything(st: db.Store, name: str, errors: list) -> None:
    try:
        while True:
            def step(s):
                lab = accounts.get_labeler(s, name)
                a = assign.next_assignment(s, lab, items.get_project(s, "demo"))
                if a is None:
                    return False
                labels.submit_label(s, lab, a.id, _uid(), {"choice": "first", "margin": 1}, 1.0)
                return True

            if not st.run(step, retries=20):
                return
    except Exception as e:  # surfaced by the test
        errors.append(e)


def test_concurrent_labelers_fill_each_task_exactly(store_url):
    st = db.open_store(store_url)
    _setup(st, n_prompts=4, n_labelers=6, n_labels=3)  # 12 tasks x 3 labels
    errors: list = []
    threads = [threading.Thread(target=_label_everything, args=(st, f"lab{i}", errors))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with st.read() as s:
        rows = s.execute(select(Label.task_id, func.count(),
                                func.count(func.distinct(Label.labeler_id)))
                         .group_by(Label.task_id)).all()
        assert len(rows) == 12 and all(n == 3 and d == 3 for _, n, d in rows)
        assert s.scalar(select(func.sum(Label.cost))) == pytest.approx(36 * 0.25)
    st.close()


def test_idempotent_resubmission_and_ownership(store_url):
    st = db.open_store(store_url)
    _setup(st, n_prompts=1, n_labelers=2, n_labels=1)
    with st.write() as s:
        p = items.get_project(s, "demo")
        lab0, lab1 = accounts.get_labeler(s, "lab0"), accounts.get_labeler(s, "lab1")
        a = assign.next_assignment(s, lab0, p)
        a_id, b_id = a.id, assign.next_assignment(s, lab1, p).id
        first, created = labels.submit_label(s, lab0, a_id, "client-0001", {"choice": "tie"})
        again, created2 = labels.submit_label(s, lab0, a_id, "client-0001", {"choice": "tie"})
        assert created and not created2 and again.id == first.id
        with pytest.raises(db.Conflict):
            labels.submit_label(s, lab0, a_id, "client-0002", {"choice": "tie"})
        with pytest.raises(db.NotFound):  # someone else's assignment
            labels.submit_label(s, lab0, b_id, "client-0003", {"choice": "tie"})
        with pytest.raises(db.NotFound):
            assign.get_assignment(s, lab0, b_id)
        with pytest.raises(db.StoreError):
            labels.submit_label(s, lab1, b_id, "client-0004", {"choice": "maybe"})

    # Two racing retries of one submission store one label.
    results, errors = [], []

    def send():
        try:
            results.append(st.run(lambda s: labels.submit_label(
                s, accounts.get_labeler(s, "lab1"), b_id, "client-race", {"choice": "first"}
            )[1]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(results) == [False, False, False, True]
    with st.read() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 2
    st.close()


def test_shown_order_is_mapped_back_to_canonical():
    # Shown second-then-first: "first" on screen is canonical b.
    assert labels.from_shown("comparison", {"choice": "first"}, [1, 0])["choice"] == "b"
    assert labels.from_shown("comparison", {"choice": "second"}, [1, 0])["choice"] == "a"
    assert labels.from_shown("comparison", {"choice": "tie"}, [1, 0])["choice"] == "tie"
    # Ranks typed in screen order [2, 1, 3] for shown order [2, 0, 1] -> canonical [1, 3, 2].
    assert labels.from_shown("ranking", {"ranks": [2, 1, 3]}, [2, 0, 1])["ranks"] == [1, 3, 2]


def test_gold_quality_and_export_filters(store_url):
    st = db.open_store(store_url)
    good, bad = schema.Response("good", "m1"), schema.Response("bad", "m2")
    golds = [schema.Comparison(prompt=schema.as_prompt(f"gold {i}"), a=good, b=bad, choice="a")
             for i in range(2)]
    with st.write() as s:
        p = items.create_project(s, "demo")
        assert importer.import_records(s, p, golds, gold=True, n_labels=3).gold == 2
        importer.import_records(s, p, _samples(2, 2))
        items.create_tasks(s, p, items.TaskSpec("comparison", n_labels=3))
        for name in ("ann", "bob", "cat"):
            accounts.create_labeler(s, name, cost_per_label=0.5)
        assign.assign_tasks(s, p, s.scalars(select(Labeler)).all())
    # ann and bob answer canonically "a" everywhere; cat answers "b" (fails gold).
    with st.write() as s:
        for name, want in (("ann", "a"), ("bob", "a"), ("cat", "b")):
            lab = accounts.get_labeler(s, name)
            for a in s.scalars(select(Assignment).where(Assignment.labeler_id == lab.id)):
                shown = "first" if "ab"[a.shown_order[0]] == want else "second"
                labels.submit_label(s, lab, a.id, _uid(), {"choice": shown}, 2.0)
    with st.read() as s:
        p = items.get_project(s, "demo")
        q = quality.project_quality(s, p)
        by = {lq.name: lq for lq in q.labelers}
        assert (by["ann"].gold_correct, by["ann"].gold_total) == (2, 2)
        assert (by["cat"].gold_correct, by["cat"].gold_total) == (0, 2)
        assert (by["cat"].majority_agree, by["cat"].majority_total) == (0, 4)
        assert by["ann"].cost == pytest.approx(2.0) and by["ann"].median_time_s == 2.0
        # 4 items, 3 labels each, [a, a, b] on every item: P_i = 1/3; p_a = 2/3 -> kappa = -0.5.
        assert q.kinds[0].fleiss == pytest.approx(-0.5)
        everything = export.export_records(s, p)
        no_cat = export.export_records(s, p, export.ExportConfig(min_gold_accuracy=0.5))
        unanimous = export.export_records(s, p, export.ExportConfig(
            min_agreement=1.0, exclude_labelers=("cat",), include_gold=False))
    assert len(everything) == 12
    assert {r.labeler for r in no_cat} == {"ann", "bob"} and len(no_cat) == 8
    assert len(unanimous) == 4 and all(r.meta["agreement"] == 1.0 for r in unanimous)
    assert all(not r.meta["gold"] for r in unanimous)
    st.close()


def test_passwords_tokens_and_sessions(tmp_path):
    st = db.open_store(str(tmp_path / "f.db"))
    with st.write() as s:
        lab = accounts.create_labeler(s, "ann", "correct horse")
        # argon2id with OWASP's parameters (m=19 MiB, t=2, p=1).
        assert lab.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert "correct" not in lab.password_hash
        assert accounts.authenticate(s, "ann", "correct horse").id == lab.id
        assert accounts.authenticate(s, "ann", "wrong horse") is None
        assert accounts.authenticate(s, "nobody", "correct horse") is None
        token = accounts.issue_token(s, "ann")
        assert lab.token_hash != token and accounts.labeler_by_token(s, token).id == lab.id
        cookie, row = accounts.create_session(s, lab)
        assert row.id != cookie and accounts.session_for(s, cookie)[1].id == lab.id
        with pytest.raises(db.StoreError):
            accounts.create_labeler(s, "ann", "another one")
        with pytest.raises(db.StoreError):
            accounts.create_labeler(s, "short", "abc")
        accounts.update_labeler(s, "ann", active=False)
        assert accounts.session_for(s, cookie) is None
        assert accounts.labeler_by_token(s, token) is None
        # Reactivating does not revive the old API token (deactivation revoked it).
        accounts.update_labeler(s, "ann", active=True)
        assert accounts.labeler_by_token(s, token) is None
        # A password reset ends every session of that labeler.
        cookie, _ = accounts.create_session(s, lab)
        accounts.update_labeler(s, "ann", password="a new password")
        assert accounts.session_for(s, cookie) is None
        assert accounts.authenticate(s, "ann", "a new password").id == lab.id
    st.close()


def _legacy_scrypt(password: str) -> str:
    import base64
    import hashlib

    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return (f"scrypt$16384$8$1${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def test_legacy_scrypt_hash_is_rehashed_at_sign_in(tmp_path):
    st = db.open_store(str(tmp_path / "f.db"))
    with st.write() as s:
        accounts.create_labeler(s, "old", None).password_hash = _legacy_scrypt("old password")
    assert accounts.sign_in(st, "old", "wrong password") is None
    with st.read() as s:  # a failed sign-in changes nothing
        assert accounts.get_labeler(s, "old").password_hash.startswith("scrypt$")
    token, lab = accounts.sign_in(st, "old", "old password")
    with st.read() as s:
        stored = accounts.get_labeler(s, "old").password_hash
        assert stored.startswith("$argon2id$") and not accounts.needs_rehash(stored)
        assert accounts.session_for(s, token)[1].name == "old"
    assert accounts.sign_in(st, "old", "old password") is not None  # the new hash verifies
    st.close()


def test_last_admin_cannot_be_demoted_or_deactivated(tmp_path):
    st = db.open_store(str(tmp_path / "f.db"))
    with st.write() as s:
        accounts.create_labeler(s, "root", "root-password", role="admin")
        for change in ({"role": "labeler"}, {"active": False}):
            with pytest.raises(db.StoreError, match="only active admin"):
                accounts.update_labeler(s, "root", **change)
        accounts.create_labeler(s, "second", "second-password", role="admin")
        accounts.update_labeler(s, "root", role="reviewer")  # another admin remains
        with pytest.raises(db.StoreError, match="only active admin"):
            accounts.update_labeler(s, "second", active=False)
    st.close()


def test_gold_rating_follows_the_projects_scale_and_flags(tmp_path):
    """A gold rating is checked against the project's scale and flags (it was checked against
    1..7 and any flag whatever the project said)."""
    st = db.open_store(str(tmp_path / "f.db"))
    with st.write() as s:
        p = items.create_project(s, "ten", rating_scale=10, flags=["rude"])
        importer.import_records(s, p, _samples(1))
        items.create_tasks(s, p, items.TaskSpec("rating"))
        task = s.scalar(select(Task))
        items.set_gold(s, task, {"score": 9, "flags": ["rude"]})
        assert task.gold["score"] == 9 and task.gold["scale"] == 10
        with pytest.raises(db.StoreError, match="flags must be among"):
            items.set_gold(s, task, {"score": 9, "flags": ["unsafe"]})
        with pytest.raises(db.StoreError):
            items.set_gold(s, task, {"score": 11})
    st.close()


def test_set_gold_and_project_stats(tmp_path):
    st = db.open_store(str(tmp_path / "f.db"))
    _setup(st, n_prompts=1, n_labelers=1, n_labels=1, kind="ranking")
    with st.write() as s:
        p = items.get_project(s, "demo")
        task = s.scalar(select(Task))
        items.set_gold(s, task, {"ranks": [1, 2, None]})
        assert task.gold == {"ranks": [1, 2, None]}
        with pytest.raises(db.StoreError):
            items.set_gold(s, task, {"ranks": [1]})
        stats = items.project_stats(s, p)
        assert (stats.prompts, stats.responses, stats.tasks, stats.gold) == (1, 3, {"ranking": 1}, 1)
        items.set_gold(s, task, None)
        assert items.project_stats(s, p).gold == 0
    st.close()


def test_requests_arriving_at_once_open_one_token_connection(pg_admin_url, monkeypatch):
    """PostgreSQL: the token reads of a worker's first requests, arriving together, wait for
    one kept-open connection (each of 50 labelers had opened its own)."""
    import psycopg

    st = db.open_store(new_database(pg_admin_url))
    opened, connect = [], psycopg.AsyncConnection.connect

    async def counted(cls, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        opened.append(1)
        return await connect(*args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(counted))

    async def requests() -> list:
        return await asyncio.gather(*(accounts.caller_by_token_async(st, f"token{i}")
                                      for i in range(20)))

    assert asyncio.run(requests()) == [None] * 20
    assert len(opened) == 1
    st.close()


def _open_at(url: str, start) -> str:
    start.wait()  # every process opens the fresh store at once
    try:
        db.open_store(url).close()
        return ""
    except Exception as e:  # noqa: BLE001 -- reported to the parent as text
        return f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_opening_a_fresh_store_at_once_all_migrate_it(backend, tmp_path, request):
    # A loop and a web server (or a labeler's script) may open a new store together: each runs
    # the migrations, and unserialized they raced (on SQLite "database is locked" while
    # creating alembic_version, seen as a loop dying at its start in a test).
    import multiprocessing as mp

    admin = request.getfixturevalue("pg_admin_url") if backend == "postgresql" else None
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(4) as pool:
        for i in range(3):
            url = new_database(admin) if admin else str(tmp_path / f"fresh{i}.db")
            start = manager.Barrier(4)
            errors = pool.starmap(_open_at, [(url, start)] * 4)
            assert errors == [""] * 4, errors
            with db.open_store(url).read() as s:
                assert s.execute(text("select count(*) from tasks")).scalar() == 0
