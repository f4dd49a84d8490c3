"""Evaluation on the built-in world: instruction-following rate and rubric score per task family
on held-out prompts, and the win rate of one model over another judged by the rubric.

Responses are decoded greedily by default so that an evaluation is deterministic: the same
model always gets the same numbers, and a difference between two models is not sampling noise.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from coachlm.data.schema import PromptRecord, Response, Sample


@dataclass(frozen=True)
class EvalConfig:
    model: Path
    prompts: Path
    against: Path | None = None
    out: Path | None = None
    name: str | None = None  # how to call `model` in reports (default: its directory name)
    against_name: str | None = None
    max_new_tokens: int = 96
    greedy: bool = True
    temperature: float = 1.0
    batch_size: int = 64
    limit: int | None = None  # at most this many prompts, taken round-robin over task families
    dtype: Literal["bf16", "fp32"] = "fp32"  # bf16 pays only on GPUs and CPUs with AMX
    seed: int = 0


def generate_responses(model_dir: Path, prompts: Sequence[PromptRecord], cfg: EvalConfig) -> list[str]:
    """One response per prompt from the model in `model_dir`."""
    import torch

    from coachlm.data.chat import encode_prompt
    from coachlm.engine.shard import shard_map
    from coachlm.models.load import load_model, load_tokenizer
    from coachlm.rollout.sampling import SamplingConfig, decode_responses, generate

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=torch.bfloat16 if cfg.dtype == "bf16" else None,
                       tokenizer=tokenizer)
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_k=1 if cfg.greedy else 0, top_p=1.0, n=1,
                          batch_size=cfg.batch_size, seed=cfg.seed)

    def decode(mine: list[PromptRecord], start: int) -> list[str]:
        ids = [encode_prompt(tokenizer, p.prompt) for p in mine]
        return decode_responses(tokenizer, generate(model, tokenizer, ids, scfg, row_offset=start))

    # under a launcher each process decodes its share of the prompts; all get every response
    return shard_map(decode, prompts)


def score_responses(prompts: Sequence[PromptRecord], responses: Sequence[str]) -> dict[str, Any]:
    """Instruction-following rate and mean rubric score, overall and per task family."""
    from coachlm.world.rubric import score

    by_family: dict[str, list] = defaultdict(list)
    rows = []
    for p, r in zip(prompts, responses):
        s = score(p.prompt_text, r)
        family = p.meta.get("family", s.family)
        by_family[family].append(s)
        rows.append(s)
    per_family = {
        fam: {"n": len(ss), "if_rate": sum(s.follows for s in ss) / len(ss),
              "score": sum(s.total for s in ss) / len(ss)}
        for fam, ss in sorted(by_family.items())
    }
    n = max(len(rows), 1)
    return {"n": len(rows), "if_rate": sum(s.follows for s in rows) / n,
            "score": sum(s.total for s in rows) / n, "per_family": per_family, "scores": rows}


def win_rate(prompts: Sequence[PromptRecord], ours: Sequence[str], theirs: Sequence[str]) -> float:
    """Fraction of prompts where our response scores higher under the rubric (ties count half)."""
    from coachlm.eval.wins import outcome
    from coachlm.world.rubric import score

    total = sum(outcome(score(p.prompt_text, a).total, score(p.prompt_text, b).total)
                for p, a, b in zip(prompts, ours, theirs))
    return total / max(len(prompts), 1)


def write_samples(path: Path, prompts: Sequence[PromptRecord], responses: Sequence[str],
                   model_name: str, scores: Sequence[Any]) -> None:
    from coachlm.data.io import write_records

    records = [Sample(prompt=p.prompt, response=Response(r, model=model_name),
                      meta={**p.meta, "prompt_id": p.id, "rubric_total": s.total,
                            "follows": s.follows, "explanation": s.explanation})
               for p, r, s in zip(prompts, responses, scores)]
    write_records(path, records)


def stratified(prompts: Sequence[PromptRecord], limit: int | None) -> list[PromptRecord]:
    """At most `limit` prompts, taken round-robin over task families (file order within one),
    so that a small evaluation still covers every family."""
    if limit is None or limit >= len(prompts):
        return list(prompts)
    groups: dict[str, list[PromptRecord]] = defaultdict(list)
    for p in prompts:
        groups[str(p.meta.get("family", ""))].append(p)
    queues = [list(reversed(g)) for g in groups.values()]
    out: list[PromptRecord] = []
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop())
    return out


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate `cfg.model` (and `cfg.against`); writes eval.json in `cfg.out` when given.

    The result is the model's report, with the other model's under "against" and the win rate
    (with its win / tie / loss counts and bootstrap interval under "wins")."""
    from coachlm.eval.compare import from_eval_config, run_compare

    name = cfg.name or Path(cfg.model).name
    models = {name: cfg.model}
    if cfg.against is not None:
        other_name = cfg.against_name or Path(cfg.against).name
        models[other_name + "-2" if other_name == name else other_name] = cfg.against
    names = list(models)
    pairs = [(names[0], names[1])] if len(names) == 2 else []
    report = run_compare(from_eval_config(cfg, models, pairs))
    result = {**report["models"][name], "greedy": cfg.greedy}
    if len(names) == 2:
        key = f"{name}_over_{names[1]}"
        result = {**result, "against": report["models"][names[1]],
                  "win_rate": report["win_rate"][key], "wins": report["wins"][key]}
    if cfg.out is not None:  # replaces run_compare's eval.json with this command's shape
        (cfg.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_report(result: dict[str, Any]) -> None:
    """`run_eval`'s result as `compare.print_comparison`'s table (and the win rate) on stdout."""
    from coachlm.eval.compare import print_comparison

    models = [result] + ([result["against"]] if "against" in result else [])
    report: dict[str, Any] = {"n": result["n"], "greedy": result.get("greedy", True),
                              "models": {m["name"]: m for m in models}, "win_rate": {}, "wins": {}}
    if "win_rate" in result:
        key = f"{result['name']}_over_{result['against']['name']}"
        report["win_rate"][key], report["wins"][key] = result["win_rate"], result["wins"]
    print_comparison(report)
