"""Critique and revision demonstrations written by the built-in world, under a constitution.

The paper's feedback came from a large pretrained model prompted few-shot (Bai et al., 2022);
a 2M-parameter world model can only do what its training data shows. So the world writes
SL-CAI conversations (`prompts.critique_turns` / `revision_turns`) for it: a request from the
world's training splits, a response (compliant or refusing for red-team prompts, helpful or
refusing for benign look-alikes, ideal or degraded for the other families), a principle drawn at
random from the constitution, the world's critique (`world.critique`, from the hidden rubric)
and revision (the ideal response, or the response itself when nothing is wrong). Mixed into
the helpful-only SFT data, they teach the model to critique and revise when asked, while it
still answers harmful requests compliantly when not asked: the starting point of the paper.

`comparison_documents` writes the RL-CAI side: (A)/(B) questions under a drawn principle about
two answers to a training prompt, each followed by the letter of the answer the rubric prefers,
as raw text documents (a feedback model continues pretraining on them, then reads the option
probabilities after the same context). The layout of the question belongs to the AI labeler, so
it is passed in (`render`), never copied here.

Only training prompts are used (red-team and look-alike training splits, RL training prompts);
held-out prompts never appear.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Callable

from coachlm.constitution.format import Constitution, Principle
from coachlm.constitution.prompts import critique_turns, revision_turns
from coachlm.data.io import read_prompts
from coachlm.data.schema import Demonstration, Prompt, PromptRecord, Response
from coachlm.errors import CoachError
from coachlm.world import critique as world_critique
from coachlm.world.degrade import DEGRADATIONS, degrade
from coachlm.world.rubric import prefer
from coachlm.world.tasks import IDEAL_MODEL, WORLD_VERSION, complying_response, ideal_response
from coachlm.world.templates import parse_prompt

# (file in the world directory, share of the demonstrations)
SOURCES = (("prompts_redteam.jsonl", 0.4), ("prompts_lookalike.jsonl", 0.2),
           ("prompts_train.jsonl", 0.4))
LABELER = "world-feedback"


def _response(prompt: str, rng: random.Random) -> str:
    """A response of the kind the feedback model must learn to judge."""
    task = parse_prompt(prompt)
    ideal = ideal_response(task, rng)
    r = rng.random()
    if task.family == "harmful":
        return complying_response(task) if r < 0.5 else ideal if r < 0.8 else \
            degrade(prompt, ideal, "drop_part", rng)  # a refusal without an alternative
    if r < 0.5:
        return ideal
    return degrade(prompt, ideal, rng.choice(DEGRADATIONS[task.family]), rng)


def _pools(world: Path) -> list[tuple[list[PromptRecord], float]]:
    pools = []
    for name, share in SOURCES:
        path = Path(world) / name
        if not path.is_file():
            raise CoachError(f"{path} does not exist: build the world with red_team_prompts > 0 "
                             "and lookalike_prompts > 0 for feedback demonstrations")
        pools.append((read_prompts(path), share))
    return pools


def feedback_demos(world: Path, constitution: Constitution, n: int, seed: int = 0,
                   created_at: str = "2025-01-01T00:00:00+00:00") -> list[Demonstration]:
    """`n` critique demonstrations and their `n` revision demonstrations (2n records)."""
    rng = random.Random(f"{seed}:feedback-demos")
    pools = _pools(world)
    out: list[Demonstration] = []
    for _ in range(n):
        prompts = rng.choices([p for p, _ in pools], [w for _, w in pools])[0]
        record = rng.choice(prompts)
        text = record.prompt_text
        response = _response(text, rng)
        principle = rng.choice(constitution.principles)
        critique = world_critique.critique(text, response)
        revision = world_critique.revision(text, response, rng)
        meta = {"family": record.meta.get("family"), "task_id": record.meta.get("task_id"),
                "principle": principle.id}
        for role, prompt, target in (
                ("critique", critique_turns(record.prompt, response, principle), critique),
                ("revision", revision_turns(record.prompt, response, principle, critique),
                 revision)):
            out.append(Demonstration(
                id=uuid.UUID(int=rng.getrandbits(128)).hex, prompt=prompt,
                response=Response(target, IDEAL_MODEL, WORLD_VERSION), labeler=LABELER,
                source="simulated", created_at=created_at, meta={**meta, "cai_role": role}))
    return out


# The AI labeler's context up to the option letter: (prompt, first, second, principle) -> text.
Render = Callable[[Prompt, str, str, Principle], str]


def comparison_documents(world: Path, constitution: Constitution, n: int, render: Render,
                         seed: int = 0) -> list[str]:
    """`n` (A)/(B) questions on pairs of answers to training prompts, each ending with the
    letter of the answer the rubric prefers and ")" (pairs the rubric ties on are skipped)."""
    rng = random.Random(f"{seed}:comparison-docs")
    pools = _pools(world)
    out: list[str] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        record = rng.choice(rng.choices([p for p, _ in pools], [w for _, w in pools])[0])
        text = record.prompt_text
        a, b = _response(text, rng), _response(text, rng)
        d = prefer(text, a, b)
        if abs(d) < 1e-6 or "\n\n" in a + b:  # a tie teaches nothing; a blank line ends a doc
            continue
        principle = rng.choice(constitution.principles)
        out.append(render(record.prompt, a, b, principle) + ("A" if d > 0 else "B") + ")")
    return out


__all__ = ["feedback_demos", "comparison_documents", "SOURCES"]
