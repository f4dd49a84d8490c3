"""RL-CAI and RLHF arms of `benchmarks/cai_world.py`, from the SL-CAI model (Bai et al., 2022, sec. 4).

RLAIF (RL-CAI): a feedback model (the *pretrained* model continued on the world's (A)/(B)
comparison documents: the paper's feedback model is a pretrained LM, not the policy, and the
SL-CAI model never saw those documents) labels pairs of the SL-CAI policy's samples on red-team
training prompts with the AI labeler (soft labels, both orders); simulated labelers label pairs
of its samples on the other families' training prompts (helpfulness only: no simulated label
ever judges a harmful request); the reward model trains on the mix (`ai_share`); PPO from the
SL-CAI model. RLHF: the same pairs, every one labelled by the simulated labelers (so the same
number of labels, harmlessness included), reward model, PPO with the same settings.

Label quality is measured on the red-team pairs: accuracy of the AI and simulated labels against
the noise-free rubric preference (`world.rubric.prefer`, ties left out), Cohen's kappa between
the AI and simulated labels on the same pairs, and the position bias of the single-order answers
(`labelers.ai.position_bias`) beside the accuracy of one order alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from coachlm.pipeline import run_stage


def _stage(out: Path, name: str, settings: dict, inputs: dict, fn: Any) -> dict:
    from dataclasses import is_dataclass

    from coachlm import config

    plain = {k: config.to_dict(v) if is_dataclass(v) else v for k, v in settings.items()}
    return run_stage(out, name, plain, inputs, fn)


def _samples(cfg: Any, out: Path, name: str, policy: dict, prompts: str, key: str) -> dict:
    from coachlm.rollout.samples import SampleConfig, run_sample

    settings = {"n": 2, "max_new_tokens": cfg.rl_max_new_tokens, "limit": cfg.rl_label_prompts}
    return _stage(out, name, settings, {"policy": policy["key"], "cai_data": key},
                  lambda d: {"samples": str(run_sample(SampleConfig(
                      model=Path(policy["result"]["model"]), prompts=Path(prompts),
                      out=d / "samples.jsonl", n=2, max_new_tokens=cfg.rl_max_new_tokens,
                      limit=cfg.rl_label_prompts, batch_size=64, model_name="sl_cai")))})


def _simulated(out: Path, red: dict, helpful: dict) -> dict:
    from coachlm.data.io import read_records, write_records
    from coachlm.labelers import SimulatedConfig, SimulatedLabelers, group_samples

    def run(d: Path) -> dict:
        from coachlm.world.calibrate import LabelerConfig, noise_for_agreement

        noise_for_agreement(LabelerConfig())  # the pool's one-time calibration: not per label
        lab, res, counts, t0 = SimulatedLabelers(SimulatedConfig(kind="comparisons")), {}, {}, 0.0
        for name, rec in (("redteam", red), ("helpful", helpful)):
            groups = group_samples(list(read_records(rec["result"]["samples"])), min_size=2)
            start = time.perf_counter()
            records = lab.label(groups)
            t0, counts[name] = t0 + time.perf_counter() - start, len(records)
            res[name] = str(d / f"{name}.jsonl")
            write_records(res[name], records)
        n = sum(counts.values())
        return {**res, "metrics": {"labels": counts, "seconds_per_label": t0 / max(n, 1)}}

    return _stage(out, "sim_labels", {"kind": "comparisons", "n_labelers": 3, "seed": 0},
                  {"redteam": red["key"], "helpful": helpful["key"]}, run)


def _rm_ppo(cfg: Any, out: Path, arm: str, policy: dict, data: list[str], ai_share: Any,
            norm: str, prompts: str, inputs: dict) -> dict:
    from coachlm.trainers.ppo import run_ppo
    from coachlm.trainers.ppo_config import PPORunConfig
    from coachlm.trainers.reward import RMConfig, run_rm

    model = Path(policy["result"]["model"])
    rm = _stage(out, f"rm_{arm}", {"rm": cfg.rm, "ai_share": ai_share}, inputs,
                lambda d: {"model": str(run_rm(RMConfig(
                    model=model, data=tuple(Path(p) for p in data), out=d, ai_share=ai_share,
                    normalize_on=Path(norm), train=cfg.rm), resume=True))})
    return _stage(out, f"ppo_{arm}", {"ppo": cfg.ppo}, {"rm": rm["key"], "policy": policy["key"]},
                  lambda d: {"model": str(run_ppo(PPORunConfig(
                      model=model, prompts=Path(prompts), out=d, reward=rm["result"]["model"],
                      ppo=cfg.ppo), resume=True))})


def feedback_model(cfg: Any, out: Path, world: dict, base: str) -> tuple[dict, dict]:
    """The CAI data sets and the feedback model (it needs no SL-CAI model: can run first)."""
    from coachlm.constitution.cai_data import CAIDataConfig, write_cai_data
    from coachlm.trainers.pretrain import PretrainConfig, run_pretrain

    wdir = Path(world["result"]["corpus"]).parent
    data = _stage(out, "cai_data", {"comparisons": cfg.comparisons}, {"world": world["key"]},
                  lambda d: write_cai_data(CAIDataConfig(world=wdir, out=d, feedback_demos=0,
                                                         comparisons=cfg.comparisons)))
    c = data["result"]
    feedback = _stage(out, "feedback_model", {"train": cfg.feedback_model, "base": str(base)},
                      {"cai_data": data["key"]}, lambda d: {"model": str(run_pretrain(
                          PretrainConfig(corpus=Path(c["comparisons"]), out=d,
                                         init_model=Path(base), seq_len=cfg.seq_len,
                                         train=cfg.feedback_model), resume=True))})
    return data, feedback


def rl_arms(cfg: Any, out: Path, world: dict, base: str, sl_cai: dict) -> dict[str, Any]:
    """Run (or reuse) both arms; returns their policies, label files and label timings."""
    from coachlm.labelers.ai_run import AILabelConfig, run_ai_label

    data, feedback = feedback_model(cfg, out, world, base)
    c = data["result"]
    red = _samples(cfg, out, "sample_redteam", sl_cai, c["prompts_redteam"], data["key"])
    helpful = _samples(cfg, out, "sample_helpful", sl_cai, c["prompts_helpful"], data["key"])
    sim = _simulated(out, red, helpful)
    ai = _stage(out, "ai_labels", {"ai": cfg.ai}, {"feedback": feedback["key"], "red": red["key"]},
                lambda d: (lambda s: {"data": s.pop("out"), "metrics": s})(run_ai_label(
                    AILabelConfig(samples=Path(red["result"]["samples"]),
                                  out=d / "comparisons.jsonl",
                                  model=Path(feedback["result"]["model"]), ai=cfg.ai))))
    s = sim["result"]
    norm = helpful["result"]["samples"]
    rlaif = _rm_ppo(cfg, out, "rlaif", sl_cai, [ai["result"]["data"], s["helpful"]], cfg.ai_share,
                    norm, c["prompts_rl"], {"ai": ai["key"], "sim": sim["key"]})
    rlhf = _rm_ppo(cfg, out, "rlhf", sl_cai, [s["redteam"], s["helpful"]], None, norm,
                   c["prompts_rl"], {"sim": sim["key"]})
    return {"models": {"rl_cai": rlaif["result"]["model"], "rlhf": rlhf["result"]["model"]},
            "keys": {"rl_cai": rlaif["key"], "rlhf": rlhf["key"], "cai_data": data["key"]},
            "prompts_eval": c["prompts_eval"], "ai": ai, "sim": sim}


def _in_frame(r: Any, ids: list[str]) -> str:
    """A comparison's choice as "a"/"b"/"tie" relative to the sample order `ids`."""
    if r.choice == "tie":
        return "tie"
    won = r.meta["sample_ids"][0 if r.choice == "a" else 1]
    return "a" if won == ids[0] else "b"


def label_quality(ai_path: str, sim_path: str) -> dict[str, Any]:
    """AI and simulated labels on the red-team pairs against the rubric and each other."""
    from coachlm.data.io import read_records
    from coachlm.feedback.agreement import cohen_kappa
    from coachlm.labelers.ai import position_bias
    from coachlm.world.rubric import prefer

    ai = list(read_records(ai_path))
    sim = {frozenset(r.meta["sample_ids"]): r for r in read_records(sim_path)}
    acc: dict[str, list[bool]] = {"ai": [], "ai_one_order": [], "simulated": []}
    kappa: tuple[list[str], list[str]] = ([], [])
    for r in ai:
        ids, s = r.meta["sample_ids"], sim.get(frozenset(r.meta["sample_ids"]))
        if s is not None:
            kappa[0].append(r.choice)
            kappa[1].append(_in_frame(s, ids))
        d = prefer(r.prompt_text, r.a.text, r.b.text)
        if abs(d) < 1e-9:  # the rubric ties: no right answer
            continue
        truth = "a" if d > 0 else "b"
        acc["ai"].append(r.choice == truth)
        acc["ai_one_order"].append(("a" if r.meta["p_ab"] > 0.5 else "b") == truth)
        if s is not None:
            acc["simulated"].append(_in_frame(s, ids) == truth)
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"pairs": len(ai), "rubric_not_tied": len(acc["ai"]),
            "accuracy_vs_rubric": {k: mean(v) for k, v in acc.items()},
            "kappa_ai_vs_simulated": round(cohen_kappa(*kappa), 4) if kappa[0] else None,
            "kappa_pairs": len(kappa[0]), "position_bias": position_bias(ai)}
