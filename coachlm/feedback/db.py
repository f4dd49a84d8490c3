"""Opening the feedback store: SQLite (WAL) by default, PostgreSQL by URL; migrations run on open.

SQLite settings and why: WAL lets readers run while one writer commits; a durable write
(`synchronous=FULL`, the default for `write()`) is on disk before we tell the labeler it is
saved, while bookkeeping that may be lost on a power cut (claiming an assignment) skips the
fsync (`durable=False`; the next durable commit syncs it too); foreign keys are off in SQLite
unless asked for; write transactions start with BEGIN IMMEDIATE so that two writers queue
instead of both reading and then failing to upgrade their lock ("database is locked"). Within
one process, writers also queue on a lock, which is fairer and faster than SQLite's sleeping
busy handler; several processes (server workers) queue on an advisory file lock beside the
database in the same way. PostgreSQL needs none of this: row locks (`with_for_update`) and
unique constraints make the same operations safe there, and `durable=False` turns off
`synchronous_commit` for that one transaction. On both, `run` goes through group commit
(`group_commit.py`): the small writes that arrive together share one transaction, one commit
and one fsync (on PostgreSQL this also saves a thread and a pooled connection per request:
measured, server CPU per label 3.5 -> 2.6 ms and PostgreSQL's own 2.1 -> 1.4 ms, issue 12).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Executable, create_engine, event, text
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from coachlm.errors import CoachError
from coachlm.feedback.group_commit import GroupCommit

MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")


class StoreError(CoachError):
    """The store cannot be opened or an operation on it is not allowed."""


class NotFound(StoreError):
    """No such item, or not one that this labeler may see (the two are not told apart)."""


class Conflict(StoreError):
    """The operation conflicts with the stored state (e.g. the assignment is already labeled)."""


@dataclass(frozen=True)
class StoreConfig:
    """Where the store lives: a SQLAlchemy URL or a plain file path (an SQLite file)."""

    url: str = "feedback.db"
    busy_timeout_s: float = 30.0  # how long an SQLite writer waits for the lock
    pool_size: int = 10  # connections kept open (PostgreSQL; SQLite reuses per thread)
    migrate: bool = True  # upgrade the schema to the latest migration on open


def sqlalchemy_url(url: str) -> str:
    """A plain path means an SQLite file; `postgresql://` uses the psycopg 3 driver."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_engine(url: str, cfg: StoreConfig) -> Engine:
    engine = create_engine(url, connect_args={"timeout": cfg.busy_timeout_s,
                                              "check_same_thread": False},
                           pool_size=cfg.pool_size, max_overflow=64)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's is deferred)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(cfg.busy_timeout_s * 1000)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        write = conn.get_execution_options().get("coachlm_write")
        if write:  # "durable" or "fast"
            conn.exec_driver_sql(f"PRAGMA synchronous={'FULL' if write == 'durable' else 'NORMAL'}")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class WriterLock:
    """Serializes SQLite writers: a thread lock within the process, and an advisory lock
    (flock) on `<database>-writer.lock` across processes, so that writers queue in order
    instead of polling SQLite's busy handler."""

    def __init__(self, database: str | None):
        self._thread = threading.Lock()
        self._path = f"{database}-writer.lock" if database and database != ":memory:" else None
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread.acquire()
        if self._path:
            try:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._thread.release()
                raise

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread.release()

    def locked(self) -> bool:
        return self._thread.locked()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Store:
    """An engine plus two session factories: `read()` and `write()` (which commits on success)."""

    def __init__(self, cfg: StoreConfig):
        self.cfg = cfg
        self.url = sqlalchemy_url(cfg.url)
        try:
            if self.url.startswith("sqlite"):
                self.engine = _sqlite_engine(self.url, cfg)
            else:
                self.engine = create_engine(self.url, pool_size=cfg.pool_size, max_overflow=64,
                                            pool_pre_ping=True)
        except (ArgumentError, ImportError) as e:
            raise StoreError(f"cannot open feedback store {cfg.url!r}: {e}") from None
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        # `one()` on PostgreSQL: autocommit, so that a read is one round trip (no BEGIN).
        self._single = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._compiled: dict[Executable, tuple[str, list[str]]] = {}
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []  # `one()`'s connections, closed by close()
        self._async: dict[asyncio.AbstractEventLoop, Any] = {}  # `one_async()`'s (PostgreSQL)
        self._connecting: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._write = {durable: sessionmaker(self.engine.execution_options(
            coachlm_write="durable" if durable else "fast"), expire_on_commit=False)
            for durable in (True, False)}
        self._lock = WriterLock(self.engine.url.database) if self.is_sqlite else nullcontext()
        self._group = GroupCommit(self)
        if cfg.migrate:
            # Processes opening a new SQLite store at once (a loop and the web app) each migrate
            # it: serialized, the later ones find it at head; unserialized, they raced ("database
            # is locked" or "table already exists").
            with self._lock:
                upgrade(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read transaction; loaded objects stay readable after the block (not expired)."""
        with self._read() as s:
            yield s

    def one(self, statement: Executable, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of one Core query of plain columns (numbers, text: no JSON or
        dates, whose values would need converting), read outside any ORM session: the cheapest
        read there is, for a lookup made on every request (an API token). On SQLite it runs
        as plain SQL on a read-only connection of the calling thread: SQLAlchemy's execution
        machinery costs ~10x the query itself there."""
        database = self.engine.url.database
        if not self.is_sqlite or not database or database == ":memory:":
            with self._single.connect() as conn:
                row = conn.execute(statement, params).first()
                return None if row is None else tuple(row)
        sql = self._sql(statement)
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = sqlite3.connect(
                database, timeout=self.cfg.busy_timeout_s, check_same_thread=False,
                isolation_level=None)  # autocommit: one statement needs no BEGIN
            conn.execute("PRAGMA query_only=1")
            self._readers.append(conn)
        return conn.execute(sql[0], [params[k] for k in sql[1]]).fetchone()

    def _sql(self, statement: Executable) -> tuple[str, list[str]]:
        """A Core statement's SQL text for this dialect (compiled once) and its parameters'
        order (positional drivers)."""
        sql = self._compiled.get(statement)
        if sql is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            sql = self._compiled[statement] = (str(compiled), compiled.positiontup or [])
        return sql

    async def one_async(self, statement: Executable,
                        params: dict[str, Any]) -> tuple[Any, ...] | None:
        """`one` for a coroutine. SQLite: inline (a local read costs less than a trip to a
        thread). PostgreSQL: on an asynchronous connection of the event loop, kept open (a
        worker thread per read cost ~3x the read's own CPU: measured 400 vs 160 us, and
        psycopg's plain SQL takes ~80 us)."""
        if self.is_sqlite:
            return self.one(statement, params)
        import psycopg

        sql = self._sql(statement)[0]
        for attempt in range(2):
            conn = await self._async_connection(asyncio.get_running_loop())
            try:
                return await (await conn.execute(sql, params)).fetchone()
            except psycopg.OperationalError:  # a dropped connection: open a new one once
                await conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _async_connection(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The event loop's kept-open connection, opened once: the requests that find none
        wait for one connect (50 labelers arriving at once had opened 50)."""
        import psycopg

        conn = self._async.get(loop)
        if conn is not None and not conn.closed:
            return conn
        async with self._connecting.setdefault(loop, asyncio.Lock()):
            conn = self._async.get(loop)
            if conn is None or conn.closed:
                for gone in [lp for lp in self._async if lp.is_closed()]:  # e.g. test clients'
                    self._async.pop(gone).pgconn.finish()
                    self._connecting.pop(gone, None)
                url = self.engine.url.set(drivername="postgresql")
                conn = self._async[loop] = await psycopg.AsyncConnection.connect(
                    url.render_as_string(hide_password=False), autocommit=True)
        return conn

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[Session]:
        """A transaction that commits when the block ends and rolls back on error. Do not nest."""
        with self._lock, self._write[durable]() as s, s.begin():
            if not durable and self.engine.dialect.name == "postgresql":
                # PostgreSQL's counterpart of synchronous=NORMAL, for this transaction only.
                s.execute(text("SET LOCAL synchronous_commit TO OFF"))
            yield s

    def run(self, fn: Callable[[Session], T], retries: int = 5, durable: bool = True) -> T:
        """`fn(session)` in a write transaction, retried when a concurrent writer made it fail
        (a unique constraint hit by a racing claim, a deadlock, a lock timeout). The writes of
        concurrent callers are committed together (group commit); each caller returns only
        after the commit that holds its write."""
        for attempt in range(retries + 1):
            try:
                return self._group.run(fn, durable)
            except (IntegrityError, DBAPIError) as e:
                if attempt == retries or not _transient(e):
                    raise
        raise AssertionError("unreachable")

    async def run_async(self, fn: Callable[[Session], T], retries: int = 5,
                        durable: bool = True) -> T:
        """`run` for a coroutine (an async route): it awaits its group commit without holding
        a thread (a thread per waiting request cost more CPU than the write)."""
        for attempt in range(retries + 1):
            try:
                return await self._group.run_async(fn, durable)
            except (IntegrityError, DBAPIError) as e:
                if attempt == retries or not _transient(e):
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._group.close()
        if isinstance(self._lock, WriterLock):
            self._lock.close()
        for conn in self._readers:
            conn.close()
        for conn in self._async.values():  # their loops may be gone: close the sockets
            conn.pgconn.finish()
        self.engine.dispose()


def _transient(e: DBAPIError) -> bool:
    if isinstance(e, IntegrityError):
        return True
    text = str(e.orig).lower()
    return any(w in text for w in ("locked", "deadlock", "could not serialize", "busy"))


def open_store(url: str | StoreConfig = StoreConfig()) -> Store:
    return Store(url if isinstance(url, StoreConfig) else StoreConfig(url=url))


MIGRATION_LOCK = 0x636F6163686C6D  # "coachlm": PostgreSQL's advisory lock key for migrating


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the packaged Alembic migrations on `engine` up to `revision`."""
    cfg = _alembic_config()
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # one migrating process at a time
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except Exception as e:  # a store we cannot reach or migrate is a user-facing problem
        if isinstance(e, CoachError):
            raise
        raise StoreError(f"cannot open or migrate the feedback store: {e}") from e


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head() or ""
