"""Records as Arrow tables: the Parquet layout, and rows of Parquet files and saved datasets.

Parquet layout: one row per record, one column per schema field (the union over kinds, in
schema order; a field that a kind lacks is null), so mixed kinds share one file and any Parquet
reader (pandas, DuckDB, `datasets`) sees typed columns. Scalars are native columns; `prompt` is
always `list<struct<role, content>>`; `response`, `a` and `b` are
`struct<text, model, model_version>`; `responses` is a list of those; `ranks` is `list<int64>`
(nulls kept); `flags` is `list<string>`. Only `meta`, which is free-form, is a JSON string: as an
Arrow struct, differing keys across rows would come back padded with nulls. On reading, null
columns that a record's kind lacks are dropped, so records round-trip exactly.

pyarrow and datasets are imported inside the functions: `import coachlm.data.io` stays light.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

from coachlm.data.schema import KINDS, Record, SchemaError, to_dict
from coachlm.errors import DataError

JSON_COLUMNS = ("meta",)  # columns that hold JSON text
BATCH_ROWS = 4096


def canonical_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with a `kind` in JSON form: null columns of other kinds dropped, meta parsed."""
    cls = KINDS.get(row["kind"])
    fields = {f.name for f in dataclasses.fields(cls)} | {"kind"} if cls else set(row)
    out = {}
    for key, value in row.items():
        if key not in fields and value is None:
            continue
        if key in JSON_COLUMNS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise SchemaError(key, f"invalid JSON: {e.msg}") from None
        out[key] = value
    return out


def parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row as a dict) of a Parquet file, read in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        n = 0
        for batch in table.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, None, None, f"not a readable Parquet file: {e}") from None


def dataset_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row) of a `datasets.Dataset` saved with `save_to_disk`."""
    import datasets  # slow to import, and only this format needs it

    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:
        raise DataError(path, None, None, f"cannot load the saved dataset: {e}") from None
    yield from enumerate(ds, 1)


def columns() -> list[str]:
    names = ["kind"]
    for cls in KINDS.values():
        names += [f.name for f in dataclasses.fields(cls) if f.name not in names]
    return names


def arrow_schema() -> Any:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    response = pa.struct([(name, pa.string()) for name in ("text", "model", "model_version")])
    types = {
        "kind": pa.string(), "id": pa.string(), "prompt": pa.list_(message),
        "labeler": pa.string(), "source": pa.string(), "created_at": pa.string(),
        "time_spent_s": pa.float64(), "meta": pa.string(), "response": response, "a": response,
        "b": response, "choice": pa.string(), "margin": pa.float64(), "shown_order": pa.string(),
        "responses": pa.list_(response), "ranks": pa.list_(pa.int64()), "score": pa.int64(),
        "scale": pa.int64(), "flags": pa.list_(pa.string()), "critique": pa.string(),
    }
    missing = [name for name in columns() if name not in types]
    if missing:  # a schema field was added without a Parquet column
        raise TypeError(f"no Parquet column type for record field {missing[0]!r}")
    return pa.schema([(name, types[name]) for name in columns()])


def parquet_row(record: Record) -> dict[str, Any]:
    row = to_dict(record)
    row["prompt"] = [dataclasses.asdict(m) for m in record.prompt]  # always a list of messages
    row["meta"] = json.dumps(row["meta"], ensure_ascii=False)
    return row


def write_parquet(f: BinaryIO, records: Iterable[Record]) -> int:
    """Write records to an open binary file in the layout above; their number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    n, rows = 0, []
    with pq.ParquetWriter(f, schema) as writer:
        for record in records:
            rows.append(parquet_row(record))
            if len(rows) == BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                n, rows = n + len(rows), []
        if rows or n == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return n + len(rows)
