"""Stages with caching and lineage, and the quickstart loop on the built-in world.

A stage is skipped when its `stage.json` records the same key: a hash of its config and of the
keys of the stages it read from. Changing a setting therefore re-runs that stage and everything
downstream, and `stage.json` says which data and which model made each model (lineage).
Trainers are called with resume=True, so an interrupted stage continues from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from rich.console import Console

from coachlm import config as cfglib

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
    stage_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = dict(fn(stage_dir))
    record = {"stage": name, "key": key, "inputs": dict(inputs), "settings": settings,
              "result": result, "seconds": round(time.perf_counter() - start, 1)}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(marker)
    console.print(f"{name}: done in {record['seconds']} s")
    return record
