"""Group commit: the writes of one batch share a transaction; on PostgreSQL their plain-SQL
statements are pipelined (sent together, one round trip per step rather than per statement).
Each write must still come out exactly as if it had run alone, and a failing write must fail
alone, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Callable

import psycopg
import pytest
from feedback_support import new_database
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from coachlm.data import schema
from coachlm.feedback import accounts, assign, db, flow, importer, items, labels
from coachlm.feedback.db import NotFound
from coachlm.feedback.sql import Db, Sql
from coachlm.feedback.tables import Assignment, Label, Labeler, Project, utcnow


@dataclass(frozen=True)
class Caller:
    id: int
    name: str
    cost_per_label: float = 0.0


def _store(url: str, n_labelers: int = 4) -> tuple[db.Store, list[Caller]]:
    """Two comparison tasks that each want 2 labels, and `n_labelers` labelers."""
    st = db.open_store(url)
    with st.write() as s:
        p = items.create_project(s, "demo")
        importer.import_records(s, p, [
            schema.Sample(prompt=schema.as_prompt(f"q{i}"), response=schema.Response(f"{i}{t}"))
            for i in range(2) for t in "xy"])
        items.create_tasks(s, p, items.TaskSpec("comparison", n_labels=2))
        labs = [accounts.create_labeler(s, f"lab{i}") for i in range(n_labelers)]
        s.flush()
        callers = [Caller(lab.id, lab.name) for lab in labs]
    return st, callers


def _one_batch(st: db.Store, writes: list[Callable[[Any], Any]]) -> list[Any]:
    """Run `writes` as ONE group-commit batch, as requests arriving together are: each one's
    result, or the exception it got."""
    batch = [(fn, True, Future()) for fn in writes]
    st._group._commit(batch)
    return [done.exception() or done.result() for _, _, done in batch]


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the pipelines PostgreSQL is sent (each is one round trip)."""
    count = [0]
    enter = psycopg.Connection.pipeline

    def counted(self: psycopg.Connection) -> Any:
        count[0] += 1
        return enter(self)

    monkeypatch.setattr(psycopg.Connection, "pipeline", counted)
    return count


def test_a_batch_of_claims_and_submits_comes_out_as_if_run_one_by_one(store_url, rounds):
    st, (a, b, c, d) = _store(store_url)
    claim = lambda who: lambda s: assign.next_view(s, who.id, "demo")  # noqa: E731
    views = _one_batch(st, [claim(a), claim(b), claim(c)])
    # In batch order, each claim saw the ones before it: a and b share the first task's two
    # slots, c gets the second task.
    with st.read() as s:
        got = [s.get(Assignment, v.id) for v in views]
        assert [(x.task_id, x.slot) for x in got] == [(got[0].task_id, 0), (got[0].task_id, 1),
                                                      (got[2].task_id, 0)]
        assert got[2].task_id != got[0].task_id
    assert [v.status for v in views] == ["pending"] * 3
    assert all(sorted(v.texts) in (["0x", "0y"], ["1x", "1y"]) for v in views)
    if not st.is_sqlite:
        assert rounds[0] == 1  # three claims, one statement each: sent together

    again = uuid.uuid4().hex
    submit = lambda who, v, cid, choice: lambda s: labels.submit(  # noqa: E731
        s, who, v.id, cid, {"choice": choice})
    rounds[0] = 0
    out = _one_batch(st, [submit(a, views[0], again, "first"), submit(b, views[1], uuid.uuid4().hex,
                          "second"), submit(a, views[0], again, "first"), claim(d)])
    assert [created for _, created in out[:3]] == [True, True, False]
    assert out[2][0] == out[0][0]  # the resent client id found the label of the same batch
    assert out[3].id not in {v.id for v in views}
    if not st.is_sqlite:
        assert rounds[0] == 3  # locked reads, inserts, the resent one's lookup: 3, not 8
    with st.read() as s:
        assert len(s.scalars(select(Label)).all()) == 2
        assert [s.get(Assignment, v.id).status for v in views] == ["done", "done", "pending"]
    st.close()


def test_a_failing_write_fails_alone_and_the_rest_of_its_batch_commits(store_url):
    st, (a, b, c, _) = _store(store_url)
    theirs = st.run(lambda s: assign.next_assignment_id(s, b.id, "demo"))
    duplicate = Sql("INSERT INTO labelers (id, name, role, source, cost_per_label, active, "
                    "created_at) VALUES (?, 'again', 'labeler', 'human', 0, true, ?) RETURNING id")
    rename = Sql("UPDATE labelers SET name = 'renamed' WHERE id = ?")

    def half_done(s: Any) -> None:  # a write that fails after changing something
        Db.of(s).do(rename, (c.id,))
        raise ValueError("changed my mind")

    out = _one_batch(st, [
        lambda s: assign.next_assignment_id(s, a.id, "demo"),
        lambda s: labels.submit(s, a, theirs, uuid.uuid4().hex, {"choice": "first"}),
        lambda s: Db.of(s).row(duplicate, (a.id, Db.of(s).time(utcnow()))),
        half_done,
        lambda s: assign.next_assignment_id(s, c.id, "demo")])
    assert isinstance(out[1], NotFound)  # someone else's assignment
    assert isinstance(out[2], IntegrityError)  # a database error (pipelined on PostgreSQL)
    assert isinstance(out[3], ValueError)
    with st.read() as s:  # both claims were committed, and nothing of the failed writes
        assert {s.get(Assignment, out[0]).labeler_id, s.get(Assignment, out[4]).labeler_id} == {
            a.id, c.id}
        assert accounts.get_labeler(s, "lab2").id == c.id  # not renamed
    st.close()


def test_a_hinted_submit_is_one_statement_and_a_wrong_hint_changes_nothing(store_url, rounds):
    """A claim leaves a hint (kind, shown order, scale, flags) for the submit that follows: on
    PostgreSQL the label is then stored in one statement. The statement checks every hinted
    fact, so a hint that is wrong (here: the other shown order, as from another store with the
    same ids) stores nothing, and the usual path stores the right answer."""
    st, (a, b, _, _) = _store(store_url)
    views = [st.run(lambda s, who=who: assign.next_view(s, who.id, "demo")) for who in (a, b)]
    labels.remember(views[0])
    wrong = views[1]
    labels.remember(replace(wrong, shown_order=wrong.shown_order[::-1]))
    rounds[0] = 0
    out = _one_batch(st, [
        lambda s: labels.submit(s, a, views[0].id, uuid.uuid4().hex, {"choice": "first"}),
        lambda s: labels.submit(s, b, wrong.id, uuid.uuid4().hex, {"choice": "first"})])
    assert [created for _, created in out] == [True, True]
    if not st.is_sqlite:
        assert rounds[0] == 3  # both hinted statements; then the wrong one's locked read, insert
    with st.read() as s:
        for v, (label_id, _) in zip(views, out):
            first = "ab"[v.shown_order[0]]  # the response shown first, canonically
            assert s.get(Label, label_id).answer["choice"] == first
            assert s.get(Assignment, v.id).status == "done"
    st.close()



def _no_waits(s: Any) -> None:
    """Make any lock wait of this transaction an error (a wait is what could deadlock)."""
    s.execute(text("SET LOCAL lock_timeout = '100ms'"))


def _task(st: db.Store, assignment_id: int) -> int:
    with st.read() as s:
        return s.get(Assignment, assignment_id).task_id


def test_a_claim_and_another_batchs_submit_on_one_task_never_wait_for_each_other(
        pg_admin_url):
    """Issue 12: two server workers' batches deadlocked (a 1 s stall until PostgreSQL noticed).
    A claim locked its task FOR UPDATE, which conflicts with the FOR KEY SHARE lock that the
    foreign key check of a label's insert takes on the same task: one batch's submit waited for
    the other's claim and vice versa. Each wait here would be a `lock_timeout` error."""
    st, (a, b, _, _) = _store(new_database(pg_admin_url))
    first = st.run(lambda s: assign.next_view(s, a.id, "demo"))  # committed: a holds slot 0
    # One batch claims the task's other slot and holds its locks; another submits a's label.
    with st.write() as s1:
        _no_waits(s1)
        got = assign.next_view(s1, b.id, "demo")
        with st.write() as s2:
            _no_waits(s2)
            labels.remember(first)  # the one-statement submit (the usual path: the next test)
            labels.submit(s2, a, first.id, uuid.uuid4().hex, {"choice": "first"})
    assert _task(st, got.id) == _task(st, first.id)
    st.close()


@pytest.mark.parametrize("path", ["statement", "orm"])
def test_a_claim_takes_a_task_whose_label_another_batch_is_inserting(
        pg_admin_url, path):
    """The other way round: while one batch inserts a label on a task, a claim by another
    takes that task's free slot without waiting and without skipping it (FOR UPDATE SKIP
    LOCKED skipped it, then the claim waited for it: `claim_id`'s second query)."""
    st, (a, b, _, _) = _store(new_database(pg_admin_url))
    first = st.run(lambda s: assign.next_view(s, a.id, "demo"))
    with st.write() as s1:
        _no_waits(s1)
        labels.submit(s1, a, first.id, uuid.uuid4().hex, {"choice": "first"})
        with st.write() as s2:
            _no_waits(s2)
            if path == "statement":
                taken = assign.next_view(s2, b.id, "demo").id
            else:
                project = s2.scalar(select(Project).where(Project.name == "demo"))
                taken = assign.claim(s2, s2.get(Labeler, b.id), project).id
    assert _task(st, taken) == _task(st, first.id)  # the oldest open task, not skipped over
    with st.read() as s:
        assert len(s.scalars(select(Label)).all()) == 1
    st.close()


def test_taking_back_a_skipped_item_never_waits_for_another_batchs_submit(
        pg_admin_url):
    """`flow.revisit` locked the task FOR UPDATE too: the same wait as a claim's."""
    st, (a, b, _, _) = _store(new_database(pg_admin_url))
    mine, theirs = (st.run(lambda s, who=who: assign.next_view(s, who.id, "demo"))
                    for who in (a, b))
    with st.write() as s:
        assign.skip(s, s.get(Labeler, a.id), mine.id)
    with st.write() as s1:
        _no_waits(s1)
        flow.revisit(s1, s1.get(Labeler, a.id), mine.id)
        with st.write() as s2:
            _no_waits(s2)
            labels.submit(s2, b, theirs.id, uuid.uuid4().hex, {"choice": "first"})
    with st.read() as s:
        assert s.get(Assignment, mine.id).status == "pending"
        assert len(s.scalars(select(Label)).all()) == 1
    st.close()
