"""Rounds (`coachlm loop FILE --rounds N`): the pipeline's `loop:` stages run once per round.

Round r (stages in `r<r>/`): samples the round r-1 policy (round 1: the pipeline's own input,
usually SFT) on fresh training prompts (`prompts_per_round` of them, after those of earlier
rounds); sends them to labelers through the label stage (with a store: one project per round,
`<project>-<r>`); trains the reward model on every label so far (`rm_init: continue` from the
round r-1 reward model, or `retrain` from the pipeline's own starting model); trains the next
policy (`policy_init: previous` from the round r-1 policy, or `sft` from the pipeline's own
starting model; with `previous`, `kl_reference: sft` keeps the KL penalty to that starting model
by continuing the round r-1 LoRA adapter on it); evaluates it; and rates every version so far on a leaderboard. With
`version_prompts`, the round also sends the new policy's and the previous version's responses
to the same test prompts to the labelers as comparisons (`r<r>/versions` picks them,
`r<r>/versions_label` labels them through the store in project `<project>-<r>-versions`), and
those labels rate the versions as matches between them; with `ai_judge` (a feedback model: a
stage's output, `stage.model`, or a directory), an AI judge rates them too.

The rounds are expanded into one pipeline, so every stage is cached and resumed like any other:
running the same command after a kill reuses every finished stage and round, and `--rounds 4`
after `--rounds 3` runs only round 4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from coachlm import config as cfglib
from coachlm.pipeline.spec import Pipeline, PipelineError, Ref, StageSpec, checked, order


@dataclass(frozen=True)
class LoopConfig:
    repeat: tuple[str, ...] = ("sample", "feedback", "rm", "ppo", "eval")  # run once per round
    sample: str = "sample"
    label: str = "feedback"
    rm: str = "rm"
    policy: str = "ppo"  # its `model` output is the round's policy
    eval: str = "eval"
    prompts_per_round: int = 64  # fresh training prompts per round
    rm_init: Literal["continue", "retrain"] = "continue"
    policy_init: Literal["previous", "sft"] = "sft"  # measured: README, "Pipelines, rounds"
    # What the KL penalty pulls toward when a round starts from the previous policy. "sft": the
    # pipeline's own starting model (the round continues the previous round's LoRA adapter on
    # it, so the adapter switched off is still SFT), as InstructGPT keeps its KL to the SFT
    # model throughout (Ouyang et al., 2022, eq. 2). "previous": the previous policy itself
    # (a fresh adapter on it), which lets the KL to SFT grow round after round.
    kl_reference: Literal["sft", "previous"] = "sft"
    project: str = "round"  # store projects are <project>-1, <project>-2, ...
    store: str | None = None  # the label stage's store (--store; default RUN/feedback.db)
    leaderboard_bootstrap: int = 200
    version_prompts: int = 0  # labelers compare the new and previous version on this many prompts
    ai_judge: str | None = None  # the leaderboard's AI judge: `stage.output` or a model directory

    def __post_init__(self) -> None:
        if self.prompts_per_round < 1 or self.version_prompts < 0:
            raise ValueError("prompts_per_round must be >= 1 and version_prompts >= 0")


def loop_config(pipe: Pipeline) -> LoopConfig:
    try:
        cfg = cfglib.from_dict(LoopConfig, pipe.loop, prefix="loop.")
    except cfglib.ConfigError as e:
        raise PipelineError(f"{pipe.path}: {e}") from None
    names = {s.name for s in pipe.stages}
    for role in ("sample", "label", "rm", "policy", "eval"):
        stage = getattr(cfg, role)
        if stage not in cfg.repeat or stage not in names:
            raise PipelineError(f"{pipe.path}: loop.{role}: '{stage}' must be a stage listed in "
                                f"loop.repeat")
    policy = pipe.stage(cfg.policy)
    if cfg.policy_init == "previous" and cfg.kl_reference == "sft" and (
            policy.kind not in ("ppo", "grpo", "rloo")
            or (policy.config.get("ppo") or {}).get("lora", "default") is None):
        raise PipelineError(f"{pipe.path}: loop.kl_reference: 'sft' with policy_init 'previous' "
                            f"continues the previous round's LoRA adapter: stage '{cfg.policy}' "
                            f"must be ppo, grpo or rloo with ppo.lora set (or set "
                            f"loop.kl_reference: previous, or loop.policy_init: sft)")
    return cfg


def _rename(ref: Ref, r: int, repeat: tuple[str, ...]) -> Ref:
    return Ref(f"r{r}/{ref.stage}", ref.output) if ref.stage in repeat else ref


def _round_stage(pipe: Pipeline, s: StageSpec, r: int, cfg: LoopConfig) -> StageSpec:
    inputs: dict[str, Any] = {
        f: tuple(_rename(x, r, cfg.repeat) for x in v) if isinstance(v, tuple)
        else _rename(v, r, cfg.repeat) for f, v in s.inputs.items()}
    config = dict(s.config)
    prev = f"r{r - 1}/"
    if s.name == cfg.sample:
        config.update(offset=(r - 1) * cfg.prompts_per_round, limit=cfg.prompts_per_round)
        if r > 1:
            inputs["model"] = Ref(prev + cfg.policy, "model")
    if s.name == cfg.label:
        config = _label_config(pipe, cfg, f"{cfg.project}-{r}")
    if s.name == cfg.rm:
        inputs["data"] = tuple(Ref(f"r{q}/{cfg.label}", "data") for q in range(1, r + 1))
        if r > 1 and cfg.rm_init == "continue":
            inputs["model"] = Ref(prev + cfg.rm, "model")
    if s.name == cfg.policy and r > 1 and cfg.policy_init == "previous":
        if cfg.kl_reference == "sft":
            inputs["adapter"] = Ref(prev + cfg.policy, "adapter")
        else:
            inputs["model"] = Ref(prev + cfg.policy, "model")
    return StageSpec(f"r{r}/{s.name}", s.kind, config, inputs)


def _label_config(pipe: Pipeline, cfg: LoopConfig, project: str, kind: str | None = None
                  ) -> dict[str, Any]:
    config = dict(pipe.stage(cfg.label).config, project=project)
    if kind is not None:
        config["simulated"] = {**dict(config.get("simulated") or {}), "kind": kind}
    if cfg.store is not None:
        config.setdefault("store", cfg.store)
    return config


def _versions(pipe: Pipeline, r: int, cfg: LoopConfig) -> list[StageSpec]:
    """The round's cross-version comparisons: the new policy against the previous version."""
    evals = tuple(Ref(f"r{q}/{cfg.eval}", "report") for q in (r - 1, r) if q >= 1)
    return [StageSpec(f"r{r}/versions", "versions", {"limit": cfg.version_prompts},
                      {"evals": evals}),
            StageSpec(f"r{r}/versions_label", pipe.stage(cfg.label).kind,
                      _label_config(pipe, cfg, f"{cfg.project}-{r}-versions", "comparisons"),
                      {"samples": Ref(f"r{r}/versions", "samples")})]


def _leaderboard(pipe: Pipeline, r: int, cfg: LoopConfig) -> StageSpec:
    inputs: dict[str, Any] = {"evals": tuple(Ref(f"r{q}/{cfg.eval}", "report")
                                             for q in range(1, r + 1)),
                              "reward_model": Ref(f"r{r}/{cfg.rm}", "model")}
    config: dict[str, Any] = {"bootstrap": cfg.leaderboard_bootstrap}
    if cfg.version_prompts:
        inputs["feedback"] = tuple(Ref(f"r{q}/versions_label", "data") for q in range(1, r + 1))
    judge = cfg.ai_judge
    if judge is not None and judge.count(".") == 1 and judge.split(".")[0] in {
            s.name for s in pipe.stages if s.name not in cfg.repeat}:
        inputs["ai_judge"] = Ref(*judge.split("."))
    elif judge is not None:
        config["ai_judge"] = judge
    return StageSpec(f"r{r}/leaderboard", "leaderboard", config, inputs)


def expand(pipe: Pipeline, rounds: int) -> Pipeline:
    """The pipeline with its `loop.repeat` stages once per round, plus a leaderboard per round."""
    if rounds < 1:
        raise PipelineError("--rounds must be >= 1")
    cfg = loop_config(pipe)
    stages = [s for s in pipe.stages if s.name not in cfg.repeat]
    for r in range(1, rounds + 1):
        stages += [_round_stage(pipe, s, r, cfg) for s in pipe.stages if s.name in cfg.repeat]
        stages += _versions(pipe, r, cfg) if cfg.version_prompts else []
        stages.append(_leaderboard(pipe, r, cfg))
    return checked(Pipeline(pipe.path, order(pipe.path, {s.name: s for s in stages}), pipe.loop))


def run_loop(pipe: Pipeline, out: Path, rounds: int, store: str | None = None,
             from_stage: str | None = None) -> dict[str, Any]:
    """Run `rounds` rounds (cached, resumable); write and return loop.json: per round the
    test-set win rate over the starting policy with its interval, KL, labels by source; and
    the last round's leaderboard."""
    from coachlm.eval.report import ReportConfig, write_report
    from coachlm.pipeline.run import run_pipeline

    out = Path(out)
    loop = {**pipe.loop, "store": store or pipe.loop.get("store") or str(out / "feedback.db")}
    cfg = loop_config(replace(pipe, loop=loop))
    records = run_pipeline(expand(replace(pipe, loop=loop), rounds), out, from_stage=from_stage)
    per_round = []
    for r in range(1, rounds + 1):
        ev = records[f"r{r}/{cfg.eval}"]["result"]
        label = records[f"r{r}/{cfg.label}"]["metrics"]
        per_round.append({"round": r, "wins": ev["wins"], "sampled": ev.get("sampled"),
                          "kl": ev.get("kl"), "if_rate": {m: x["if_rate"]
                                                          for m, x in ev["models"].items()},
                          "labels": label.get("records"), "by_source": label.get("by_source"),
                          "project": label.get("project"),
                          "deadline_passed": bool(label.get("deadline_passed"))})
        if cfg.version_prompts:
            versus = records[f"r{r}/versions_label"]["metrics"]
            per_round[-1]["versions"] = {"players": records[f"r{r}/versions"]["metrics"]["players"],
                                         "labels": versus.get("records"),
                                         "by_source": versus.get("by_source"),
                                         "project": versus.get("project")}
    summary = {"rounds": per_round, "leaderboard": records[f"r{rounds}/leaderboard"]["result"],
               "stage_seconds": {n: r["seconds"] for n, r in records.items()}}
    summary["total_seconds"] = round(sum(summary["stage_seconds"].values()), 1)
    (out / "loop.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["report"] = str(write_report(ReportConfig(run_dir=out)))
    return summary


def print_loop(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from coachlm.eval.wins import fmt

    table = Table(title="Rounds (test half of the held-out prompts, rubric)")
    for col in ("round", "win rate over start (greedy)", "sampled", "KL", "labels by source"):
        table.add_column(col)
    for r in summary["rounds"]:
        (key, w), = list(r["wins"].items())[:1]
        sampled = fmt(r["sampled"]["wins"][key]) if r.get("sampled") else "-"
        kl = f"{r['kl']['kl']:.2f}" if r.get("kl") else "-"
        short = " (deadline: quota not met)" if r.get("deadline_passed") else ""
        table.add_row(str(r["round"]), fmt(w), sampled, kl, json.dumps(r["by_source"]) + short)
    console = Console()
    console.print(table)
    for judge, rows in summary["leaderboard"]["boards"].items():
        lb = Table(title=f"Leaderboard by {judge}")
        for col in ("player", "Bradley-Terry [95% CI]", "Elo [95% CI]", "matches"):
            lb.add_column(col)
        for row in rows:
            lb.add_row(row["name"], f"{row['bt']:.0f} [{row['bt_lo']:.0f}, {row['bt_hi']:.0f}]",
                       f"{row['elo']:.0f} [{row['elo_lo']:.0f}, {row['elo_hi']:.0f}]",
                       str(row["matches"]))
        console.print(lb)
        skipped = summary["leaderboard"].get("skipped_too_long", {}).get(judge)
        if skipped:
            console.print(f"{judge}: {skipped} pairs skipped, too long for its context")
    console.print(f"report: {summary['report']}")
