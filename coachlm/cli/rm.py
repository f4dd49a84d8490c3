"""`coachlm rm ...`: train (the default), evaluate, score and re-normalize reward models.

    coachlm rm --model M --data prefs.jsonl --out runs/rm [train.lr=5e-5 epochs=2 ...]
    coachlm rm eval --model runs/rm/final --data heldout.jsonl [--against rubric]
    coachlm rm score --model runs/rm/final --data samples.jsonl --out scored.jsonl
    coachlm rm normalize --model runs/rm/final --data reference_samples.jsonl

`coachlm rm ARGS` means `coachlm rm train ARGS` whenever ARGS does not start with a command
name, so plain `coachlm rm` trains while `eval`, `score` and `normalize` stay subcommands. Each
command takes `--config FILE` (YAML) and trailing dotted overrides, like every coachlm command,
and makes one library call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from coachlm.cli.common import ConfigOpt, DeviceOpt, SkipInvalidOpt, TrainByDefault, console, flag
from coachlm.cli.common import load as _load


rm_app = typer.Typer(cls=TrainByDefault, no_args_is_help=True, add_completion=False,
                     help="Reward models: train (default), eval, score, normalize.")

OverridesArg = typer.Argument(None, help="Dotted overrides, e.g. train.lr=5e-5 epochs=2.")
ModelOpt = typer.Option(None, "--model", "-m", help="Model directory.")


@rm_app.command()
def train(model: Optional[Path] = typer.Option(None, "--model", "-m", help="Backbone: an HF model directory (SFT model, base LM, encoder)."),
          data: Optional[list[Path]] = typer.Option(None, "--data", "-d", help="Comparisons/rankings (JSONL, Parquet, TRL, HH-RLHF, HF dataset); repeatable."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory; the model goes to OUT/final."),
          val_data: Optional[list[Path]] = typer.Option(None, help="Held-out records (default: a split of --data)."),
          normalize_on: Optional[Path] = typer.Option(None, help="Sample records of the reference policy for the reward normalization."),
          resume: bool = typer.Option(False, help="Resume from the last checkpoint in --out."),
          skip_invalid: bool = SkipInvalidOpt,
          device: Optional[str] = DeviceOpt,
          config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Train a reward model on comparisons and K-wise rankings (Bradley-Terry / InstructGPT)."""
    from coachlm.trainers.reward import RMConfig, run_rm

    cfg = _load(RMConfig, config, overrides, model=model, data=data, out=out, val_data=val_data,
                normalize_on=normalize_on, skip_invalid=flag(skip_invalid),
                **{"train.device": device})
    console.print(f"reward model: {run_rm(cfg, resume=resume)}")


@rm_app.command("eval")
def evaluate(model: Optional[Path] = ModelOpt,
             data: Optional[list[Path]] = typer.Option(None, "--data", "-d", help="Held-out comparisons/rankings; repeatable."),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the report as JSON here."),
             against: Optional[str] = typer.Option(None, help="labels (default) or rubric (built-in world: noise-free preference)."),
             config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Accuracy, mean margin and calibration (ECE), per task family and label source."""
    from coachlm.eval.reward_eval import RMEvalConfig, print_rm_report, run_rm_eval

    cfg = _load(RMEvalConfig, config, overrides, model=model, data=data, out=out, against=against)
    print_rm_report(run_rm_eval(cfg))


@rm_app.command()
def score(model: Optional[Path] = ModelOpt,
          data: Optional[Path] = typer.Option(None, "--data", "-d", help="Sample/demonstration/rating records to score."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .jsonl/.jsonl.gz/.parquet (records with meta.reward)."),
          config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Score (prompt, response) records in batches; writes them with meta.reward."""
    from coachlm.eval.reward_eval import RMScoreConfig, run_rm_score

    cfg = _load(RMScoreConfig, config, overrides, model=model, data=data, out=out)
    console.print_json(json.dumps(run_rm_score(cfg)))


@rm_app.command()
def normalize(model: Optional[Path] = ModelOpt,
              data: Optional[Path] = typer.Option(None, "--data", "-d", help="Sample records of the reference policy."),
              config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Refit the reward normalization (mean 0, std 1) on a reference policy's samples, in place."""
    from coachlm.trainers.reward import NormalizeConfig, run_normalize

    cfg = _load(NormalizeConfig, config, overrides, model=model, data=data)
    console.print_json(json.dumps(run_normalize(cfg)))
