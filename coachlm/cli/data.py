"""`coachlm data ...`: validate and convert feedback record files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from coachlm.cli.common import console

data_app = typer.Typer(no_args_is_help=True, help="Validate and convert feedback record files.")


@data_app.command("validate")
def data_validate(path: Path = typer.Argument(..., help="A record file or dataset directory."),
                  kind: Optional[list[str]] = typer.Option(None, help="Accept only these record kinds.")) -> None:
    """Read every record; print counts per kind, or the first error with file, line and field."""
    from coachlm.data.io import validate

    console.print_json(json.dumps(validate(path, set(kind) if kind else None)))


@data_app.command("convert")
def data_convert(src: Path = typer.Argument(..., help="Input (JSONL, Parquet, TRL, HH-RLHF, HF dataset)."),
                 dst: Path = typer.Argument(..., help="Output: .jsonl, .jsonl.gz or .parquet."),
                 kind: Optional[list[str]] = typer.Option(None, help="Accept only these record kinds."),
                 skip_invalid: bool = typer.Option(False, help="Warn about and skip malformed records.")) -> None:
    """Convert any supported format to canonical records."""
    from coachlm.data.io import convert

    skipped: list[str] = []

    def warn(err: Exception) -> None:
        skipped.append(str(err))
        console.print(f"[yellow]skipped[/] {err}", highlight=False)

    counts = convert(src, dst, set(kind) if kind else None, on_error=warn if skip_invalid else None)
    console.print_json(json.dumps({"written": counts, "skipped": len(skipped), "out": str(dst)}))
