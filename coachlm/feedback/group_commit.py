"""Group commit: many small write transactions share one commit (one fsync).

SQLite has one writer at a time, and a durable commit waits for an fsync of the write-ahead
log (milliseconds on most disks), so committing each label on its own caps a server at a few
hundred commits per second however fast the rest is. Databases have long answered this with
group commit (DeWitt et al., "Implementation techniques for main memory database systems",
SIGMOD 1984; PostgreSQL's commit_delay): writes that arrive while a commit is in flight are
collected and committed together. Here one writer thread takes every queued write function,
runs them in one transaction, commits once, and only then wakes the callers (when one of them
fails, the batch is rolled back and run again with each write in its own SAVEPOINT, so that
the failed one is undone alone and gets its own error): every caller is told "saved" only
after its write is on disk, exactly as before, but a busy server pays one fsync per batch.
PostgreSQL commits concurrent transactions in parallel, but each request there also paid for a
thread, a pooled connection, a session and a commit round trip: batched, a label cost ~30% less
CPU in the server and in PostgreSQL (issue 12). There the batch's writes also run side by side,
their plain-SQL statements pipelined (`_pipelined`): the writer thread had spent most of its
time waiting for one statement after another. Row locks taken by one write of a batch are
held until the batch commits, so a write must not wait for a lock that another worker's
batch holds while that batch waits for one of its own: a claim locks its task FOR NO KEY
UPDATE, not FOR UPDATE, which blocked the foreign-key check of another batch's label on the
same task, and two workers' batches deadlocked (`assign.py`). A deadlock that remains is an
error that `Store.run` retries like any other transient failure.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from sqlalchemy.orm import Session

from coachlm.feedback.sql import Db

if TYPE_CHECKING:
    from coachlm.feedback.db import Store

T = TypeVar("T")
MAX_BATCH = 256
_STOP = object()


class GroupCommit:
    """A writer thread for one store; `run(fn, durable)` blocks until `fn`'s batch commits,
    `await run_async(fn, durable)` waits for it without holding a thread."""

    def __init__(self, store: Store):
        self.store = store
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.start_lock = threading.Lock()

    def run(self, fn: Callable[..., T], durable: bool) -> T:
        done: Future[T] = Future()
        self._put(fn, durable, done)
        return done.result()

    async def run_async(self, fn: Callable[..., T], durable: bool) -> T:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put(fn, durable, done)
        return await done

    def _put(self, fn: Callable[..., Any], durable: bool, done: Future | asyncio.Future) -> None:
        if self.thread is None:
            with self.start_lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._loop, daemon=True,
                                                   name="coachlm-group-commit")
                    self.thread.start()
        self.queue.put((fn, durable, done))

    def close(self) -> None:
        if self.thread is not None:
            self.queue.put(_STOP)
            self.thread.join(10)

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            batch = [item for item in batch if item is not _STOP]
            if batch:
                self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[Callable[..., Any], bool, Future]]) -> None:
        try:
            try:
                outcomes = self._run(batch, isolated=False)
            except _Redo:
                outcomes = self._run(batch, isolated=True)
        except BaseException as e:  # the commit itself failed: nobody's write is saved
            outcomes = [(done, False, e) for _, _, done in batch]
        _settle(outcomes)

    def _run(self, batch: list[tuple[Callable[..., Any], bool, Future]], isolated: bool
             ) -> list[tuple[Future, bool, Any]]:
        """Run the batch's writes in one transaction and commit it; (future, ok, result or
        error) for each. Not `isolated` (the usual case): the writes run side by side, and the
        first failure rolls the batch back (`_Redo`, or the failure itself for a batch of one);
        `isolated`: each write runs in its own SAVEPOINT, so a failure undoes that write only.
        Savepoints for every write cost more than the writes themselves, and failures
        (a conflict, a bad answer) are rare, so the batch pays for them only when one fails."""
        outcomes: list[tuple[Future, bool, Any]] = []
        with self.store.write(durable=any(d for _, d, _ in batch)) as s:
            db = Db.of(s)
            if db.pg and not isolated and len(batch) > 1 and _can_pipeline():
                return _pipelined(s, db, batch)
            for fn, _, done in batch:
                if not isolated:
                    try:
                        outcomes.append((done, True, fn(s)))
                    except Exception as e:
                        if len(batch) > 1:
                            raise _Redo from e
                        raise
                    continue
                try:
                    with s.begin_nested():
                        outcomes.append((done, True, fn(s)))
                except Exception as e:  # handed to its caller, who may retry
                    outcomes.append((done, False, e))
        return outcomes


@functools.cache
def _can_pipeline() -> bool:
    """psycopg's pipeline mode needs libpq 14 or newer; greenlet comes with the postgres extra."""
    import psycopg

    try:
        import greenlet  # noqa: F401
    except ImportError:
        return False
    return psycopg.Pipeline.is_supported()


def _pipelined(s: Session, db: Db, batch: list[tuple[Callable[..., Any], bool, Future]]
               ) -> list[tuple[Future, bool, Any]]:
    """Run a batch's writes side by side on PostgreSQL, their statements pipelined: each write
    runs in a greenlet until its next plain-SQL statement (`Db`), which is queued rather than
    sent; when every write waits or is done, the queued statements go to the server at once
    (libpq's pipeline mode) and each write resumes with its result. A batch of N writes then
    costs about as many round trips as its longest write has statements, not N times that
    (a claim and a submit are one statement each in the usual case). Statements of different
    writes still run one after another in one transaction, as they did unpipelined; ORM and
    Core statements run at once, as before. Any failure rolls the batch back (`_Redo`)."""
    import greenlet

    driver = greenlet.getcurrent()
    waiting: list[tuple[int, greenlet.greenlet, Any]] = []  # (write, greenlet, its statement)
    results: list[Any] = [None] * len(batch)

    def step(i: int, g: greenlet.greenlet, value: Any) -> None:
        if g.dead:
            results[i] = value
        else:
            waiting.append((i, g, value))

    db.defer = lambda sql, params: driver.switch((sql, params))
    started: list[greenlet.greenlet] = []
    try:
        for i, (fn, _, _) in enumerate(batch):
            started.append(g := greenlet.greenlet(fn))
            step(i, g, g.switch(s))
        while waiting:
            now, waiting[:] = list(waiting), []
            with db.conn.pipeline():
                cursors = [db.conn.execute(sql, params) for _, _, (sql, params) in now]
            for (i, g, _), cursor in zip(now, cursors):
                step(i, g, g.switch(cursor))
    except Exception as e:
        raise _Redo from e
    finally:
        db.defer = None
        for g in started:  # the writes a failure left waiting end here
            if not g.dead:
                g.throw()
    return [(done, True, result) for (_, _, done), result in zip(batch, results)]


def _settle(outcomes: list[tuple[Any, bool, Any]]) -> None:
    """Hand each caller its outcome: a waiting thread directly; coroutines through one call
    per event loop, so that a batch wakes each loop once (one self-pipe write, not one per
    caller as `asyncio.wrap_future` would make)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, bool, Any]]] = {}
    for done, ok, value in outcomes:
        if isinstance(done, asyncio.Future):
            by_loop.setdefault(done.get_loop(), []).append((done, ok, value))
        else:
            done.set_result(value) if ok else done.set_exception(value)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_in_loop, items)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass


def _settle_in_loop(items: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for done, ok, value in items:
        if not done.cancelled():  # a caller that went away (its write is committed anyway)
            done.set_result(value) if ok else done.set_exception(value)


class _Redo(Exception):
    """A write of a batch run without savepoints failed: run the batch again, isolated."""
