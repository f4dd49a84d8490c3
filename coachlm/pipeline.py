"""Stages with caching and lineage, and the quickstart loop on the built-in world.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from rich.console import Console

from coachlm import config as cfglib
from coachlm.trainers.loop import TrainConfig
from coachlm.world.build import WorldConfig

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


# ------------------------------------------------------------------ the quickstart loop


@dataclass(frozen=True)
class DemoConfig:
    """The built-in-world loop. Stage settings nest: `pretrain.max_steps=400`, `world.seed=1`."""

    world: WorldConfig = field(default_factory=WorldConfig)
    preset: str = "world-small"
    seq_len: int = 256
    vocab_size: int = 2048
    # threads=1: on a 2-core machine that is doing anything else, two torch threads wait on each
    # other and ran ~8x slower (700 vs 5,500 tokens/s measured); one thread is steady everywhere.
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=2e-3, warmup_ratio=0.05, max_steps=400, batch_size=16, checkpoint_every=100, threads=1,
        log_every=20))
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-3, warmup_ratio=0.05, max_steps=300, batch_size=32, checkpoint_every=100, threads=1,
        log_every=20))
    sft_max_length: int = 256
    eval_limit: int | None = None
    eval_max_new_tokens: int = 96


def run_demo(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """world -> pretrain -> SFT -> eval of base and SFT on held-out prompts; prints the table."""
    from coachlm.eval.world_eval import EvalConfig, print_report, run_eval
    from coachlm.trainers.pretrain import PretrainConfig, run_pretrain
    from coachlm.trainers.sft import SFTConfig, run_sft
    from coachlm.world.build import build_world

    out = Path(out)
    settings = cfglib.to_dict(cfg)
    world = run_stage(out, "world", settings["world"], {},
                      lambda d: {k: str(v) for k, v in build_world(d, cfg.world).items()})
    w = world["result"]
    pre_settings = {k: settings[k] for k in ("preset", "seq_len", "vocab_size", "pretrain")}
    base = run_stage(out, "pretrain", pre_settings, {"world": world["key"]}, lambda d: {
        "model": str(run_pretrain(PretrainConfig(
            corpus=Path(w["corpus"]), out=d, preset=cfg.preset, seq_len=cfg.seq_len,
            vocab_size=cfg.vocab_size, train=cfg.pretrain), resume=True))})
    sft_settings = {"sft": settings["sft"], "max_length": cfg.sft_max_length}
    sft = run_stage(out, "sft", sft_settings, {"world": world["key"], "pretrain": base["key"]},
                    lambda d: {"model": str(run_sft(SFTConfig(
                        model=Path(base["result"]["model"]), data=(Path(w["sft"]),), out=d,
                        max_length=cfg.sft_max_length, train=cfg.sft), resume=True))})
    eval_settings = {"limit": cfg.eval_limit, "max_new_tokens": cfg.eval_max_new_tokens}
    report = run_stage(out, "eval", eval_settings, {"pretrain": base["key"], "sft": sft["key"]},
                       lambda d: run_eval(EvalConfig(
                           model=Path(sft["result"]["model"]), against=Path(base["result"]["model"]),
                           prompts=Path(w["prompts_heldout"]), out=d, limit=cfg.eval_limit,
                           name="sft", against_name="base",
                           max_new_tokens=cfg.eval_max_new_tokens)))
    result = report["result"]
    print_report(result)
    summary = {"base_if_rate": result["against"]["if_rate"], "sft_if_rate": result["if_rate"],
               "sft_over_base_win_rate": result["win_rate"],
               "stage_seconds": {r["stage"]: r["seconds"] for r in (world, base, sft, report)}}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"instruction-following on held-out prompts: base {summary['base_if_rate']:.1%}"
                  f" -> SFT {summary['sft_if_rate']:.1%}")
    return summary
