"""Group commit for SQLite: many small write transactions share one commit (one fsync).

SQLite has one writer at a time, and a durable commit waits for an fsync of the write-ahead
log (milliseconds on most disks), so committing each label on its own caps a server at a few
hundred commits per second however fast the rest is. Databases have long answered this with
group commit (DeWitt et al., "Implementation techniques for main memory database systems",
SIGMOD 1984; PostgreSQL's commit_delay): writes that arrive while a commit is in flight are
collected and committed together. Here one writer thread takes every queued write function,
runs each in its own SAVEPOINT (so one that fails is rolled back alone and gets its own
error), commits once, and only then wakes the callers: every caller is told "saved" only
after its write is on disk, exactly as before, but a busy server pays one fsync per batch.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from coachlm.feedback.db import Store

T = TypeVar("T")
MAX_BATCH = 256
_STOP = object()


class GroupCommit:
    """A writer thread for one store; `run(fn, durable)` blocks until `fn`'s batch commits."""

    def __init__(self, store: Store):
        self.store = store
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.start_lock = threading.Lock()

    def run(self, fn: Callable[..., T], durable: bool) -> T:
        if self.thread is None:
            with self.start_lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._loop, daemon=True,
                                                   name="coachlm-group-commit")
                    self.thread.start()
        done: Future[T] = Future()
        self.queue.put((fn, durable, done))
        return done.result()

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
        outcomes: list[tuple[Future, bool, Any]] = []
        try:
            with self.store.write(durable=any(d for _, d, _ in batch)) as s:
                for fn, _, done in batch:
                    try:
                        with s.begin_nested():  # SAVEPOINT: a failure undoes this write only
                            outcomes.append((done, True, fn(s)))
                    except Exception as e:  # handed to its caller, who may retry
                        outcomes.append((done, False, e))
        except BaseException as e:  # the commit itself failed: nobody's write is saved
            for _, _, done in batch:
                done.set_exception(e)
            return
        for done, ok, value in outcomes:
            done.set_result(value) if ok else done.set_exception(value)
