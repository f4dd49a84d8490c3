"""The quickstart loop on the built-in world, one cached stage per step of ARCHITECTURE.md:

  world -> pretrain -> SFT -> sample -> simulated feedback -> reward model -> PPO -> eval

Each stage is `pipeline.run_stage`: cached by a key of its settings and its inputs' keys, so a
changed setting re-runs that stage and everything downstream, and an interrupted stage resumes
from its last checkpoint. The eval stage decodes the held-out prompts with every model once and
prints base / SFT / PPO instruction-following rates, the PPO-over-SFT rubric win rate, and the
KL of the PPO policy to the SFT policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coachlm import config as cfglib
from coachlm.models.lora import LoRAConfig
from coachlm.pipeline import console, run_stage
from coachlm.engine.config import TrainConfig
from coachlm.trainers.ppo_config import PPOConfig
from coachlm.world.build import WorldConfig

# threads=1 everywhere: on a 2-core machine that is doing anything else, two torch threads wait
# on each other and ran ~8x slower (700 vs 5,500 tokens/s measured); one thread is steady.


@dataclass(frozen=True)
class DemoConfig:
    """The built-in-world loop. Stage settings nest: `pretrain.max_steps=400`, `ppo.steps=20`."""

    world: WorldConfig = field(default_factory=WorldConfig)
    preset: str = "world-small"
    seq_len: int = 256
    vocab_size: int = 2048
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=2e-3, warmup_ratio=0.05, max_steps=400, batch_size=16, checkpoint_every=100, threads=1,
        log_every=20))
    # 900 steps (~10 epochs of the 3,000 demonstrations): at 300 the 2M model had not yet learned
    # to copy names into emails (email IF 0% vs 50%).
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-3, warmup_ratio=0.05, max_steps=900, batch_size=32, checkpoint_every=300, threads=1,
        log_every=20))
    sft_max_length: int = 256
    # sample: responses per RL-training prompt from the SFT policy, for the labelers to rank
    # (InstructGPT ranked K = 4 to 9 responses per prompt; Ouyang et al., 2022, sec. 3.5).
    samples_per_prompt: int = 4
    sample_prompts: int | None = None  # RL-training prompts to sample for feedback (None: all)
    sample_max_new_tokens: int = 64
    # feedback: simulated labelers (rubric + noise + bias, ~73% agreement) rank each prompt's
    # samples, or compare every pair of them.
    feedback: Literal["rankings", "comparisons"] = "rankings"
    labelers: int = 3
    # reward model on the SFT backbone, one epoch (Ouyang et al., 2022, sec. C.2).
    rm: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=5e-4, weight_decay=0.0, warmup_ratio=0.05, batch_size=16, checkpoint_every=50,
        threads=1, log_every=10))
    rm_epochs: float = 1.0
    # PPO with LoRA r=2 against the reward model; the adaptive controller (Ziegler et al., 2019)
    # steers the per-response KL to SFT toward kl_target, with a short horizon because the run
    # is short (1,280 episodes). lr 1e-3: LoRA wants ~10x the full-fine-tuning rate.
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(
        steps=40, rollout_batch_size=32, samples_per_prompt=1, mini_batch_size=16,
        micro_batch_size=16, ppo_epochs=2, max_new_tokens=48, kl_coef=0.05, kl_target=0.8,
        kl_horizon=200, lr=1e-3, lora=LoRAConfig(r=2, alpha=4.0), threads=1,
        checkpoint_every=10, sample_every=10))
    kl_budget: float = 2.0  # nats per response: the held-out KL(PPO || SFT) the run must stay under
    eval_limit: int | None = None
    eval_max_new_tokens: int = 96
    kl_samples: int = 250  # held-out prompts sampled to estimate KL(PPO || SFT)


def _stage_settings(settings: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: settings[k] for k in keys}


def _pretrain_and_sft(cfg: DemoConfig, out: Path, settings: dict[str, Any]) -> tuple[dict, dict, dict]:
    from coachlm.trainers.pretrain import PretrainConfig, run_pretrain
    from coachlm.trainers.sft import SFTConfig, run_sft
    from coachlm.world.build import build_world

    world = run_stage(out, "world", settings["world"], {},
                      lambda d: {k: str(v) for k, v in build_world(d, cfg.world).items()})
    w = world["result"]
    base = run_stage(out, "pretrain", _stage_settings(settings, "preset", "seq_len", "vocab_size",
                                                      "pretrain"),
                     {"world": world["key"]}, lambda d: {"model": str(run_pretrain(PretrainConfig(
                         corpus=Path(w["corpus"]), out=d, preset=cfg.preset, seq_len=cfg.seq_len,
                         vocab_size=cfg.vocab_size, train=cfg.pretrain), resume=True))})
    sft = run_stage(out, "sft", {"sft": settings["sft"], "max_length": cfg.sft_max_length},
                    {"world": world["key"], "pretrain": base["key"]},
                    lambda d: {"model": str(run_sft(SFTConfig(
                        model=Path(base["result"]["model"]), data=(Path(w["sft"]),), out=d,
                        max_length=cfg.sft_max_length, train=cfg.sft), resume=True))})
    return world, base, sft


def _feedback(samples_path: Path, out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from coachlm.data.io import read_records, write_records
    from coachlm.labelers import SimulatedConfig, SimulatedLabelers, label_samples

    samples = list(read_records(samples_path, kinds=["sample"]))
    labeler = SimulatedLabelers(SimulatedConfig(kind=cfg.feedback, n_labelers=cfg.labelers,
                                                seed=cfg.world.seed))
    records = label_samples(labeler, samples)
    path = out / f"{cfg.feedback}.jsonl"
    write_records(path, records)
    return {"data": str(path), "records": len(records)}


def _rm_and_ppo(cfg: DemoConfig, out: Path, settings: dict[str, Any], world: dict,
                sft: dict) -> tuple[dict, dict, dict, dict]:
    from coachlm.rollout.samples import SampleConfig, run_sample
    from coachlm.trainers.ppo import run_ppo
    from coachlm.trainers.ppo_config import PPORunConfig
    from coachlm.trainers.reward import RMConfig, run_rm

    w, sft_model = world["result"], Path(sft["result"]["model"])
    sample = run_stage(
        out, "sample", _stage_settings(settings, "samples_per_prompt", "sample_prompts",
                                       "sample_max_new_tokens"),
        {"world": world["key"], "sft": sft["key"]},
        lambda d: {"samples": str(run_sample(SampleConfig(
            model=sft_model, prompts=Path(w["prompts_train"]), out=d / "samples.jsonl",
            n=cfg.samples_per_prompt, limit=cfg.sample_prompts,
            max_new_tokens=cfg.sample_max_new_tokens, batch_size=64, model_name="sft")))})
    feedback = run_stage(out, "feedback", _stage_settings(settings, "feedback", "labelers"),
                         {"sample": sample["key"]},
                         lambda d: _feedback(Path(sample["result"]["samples"]), d, cfg))
    reward = run_stage(
        out, "rm", _stage_settings(settings, "rm", "rm_epochs"),
        {"feedback": feedback["key"], "sft": sft["key"]},
        lambda d: {"model": str(run_rm(RMConfig(
            model=sft_model, data=(Path(feedback["result"]["data"]),), out=d,
            epochs=cfg.rm_epochs, normalize_on=Path(sample["result"]["samples"]),
            train=cfg.rm), resume=True))})
    ppo = run_stage(
        out, "ppo", {"ppo": settings["ppo"]},
        {"world": world["key"], "sft": sft["key"], "rm": reward["key"]},
        lambda d: {"model": str(run_ppo(PPORunConfig(
            model=sft_model, prompts=Path(w["prompts_train"]), out=d,
            reward=reward["result"]["model"], ppo=cfg.ppo), resume=True))})
    return sample, feedback, reward, ppo


def run_demo(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """The whole loop; prints the held-out table and returns (and writes) demo.json."""
    from coachlm.eval.world_eval import EvalConfig, compare_models, print_comparison

    out = Path(out)
    settings = cfglib.to_dict(cfg)
    world, base, sft = _pretrain_and_sft(cfg, out, settings)
    sample, feedback, reward, ppo = _rm_and_ppo(cfg, out, settings, world, sft)
    models = {"base": base["result"]["model"], "sft": sft["result"]["model"],
              "ppo": ppo["result"]["model"]}
    ecfg = EvalConfig(model=Path(models["ppo"]), prompts=Path(world["result"]["prompts_heldout"]),
                      limit=cfg.eval_limit, max_new_tokens=cfg.eval_max_new_tokens)
    report = run_stage(
        out, "eval", {"limit": cfg.eval_limit, "max_new_tokens": cfg.eval_max_new_tokens,
                      "kl_samples": cfg.kl_samples},
        {"pretrain": base["key"], "sft": sft["key"], "ppo": ppo["key"]},
        lambda d: compare_models(models, ecfg, d, pairs=[("ppo", "sft"), ("sft", "base")],
                                 kl=("ppo", "sft"), kl_samples=cfg.kl_samples))
    result = report["result"]
    print_comparison(result)
    stages = (world, base, sft, sample, feedback, reward, ppo, report)
    summary = {"if_rate": {name: m["if_rate"] for name, m in result["models"].items()},
               "score": {name: m["score"] for name, m in result["models"].items()},
               "win_rate": result["win_rate"], "kl_ppo_sft": result["kl"],
               "kl_budget": cfg.kl_budget, "kl_within_budget": result["kl"]["kl"] <= cfg.kl_budget,
               "stage_seconds": {r["stage"]: r["seconds"] for r in stages}}
    summary["total_seconds"] = round(sum(summary["stage_seconds"].values()), 1)
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print("held-out instruction-following: " + " -> ".join(
        f"{name} {rate:.1%}" for name, rate in summary["if_rate"].items()))
    console.print(f"PPO over SFT: win rate {summary['win_rate']['ppo_over_sft']:.1%}, KL "
                  f"{result['kl']['kl']:.2f} nats per response "
                  f"({'within' if summary['kl_within_budget'] else 'OVER'} the {cfg.kl_budget} budget)")
    return summary
