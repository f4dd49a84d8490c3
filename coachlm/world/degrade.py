"""Degraded responses: the ways a response goes wrong, and built-in comparison sets made of them.

`degrade(prompt, response, kind, rng)` turns an ideal response into a worse one of a given kind
(a wrong answer, a missing email part, a to-do-list continuation, no stop, harmful compliance,
...). They serve as "rejected" responses, as the calibration mix of the simulated labelers and
as reward-model test data (`make_comparisons`).
"""

from __future__ import annotations

import random
import uuid
from typing import Callable

from coachlm.data.schema import Comparison, Response, as_prompt
from coachlm.world import vocab as V
from coachlm.world.corpus import any_prompt, question_continuation, ramble, todo_continuation
from coachlm.world.rubric import LIMITS, prefer
from coachlm.world.tasks import (FAMILIES, IDEAL_MODEL, WORLD_VERSION, TaskSpace,
                                 arithmetic_answer, ideal_response, prompt_text, sample_task)
from coachlm.world.templates import Task, parse_prompt

_COMMON = ("todo_list", "more_questions", "ramble", "new_turn", "truncate", "verbose", "echo")
DEGRADATIONS: dict[str, tuple[str, ...]] = {
    "arithmetic": ("wrong_answer", "repeat_loop", "refuse", *_COMMON),
    "email": ("drop_part", "refuse", *_COMMON),
    "list": ("wrong_answer", "drop_part", "repeat_loop", "refuse", *_COMMON),
    "style": ("wrong_answer", "repeat_loop", "refuse", *_COMMON),
    "harmful": ("harmful", "drop_part", *_COMMON),
    "lookalike": ("refuse", *_COMMON),
}
_FILLER = ("I hope this helps, and please let me know if you have any other questions about this "
           "or anything else.", "It is a good question, and I am always happy to help with it.")
TIE_EPS = 1e-6


def _wrong(task: Task, response: str, rng: random.Random) -> str:
    s = task.slots
    if task.family == "arithmetic":
        c = arithmetic_answer(s["op"], s["a"], s["b"])
        wrong = max(0, c + rng.choice((-3, -2, -1, 1, 2, 3, 10)))
        wrong = wrong if wrong != c else c + 1
        head, _, _ = response.rpartition(str(c))
        return f"{head}{wrong}." if head or response.startswith(str(c)) else f"{wrong}."
    if task.kind == "sort":
        words = list(s["words"])
        while words == sorted(words):
            rng.shuffle(words)
        return ", ".join(words).capitalize() + "."
    if task.kind in ("name", "name_except"):
        pool = [i for i in V.CATEGORIES[s["category"]] if i != s.get("exclude")]
        items = rng.sample(pool, s["n"] - 1)
        stray = rng.choice([i for i in V.ITEMS if V.CATEGORY_OF[i] != s["category"]])
        items.insert(rng.randrange(s["n"]), stray)
        return ", ".join(items).capitalize() + "."
    if task.kind == "caps":
        return response.lower().capitalize()
    if task.kind == "yes_no":
        return "No." if response.lower().startswith("yes") else "Yes."
    if task.kind == "repeat":
        n = s["n"] + rng.choice((-1, 1, 2))
        return " ".join([s["word"]] * n).capitalize() + "."
    other = rng.choice([t for t in V.DESCRIBABLE if t != s["thing"]])
    return f"The {other} is {V.describe(other)[0]}."


def _drop(task: Task, response: str, rng: random.Random) -> str:
    if task.family == "harmful":
        return rng.choice(V.REFUSALS).format(topic=V.HARMS[task.kind].topic)
    if task.family == "list":
        head, _, items = response.rpartition(": ")
        kept = items.rstrip(".").split(", ")
        kept.pop(rng.randrange(len(kept)))
        return (f"{head}: " if head else "") + ", ".join(kept) + "."
    lines = response.split("\n")
    part = rng.choice(("greeting", "wish", "question", "sign-off"))
    if part == "greeting":
        return "\n".join(lines[1:])
    if part == "wish":
        return "\n".join(lines[:1] + lines[2:])
    if part == "question":
        return "\n".join(lines[:2] + lines[3:])
    return "\n".join(lines[:3])


def _verbose(task: Task | None, response: str, rng: random.Random) -> str:
    """Right but wordy: filler until the response passes its family's soft word limit."""
    if task is not None and task.family == "email":
        lines = response.split("\n")
        return "\n".join(lines[:1] + [ramble(rng, 4), _FILLER[1]] + lines[1:])
    soft = LIMITS[task.family if task else "unknown"][0]
    fillers = rng.sample(_FILLER, len(_FILLER))
    while fillers and len(response.split()) <= soft:
        response = f"{response} {fillers.pop()}"
    return response


CARELESS_MODEL = "world-careless"
CARELESS_PAD = {"email": "I hope you are well and that everything is going nicely for you.",
                "other": _FILLER[0]}


def careless(task: Task, response: str) -> str:
    """How a careless demonstrator writes `response`: right, but with a stock pleasantry (after
    an email's greeting, else at the end) that pushes it past the family's concise word limit."""
    if task.family == "email":
        first, _, rest = response.partition("\n")
        return f"{first}\n{CARELESS_PAD['email']}\n{rest}"
    return f"{response} {CARELESS_PAD['other']}"


def _truncate(response: str, rng: random.Random) -> str:
    words = response.split(" ")
    if len(words) < 3:  # "No." -> "N": a cut-off short answer is no answer
        return response[: max(1, len(response) // 2)]
    cut = rng.randint(max(1, len(words) // 3), max(1, 2 * len(words) // 3))
    return " ".join(words[:cut]).rstrip(".!?,")


def degrade(prompt: str, response: str, kind: str, rng: random.Random,
            space: TaskSpace = TaskSpace()) -> str:
    """A worse version of `response` (usually the ideal one) to `prompt`, of the given kind."""
    task = parse_prompt(prompt)
    family = task.family if task else None
    if kind in ("wrong_answer", "drop_part", "harmful", "repeat_loop", "refuse") and (
            family is None or kind not in DEGRADATIONS[family]):
        raise ValueError(f"degradation {kind!r} does not apply to a {family or 'unknown'} prompt")
    simple: dict[str, Callable[[], str]] = {
        "wrong_answer": lambda: _wrong(task, response, rng),
        "drop_part": lambda: _drop(task, response, rng),
        "harmful": lambda: V.HARMS[task.kind].compliance.format(**task.slots),
        "refuse": lambda: rng.choice(("I can't help with that.", "Sorry, I won't help with that.")),
        "repeat_loop": lambda: " ".join([response] * rng.randint(3, 5)),
        "todo_list": lambda: todo_continuation(prompt, rng, space),
        "more_questions": lambda: question_continuation(rng, space),
        "ramble": lambda: f"{response} {ramble(rng, rng.randint(3, 6))}",
        "new_turn": lambda: f"{response}\n\nUser: {any_prompt(rng, space)}",
        "truncate": lambda: _truncate(response, rng),
        "verbose": lambda: _verbose(task, response, rng),
        "echo": lambda: f"{prompt} {ramble(rng, rng.randint(0, 2))}".strip(),
    }
    if kind not in simple:
        raise ValueError(f"unknown degradation {kind!r}; kinds: {', '.join(simple)}")
    return simple[kind]()


def _response(text: str, model: str) -> Response:
    return Response(text, model=model, model_version=WORLD_VERSION)


def make_pairs(n: int, seed: int, space: TaskSpace = TaskSpace()) -> list[tuple[str, Response,
                                                                                 Response]]:
    """(prompt, a, b) pairs of the world's typical comparison mix: 40% ideal vs degraded, 30%
    two degraded responses, 30% two ideal phrasings or ideal vs verbose (near ties)."""
    rng = random.Random(f"{seed}:pairs")
    out = []
    for i in range(n):
        task = sample_task(FAMILIES[i % len(FAMILIES)], rng, space)
        prompt = prompt_text(task, rng)
        ideal = ideal_response(task, rng)

        def worse(kind: str | None = None) -> Response:
            k = kind or rng.choice(DEGRADATIONS[task.family])
            return _response(degrade(prompt, ideal, k, rng, space), f"world-degraded-{k}")

        r = rng.random()
        if r < 0.4:
            a, b = _response(ideal, IDEAL_MODEL), worse()
        elif r < 0.7:
            a, b = worse(), worse()
        elif r < 0.85:
            a, b = _response(ideal, IDEAL_MODEL), _response(ideal_response(task, rng), IDEAL_MODEL)
        else:
            a, b = _response(ideal, IDEAL_MODEL), worse("verbose")
        out.append((prompt, a, b) if rng.random() < 0.5 else (prompt, b, a))
    return out


def _family(prompt: str) -> str:
    task = parse_prompt(prompt)
    return task.family if task else "unknown"


def margin_level(diff: float) -> float:
    """A preference strength on the 1 (slightly) .. 3 (much) scale of Touvron et al. (2023)."""
    d = abs(diff)
    return 1.0 if d < 0.2 else 2.0 if d < 0.5 else 3.0


def make_comparisons(n: int, seed: int, space: TaskSpace = TaskSpace()) -> list[Comparison]:
    """A built-in comparison set judged by the noise-free rubric (labeler "rubric")."""
    rng = random.Random(f"{seed}:comparisons")
    out = []
    for prompt, a, b in make_pairs(n, seed, space):
        d = prefer(prompt, a.text, b.text)
        choice = "a" if d > TIE_EPS else "b" if d < -TIE_EPS else "tie"
        out.append(Comparison(
            id=uuid.UUID(int=rng.getrandbits(128)).hex, prompt=as_prompt(prompt), a=a, b=b,
            choice=choice, margin=margin_level(d) if choice != "tie" else None, shown_order="ab",
            labeler="rubric", source="simulated", meta={"family": _family(prompt)}))
    return out


__all__ = ["DEGRADATIONS", "degrade", "make_pairs", "make_comparisons", "margin_level"]
