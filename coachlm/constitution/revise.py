"""SL-CAI: the model critiques and revises its own answers under a constitution.

For each (red-team) prompt: the model answers; then, for each of `rounds` rounds, a principle is
drawn at random, the model critiques its latest answer under that principle's critique request
and revises it under its revision request (Bai et al., 2022, sec. 3.1; `prompts` has the
conversation). The final revisions are Demonstration records (source "ai") whose meta keeps the
whole trace: the first answer and each round's principle id, critique and revision. `coachlm
sft` trains on them as they are (the paper fine-tuned the pretrained model on revisions, sec.
3.1, "SL-CAI").

Prompts are processed in chunks; after each chunk all records so far are rewritten atomically
(`data.io.write_records`), so a crash leaves the last complete file, and a rerun skips prompts
whose revision is already there (by prompt id): no record is written twice. Principle draws are
seeded by (seed, prompt id, round), so a resumed run draws what the first run would have.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from coachlm import config
from coachlm.constitution.format import Constitution, Principle, load_constitution
from coachlm.constitution.prompts import critique_turns, few_shot, revision_turns
from coachlm.data.io import read_prompts, read_records, write_records
from coachlm.data.schema import Demonstration, Prompt, PromptRecord, Response
from coachlm.errors import CoachError
from coachlm.runlog import RunLog, progress

OUT_NAME = "revisions.jsonl"


@dataclass(frozen=True)
class ReviseConfig:
    model: Path
    prompts: Path
    out: Path  # directory: revisions.jsonl, config.yaml, summary.json
    constitution: Path | None = None  # None: the built-in default constitution
    principles: tuple[str, ...] = ()  # draw only from these principle ids (empty: all)
    rounds: int = 1  # critique-revision rounds per prompt
    few_shot: int = 0  # the constitution's critique examples shown first (0 for world models)
    max_new_tokens: int = 48  # the answer and each revision
    critique_max_new_tokens: int = 40
    temperature: float = 1.0  # the first answer is sampled, as the policy answers
    revision_temperature: float = 0.0  # critiques and revisions (0: greedy)
    batch_size: int = 32
    chunk_size: int = 64  # prompts per atomic write: a crash loses at most one chunk
    seed: int = 0
    limit: int | None = None  # only the first `limit` prompts
    model_name: str | None = None  # default: the model directory's name

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.chunk_size < 1 or self.few_shot < 0:
            raise ValueError("rounds and chunk_size must be >= 1 and few_shot >= 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


class _Policy:
    """The model that answers, critiques and revises (loaded once)."""

    def __init__(self, model: Any, tokenizer: Any, name: str, version: str):
        self.model, self.tokenizer, self.name, self.version = model, tokenizer, name, version
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.truncated = 0  # conversations cut from the left to fit the context

    def _fit(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """A conversation too long for the context keeps its first token (BOS) and its latest
        turns: the request being answered is at the end."""
        budget = None if self.context is None else self.context - max_new_tokens
        if budget is None or len(ids) <= budget:
            return ids
        if budget < 2:
            raise CoachError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                             f"the model's context of {self.context} tokens")
        self.truncated += 1
        return ids[:1] + ids[len(ids) - budget + 1:]

    def complete(self, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float,
                 seed: int, batch_size: int) -> list[str]:
        from coachlm.data.chat import encode_prompt
        from coachlm.rollout.sampling import SamplingConfig, decode_responses, generate

        ids = [self._fit(encode_prompt(self.tokenizer, p), max_new_tokens) for p in prompts]
        cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                             batch_size=batch_size, seed=seed)
        gen = generate(self.model, self.tokenizer, ids, cfg)
        return [t.strip() for t in decode_responses(self.tokenizer, gen)]


def _load_policy(cfg: ReviseConfig) -> _Policy:
    import torch

    from coachlm.models.load import load_model, load_tokenizer, weights_hash
    from coachlm.rollout.samples import model_name_for

    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, dtype=torch.float32, tokenizer=tok)
    return _Policy(model, tok, cfg.model_name or model_name_for(cfg.model),
                   weights_hash(cfg.model))


def draw_principle(constitution: Constitution, seed: int, prompt_id: str, round: int) -> Principle:
    """The principle of one round: seeded by (seed, prompt id, round), so reruns agree."""
    rng = random.Random(f"{seed}:{prompt_id}:{round}")
    return constitution.principles[rng.randrange(len(constitution.principles))]


def revise_chunk(policy: _Policy, prompts: Sequence[PromptRecord], constitution: Constitution,
                 cfg: ReviseConfig, chunk_seed: int) -> list[Demonstration]:
    """Answer, then `cfg.rounds` times critique and revise, for every prompt of the chunk."""
    shots = few_shot(constitution, cfg.few_shot)
    gen = dict(batch_size=cfg.batch_size, seed=chunk_seed)
    answers = policy.complete([(*shots, *p.prompt) for p in prompts], cfg.max_new_tokens,
                              cfg.temperature, **gen)
    latest, rounds = list(answers), [[] for _ in prompts]
    for r in range(cfg.rounds):
        principles = [draw_principle(constitution, cfg.seed, p.id, r) for p in prompts]
        critiques = policy.complete(
            [critique_turns(p.prompt, a, pr, shots) for p, a, pr in zip(prompts, latest, principles)],
            cfg.critique_max_new_tokens, cfg.revision_temperature, **gen)
        latest = policy.complete(
            [revision_turns(p.prompt, a, pr, c, shots)
             for p, a, pr, c in zip(prompts, latest, principles, critiques)],
            cfg.max_new_tokens, cfg.revision_temperature, **gen)
        for trace, pr, c, v in zip(rounds, principles, critiques, latest):
            trace.append({"principle": pr.id, "critique": c, "revision": v})
    return [Demonstration(
        prompt=p.prompt, response=Response(final, f"{policy.name}+sl-cai", policy.version),
        labeler=f"sl-cai:{policy.name}", source="ai",
        meta={**p.meta, "prompt_id": p.id, "cai": {
            "constitution": constitution.name, "answer": first, "rounds": trace}})
        for p, first, final, trace in zip(prompts, answers, latest, rounds)]


def _done(path: Path) -> list[Demonstration]:
    if not path.exists():
        return []
    return list(read_records(path, kinds=["demonstration"]))


def run_revise(cfg: ReviseConfig) -> Path:
    """SL-CAI per `cfg`; returns `cfg.out / "revisions.jsonl"` (resumes where a run stopped)."""
    constitution = load_constitution(cfg.constitution).select(cfg.principles)
    prompts = read_prompts(cfg.prompts)[: cfg.limit]
    if not prompts:
        raise CoachError(f"{cfg.prompts}: no prompts to revise")
    cfg.out.mkdir(parents=True, exist_ok=True)
    config.save(cfg, cfg.out / "config.yaml")
    path = cfg.out / OUT_NAME
    records = _done(path)
    seen = {r.meta.get("prompt_id") for r in records}
    todo = [p for p in prompts if p.id not in seen]
    runlog = RunLog(cfg.out, resume=True, from_step=2**62)
    start, policy = time.perf_counter(), _load_policy(cfg) if todo else None
    with progress() as bar:
        task = bar.add_task("sl-cai", total=len(prompts), completed=len(prompts) - len(todo),
                            rate="")
        for k in range(0, len(todo), cfg.chunk_size):
            chunk = todo[k:k + cfg.chunk_size]
            records += revise_chunk(policy, chunk, constitution, cfg, cfg.seed + len(records))
            write_records(path, records)
            rate = (k + len(chunk)) / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=len(chunk), rate=f"{rate:.2f} prompts/s")
    _summary(runlog, records, len(prompts) - len(todo), time.perf_counter() - start, path,
             policy.truncated if policy else 0)
    return path


def _summary(runlog: RunLog, records: Sequence[Demonstration], resumed: int, seconds: float,
             path: Path, truncated: int) -> None:
    traces = [r.meta["cai"] for r in records]
    changed = sum(r.response.text != t["answer"] for r, t in zip(records, traces))
    principles = Counter(step["principle"] for t in traces for step in t["rounds"])
    runlog.summary(seconds=seconds, records=len(records), resumed=resumed,
                   revised=len(records) - resumed,
                   changed_fraction=changed / max(len(records), 1),
                   principles=dict(sorted(principles.items())), truncated_conversations=truncated,
                   out=str(path))


__all__ = ["ReviseConfig", "run_revise", "revise_chunk", "draw_principle", "OUT_NAME"]
