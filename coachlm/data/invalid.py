"""`skip_invalid` (`--skip-invalid` on every command that reads records): skip malformed records
with a warning that gives their count and first few locations, or stop at the first one with
an error that names the option.

    invalid = InvalidRecords(cfg.skip_invalid)
    with invalid.strict_hint():
        records = list(read_records(path, on_error=invalid.on_error))
    invalid.warn()
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from coachlm.data.io import ErrorHandler
from coachlm.errors import DataError
from coachlm.runlog import warn

HINT = ("; to skip malformed records (with a warning) pass --skip-invalid "
        "(skip_invalid=true)")
SHOWN = 3  # locations named in the warning


class InvalidRecords:
    """The malformed records skipped (when `skip`), and the error hint (when not)."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.errors: list[DataError] = []

    @property
    def on_error(self) -> ErrorHandler | None:
        """`read_records`' on_error: collect and skip (skip_invalid), or None: stop."""
        return self.errors.append if self.skip else None

    @property
    def count(self) -> int:
        return len(self.errors)

    def first(self, n: int | None = SHOWN) -> list[str]:
        """The messages of the first `n` skipped records (None: all)."""
        return [str(e) for e in self.errors[:n]]

    @contextlib.contextmanager
    def strict_hint(self) -> Iterator[None]:
        """A malformed record's error (one with a line) also names --skip-invalid."""
        try:
            yield
        except DataError as e:
            if e.line is None or self.skip:
                raise
            raise DataError(e.path, e.line, e.field, e.message + HINT, e.unit) from None

    def warn(self) -> None:
        """One warning line: how many records were skipped, and where the first few are."""
        if self.errors:
            more = ", ..." if self.count > SHOWN else ""
            warn(f"skipped {self.count} malformed record(s) (--skip-invalid): "
                 + "; ".join(self.first()) + more)
