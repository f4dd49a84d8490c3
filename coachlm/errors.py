"""User-facing errors: the CLI prints their message and exits non-zero, with no traceback."""


class CoachError(Exception):
    """Base class of errors caused by user input (files, configs, arguments)."""


class DataError(CoachError):
    """A malformed input record: names the file, the line (1-based) and the field."""

    def __init__(self, path: object, line: int | None, field: str | None, message: str):
        where = str(path) + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")
        self.path, self.line, self.field, self.message = path, line, field, message
