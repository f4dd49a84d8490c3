"""Run a pipeline: every stage in order, each cached by the hash of its whole resolved config,
its inputs' keys and the package version (`cache.run_stage`).

Re-running the same command after a crash reuses every finished stage and resumes the one that
was interrupted; `from_stage` re-runs that stage and everything downstream of it from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coachlm import config as cfglib
from coachlm.pipeline.cache import console, path_digests, run_stage
from coachlm.pipeline.kinds import KINDS, build_config
from coachlm.pipeline.spec import Pipeline, StageSpec


def _values(spec: StageSpec, records: dict[str, dict[str, Any]], real: bool) -> dict[str, Any]:
    """Each input field's path(s) (`real`) or its reference (`<stage.output>`, for the key:
    where a run directory lives must not change what is cached)."""
    def one(ref: Any) -> str:
        return str(records[ref.stage]["result"][ref.output]) if real else f"<{ref}>"

    return {n: [one(r) for r in v] if isinstance(v, tuple) else one(v)
            for n, v in spec.inputs.items()}


def _upstream(spec: StageSpec, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {n: [records[r.stage] for r in v] if isinstance(v, tuple) else records[v.stage]
            for n, v in spec.inputs.items()}


def run_pipeline(pipe: Pipeline, out: Path, from_stage: str | None = None) -> dict[str, dict]:
    """Run (or reuse) every stage; returns each stage's record (its stage.json) by name."""
    out = Path(out)
    force = pipe.downstream(from_stage) if from_stage else set()
    records: dict[str, dict[str, Any]] = {}
    for spec in pipe.stages:
        up = _upstream(spec, records)
        keyed = build_config(pipe, spec, _values(spec, records, real=False), "<stage>", up)
        cfg = build_config(pipe, spec, _values(spec, records, real=True), str(out / spec.name), up)
        inputs = {r.stage: records[r.stage]["key"] for r in spec.refs()}
        manifest = {"kind": spec.kind, "input_refs": {n: str(v) if not isinstance(v, tuple)
                                                      else [str(r) for r in v]
                                                      for n, v in spec.inputs.items()},
                    "config": cfglib.to_dict(cfg)}
        run = KINDS[spec.kind].run
        records[spec.name] = run_stage(out, spec.name, cfglib.to_dict(keyed), inputs,
                                       lambda d, cfg=cfg, up=up: run(cfg, d, up),
                                       force=spec.name in force, manifest=manifest,
                                       files=path_digests(keyed))
        _write_run(pipe, out, records)  # after each stage: a report stage reads what finished
    console.print(f"run: {len(records)} stages, {_total(records)} s of stage time ({out})")
    return records


def _total(records: dict[str, dict[str, Any]]) -> float:
    return round(sum(r["seconds"] for r in records.values()), 1)


def _write_run(pipe: Pipeline, out: Path, records: dict[str, dict[str, Any]]) -> None:
    """run.json: the pipeline file, each stage's key, seconds and directory."""
    run = {"pipeline": str(pipe.path),
           "stages": {n: {"kind": r.get("kind"), "key": r["key"], "seconds": r["seconds"],
                          "dir": str(out / n)} for n, r in records.items()}}
    run["total_seconds"] = _total(records)
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(run, indent=2) + "\n")
    tmp.replace(out / "run.json")
