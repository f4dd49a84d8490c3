"""User-facing errors: the CLI prints their message and exits non-zero, with no traceback."""


class CoachError(Exception):
    """Base class of errors caused by user input (files, configs, arguments)."""


class DataError(CoachError):
    """A malformed input record: names the file, the line (1-based) and the field.

    `unit` says what `line` counts: "line" (JSONL; printed `path:12`, as compilers do, so editors
    jump there) or another unit such as "row" (Parquet) or "record" (a JSON list), printed
    `path (row 12)`.
    """

    def __init__(self, path: object, line: int | None, field: str | None, message: str,
                 unit: str = "line"):
        if line is None:
            where = str(path)
        elif unit == "line":
            where = f"{path}:{line}"
        else:
            where = f"{path} ({unit} {line})"
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")
        self.path, self.line, self.field, self.message, self.unit = path, line, field, message, unit
