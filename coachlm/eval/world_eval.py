"""Evaluation on the built-in world: decode held-out prompts, score the responses by the rubric
(instruction-following rate and score per task family), write them as samples. `compare` (the
`coachlm eval` / `coachlm compare` commands and the pipeline's eval stage) builds on these.

Responses are decoded greedily by default so that an evaluation is deterministic: the same
model always gets the same numbers, and a difference between two models is not sampling noise.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Literal, Sequence

from coachlm.data.schema import PromptRecord, Response, Sample


def generate_responses(model_dir: Path, prompts: Sequence[PromptRecord], max_new_tokens: int,
                       greedy: bool = True, temperature: float = 1.0, batch_size: int = 64,
                       dtype: Literal["bf16", "fp32"] = "fp32", seed: int = 0) -> list[str]:
    """One response per prompt from the model in `model_dir` (bf16 pays only on GPUs and CPUs
    with AMX)."""
    import torch

    from coachlm.data.chat import encode_prompt
    from coachlm.engine.shard import shard_map
    from coachlm.models.load import load_model, load_tokenizer
    from coachlm.rollout.sampling import SamplingConfig, decode_responses, generate

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=torch.bfloat16 if dtype == "bf16" else None,
                       tokenizer=tokenizer)
    scfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                          top_k=1 if greedy else 0, top_p=1.0, n=1, batch_size=batch_size,
                          seed=seed)

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
