"""`coachlm cai ...`: Constitutional AI (Bai et al., 2022).

    coachlm cai constitution [FILE]                       # validate a constitution, list it
    coachlm cai revise --model M --prompts F --out DIR    # SL-CAI: critique and revise, n rounds

Each command takes `--config FILE` (YAML) and trailing dotted overrides, like every coachlm
command, and makes one library call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from coachlm.cli.common import console

cai_app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="Constitutional AI: constitutions, SL-CAI revisions.")


@cai_app.command()
def constitution(path: Optional[Path] = typer.Argument(None, help="Constitution YAML (default: the built-in one).")) -> None:
    """Validate a constitution and list its principles (a bad file: one line, exit 2)."""
    from rich.table import Table

    from coachlm.constitution import load_constitution

    c = load_constitution(path)
    table = Table(title=f"{c.name}: {len(c.principles)} principles, "
                        f"{len(c.critique_examples)} critique and "
                        f"{len(c.comparison_examples)} comparison examples")
    table.add_column("id")
    table.add_column("comparison question")
    for p in c.principles:
        table.add_row(p.id, p.comparison_question)
    console.print(table)
