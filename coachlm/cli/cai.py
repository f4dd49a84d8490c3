"""`coachlm cai ...`: Constitutional AI (Bai et al., 2022).

    coachlm cai constitution [FILE]                       # validate a constitution, list it
    coachlm cai label --samples F --out F --model M       # RL-CAI: AI labels (or --endpoint URL)
    coachlm cai revise --model M --prompts F --out DIR    # SL-CAI: critique and revise, n rounds
    coachlm cai demos --world DIR --out F -n 2000         # the world's critique/revision demos

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


@cai_app.command()
def revise(model: Optional[Path] = typer.Option(None, "--model", "-m", help="The model that answers, critiques and revises."),
           prompts: Optional[Path] = typer.Option(None, help="Prompt records (red-team prompts)."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (revisions.jsonl, summary.json)."),
           constitution: Optional[Path] = typer.Option(None, help="Constitution YAML (default: the built-in one)."),
           rounds: Optional[int] = typer.Option(None, help="Critique-revision rounds per prompt."),
           limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
           config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """SL-CAI: answer each prompt, then critique and revise under random principles; writes
    the final revisions as Demonstration records (trace in meta) for `coachlm sft`. Resumes."""
    from coachlm.constitution.revise import ReviseConfig, run_revise

    cfg = _load(ReviseConfig, config, overrides, model=model, prompts=prompts, out=out,
                constitution=constitution, rounds=rounds, limit=limit)
    console.print(f"revisions: {run_revise(cfg)}")


@cai_app.command()
def demos(world: Path = typer.Option(..., help="A world directory built with red_team_prompts and lookalike_prompts."),
          out: Path = typer.Option(..., "--out", "-o", help="Output JSONL of Demonstration records."),
          n: int = typer.Option(2000, "-n", help="Critique demonstrations (as many revisions again)."),
          comparisons: Optional[Path] = typer.Option(None, help="Also write (A)/(B) comparison documents here: raw text in the AI labeler's layout, a corpus for `coachlm pretrain init_model=...`."),
          n_comparisons: int = typer.Option(2000, help="How many comparison documents."),
          constitution: Optional[Path] = typer.Option(None, help="Constitution YAML (default: the built-in one)."),
          seed: int = typer.Option(0, help="Random seed.")) -> None:
    """The world's critique and revision demonstrations under a constitution (SFT data), and
    optionally its (A)/(B) comparison documents, so that a small world model learns to act as
    its own feedback model."""
    from coachlm.constitution import load_constitution
    from coachlm.constitution.world_demos import comparison_documents, feedback_demos
    from coachlm.data.io import write_records

    c = load_constitution(constitution)
    count = write_records(out, feedback_demos(world, c, n, seed))
    console.print(f"{count} demonstrations: {out}")
    if comparisons is not None:
        from coachlm.labelers.ai import ANSWER, question
        from coachlm.world.corpus import write_corpus

        docs = comparison_documents(world, c, n_comparisons,
                                    lambda p, a, b, pr: question(p, a, b, pr) + ANSWER, seed)
        write_corpus(docs, comparisons)
        console.print(f"{len(docs)} comparison documents: {comparisons}")
