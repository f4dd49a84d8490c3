"""Stage kinds: for each, the typed config its command takes, its outputs, and how it runs.

A stage's config is that config class, filled from the pipeline file (`config:`), its inputs
(paths of upstream outputs, written into the named fields) and its directory (`out`). The
trainers are called with resume=True, so a killed stage continues from its last checkpoint.
They are imported only when a stage runs (the configs live apart from them), so that loading,
checking and a fully cached run never load torch or transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from coachlm import config as cfglib
from coachlm.eval.compare import CompareConfig
from coachlm.eval.leaderboard import LeaderboardConfig, VersionsConfig
from coachlm.eval.run_data import ReportConfig
from coachlm.pipeline.cai_kinds import cai_kinds
from coachlm.pipeline.label import LabelConfig
from coachlm.pipeline.spec import Pipeline, PipelineError, StageSpec, hint
from coachlm.rollout.samples import SampleConfig
from coachlm.trainers.configs import DPOConfig, PretrainConfig, RMConfig, SFTConfig
from coachlm.trainers.ppo_config import PPORunConfig
from coachlm.world.build import WorldConfig

RL_KINDS = ("ppo", "grpo", "rloo")
Upstream = Mapping[str, Any]  # input field -> the upstream stage's record (a list for lists)


@dataclass(frozen=True)
class Kind:
    config: type
    outputs: tuple[str, ...]
    run: Callable[[Any, Path, Upstream], dict[str, Any]]
    out: str | None = ""  # the config's `out` is the stage directory / this; None: no `out`
    defaults: Mapping[str, Any] = field(default_factory=dict)
    resolve: Callable[[dict[str, Any], Upstream], dict[str, Any]] | None = None


def _world(cfg: WorldConfig, d: Path, up: Upstream) -> dict[str, Any]:
    from coachlm.data.io import read_prompts, write_records
    from coachlm.eval.prompt_sets import overlap, prompt_set_report
    from coachlm.eval.wins import split_dev_test
    from coachlm.world.build import build_world

    paths = {k: str(v) for k, v in build_world(d, cfg).items()}
    sets = {"prompts_train": read_prompts(Path(paths["prompts_train"]))}
    parts = split_dev_test(read_prompts(Path(paths["prompts_heldout"])))
    for name, part in zip(("prompts_dev", "prompts_test"), parts):
        paths[name], sets[name] = str(d / f"{name}.jsonl"), part
        write_records(Path(paths[name]), part)
    metrics = {**json.loads(Path(paths["world"]).read_text())["counts"],
               "prompt_sets": {n: prompt_set_report(ps) for n, ps in sets.items()},
               "test_in_train": overlap(sets["prompts_train"], sets["prompts_test"])}
    return {**paths, "metrics": metrics}


def _trainer(fn_path: str) -> Callable[[Any, Path, Upstream], dict[str, Any]]:
    def run(cfg: Any, d: Path, up: Upstream) -> dict[str, Any]:
        import importlib

        module, name = fn_path.rsplit(".", 1)
        return {"model": str(getattr(importlib.import_module(module), name)(cfg, resume=True))}

    return run


def _policy(cfg: PPORunConfig, d: Path, up: Upstream) -> dict[str, Any]:
    """An RL policy: the merged model, and its LoRA adapter, which a next round can continue
    (`loop.kl_reference: sft`, `PPORunConfig.adapter`)."""
    from coachlm.trainers.ppo import run_ppo

    final = run_ppo(cfg, resume=True)
    return {"model": str(final), "adapter": str(final / "adapter")}


def _sample(cfg: SampleConfig, d: Path, up: Upstream) -> dict[str, Any]:
    from coachlm.data.io import read_prompts
    from coachlm.eval.prompt_sets import prompt_set_report
    from coachlm.rollout.samples import run_sample

    out = run_sample(cfg)
    summary = json.loads((d / "summary.json").read_text())
    prompts = read_prompts(cfg.prompts)[cfg.offset:][: cfg.limit]
    return {"samples": str(out), "metrics": {**summary, "prompt_set": prompt_set_report(prompts)}}


def _label(cfg: LabelConfig, d: Path, up: Upstream) -> dict[str, Any]:
    from coachlm.pipeline.label import run_label

    return run_label(cfg)


def _eval(cfg: CompareConfig, d: Path, up: Upstream) -> dict[str, Any]:
    from coachlm.eval.compare import run_compare

    report = run_compare(cfg)
    return {"report": str(d / "eval.json"), **report}


def _eval_resolve(data: dict[str, Any], up: Upstream) -> dict[str, Any]:
    """Fill what the policies' own training configs decide: the temperature and length the
    sampled win rate and the KL use (those the policy was trained at), and which models were
    trained against the rubric that judges them (flagged)."""
    rl = {f.split(".", 1)[1]: rec for f, rec in up.items()
          if f.startswith("models.") and isinstance(rec, Mapping) and rec.get("kind") in RL_KINDS}
    policy = data.get("kl", [None])[0] if data.get("kl") else None
    first = rl.get(policy) or next(iter(rl.values()), None)
    if first is not None:
        ppo = first["config"]["ppo"]
        for key, value in (("kl_temperature", ppo["temperature"]),
                           ("sample_temperature", ppo["temperature"]),
                           ("sample_max_new_tokens", ppo["max_new_tokens"])):
            if data.get(key) is None:
                data[key] = value
    if "trained_on_judge" not in data:
        data["trained_on_judge"] = [m for m, rec in rl.items()
                                    if rec["config"]["reward"] == "rubric"]
    return data


def _player_names(evals: Any) -> list[dict[str, str]]:
    """Players are named after the stage that made each model (`sft`, `r2/ppo`)."""
    return [{f.split(".", 1)[1]: ref.rsplit(".", 1)[0] for f, ref in rec["input_refs"].items()
             if f.startswith("models.")} for rec in evals]


def _leaderboard(cfg: LeaderboardConfig, d: Path, up: Upstream) -> dict[str, Any]:
    from coachlm.eval.leaderboard import run_leaderboard

    result = run_leaderboard(cfg, _player_names(up["evals"]))
    return {"report": str(d / "leaderboard.json"), **result,
            "metrics": {k: result[k] for k in ("matches", "skipped_too_long")}}


def _versions(cfg: VersionsConfig, d: Path, up: Upstream) -> dict[str, Any]:
    from coachlm.eval.leaderboard import write_versus

    return write_versus(cfg, _player_names(up["evals"]))


def _report(cfg: ReportConfig, d: Path, up: Upstream) -> dict[str, Any]:
    """The run's report as a stage (a pipeline ends with it): every stage finished so far,
    read from the run directory this stage is in."""
    from dataclasses import replace

    from coachlm.eval.report import write_report

    run_dir = cfg.run_dir if cfg.run_dir is not None else d.parent
    return {"report": str(write_report(replace(cfg, run_dir=run_dir)))}


KINDS: dict[str, Kind] = {
    "world": Kind(WorldConfig, ("corpus", "sft", "prompts_train", "prompts_heldout", "prompts_dev",
                                "prompts_test", "world"), _world, out=None),
    "pretrain": Kind(PretrainConfig, ("model",),
                     _trainer("coachlm.trainers.pretrain.run_pretrain")),
    "sft": Kind(SFTConfig, ("model",), _trainer("coachlm.trainers.sft.run_sft")),
    "sample": Kind(SampleConfig, ("samples",), _sample, out="samples.jsonl"),
    "label": Kind(LabelConfig, ("data",), _label),
    "rm": Kind(RMConfig, ("model",), _trainer("coachlm.trainers.reward.run_rm")),
    "dpo": Kind(DPOConfig, ("model",), _trainer("coachlm.trainers.dpo.run_dpo")),
    **{algo: Kind(PPORunConfig, ("model", "adapter"), _policy, defaults={"ppo": {"algo": algo}})
       for algo in RL_KINDS},
    "eval": Kind(CompareConfig, ("report",), _eval, resolve=_eval_resolve),
    "leaderboard": Kind(LeaderboardConfig, ("report",), _leaderboard),
    "versions": Kind(VersionsConfig, ("samples",), _versions, out="samples.jsonl"),
    "report": Kind(ReportConfig, ("report",), _report, out="report.html"),
}
KINDS.update(cai_kinds(Kind))  # RLAIF: cai_data, cai_revise, ai_label (`pipeline.cai_kinds`)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def build_config(pipe: Pipeline, spec: StageSpec, values: Mapping[str, Any], stage_dir: str,
                 up: Upstream | None = None) -> Any:
    """The stage's typed config: kind defaults < the file's config < inputs < its directory.
    `values` gives each input field its path(s); `up`, when known, the upstream records."""
    kind = KINDS[spec.kind]
    data = cfglib.merge(kind.defaults, spec.config)
    for name, value in values.items():
        _set(data, name, value)
    if kind.out is not None:
        data["out"] = str(Path(stage_dir) / kind.out) if kind.out else stage_dir
    if kind.resolve is not None and up is not None:
        data = kind.resolve(data, up)
    try:
        return cfglib.from_dict(kind.config, data, prefix=f"stages.{spec.name}.config.")
    except cfglib.ConfigError as e:
        raise PipelineError(f"{pipe.path}: {e}") from None


def check_stage(pipe: Pipeline, spec: StageSpec) -> None:
    """Everything about one stage that can be checked before anything runs."""
    where = f"{pipe.path}: stages.{spec.name}"
    if spec.kind not in KINDS:
        raise PipelineError(f"{where}.kind: unknown stage kind '{spec.kind}'"
                            f"{hint(spec.kind, list(KINDS))}")
    kind = KINDS[spec.kind]
    names = {f.name for f in fields(kind.config)}
    kinds = {s.name: s.kind for s in pipe.stages}
    for name, refs in spec.inputs.items():
        if name.split(".")[0] not in names:
            raise PipelineError(f"{where}.inputs.{name}: {spec.kind} has no config field "
                                f"'{name.split('.')[0]}'")
        if name in spec.config or name == "out":
            raise PipelineError(f"{where}.config.{name}: set by inputs, not config")
        for ref in refs if isinstance(refs, tuple) else (refs,):
            outputs = KINDS[kinds[ref.stage]].outputs if kinds[ref.stage] in KINDS else ()
            if ref.output not in outputs:
                raise PipelineError(f"{where}.inputs.{name}: missing input: stage '{ref.stage}' "
                                    f"has no output '{ref.output}' (it has {', '.join(outputs)})")
    placeholders = {n: ([f"<{r}>" for r in v] if isinstance(v, tuple) else f"<{v}>")
                    for n, v in spec.inputs.items()}
    build_config(pipe, spec, placeholders, f"<{spec.name}>")
