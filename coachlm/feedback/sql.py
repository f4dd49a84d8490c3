"""Plain SQL on the driver's own connection (sqlite3 or psycopg), for the two hot paths of the
labeling API (claim an item, submit a label).

Why: SQLAlchemy Core costs ~75 us of Python per statement (compiling-cache lookup, parameter
processing, result wrapping), the driver ~6 us; a label took ~15 statements through Core, so the
statements cost more than the databases took to run them (issue 12). Here each statement is SQL
text written once, in `?` form; the PostgreSQL text (`%s`, row locks) is derived once, and psycopg
prepares a statement on the server after a few executions. The statements run on the session's
connection, inside its transaction, so they mix with ORM and Core work in the same transaction.

The few conversions SQLAlchemy would make are made here: JSON columns are text on SQLite (parsed
on read, dumped on write; psycopg parses `json` itself), and SQLite datetimes are text in
SQLAlchemy's format (always with microseconds, so that text order is time order). Driver errors
come out as SQLAlchemy's (`IntegrityError`, `OperationalError`), so that `Store.run` retries a
race exactly as it did with Core.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Callable, Sequence

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session


class Sql:
    """One statement's text for both dialects. `{lock}` marks where PostgreSQL takes row
    locks (SQLite's writer already holds the whole database)."""

    def __init__(self, text: str, lock: str = "", pg: str | None = None):
        self.sqlite = text.format(lock="")
        self.postgresql = (pg or text).format(lock=lock).replace("?", "%s")


class Db:
    """The driver connection of a session's transaction, with the dialect's conversions.
    `Db.of(session)`: made once per transaction (asking the session for its connection costs
    more than a statement)."""

    __slots__ = ("conn", "pg", "error", "defer")

    @classmethod
    def of(cls, s: Session) -> Db:
        # Keyed by the innermost transaction: SQLAlchemy emits a SAVEPOINT only when a nested
        # transaction first asks for the connection, so each one must ask (`cls(s)` does);
        # else a failing write of an isolated group-commit batch is not undone alone.
        tx = s.get_nested_transaction() or s.get_transaction()
        found = s.info.get("coachlm_db")
        if found is not None and found[0] is tx:
            return found[1]
        db = cls(s)
        s.info["coachlm_db"] = (tx, db)
        return db

    def __init__(self, s: Session):
        conn = s.connection()  # begins the session's transaction if need be
        self.conn = conn.connection.driver_connection
        self.pg = conn.dialect.name == "postgresql"
        self.error = conn.dialect.loaded_dbapi.Error
        # Set by a group commit that pipelines its batch (`group_commit.py`): takes a
        # statement and returns its cursor once the statement has run.
        self.defer: Callable[[str, Sequence[Any]], Any] | None = None

    def rows(self, q: Sql, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(q, params).fetchall()

    def row(self, q: Sql, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self._run(q, params).fetchone()

    def do(self, q: Sql, params: Sequence[Any] = ()) -> None:
        """A statement without a result (no RETURNING)."""
        self._run(q, params)

    def many(self, q: Sql, params: Sequence[Sequence[Any]]) -> None:
        sql = q.postgresql if self.pg else q.sqlite
        try:
            self.conn.cursor().executemany(sql, params)
        except self.error as e:
            raise DBAPIError.instance(sql, params, e, self.error) from None

    def _run(self, q: Sql, params: Sequence[Any]) -> Any:
        sql = q.postgresql if self.pg else q.sqlite
        if self.defer is not None:
            return self.defer(sql, params)
        try:
            return self.conn.execute(sql, params)
        except self.error as e:
            raise DBAPIError.instance(sql, params, e, self.error) from None

    def json(self, value: Any) -> str:
        return json.dumps(value)

    def parse(self, value: Any) -> Any:
        """A JSON column's value (text on SQLite; psycopg has parsed it already)."""
        return json.loads(value) if isinstance(value, str) else value

    def time(self, value: datetime) -> Any:
        """A naive UTC datetime as the column holds it."""
        return value if self.pg else value.isoformat(" ", "microseconds")
