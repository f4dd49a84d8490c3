"""`coachlm label guidelines`: show or set a project's guidelines (a new version each time;
markdown, shown to labelers in a panel beside every item) and its guidance: rating anchors,
flag descriptions, skip reasons and the per-labeler quota."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from coachlm.cli.label import ProjectOpt, StoreOpt, _store, console, label_app
from coachlm.feedback import guidance, items
from coachlm.feedback.db import StoreError


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, text = v.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise StoreError(f"{what} must look like KEY=TEXT, got {v!r}")
        out[key.strip()] = text.strip()
    return out


@label_app.command("guidelines")
def guidelines(project: ProjectOpt, store: StoreOpt = "feedback.db",
               set_: Annotated[Optional[Path], typer.Option(
                   "--set", help="markdown file: becomes the next guidelines version")] = None,
               anchor: Annotated[list[str], typer.Option(
                   help="rating anchor SCORE=MEANING (repeatable)")] = [],  # noqa: B006
               flag: Annotated[list[str], typer.Option(
                   help="flag description FLAG=MEANING (repeatable)")] = [],  # noqa: B006
               skip_reason: Annotated[list[str], typer.Option(
                   help="a skip reason offered to labelers (repeatable; replaces the list)")] = [],  # noqa: B006
               quota: Annotated[Optional[int], typer.Option(
                   help="labels each labeler is asked for (0: none)")] = None) -> None:
    """Show a project's guidelines and guidance, or set them (only what is given changes)."""
    changes: dict = {}
    if anchor:
        changes["anchors"] = _pairs(anchor, "--anchor")
    if flag:
        changes["flag_descriptions"] = _pairs(flag, "--flag")
    if skip_reason:
        changes["skip_reasons"] = list(skip_reason)
    if quota is not None:
        changes["quota"] = quota
    if set_ is not None and not set_.is_file():
        raise StoreError(f"no such file: {set_}")
    with _store(store).write() as s:
        p = items.get_project(s, project)
        if set_ is not None:
            g = items.add_guidelines(s, p, set_.read_text(encoding="utf-8"))
            console.print(f"guidelines of {project!r} are now version {g.version}")
        if changes:
            guidance.update(p, changes)
        current = items.guidelines(s, p)
        shown = guidance.as_dict(guidance.get(p))
        text = current.text if current else ""
        version = current.version if current else 0
    if set_ is None and not changes:
        console.print(f"[b]{project}[/b]: guidelines version {version or 'none'}")
        console.print(text, markup=False, highlight=False)
    console.print(json.dumps(shown, indent=2, ensure_ascii=False), markup=False, highlight=False)
