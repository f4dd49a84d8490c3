"""`coachlm cai ...`: Constitutional AI (Bai et al., 2022).

    coachlm cai label --samples samples.jsonl --out ai_prefs.jsonl --model runs/feedback/final
    coachlm cai label --samples samples.jsonl --out ai_prefs.jsonl --endpoint http://127.0.0.1:8000/v1

`label` writes RL-CAI soft-labelled comparisons (source=ai, the principle id and P(a better) in
meta) for every pair of samples of each prompt; a rerun resumes where the last one stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from coachlm.cli.common import ConfigOpt, OverridesArg, console
from coachlm.cli.common import load as _load

cai_app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="Constitutional AI: AI feedback under written principles.")


@cai_app.command()
def label(samples: Optional[Path] = typer.Option(None, help="Sample records (2+ responses per prompt)."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Comparison records to write (resumed when present)."),
          model: Optional[Path] = typer.Option(None, help="Feedback model: a local Hugging Face model directory."),
          endpoint: Optional[str] = typer.Option(None, help="Feedback model: an OpenAI-compatible base URL (.../v1)."),
          endpoint_model: Optional[str] = typer.Option(None, help="Model name at the endpoint (default: the first it lists)."),
          mode: Optional[str] = typer.Option(None, help="Endpoint API: completions (echo logprobs) or chat (top logprobs)."),
          constitution: Optional[Path] = typer.Option(None, help="Constitution YAML (default: the built-in one)."),
          cot: Optional[bool] = typer.Option(None, "--cot/--no-cot", help="Chain of thought before the answer."),
          config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """RL-CAI AI labels: which response better follows a randomly drawn principle (soft, both orders)."""
    from coachlm.labelers.ai_run import AILabelConfig, run_ai_label

    cfg = _load(AILabelConfig, config, overrides, samples=samples, out=out, model=model,
                endpoint=endpoint, endpoint_model=endpoint_model, mode=mode,
                constitution=constitution, **{"ai.chain_of_thought": cot})
    console.print_json(json.dumps(run_ai_label(cfg)))
