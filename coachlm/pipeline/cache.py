"""One cached stage: its key, its directory, its lineage manifest (`stage.json`).

A stage is skipped when its `stage.json` records the same key: a hash of the stage's whole
resolved config, of the keys of the stages it reads from, of the contents of every file or
directory its config names directly by path (not through an input: a data file edited in place
must re-run the stage), and of the package version. Nothing
is picked by hand, so a setting cannot be forgotten: any change anywhere in the config re-runs
the stage and everything downstream. `stage.json` is the lineage manifest: kind, inputs (with
their keys), the resolved config, the code version, seconds and metrics.

An interrupted stage (killed: `running.json` is there, `stage.json` is not) keeps its directory
when it runs again with the same key, so trainers called with resume=True continue from their
last checkpoint; a stage whose key changed starts from an empty directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

from rich.console import Console

import coachlm

console = Console(stderr=True)


@lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The package version (part of every key) and, when run from a git checkout, the commit
    (recorded only: a commit changes with every edit, which would invalidate every cache)."""
    out = {"coachlm": coachlm.__version__}
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, cwd=Path(coachlm.__file__).parent)
        if head.returncode == 0:
            out["git"] = head.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def stage_key(settings: Mapping[str, Any], inputs: Mapping[str, str],
              files: Mapping[str, str] | None = None) -> str:
    body = {"settings": settings, "inputs": dict(inputs), "version": coachlm.__version__}
    if files:  # only when there are some, so that keys without direct paths stay as they were
        body["files"] = dict(files)
    blob = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes (cached while its size and mtime stay the same)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_digest(path: Path) -> str:
    """A file's sha256; for a directory (a model given by path), a hash of every file's
    relative name and digest."""
    if path.is_file():
        st = path.stat()
        return _file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{content_digest(f)}\n".encode())
    return h.hexdigest()


def path_digests(cfg: Any, prefix: str = "") -> dict[str, str]:
    """The content digest of every existing file or directory a typed config names by a Path
    field (nested configs, tuples and dicts of paths included), keyed by the dotted field.
    Inputs are keyed by their stage's key instead and appear here as `<stage.output>`
    placeholders, which name nothing on disk; string fields (a store URL) are not paths."""
    from dataclasses import fields, is_dataclass

    if is_dataclass(cfg):
        items = [(f.name, getattr(cfg, f.name)) for f in fields(cfg)]
    elif isinstance(cfg, Mapping):
        items = [(str(k), v) for k, v in cfg.items()]
    elif isinstance(cfg, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(cfg)]
    elif isinstance(cfg, Path) and cfg.exists():
        return {prefix.rstrip("."): content_digest(cfg)}
    else:
        return {}
    out: dict[str, str] = {}
    for name, value in items:
        out.update(path_digests(value, f"{prefix}{name}."))
    return out


def read_record(stage_dir: Path) -> dict[str, Any] | None:
    marker = stage_dir / "stage.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def run_stage(root: Path, name: str, settings: Mapping[str, Any], inputs: Mapping[str, str],
              fn: Callable[[Path], Mapping[str, Any]], force: bool = False,
              manifest: Mapping[str, Any] | None = None,
              files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run `fn(stage_dir)` unless an identical run already finished (or `force`); return the
    stage's record. `settings` is the stage's whole config as keyed (inputs as references);
    `inputs` maps upstream stage names to their keys; `fn` returns JSON-able results (paths as
    strings, optional "metrics") that downstream stages read from the record's "result".
    `manifest` adds fields to stage.json (kind, the config with real paths, input references);
    `files` maps the config's direct paths to their content digests (`path_digests`)."""
    stage_dir = root / name
    key = stage_key(settings, inputs, files)
    record = read_record(stage_dir)
    if record is not None and record.get("key") == key and not force:
        console.print(f"[dim]{name}: cached ({stage_dir})[/]")
        return record
    console.rule(f"[bold]{name}")
    _prepare(stage_dir, key, fresh=force)
    start = time.perf_counter()
    result = dict(fn(stage_dir))
    metrics = result.pop("metrics", None) or _summary_metrics(stage_dir)
    record = {"stage": name, **dict(manifest or {}), "key": key, "inputs": dict(inputs),
              "files": dict(files or {}), "settings": settings, "code_version": code_version(), "result": result,
              "metrics": metrics, "seconds": round(time.perf_counter() - start, 1)}
    tmp = stage_dir / "stage.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(stage_dir / "stage.json")
    (stage_dir / "running.json").unlink(missing_ok=True)
    console.print(f"{name}: done in {record['seconds']} s")
    return record


def _summary_metrics(stage_dir: Path) -> dict[str, Any]:
    """A trainer's summary.json (seconds, tokens/s, final metrics), when it wrote one."""
    path = stage_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _prepare(stage_dir: Path, key: str, fresh: bool = False) -> None:
    """Keep an interrupted run of the same stage (its checkpoints let the trainer resume);
    clear anything left by a run with other settings, whose checkpoints would not fit, and
    everything when `fresh` (a forced re-run must not resume)."""
    running = stage_dir / "running.json"
    same = (not fresh and running.is_file()
            and json.loads(running.read_text()).get("key") == key)
    if stage_dir.exists() and not same:
        shutil.rmtree(stage_dir)
    if same:
        console.print(f"[dim]resuming the interrupted run in {stage_dir}[/]")
    stage_dir.mkdir(parents=True, exist_ok=True)
    running.write_text(json.dumps({"key": key}) + "\n")
