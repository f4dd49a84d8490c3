"""Evaluation on the built-in world: instruction-following rate and rubric score per task family
on held-out prompts, and the win rate of one model over another judged by the rubric.

Responses are decoded greedily by default so that an evaluation is deterministic: the same
model always gets the same numbers, and a difference between two models is not sampling noise.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Sequence

from coachlm.data.schema import PromptRecord, Response, Sample
from coachlm.errors import CoachError


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
    from coachlm.models.load import load_model, load_tokenizer
    from coachlm.rollout.sampling import SamplingConfig, decode_responses, generate

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=torch.bfloat16 if cfg.dtype == "bf16" else None,
                       tokenizer=tokenizer)
    ids = [encode_prompt(tokenizer, p.prompt) for p in prompts]
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_k=1 if cfg.greedy else 0, top_p=1.0, n=1,
                          batch_size=cfg.batch_size, seed=cfg.seed)
    gen = generate(model, tokenizer, ids, scfg)
    return decode_responses(tokenizer, gen)


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
    from coachlm.world.rubric import score

    total = 0.0
    for p, a, b in zip(prompts, ours, theirs):
        sa, sb = score(p.prompt_text, a).total, score(p.prompt_text, b).total
        total += 1.0 if sa > sb else 0.5 if sa == sb else 0.0
    return total / max(len(prompts), 1)


def _write_samples(path: Path, prompts: Sequence[PromptRecord], responses: Sequence[str],
                   model_name: str, scores: Sequence[Any]) -> None:
    from coachlm.data.io import write_records

    records = [Sample(prompt=p.prompt, response=Response(r, model=model_name),
                      meta={**p.meta, "prompt_id": p.id, "rubric_total": s.total,
                            "follows": s.follows, "explanation": s.explanation})
               for p, r, s in zip(prompts, responses, scores)]
    write_records(path, records)


def _evaluate_one(model_dir: Path, name: str, prompts: Sequence[PromptRecord],
                  cfg: EvalConfig) -> tuple[list[str], dict]:
    if not Path(model_dir).is_dir():
        raise CoachError(f"model directory {model_dir} does not exist")
    responses = generate_responses(model_dir, prompts, cfg)
    result = score_responses(prompts, responses)
    if cfg.out is not None:
        _write_samples(cfg.out / f"samples_{name}.jsonl", prompts, responses, name,
                       result["scores"])
    result.pop("scores")
    return responses, {"model": str(model_dir), "name": name, **result}


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

    The result is the model's report, with the other model's under "against" and the win rate."""
    name = cfg.name or Path(cfg.model).name
    models = {name: cfg.model}
    if cfg.against is not None:
        other_name = cfg.against_name or Path(cfg.against).name
        models[other_name + "-2" if other_name == name else other_name] = cfg.against
    if cfg.out is not None:
        cfg.out.mkdir(parents=True, exist_ok=True)
    names = list(models)
    report = compare_models(models, cfg, None, pairs=[tuple(names)] if len(names) == 2 else [])
    result = {**report["models"][name], "greedy": cfg.greedy}
    if len(names) == 2:
        result = {**result, "against": report["models"][names[1]],
                  "win_rate": report["win_rate"][f"{name}_over_{names[1]}"]}
    if cfg.out is not None:
        (cfg.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def compare_models(models: dict[str, str | Path], cfg: EvalConfig, out: Path | None,
                   pairs: Sequence[tuple[str, str]] = (), kl: tuple[str, str] | None = None,
                   kl_samples: int = 250) -> dict[str, Any]:
    """Decode the held-out prompts once per model (name -> directory), score every model, and
    give the rubric win rate of each (a, b) in `pairs` and KL(kl[0] || kl[1]) on samples.
    Writes samples_<name>.jsonl and eval.json in `out` when given."""
    from coachlm.data.io import read_prompts
    from coachlm.eval.kl import kl_to_reference

    prompts = stratified(read_prompts(cfg.prompts), cfg.limit)
    if not prompts:
        raise CoachError(f"{cfg.prompts}: no prompts to evaluate")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        cfg = replace(cfg, out=out)
    responses, results = {}, {}
    for name, model_dir in models.items():
        responses[name], results[name] = _evaluate_one(Path(model_dir), name, prompts, cfg)
    report: dict[str, Any] = {"n": len(prompts), "greedy": cfg.greedy, "models": results, "win_rate": {
        f"{a}_over_{b}": win_rate(prompts, responses[a], responses[b]) for a, b in pairs}}
    if kl is not None:
        report["kl"] = kl_to_reference(Path(models[kl[0]]), Path(models[kl[1]]),
                                       prompts[:kl_samples], cfg.max_new_tokens, seed=cfg.seed)
    if out is not None:
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_comparison(report: dict[str, Any]) -> None:
    """`compare_models`' report as a table of IF rate and score per family and model."""
    from rich.console import Console
    from rich.table import Table

    models = report["models"]
    decoding = "greedy" if report.get("greedy", True) else "sampled"
    table = Table(title=f"Held-out evaluation ({report['n']} prompts, rubric, {decoding})")
    table.add_column("family")
    for name in models:
        table.add_column(f"{name} IF", justify="right")
        table.add_column(f"{name} score", justify="right")
    first = next(iter(models.values()))
    for fam in first["per_family"]:
        cells = []
        for m in models.values():
            f = m["per_family"].get(fam, {"if_rate": 0.0, "score": 0.0})
            cells += [f"{f['if_rate']:.1%}", f"{f['score']:.3f}"]
        table.add_row(fam, *cells)
    table.add_row("all", *[c for m in models.values()
                           for c in (f"{m['if_rate']:.1%}", f"{m['score']:.3f}")])
    console = Console()
    console.print(table)
    for key, rate in report["win_rate"].items():
        a, b = key.split("_over_")
        console.print(f"win rate of {a} over {b} (rubric, ties count half): {rate:.1%}")
    if "kl" in report:
        console.print(f"KL to the reference: {report['kl']['kl']:.3f} nats per response "
                      f"(± {report['kl']['kl_stderr']:.3f})")


def print_report(result: dict[str, Any]) -> None:
    """`run_eval`'s result as `print_comparison`'s table (and the win rate) on stdout."""
    models = [result] + ([result["against"]] if "against" in result else [])
    report: dict[str, Any] = {"n": result["n"], "greedy": result.get("greedy", True),
                              "models": {m["name"]: m for m in models}, "win_rate": {}}
    if "win_rate" in result:
        report["win_rate"][f"{result['name']}_over_{result['against']['name']}"] = result["win_rate"]
    print_comparison(report)
