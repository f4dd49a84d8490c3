"""`coachlm label ...`: serve the labeling app, import records, create tasks, export training
records, manage labelers, and print agreement, quality and ratings.

The store is `--store` (an SQLite file or a PostgreSQL URL), else $COACHLM_STORE, else
`feedback.db`. Each command makes one library call; errors are CoachErrors with a clear message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from sqlalchemy import select
from rich.console import Console
from rich.table import Table

from coachlm.feedback import accounts, importer, items
from coachlm.feedback.db import NotFound, Store, StoreError, open_store
from coachlm.feedback.export import ExportConfig, export_records, write_jsonl
from coachlm.feedback.summary import project_summary
from coachlm.feedback.tables import Labeler

label_app = typer.Typer(help="The feedback platform: labeling web app, import/export, quality.",
                        no_args_is_help=True)
users_app = typer.Typer(help="Labelers: add, list, change, issue API tokens.", no_args_is_help=True)
label_app.add_typer(users_app, name="users")
console = Console()

StoreOpt = Annotated[str, typer.Option("--store", envvar="COACHLM_STORE",
                                       help="SQLite file or postgresql:// URL")]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="project name")]


def _split(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _store(url: str) -> Store:
    return open_store(url)


@label_app.command()
def serve(store: StoreOpt = "feedback.db", host: str = "127.0.0.1", port: int = 8000,
          secure_cookies: Annotated[Optional[bool], typer.Option(
              "--secure-cookies/--no-secure-cookies",
              help="default: Secure cookies when the request came over https")] = None,
          access_log: bool = False,
          workers: Annotated[int, typer.Option(
              help="server processes (uvicorn workers); they share only the database")] = 1,
          max_body_mb: Annotated[float, typer.Option(help="largest request body")] = 2.0,
          max_upload_mb: Annotated[float, typer.Option(
              help="largest import body (admins only)")] = 200.0) -> None:
    """Run the labeling web app (migrates the store first)."""
    from coachlm.web.app import WebConfig, serve as run  # the web app is only needed here

    try:
        cfg = WebConfig(store=store, host=host, port=port, secure_cookies=secure_cookies,
                        access_log=access_log, workers=workers, max_body_mb=max_body_mb,
                        max_upload_mb=max_upload_mb)
    except ValueError as e:
        raise StoreError(str(e)) from None
    run(cfg)


@label_app.command("import")
def import_(files: Annotated[list[Path], typer.Argument(help="JSONL files of records")],
            project: ProjectOpt, store: StoreOpt = "feedback.db",
            create: Annotated[bool, typer.Option(help="create the project if missing")] = True,
            gold: Annotated[bool, typer.Option(help="labeled records are gold items")] = False,
            n_labels: Annotated[int, typer.Option(help="labels wanted per task")] = 1,
            tasks: Annotated[str, typer.Option(help="also make tasks of these kinds, e.g. "
                                                    "comparison,rating")] = "") -> None:
    """Import `coachlm sample` output or any canonical records into a project."""
    st = _store(store)
    with st.write() as s:
        try:
            p = items.get_project(s, project)
        except NotFound:
            if not create:
                raise
            p = items.create_project(s, project)
        total = importer.ImportCounts()
        for f in files:
            c = importer.import_records(s, p, importer.read_file(f), gold, n_labels)
            for k in ("records", "prompts", "responses", "tasks", "labels", "gold"):
                setattr(total, k, getattr(total, k) + getattr(c, k))
        made = sum(items.create_tasks(s, p, items.TaskSpec(k, n_labels)) for k in _split(tasks))
    console.print(f"imported {total.records} records into {project!r}: {total.prompts} new "
                  f"prompts, {total.responses} responses, {total.tasks + made} tasks, "
                  f"{total.labels} labels, {total.gold} gold items")


@label_app.command()
def project(project: ProjectOpt, store: StoreOpt = "feedback.db",
            assignment_ttl: Annotated[Optional[int], typer.Option(
                help="seconds a claimed item stays reserved for its labeler before it is "
                     "offered to someone else (0: for ever)")] = None) -> None:
    """Show or change a project's settings."""
    with _store(store).write() as s:
        p = items.get_project(s, project)
        if assignment_ttl is not None:
            items.set_assignment_ttl(p, assignment_ttl)
        console.print(f"{p.name!r}: rating scale {p.rating_scale}, assignment TTL "
                      f"{p.assignment_ttl_s} s")


@label_app.command()
def tasks(project: ProjectOpt, kind: str = "comparison", store: StoreOpt = "feedback.db",
          n_labels: int = 1, max_per_prompt: int = 0, k: int = 0, edit: bool = True,
          seed: int = 0) -> None:
    """Make tasks of one kind over every prompt of a project."""
    with _store(store).write() as s:
        made = items.create_tasks(s, items.get_project(s, project),
                                  items.TaskSpec(kind, n_labels, max_per_prompt, k, edit, seed))
    console.print(f"{made} new {kind} tasks in {project!r}")


@label_app.command()
def export(out: Annotated[Path, typer.Argument(help="JSONL file to write")], project: ProjectOpt,
           store: StoreOpt = "feedback.db", kinds: str = "", exclude: str = "",
           min_agreement: float = 0.0, min_gold_accuracy: float = 0.0, gold: bool = True,
           sources: str = "") -> None:
    """Write a project's labels as canonical records (for sft, rm and dpo): .jsonl, .jsonl.gz
    or .parquet by extension."""
    try:
        cfg = ExportConfig(_split(kinds), _split(exclude), min_gold_accuracy, min_agreement, gold,
                           _split(sources))
    except ValueError as e:
        raise StoreError(str(e)) from None
    with _store(store).read() as s:
        records = export_records(s, items.get_project(s, project), cfg)
    try:  # .jsonl, .jsonl.gz or .parquet, by extension
        from coachlm.data.io import write_records
    except ImportError:
        n = write_jsonl(records, out)
    else:
        n = write_records(out, records)
    console.print(f"wrote {n} records to {out}")


@users_app.command("add")
def users_add(name: str,
              password: Annotated[str, typer.Option(prompt=True, hide_input=True,
                                                    confirmation_prompt=True,
                                                    envvar="COACHLM_PASSWORD")],
              store: StoreOpt = "feedback.db", role: str = "labeler",
              cost_per_label: float = 0.0) -> None:
    """Add a labeler (role: labeler, reviewer or admin)."""
    with _store(store).write() as s:
        accounts.create_labeler(s, name, password, role, cost_per_label)
    console.print(f"added {role} {name!r}")


@users_app.command("list")
def users_list(store: StoreOpt = "feedback.db") -> None:
    """List labelers."""
    table = Table("name", "role", "source", "active", "cost/label", "API token")
    with _store(store).read() as s:
        for lab in s.scalars(select(Labeler).order_by(Labeler.name)):
            table.add_row(lab.name, lab.role, lab.source, str(lab.active),
                          f"{lab.cost_per_label:g}", "yes" if lab.token_hash else "no")
    console.print(table)


@users_app.command("set")
def users_set(name: str, store: StoreOpt = "feedback.db", role: Optional[str] = None,
              cost_per_label: Optional[float] = None,
              active: Annotated[Optional[bool], typer.Option("--active/--inactive")] = None,
              password: Annotated[Optional[str], typer.Option(envvar="COACHLM_PASSWORD")] = None
              ) -> None:
    """Change a labeler's role, cost, active flag or password."""
    with _store(store).write() as s:
        accounts.update_labeler(s, name, password=password, role=role,
                                cost_per_label=cost_per_label, active=active)
    console.print(f"updated {name!r}")


@users_app.command("token")
def users_token(name: str, store: StoreOpt = "feedback.db") -> None:
    """Issue a new API token (printed once; the old one stops working)."""
    with _store(store).write() as s:
        token = accounts.issue_token(s, name)
    typer.echo(token)


@label_app.command()
def stats(project: ProjectOpt, store: StoreOpt = "feedback.db", as_json: Annotated[
          bool, typer.Option("--json", help="print JSON")] = False, rounds: int = 200) -> None:
    """Counts, agreement (alpha, kappa), labeler quality, and the model leaderboard."""
    with _store(store).read() as s:
        d = project_summary(s, project, rounds)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    f = lambda x: "—" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)  # noqa: E731
    console.print(f"[bold]{project}[/]: " + ", ".join(f"{k} {v}" for k, v in d["stats"].items()))
    for title, rows in (("agreement", d["agreement"]), ("labelers", d["labelers"]),
                        ("leaderboard", d["leaderboard"])):
        if rows:
            table = Table(*rows[0].keys(), title=title)
            for row in rows:
                table.add_row(*(f(v) for v in row.values()))
            console.print(table)
    console.print(f"first-shown win rate {f(d['first_shown_win_rate'])} (0.5 = no position bias)")
