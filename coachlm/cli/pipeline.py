"""Pipeline commands: `run` (a pipeline file), `demo` (the shipped quickstart pipeline), `loop`
(rounds), `report` (a run's HTML report) and `compare` (the `eval` stage's comparison: the same
`CompareConfig`, so a stage config can be run, or copied, as a command and back).

Overrides name the stage first: `coachlm run p.yaml ppo.ppo.steps=20 eval.kl_samples=50`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from coachlm.cli.common import ConfigOpt, OverridesArg, console, load
from coachlm.errors import CoachError


def _pairs(values: Optional[list[str]], what: str) -> Optional[list[list[str]]]:
    if not values:
        return None
    out = [v.split(",") for v in values]
    if any(len(p) != 2 for p in out):
        raise CoachError(f"{what} takes A,B (two model names), got {values}")
    return out


def compare(model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="NAME=DIR, once per model."),
            prompts: Optional[Path] = typer.Option(None, help="Held-out prompt records."),
            pair: Optional[list[str]] = typer.Option(None, help="A,B: the win rate of A over B (repeatable)."),
            kl: Optional[str] = typer.Option(None, help="POLICY,REFERENCE: KL(policy || reference) on samples."),
            out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for eval.json and samples."),
            config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Compare models on held-out prompts (the pipeline's eval stage, same config): IF rate per family, win/tie/loss with 95% CIs on all prompts and the test half, sampled win rate, KL."""
    from coachlm.eval.compare import CompareConfig, print_comparison, run_compare

    models = None
    if model:
        if any("=" not in m for m in model):
            raise CoachError(f"--model takes NAME=DIR, got {model}")
        models = dict(m.split("=", 1) for m in model)
    kl_pair = _pairs([kl], "--kl") if kl else None
    cfg = load(CompareConfig, config, overrides, models=models, prompts=prompts,
               pairs=_pairs(pair, "--pair"), kl=kl_pair[0] if kl_pair else None, out=out)
    print_comparison(run_compare(cfg))


def run(pipeline: Path = typer.Argument(..., help="Pipeline file (YAML: stages with kind, config, inputs)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<file name>)."),
        from_stage: Optional[str] = typer.Option(None, "--from", help="Re-run this stage and everything downstream."),
        overrides: Optional[list[str]] = OverridesArg) -> None:
    """Run a pipeline file: each stage cached by its whole config and inputs, resumed after a crash."""
    from coachlm.eval.compare import print_comparison
    from coachlm.pipeline import load_pipeline, run_pipeline

    pipe = load_pipeline(pipeline, overrides or ())
    records = run_pipeline(pipe, out or Path("runs") / pipeline.stem, from_stage=from_stage)
    for rec in records.values():
        if rec.get("kind") == "eval":
            print_comparison(rec["result"])


def demo(out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Directory for every stage."),
         from_stage: Optional[str] = typer.Option(None, "--from", help="Re-run this stage and everything downstream."),
         overrides: Optional[list[str]] = OverridesArg) -> None:
    """The quickstart loop on the built-in world (the shipped pipeline quickstart.yaml): world -> pretrain -> SFT -> sample -> simulated feedback -> reward model -> PPO -> eval (cached stages)."""
    from coachlm.demo import run_demo

    run_demo(out, overrides or (), from_stage=from_stage)


def loop(pipeline: Path = typer.Argument(..., help="Pipeline file with a `loop:` section (e.g. coachlm/pipelines/loop.yaml)."),
         rounds: int = typer.Option(3, "--rounds", "-n", help="Rounds to run (finished rounds are reused)."),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<file name>)."),
         store: Optional[str] = typer.Option(None, help="Feedback store URL or SQLite path (default RUN/feedback.db)."),
         from_stage: Optional[str] = typer.Option(None, "--from", help="Re-run this stage (e.g. r2/rm) and everything downstream."),
         overrides: Optional[list[str]] = OverridesArg) -> None:
    """Rounds: sample the current policy, label through the store, update the reward model, train the next policy, evaluate, rate."""
    from coachlm.pipeline import load_pipeline
    from coachlm.pipeline.rounds import print_loop, run_loop

    pipe = load_pipeline(pipeline, overrides or ())
    print_loop(run_loop(pipe, out or Path("runs") / pipeline.stem, rounds, store, from_stage))


def report(run_dir: Path = typer.Argument(..., help="A run directory of `coachlm run`, `demo` or `loop`."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default RUN_DIR/report.html)."),
           rate: Optional[float] = typer.Option(None, help="Labeling rate in $ per hour for the cost figures (default 36: $0.10 per 10 s)."),
           config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """One self-contained HTML report: rounds, win rates with CIs, leaderboard, labels, samples, reward-hacking watch."""
    from coachlm.eval.report import ReportConfig, write_report

    cfg = load(ReportConfig, config, overrides, run_dir=run_dir, out=out, rate_per_hour=rate)
    console.print(f"report: {write_report(cfg)}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("run")(run)
    app.command("demo")(demo)
    app.command("loop")(loop)
    app.command("compare")(compare)
