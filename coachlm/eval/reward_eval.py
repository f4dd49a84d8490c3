"""Reward-model evaluation (`coachlm rm eval`) and batched scoring (`coachlm rm score`).

Evaluation expands held-out preference records into (chosen, rejected) pairs: decisive
comparisons, and every ordered pair of a ranking. It reports, overall and per task family
(`meta["family"]`) and per label source (`record.source`: human, ai, simulated):

  - accuracy: the fraction of pairs with r_chosen > r_rejected (an exact tie counts half);
  - mean margin: the mean of r_chosen - r_rejected on the raw scale, the Bradley-Terry logit;
  - ECE: the expected calibration error of the model's preference probability
    p = sigmoid(r_a - r_b) (Naeini et al., 2015; Guo et al., 2017): pairs are binned by the
    confidence max(p, 1 - p) into `bins` equal bins over [0.5, 1], and ECE = sum_b (n_b / n)
    |accuracy_b - confidence_b|. A calibrated Bradley-Terry model has ECE near 0.

`against="rubric"` judges built-in-world pairs by the rubric's noise-free preference instead of
the record's label (pairs the rubric scores equal are left out), which measures what a reward
model learned from noisy simulated labels. Ties and both-bad labels are counted, not scored.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import torch

from coachlm.data.io import PREFERENCE_KINDS, read_records, write_records
from coachlm.data.schema import Comparison, Prompt, Ranking, Record
from coachlm.errors import CoachError


@dataclass(frozen=True)
class RMEvalConfig:
    model: Path
    data: tuple[Path, ...]
    out: Path | None = None  # write the report as JSON here
    against: Literal["labels", "rubric"] = "labels"
    batch_size: int = 64
    max_length: int = 512
    layout: Literal["auto", "pad", "pack", "share"] = "auto"
    bins: int = 10
    bf16: bool = False
    skip_invalid: bool = False

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data must name at least one file")
        if self.bins < 1 or self.batch_size < 1:
            raise ValueError("bins and batch_size must be >= 1")


@dataclass(frozen=True)
class Pair:
    prompt: Prompt
    chosen: str
    rejected: str
    family: str
    source: str


def _rubric_pair(prompt: Prompt, x: str, y: str, family: str, source: str) -> Pair | None:
    from coachlm.world.rubric import prefer

    d = prefer(prompt, x, y)
    if abs(d) <= 1e-6:
        return None
    return Pair(prompt, x, y, family, source) if d > 0 else Pair(prompt, y, x, family, source)


def eval_pairs(records: Iterable[Record], against: str = "labels") -> tuple[list[Pair], Counter]:
    """The (chosen, rejected) pairs to evaluate, and counts of what was left out."""
    pairs: list[Pair] = []
    counts: Counter = Counter()
    for r in records:
        family, source = str(r.meta.get("family", "unknown")), r.source
        if isinstance(r, Comparison) and against == "rubric":
            candidates = [(r.a.text, r.b.text)]  # the label does not matter, the rubric decides
        elif isinstance(r, Comparison):
            cw = r.chosen_rejected()
            if cw is None:
                counts[f"label_{r.choice}"] += 1
            candidates = [] if cw is None else [(cw[0].text, cw[1].text)]
        elif isinstance(r, Ranking):
            candidates = [(r.responses[i].text, r.responses[j].text) for i, j in r.pairs()]
        else:
            raise TypeError(f"not a preference record: {type(r).__name__}")
        for x, y in candidates:
            if x == y:  # no order to get right: it would only count as a miss
                counts["skipped_identical"] += 1
                continue
            pair = (_rubric_pair(r.prompt, x, y, family, source) if against == "rubric"
                    else Pair(r.prompt, x, y, family, source))
            if pair is None:
                counts["rubric_ties"] += 1
            else:
                pairs.append(pair)
    return pairs, counts


def ece(deltas: torch.Tensor, bins: int = 10) -> float:
    """Expected calibration error of sigmoid(deltas) as P(chosen preferred); deltas (n,)."""
    p = torch.sigmoid(deltas.double())  # (n,)
    conf = torch.maximum(p, 1 - p)  # (n,) in [0.5, 1]
    right = (deltas > 0).double() + 0.5 * (deltas == 0).double()  # (n,)
    which = ((conf - 0.5) * 2 * bins).long().clamp(max=bins - 1)  # (n,) bin of each pair
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += float(sel.sum()) / len(deltas) * abs(float(right[sel].mean() - conf[sel].mean()))
    return total


def summarize(deltas: torch.Tensor, bins: int) -> dict[str, float]:
    right = (deltas > 0).double() + 0.5 * (deltas == 0).double()
    return {"n": len(deltas), "accuracy": float(right.mean()), "mean_margin": float(deltas.mean()),
            "ece": ece(deltas, bins)}


def report(pairs: Sequence[Pair], deltas: torch.Tensor, bins: int) -> dict[str, Any]:
    """Overall, per-family and per-source accuracy, margin and ECE of raw deltas (n,)."""
    out: dict[str, Any] = summarize(deltas, bins)
    for key in ("family", "source"):
        index: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(pairs):
            index[getattr(p, key)].append(i)
        out[f"per_{key}"] = {k: summarize(deltas[torch.tensor(v)], bins)
                             for k, v in sorted(index.items())}
    return out


def _load(model_dir: Path) -> tuple[Any, Any]:
    from coachlm.models.load import load_tokenizer
    from coachlm.models.reward import load_reward_model

    return load_reward_model(model_dir), load_tokenizer(model_dir)


def _read(paths: Sequence[Path], kinds: Iterable[str], skip_invalid: bool) -> tuple[list[Record], list[str]]:
    skipped: list[str] = []
    on_error = (lambda e: skipped.append(str(e))) if skip_invalid else None
    records = [r for p in paths for r in read_records(p, kinds=kinds, on_error=on_error)]
    return records, skipped


def run_rm_eval(cfg: RMEvalConfig) -> dict[str, Any]:
    """Evaluate the reward model `cfg.model` on the preference records in `cfg.data`."""
    from coachlm.models.reward import score_items

    records, skipped = _read(cfg.data, PREFERENCE_KINDS, cfg.skip_invalid)
    pairs, counts = eval_pairs(records, cfg.against)
    if not pairs:
        raise CoachError(f"no pairs to evaluate in {', '.join(map(str, cfg.data))} "
                         f"(left out: {dict(counts)})")
    model, tok = _load(cfg.model)
    items = [(p.prompt, t) for p in pairs for t in (p.chosen, p.rejected)]
    raw, cut = score_items(model, tok, items, batch_size=cfg.batch_size,
                           max_length=cfg.max_length, layout=cfg.layout, bf16=cfg.bf16)
    deltas = raw[0::2] - raw[1::2]  # (n,) r_chosen - r_rejected
    result = {"model": str(cfg.model), "against": cfg.against, **report(pairs, deltas, cfg.bins),
              "left_out": dict(counts), "truncated_responses": cut, "skipped_invalid": len(skipped)}
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ------------------------------------------------------------------------------------ score


@dataclass(frozen=True)
class RMScoreConfig:
    model: Path
    data: Path
    out: Path
    batch_size: int = 64
    max_length: int = 512
    layout: Literal["auto", "pad", "pack", "share"] = "auto"
    bf16: bool = False
    skip_invalid: bool = False


SCORED_KINDS = ("sample", "demonstration", "rating")


def run_rm_score(cfg: RMScoreConfig) -> dict[str, Any]:
    """Score every (prompt, response) record of `cfg.data`; write them with meta["reward"]
    (normalized) and meta["reward_raw"] to `cfg.out` (.jsonl, .jsonl.gz or .parquet)."""
    from coachlm.models.reward import score_items

    records, skipped = _read([cfg.data], SCORED_KINDS, cfg.skip_invalid)
    if not records:
        raise CoachError(f"{cfg.data}: no records to score")
    model, tok = _load(cfg.model)
    raw, cut = score_items(model, tok, [(r.prompt, r.response.text) for r in records],
                           batch_size=cfg.batch_size, max_length=cfg.max_length,
                           layout=cfg.layout, bf16=cfg.bf16)
    rewards = model.normalize(raw)
    scored = [_with_meta(r, float(s), float(x), str(cfg.model)) for r, s, x in zip(records, rewards, raw)]
    n = write_records(cfg.out, scored)
    finite = rewards[torch.isfinite(rewards)]
    return {"scored": n, "out": str(cfg.out), "mean_reward": round(float(finite.mean()), 4),
            "std_reward": round(float(finite.std(unbiased=False)), 4) if n > 1 else 0.0,
            "truncated_responses": cut, "skipped_invalid": len(skipped)}


def _with_meta(record: Record, reward: float, raw: float, model: str) -> Record:
    from dataclasses import replace

    meta = {**record.meta, "reward": reward if math.isfinite(reward) else None,
            "reward_raw": raw, "reward_model": model}
    return replace(record, meta=meta)


def print_rm_report(result: dict[str, Any]) -> None:
    """Tables of accuracy / margin / ECE, overall, per family and per source."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for key in ("per_family", "per_source"):
        table = Table(title=f"reward model vs {result['against']}: {key.split('_')[1]}")
        for col in ("", "pairs", "accuracy", "mean margin", "ECE"):
            table.add_column(col, justify="right" if col else "left")
        rows = list(result[key].items()) + [("all", result)]
        for name, m in rows:
            table.add_row(name, str(m["n"]), f"{m['accuracy']:.1%}", f"{m['mean_margin']:.3f}",
                          f"{m['ece']:.3f}")
        console.print(table)
    if result["left_out"]:
        console.print(f"left out: {result['left_out']}")
