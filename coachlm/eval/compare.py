"""Compare models on held-out prompts by the world's rubric: the pipeline's `eval` stage and the
`coachlm eval` (one model, or one over another) and `coachlm compare` commands: one config.

Each model decodes every prompt once (greedy by default: the same model always gets the same
numbers). The report gives, per model, the instruction-following (IF) rate and rubric score per
family; per pair (a, b), win / tie / loss counts with a bootstrap 95% interval, on all prompts
and on the dev and test halves (`wins.split_dev_test`: report the test half, choose settings on
the dev half); optionally a *sampled* win rate on the test half at the policy's training
temperature and length, since a policy is trained on samples, not on greedy decodes; and
KL(policy || reference) sampled at the policy's temperature. A model trained against the rubric
and judged by it is flagged: its rubric numbers are not independent evidence of anything.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from coachlm.data.schema import PromptRecord
from coachlm.errors import CoachError
from coachlm.eval.wins import outcome, split_dev_test, win_tie_loss
from coachlm.eval.world_eval import generate_responses, score_responses, stratified, write_samples


@dataclass(frozen=True)
class CompareConfig:
    models: dict[str, Path]  # name -> model directory
    prompts: Path
    out: Path | None = None
    pairs: tuple[tuple[str, ...], ...] = ()  # (a, b): the win rate of a over b
    kl: tuple[str, ...] = ()  # (policy, reference): KL(policy || reference) on samples
    kl_samples: int = 250
    kl_temperature: float | None = None  # None: the policy's training temperature, else 1
    kl_budget: float | None = None  # nats per response; the report says whether KL is within
    max_new_tokens: int = 96
    greedy: bool = True
    temperature: float = 1.0
    limit: int | None = None  # at most this many prompts, round-robin over families
    batch_size: int = 64
    dtype: Literal["bf16", "fp32"] = "fp32"
    seed: int = 0
    test_fraction: float | None = 0.5  # None: the prompts are a test set already, no split
    bootstrap: int = 1000  # resamples for the confidence intervals
    sampled: bool = False  # also a sampled win rate on the test half
    sample_temperature: float | None = None  # None: the policy's training temperature, else 1
    sample_max_new_tokens: int | None = None  # None: the policy's training length, else 96
    trained_on_judge: tuple[str, ...] = ()  # models trained against the rubric (flagged)

    def __post_init__(self) -> None:
        names = set(self.models)
        for pair in (*self.pairs, *((self.kl,) if self.kl else ())):
            if len(pair) != 2 or not set(pair) <= names:
                raise ValueError(f"pairs and kl must name two of the models {sorted(names)}, "
                                 f"got {list(pair)}")
        if self.test_fraction is not None and not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def _decode(cfg: CompareConfig, name: str, prompts: Sequence[PromptRecord], greedy: bool,
            temperature: float, max_new_tokens: int, tag: str = "") -> tuple[list[str], dict]:
    model_dir = Path(cfg.models[name])
    if not model_dir.is_dir():
        raise CoachError(f"model directory {model_dir} does not exist")
    responses = generate_responses(model_dir, prompts, max_new_tokens, greedy, temperature,
                                   cfg.batch_size, cfg.dtype, cfg.seed)
    result = score_responses(prompts, responses)
    if cfg.out is not None:
        write_samples(cfg.out / f"samples_{name}{tag}.jsonl", prompts, responses, name,
                      result["scores"])
    return responses, {"model": str(model_dir), "name": name, **result}


def _pair_wins(cfg: CompareConfig, totals: dict[str, list[float]], keep: Sequence[int]) -> dict:
    return {f"{a}_over_{b}": win_tie_loss([outcome(totals[a][i], totals[b][i]) for i in keep],
                                          cfg.bootstrap, seed=cfg.seed) for a, b in cfg.pairs}


def _split(cfg: CompareConfig, prompts: list[PromptRecord], results: dict[str, dict],
           totals: dict[str, list[float]], part: list[PromptRecord]) -> dict[str, Any]:
    ids = {p.id for p in part}
    keep = [i for i, p in enumerate(prompts) if p.id in ids]
    n = max(len(keep), 1)
    return {"n": len(keep),
            "if_rate": {m: sum(results[m]["scores"][i].follows for i in keep) / n for m in results},
            "score": {m: sum(totals[m][i] for i in keep) / n for m in results},
            "wins": _pair_wins(cfg, totals, keep)}


def _sampled(cfg: CompareConfig, test: list[PromptRecord]) -> dict[str, Any]:
    temperature = cfg.sample_temperature if cfg.sample_temperature is not None else 1.0
    length = cfg.sample_max_new_tokens or cfg.max_new_tokens
    names = sorted({m for pair in cfg.pairs for m in pair})
    totals, if_rate = {}, {}
    for name in names:
        _, res = _decode(cfg, name, test, False, temperature, length, tag="_sampled")
        totals[name] = [s.total for s in res["scores"]]
        if_rate[name] = res["if_rate"]
    return {"temperature": temperature, "max_new_tokens": length, "split": "test",
            "n": len(test), "if_rate": if_rate,
            "wins": _pair_wins(cfg, totals, range(len(test)))}


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    """Decode, score and compare; writes samples_<name>.jsonl and eval.json in `cfg.out`."""
    from coachlm.data.io import read_prompts
    from coachlm.engine.shard import is_main_process
    from coachlm.eval.kl import kl_to_reference

    if not is_main_process():  # several processes (decoding sharded): one writes the files
        cfg = dataclasses.replace(cfg, out=None)
    prompts = stratified(read_prompts(cfg.prompts), cfg.limit)
    if not prompts:
        raise CoachError(f"{cfg.prompts}: no prompts to evaluate")
    if cfg.out is not None:
        cfg.out.mkdir(parents=True, exist_ok=True)
    results, totals = {}, {}
    for name in cfg.models:
        _, results[name] = _decode(cfg, name, prompts, cfg.greedy, cfg.temperature,
                                   cfg.max_new_tokens)
        totals[name] = [s.total for s in results[name]["scores"]]
    dev, test = (([], prompts) if cfg.test_fraction is None
                 else split_dev_test(prompts, cfg.test_fraction))
    wins = _pair_wins(cfg, totals, range(len(prompts)))
    report: dict[str, Any] = {
        "n": len(prompts), "greedy": cfg.greedy, "max_new_tokens": cfg.max_new_tokens,
        "win_rate": {k: w["rate"] for k, w in wins.items()}, "wins": wins,
        "splits": {} if cfg.test_fraction is None else {
            "dev": _split(cfg, prompts, results, totals, dev),
            "test": _split(cfg, prompts, results, totals, test)},
        "flags": [f"{m} was trained against the rubric that judges it: its rubric numbers are "
                  f"not independent evidence" for m in cfg.trained_on_judge]}
    for res in results.values():
        res.pop("scores")
    report["models"] = results
    if cfg.sampled and cfg.pairs:
        report["sampled"] = _sampled(cfg, test)
    if cfg.kl:
        temperature = cfg.kl_temperature if cfg.kl_temperature is not None else 1.0
        kl = kl_to_reference(Path(cfg.models[cfg.kl[0]]), Path(cfg.models[cfg.kl[1]]),
                             prompts[:cfg.kl_samples], cfg.max_new_tokens, seed=cfg.seed,
                             temperature=temperature)
        report["kl"] = {**kl, "temperature": temperature, "policy": cfg.kl[0],
                        "reference": cfg.kl[1], "budget": cfg.kl_budget,
                        "within_budget": None if cfg.kl_budget is None
                        else kl["kl"] <= cfg.kl_budget}
    if cfg.out is not None:
        (cfg.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_comparison(report: dict[str, Any]) -> None:
    """`run_compare`'s report: a table of IF rate and score per family and model, then each
    win rate with its counts and interval (all prompts, test half, sampled), KL, and flags."""
    from rich.console import Console
    from rich.table import Table

    from coachlm.eval.wins import fmt

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
    test = report.get("splits", {}).get("test")
    for key, w in report.get("wins", {}).items():
        a, b = key.split("_over_")
        console.print(f"win rate of {a} over {b} (rubric, ties count half): {fmt(w)}")
        if test:
            console.print(f"  test half ({test['n']} prompts): {fmt(test['wins'][key])}")
        if "sampled" in report:
            s = report["sampled"]
            console.print(f"  sampled at temperature {s['temperature']:g}, "
                          f"{s['max_new_tokens']} tokens (test half): {fmt(s['wins'][key])}")
    if "kl" in report:
        kl = report["kl"]
        budget = ("" if kl.get("budget") is None else
                  f", {'within' if kl['within_budget'] else 'OVER'} the {kl['budget']:g} budget")
        console.print(f"KL({kl.get('policy', 'policy')} || {kl.get('reference', 'reference')}) at "
                      f"temperature {kl.get('temperature', 1.0):g}: {kl['kl']:.3f} nats per "
                      f"response (± {kl['kl_stderr']:.3f}){budget}")
    for flag in report.get("flags", []):
        console.print(f"[bold yellow]flag:[/] {flag}")
