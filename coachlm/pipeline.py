"""Stages with caching and lineage (the quickstart loop that chains them is `coachlm.demo`).

A stage is skipped when its `stage.json` records the same key: a hash of its config and of the
keys of the stages it read from. Changing a setting therefore re-runs that stage and everything
downstream, and `stage.json` says which data and which model made each model (lineage).
Trainers are called with resume=True, so an interrupted stage continues from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from rich.console import Console


console = Console(stderr=True)


def stage_key(settings: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    blob = json.dumps({"settings": settings, "inputs": dict(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_stage(root: Path, name: str, settings: Mapping[str, Any], inputs: Mapping[str, str],
              fn: Callable[[Path], Mapping[str, Any]]) -> dict[str, Any]:
    """Run `fn(stage_dir)` unless an identical run already finished; return its record.

    `inputs` maps upstream stage names to their keys; `fn` returns JSON-able results
    (paths as strings) that downstream stages read from the returned record's "result".
    """
    stage_dir = root / name
    marker = stage_dir / "stage.json"
    key = stage_key(settings, inputs)
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("key") == key:
            console.print(f"[dim]{name}: cached ({stage_dir})[/]")
            return record
    console.rule(f"[bold]{name}")
    _prepare(stage_dir, key)
    start = time.perf_counter()
    result = dict(fn(stage_dir))
    record = {"stage": name, "key": key, "inputs": dict(inputs), "settings": settings,
              "result": result, "seconds": round(time.perf_counter() - start, 1)}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(marker)
    (stage_dir / "running.json").unlink(missing_ok=True)
    console.print(f"{name}: done in {record['seconds']} s")
    return record


def _prepare(stage_dir: Path, key: str) -> None:
    """Keep an interrupted run of the same stage (its checkpoints let the trainer resume);
    clear anything left by a run with other settings, whose checkpoints would not fit."""
    running = stage_dir / "running.json"
    same = running.is_file() and json.loads(running.read_text()).get("key") == key
    if stage_dir.exists() and not same:
        shutil.rmtree(stage_dir)
    if same:
        console.print(f"[dim]resuming the interrupted run in {stage_dir}[/]")
    stage_dir.mkdir(parents=True, exist_ok=True)
    running.write_text(json.dumps({"key": key}) + "\n")
