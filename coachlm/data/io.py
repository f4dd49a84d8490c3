"""Reading and writing feedback records: JSONL, Parquet and Hugging Face datasets, validated.

Read (`read_records`):
  - `.jsonl` / `.jsonl.gz`: one JSON object per line; blank lines are skipped;
  - `.json` / `.json.gz`: a list of records (a file that starts with `{` is read as JSONL);
  - `.parquet`: one record per row;
  - a directory: a `datasets.Dataset` saved with `save_to_disk`, or else every readable file in
    it (not recursively; hidden files skipped) in name order.
Each object is a canonical record (it has a `kind`; see `schema`) or a foreign format (TRL,
HH-RLHF; see `formats`). Canonical records are strict: an unknown field is an error. Foreign
records keep their unknown columns in `meta["extra"]`.

Errors: every problem raises `DataError` naming the file, the place (`line` in JSONL, `row` in
Parquet and datasets, `record` in a JSON list; all 1-based) and the field, e.g.
`prefs.jsonl:3: ranks[2]: must be an integer >= 1 or null` or `prefs.parquet (row 7): choice: ...`.
A missing, empty, unreadable or unsupported file is an error too. `on_error` turns per-record
errors into callbacks (skip and count) instead; file-level errors always raise.

Write (`write_records`): `.jsonl`, `.jsonl.gz` (reproducible: no timestamp in the gzip header)
and `.parquet`, atomically: a temporary file in the same directory, fsynced, then renamed, so a
crash never leaves half a file.

Parquet layout: see `columnar` (typed columns per field; `meta` as JSON text).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

from coachlm.data.columnar import canonical_row, dataset_rows, parquet_rows, write_parquet
from coachlm.data.formats import from_foreign
from coachlm.data.schema import (
    KIND_OF,
    KINDS,
    Comparison,
    Prompt,
    PromptRecord,
    Ranking,
    Record,
    Response,
    SchemaError,
    from_dict,
    to_dict,
)
from coachlm.errors import DataError

READ_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet")
WRITE_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")
PREFERENCE_KINDS = frozenset({"comparison", "ranking"})
_BLANK = object()  # a blank JSONL line
ErrorHandler = Callable[[DataError], None]


@dataclass(frozen=True)
class _Source:
    """One readable file (or saved dataset) and how to walk it."""

    path: Path
    unit: str  # what row numbers count: "line", "row" or "record"
    rows: Callable[[], Iterator[tuple[int, Any]]]  # (1-based number, object or SchemaError)
    columnar: bool = False  # Parquet/Arrow: canonical rows carry null columns of other kinds


# ---------------------------------------------------------------------------------- reading


def read_records(path: str | Path, kinds: Iterable[str] | None = None, *,
                 on_error: ErrorHandler | None = None) -> Iterator[Record]:
    """The records in `path`, validated; with `kinds`, any other kind is an error.

    A missing or unsupported path raises DataError at once; problems inside a file raise when
    reading reaches them, or are passed to `on_error` (which may collect them) and skipped.
    """
    located = _located(Path(path), kinds, on_error)
    return (record for _, _, record in located)


def _located(path: Path, kinds: Iterable[str] | None,
             on_error: ErrorHandler | None) -> Iterator[tuple[_Source, int, Record]]:
    wanted = _check_kinds(kinds)
    return _walk(_sources(path), wanted, on_error)


def _walk(sources: list[_Source], wanted: frozenset[str] | None,
          on_error: ErrorHandler | None) -> Iterator[tuple[_Source, int, Record]]:
    for src in sources:
        count = 0
        for n, obj in src.rows():
            count += 1
            try:
                record = _to_record(obj, n, src.columnar)
                if wanted is not None and KIND_OF[type(record)] not in wanted:
                    raise SchemaError("kind", f"a {KIND_OF[type(record)]} record, but expected "
                                              f"{_or_list(wanted)} records")
            except SchemaError as e:
                error = DataError(src.path, n, e.field or None, e.message, unit=src.unit)
                if on_error is None:
                    raise error from None
                on_error(error)
                continue
            yield src, n, record
        if count == 0:
            raise DataError(src.path, None, None, "no records (the file is empty)")


def _check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    if kinds is None:
        return None
    wanted = frozenset(kinds)
    unknown = sorted(wanted - set(KINDS))
    if unknown:
        raise SchemaError("kinds", f"unknown record kind {unknown[0]!r} (known: {', '.join(KINDS)})")
    return wanted


def _or_list(names: Iterable[str]) -> str:
    ordered = [k for k in KINDS if k in set(names)]
    return ordered[0] if len(ordered) == 1 else ", ".join(ordered[:-1]) + " or " + ordered[-1]


def _to_record(obj: Any, n: int, columnar: bool) -> Record:
    if isinstance(obj, SchemaError):
        raise obj
    if not isinstance(obj, Mapping):
        raise SchemaError("", f"expected a JSON object, got {_json_type(obj)}")
    if "kind" not in obj:
        return from_foreign(obj, n)
    if not isinstance(obj["kind"], str):
        raise SchemaError("kind", f"must be a string, got {_json_type(obj['kind'])}")
    return from_dict(canonical_row(obj) if columnar else obj)


def _json_type(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null", dict: "an object"}
    return names.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------- sources by type


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in READ_SUFFIXES if name.endswith(s)), path.suffix.lower())


def _sources(path: Path) -> list[_Source]:
    if not path.exists():
        raise DataError(path, None, None, "no such file or directory")
    if not path.is_dir():
        return [_file_source(path)]
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        example = path / ("train" if "train" in splits else (splits or ["SPLIT"])[0])
        raise DataError(path, None, None, f"a DatasetDict with splits {', '.join(splits)}: give "
                                          f"one split's directory, e.g. {example}")
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return [_Source(path, "row", lambda: dataset_rows(path), columnar=True)]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and _suffix(p) in READ_SUFFIXES)
    if not files:
        raise DataError(path, None, None, "no .jsonl, .json or .parquet files in this directory")
    return [_file_source(p) for p in files]


def _file_source(path: Path) -> _Source:
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        return _Source(path, "line", lambda: _jsonl_rows(path))
    if suffix in (".json", ".json.gz"):
        if _first_char(path) == "[":
            return _Source(path, "record", lambda: _json_list_rows(path))
        return _Source(path, "line", lambda: _jsonl_rows(path))
    if suffix == ".parquet":
        return _Source(path, "row", lambda: parquet_rows(path), columnar=True)
    raise DataError(path, None, None, f"unsupported file type '{suffix or path.name}': expected "
                                      f"{', '.join(READ_SUFFIXES)} or a directory")


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _first_char(path: Path) -> str:
    try:
        with _open(path) as f:
            head = f.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(path, None, None, f"cannot read: {e}") from None
    return head[:1]


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with _open(path) as f:
            for n, raw in enumerate(f, 1):
                obj = _parse_line(raw, n)
                if obj is not _BLANK:
                    yield n, obj
    except (OSError, EOFError) as e:
        raise DataError(path, None, None, f"cannot read: {e}") from None


def _parse_line(raw: bytes, n: int) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return SchemaError("", f"not UTF-8 text: {e.reason} at byte {e.start + 1}")
    if n == 1:
        text = text.lstrip("\ufeff")
    if not text.strip():
        return _BLANK
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return SchemaError("", f"invalid JSON: {e.msg} (column {e.colno})")


def _json_list_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with _open(path) as f:
            data = json.loads(f.read().decode("utf-8").lstrip("\ufeff"))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(path, None, None, f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(path, None, None, "a .json file must hold a list of records")
    yield from enumerate(data, 1)


# ---------------------------------------------------------------------------------- writing


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """Write records to .jsonl, .jsonl.gz or .parquet (by extension), atomically; their number."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in WRITE_SUFFIXES or path.is_dir():
        raise DataError(path, None, None, f"cannot write '{suffix or path.name}': expected a file "
                                          f"ending in {', '.join(WRITE_SUFFIXES)}")
    with _atomic(path) as f:
        if suffix == ".parquet":
            return write_parquet(f, map(_checked, records))
        return _write_jsonl(f, records, gz=suffix == ".jsonl.gz")


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[BinaryIO]:
    """A temporary file beside `path`, renamed onto it only when writing succeeded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _checked(record: Any) -> Record:
    if type(record) not in KIND_OF:
        raise TypeError(f"not a feedback record: {type(record).__name__}")
    return record


def _write_jsonl(f: BinaryIO, records: Iterable[Record], gz: bool) -> int:
    # mtime=0 and no file name in the header: equal records give byte-equal files (cache keys).
    out = gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) if gz else f
    n = 0
    for record in records:
        out.write((json.dumps(to_dict(_checked(record)), ensure_ascii=False) + "\n").encode())
        n += 1
    if gz:
        out.close()  # writes the gzip trailer; leaves `f` open
    return n


# ------------------------------------------------------------------------ derived helpers


def read_prompts(path: str | Path, dedupe: bool = False, *,
                 on_error: ErrorHandler | None = None) -> list[PromptRecord]:
    """The prompt of every record in `path`, as PromptRecords keeping id, meta and created_at.

    With `dedupe`, only the first record of each distinct prompt (conversation) is kept: a
    comparison file usually holds several records per prompt.
    """
    out: list[PromptRecord] = []
    seen: set[Prompt] = set()
    for r in read_records(path, on_error=on_error):
        if dedupe:
            if r.prompt in seen:
                continue
            seen.add(r.prompt)
        out.append(r if isinstance(r, PromptRecord) else
                   PromptRecord(prompt=r.prompt, id=r.id, meta=r.meta, created_at=r.created_at))
    return out


@dataclass(frozen=True)
class PreferencePair:
    """One (chosen, rejected) pair for a reward model or DPO, and the record it came from.

    `margin` is the comparison's margin (None for rankings). Pairs from one Ranking share
    `record` (and `record.id`), so a trainer can keep all K-choose-2 pairs of a prompt in one
    batch, as InstructGPT did (Ouyang et al., 2022, sec. 3.5).
    """

    prompt: Prompt
    chosen: Response
    rejected: Response
    margin: float | None
    record: Comparison | Ranking


def preference_pairs(records: Iterable[Record]) -> Iterator[PreferencePair]:
    """Expand comparisons (ties and both-bad skipped) and rankings (all better/worse pairs).

    Other kinds raise ValueError: read with `kinds=PREFERENCE_KINDS` to get a clear DataError.
    """
    for r in records:
        if isinstance(r, Comparison):
            pair = r.chosen_rejected()
            if pair is not None:
                yield PreferencePair(r.prompt, pair[0], pair[1], r.margin, r)
        elif isinstance(r, Ranking):
            for better, worse in r.pairs():
                yield PreferencePair(r.prompt, r.responses[better], r.responses[worse], None, r)
        else:
            raise ValueError(f"a {KIND_OF.get(type(r), type(r).__name__)} record has no "
                             f"preference pairs (record {getattr(r, 'id', '?')})")


def validate(path: str | Path, kinds: Iterable[str] | None = None) -> dict[str, int]:
    """Read every record of `path`; their count per kind. Raises DataError on the first problem.

    Beyond each record's own checks, ids must be unique within the input (stores key on them).
    """
    counts: Counter[str] = Counter()
    seen: dict[str, tuple[Path, int]] = {}
    for src, n, record in _located(Path(path), kinds, None):
        if record.id in seen:
            first_path, first_n = seen[record.id]
            raise DataError(src.path, n, "id", f"duplicate id {record.id!r} "
                                               f"(first at {first_path}, {src.unit} {first_n})",
                            unit=src.unit)
        seen[record.id] = (src.path, n)
        counts[KIND_OF[type(record)]] += 1
    return {kind: counts[kind] for kind in KINDS if counts[kind]}


def convert(src: str | Path, dst: str | Path, kinds: Iterable[str] | None = None, *,
            on_error: ErrorHandler | None = None) -> dict[str, int]:
    """Read `src` (any readable format), write canonical records to `dst`; counts per kind.

    `on_error` as in `read_records`: None stops at the first bad record (and writes nothing).
    """
    counts: Counter[str] = Counter()

    def counted() -> Iterator[Record]:
        for record in read_records(src, kinds, on_error=on_error):
            counts[KIND_OF[type(record)]] += 1
            yield record

    write_records(dst, counted())
    return {kind: counts[kind] for kind in KINDS if counts[kind]}
