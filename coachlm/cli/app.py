"""The root `coachlm` app and `main`. Each command parses, builds a typed config, makes one library call.

Every command takes `--config FILE` (YAML) and trailing dotted overrides (`train.lr=3e-4`);
its named options are shorthands for the most common keys. A user error (bad file, bad key,
bad record) prints one clear line and exits with status 2, with no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from coachlm.cli.common import ConfigOpt, DeviceOpt, OverridesArg, SkipInvalidOpt, console, flag
from coachlm.cli.common import load as _load
from coachlm.errors import CoachError

GeneratorOpt = typer.Option(None, help="Rollout engine: builtin (KV-cache sampler) or vllm "
                                       "(needs vLLM installed: `make vllm-env`).")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="coachlm: teach language models human preferences (RLHF and RLAIF).")


def _mount_subapps() -> None:
    """Sub-apps are mounted when `main` runs, so importing this module stays cheap."""
    from coachlm.cli.cai import cai_app
    from coachlm.cli.data import data_app
    import coachlm.cli.label_guidelines  # noqa: F401  (adds `label guidelines`)
    from coachlm.cli.label import label_app
    from coachlm.cli.pipeline import register
    from coachlm.cli.rm import rm_app
    from coachlm.cli.serve import serve

    register(app)
    app.add_typer(cai_app, name="cai", help="Constitutional AI: constitutions, AI labels, SL-CAI revisions.")
    app.add_typer(data_app, name="data", help="Validate and convert feedback record files.")

    app.add_typer(label_app, name="label", help="The labeling platform: serve, import, export.")
    app.add_typer(rm_app, name="rm", help="Reward model: train (default), eval, score, normalize.")
    app.command()(serve)


@app.command()
def world(out: Path = typer.Option(..., "--out", "-o", help="Directory to write the world to."),
          seed: Optional[int] = typer.Option(None, help="Random seed (default 0)."),
          config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Write the built-in world: corpus, SFT demos, train/held-out prompts."""
    from coachlm.world.build import WorldConfig, build_world

    cfg = _load(WorldConfig, config, overrides, seed=seed)
    paths = build_world(out, cfg)
    for name, path in paths.items():
        console.print(f"{name}: {path}")


@app.command()
def pretrain(corpus: Optional[Path] = typer.Option(None, help="Text corpus (documents separated by blank lines)."),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
             preset: Optional[str] = typer.Option(None, help="Model preset (world-tiny, world-small)."),
             resume: bool = typer.Option(False, help="Resume from the last checkpoint in --out."),
             device: Optional[str] = DeviceOpt,
             config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Pretrain a causal LM from scratch on a corpus (next-token loss, packed sequences)."""
    from coachlm.trainers.pretrain import PretrainConfig, run_pretrain

    cfg = _load(PretrainConfig, config, overrides, corpus=corpus, out=out, preset=preset,
                **{"train.device": device})
    console.print(f"model: {run_pretrain(cfg, resume=resume)}")


@app.command()
def sft(model: Optional[Path] = typer.Option(None, help="Starting model directory (HF format)."),
        data: Optional[Path] = typer.Option(None, help="Demonstrations (JSONL/Parquet/HF dataset)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
        resume: bool = typer.Option(False, help="Resume from the last checkpoint in --out."),
        skip_invalid: bool = SkipInvalidOpt,
        device: Optional[str] = DeviceOpt,
        config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Supervised fine-tuning on demonstrations (loss on response tokens only)."""
    from coachlm.trainers.sft import SFTConfig, run_sft

    cfg = _load(SFTConfig, config, overrides, model=model, data=data, out=out,
                skip_invalid=flag(skip_invalid), **{"train.device": device})
    console.print(f"model: {run_sft(cfg, resume=resume)}")


@app.command()
def sample(model: Optional[Path] = typer.Option(None, help="Model directory."),
           prompts: Optional[Path] = typer.Option(None, help="Prompt records."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output JSONL of Sample records."),
           n: Optional[int] = typer.Option(None, "-n", help="Responses per prompt."),
           max_new_tokens: Optional[int] = typer.Option(None, help="Longest response, in tokens."),
           temperature: Optional[float] = typer.Option(None, help="Sampling temperature (0: greedy)."),
           top_k: Optional[int] = typer.Option(None, help="Keep the k likeliest tokens (0: off)."),
           top_p: Optional[float] = typer.Option(None, help="Nucleus sampling mass (1: off)."),
           batch_size: Optional[int] = typer.Option(None, help="Prompts per batch."),
           seed: Optional[int] = typer.Option(None, help="Random seed."),
           limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
           model_name: Optional[str] = typer.Option(None, help="Model name recorded with each response."),
           model_version: Optional[str] = typer.Option(None, help="Version recorded (default: weights hash)."),
           dtype: Optional[str] = typer.Option(None, help="fp32 or bf16."),
           generator: Optional[str] = GeneratorOpt,
           config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Sample N responses per prompt, written as Sample records with provenance."""
    from coachlm.rollout.samples import SampleConfig, run_sample

    cfg = _load(SampleConfig, config, overrides, model=model, prompts=prompts, out=out, n=n,
                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                batch_size=batch_size, seed=seed, limit=limit, model_name=model_name,
                model_version=model_version, dtype=dtype, generator=generator)
    console.print(f"samples: {run_sample(cfg)}")


@app.command("eval")
def evaluate(model: Optional[Path] = typer.Option(None, help="Model to evaluate."),
             prompts: Optional[Path] = typer.Option(None, help="Held-out prompt records."),
             against: Optional[Path] = typer.Option(None, help="Second model: report the win rate of --model over it."),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for eval.json and samples."),
             config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Instruction-following rate and rubric score per task family; with --against, the win rate of --model over it (win/tie/loss, 95% CI). Takes `coachlm compare`'s config (e.g. max_new_tokens=64 greedy=false limit=100); models are named after their directories (`coachlm compare --model NAME=DIR` names them)."""
    from coachlm.eval.compare import CompareConfig, print_comparison, run_compare

    if against is not None and model is None:
        raise CoachError("--against needs --model (the model whose win rate over it is reported)")
    models = pairs = None
    if model is not None:
        models = {model.name: str(model)}
        if against is not None:
            models[against.name + ("-2" if against.name == model.name else "")] = str(against)
            pairs = [list(models)]
    cfg = _load(CompareConfig, config, overrides, models=models, prompts=prompts, pairs=pairs,
                out=out)
    print_comparison(run_compare(cfg))


@app.command()
def dpo(model: Optional[Path] = typer.Option(None, help="Starting policy (usually the SFT model)."),
        data: Optional[Path] = typer.Option(None, help="Comparisons/rankings (JSONL/Parquet/TRL/HH)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
        loss: Optional[str] = typer.Option(None, help="sigmoid (DPO) or ipo."),
        beta: Optional[float] = typer.Option(None, help="KL strength beta."),
        resume: bool = typer.Option(False, help="Resume from the last checkpoint in --out."),
        skip_invalid: bool = SkipInvalidOpt,
        device: Optional[str] = DeviceOpt,
        config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Direct Preference Optimization (DPO, IPO, conservative DPO) from preference records."""
    from coachlm.trainers.dpo import DPOConfig, run_dpo

    cfg = _load(DPOConfig, config, overrides, model=model, data=data, out=out, loss=loss, beta=beta,
                skip_invalid=flag(skip_invalid), **{"train.device": device})
    console.print(f"model: {run_dpo(cfg, resume=resume)}")


@app.command()
def ppo(model: Optional[Path] = typer.Option(None, help="Starting policy (usually the SFT model)."),
        prompts: Optional[Path] = typer.Option(None, help="RL prompt records."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
        reward: Optional[str] = typer.Option(None, help="'rubric' or a reward-model directory."),
        algo: Optional[str] = typer.Option(None, help="ppo, grpo or rloo."),
        generator: Optional[str] = GeneratorOpt,
        resume: bool = typer.Option(False, help="Resume from the last checkpoint in --out."),
        skip_invalid: bool = SkipInvalidOpt,
        device: Optional[str] = DeviceOpt,
        config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """RL against a reward with a per-token KL penalty (PPO with a critic, or GRPO/RLOO), LoRA by default."""
    from coachlm.trainers.ppo import PPORunConfig, run_ppo

    named = {"ppo.algo": algo, "ppo.device": device, "ppo.generator": generator}
    cfg = _load(PPORunConfig, config, overrides, model=model, prompts=prompts, out=out,
                reward=reward, skip_invalid=flag(skip_invalid), **named)
    console.print(f"model: {run_ppo(cfg, resume=resume)}")


def main() -> None:
    _mount_subapps()
    try:
        app()
    except CoachError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
