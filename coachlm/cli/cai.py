"""`coachlm cai ...`: Constitutional AI (Bai et al., 2022).

    coachlm cai constitution [FILE]                       # validate a constitution, list it
    coachlm cai label --samples F --out F --model M       # RL-CAI: AI labels (or --endpoint URL)
    coachlm cai revise --model M --prompts F --out DIR    # SL-CAI: critique and revise, n rounds

`label` writes soft-labelled comparisons (source=ai, the principle id and P(a better) in meta)
for every pair of samples of each prompt; a rerun resumes where the last one stopped. Each
command takes `--config FILE` (YAML) and trailing dotted overrides, like every coachlm command,
and makes one library call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from coachlm.cli.common import ConfigOpt, OverridesArg, console
from coachlm.cli.common import load as _load

cai_app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="Constitutional AI: constitutions, AI labels, SL-CAI revisions.")


@cai_app.command()
def constitution(path: Optional[Path] = typer.Argument(None, help="Constitution YAML (default: the built-in one).")) -> None:
    """Validate a constitution and list its principles (a bad file: one line, exit 2)."""
    from rich.table import Table

    from coachlm.constitution import load_constitution

    c = load_constitution(path)
    table = Table(title=f"{c.name}: {len(c.principles)} principles, "
                        f"{len(c.critique_examples)} critique and "
                        f"{len(c.comparison_examples)} comparison examples")
    table.add_column("id")
    table.add_column("comparison question")
    for p in c.principles:
        table.add_row(p.id, p.comparison_question)
    console.print(table)


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
