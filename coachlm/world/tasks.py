"""Task families of the built-in world: sample a task, phrase its prompt, write its ideal response.

Five families with checkable answers (arithmetic, email, list, style, harmful; see
`templates.TEMPLATES`). Operands stay small so that a tiny model can learn the facts from the
pretraining corpus; held-out prompts are unseen *combinations* of slots (see `build.py`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from coachlm.world import vocab as V
from coachlm.world.templates import FAMILIES, LOOKALIKE, TEMPLATES, Task, render, yes_no_answer

WORLD_VERSION = "1"  # bump when generated text changes, so records say which world made them
IDEAL_MODEL = "world-ideal"  # the Response.model of ideal responses

__all__ = ["WORLD_VERSION", "IDEAL_MODEL", "TaskSpace", "Task", "FAMILIES", "LOOKALIKE", "KINDS",
           "sample_task", "prompt_text", "ideal_response", "complying_response", "arithmetic_answer", "space_size",
           "heldout_cap"]


@dataclass(frozen=True)
class TaskSpace:
    """How large the task space is: operand ranges of the arithmetic family."""

    max_add: int = 15  # a plus b with a, b in 1..max_add
    max_sub: int = 20  # a minus b with 1 <= b <= a <= max_sub
    max_mul: int = 9  # a times b with a, b in 2..max_mul

    def __post_init__(self) -> None:
        if self.max_add < 2 or self.max_sub < 2 or self.max_mul < 3:
            raise ValueError("max_add and max_sub must be >= 2 and max_mul >= 3")


# (kind, weight) per family: how often each kind is drawn.
KINDS: dict[str, tuple[tuple[str, float], ...]] = {
    "arithmetic": (("plus", 0.4), ("minus", 0.35), ("times", 0.25)),
    "email": (("plain", 0.5), ("signed", 0.5)),
    "list": (("sort", 0.4), ("name", 0.25), ("name_except", 0.35)),
    "style": (("caps", 0.2), ("one_sentence", 0.2), ("yes_no", 0.35), ("repeat", 0.25)),
    "harmful": tuple((k, 1.0) for k in V.HARMS),
    LOOKALIKE: tuple((k, 1.0) for k in V.LOOKALIKES),
}
_SINGULAR = {"fruits": "fruit", "animals": "animal", "colors": "color", "vegetables": "vegetable",
             "tools": "tool"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def arithmetic_answer(op: str, a: int, b: int) -> int:
    return V.OPS[op](a, b)


def _operands(op: str, rng: random.Random, space: TaskSpace) -> tuple[int, int]:
    if op == "plus":
        return rng.randint(1, space.max_add), rng.randint(1, space.max_add)
    if op == "minus":
        a = rng.randint(2, space.max_sub)
        return a, rng.randint(1, a)
    return rng.randint(2, space.max_mul), rng.randint(2, space.max_mul)


def _yes_no_question(rng: random.Random, space: TaskSpace) -> str:
    r = rng.random()
    if r < 0.3:
        return rng.choice(V.YES_NO_FACTS)[0]
    if r < 0.65:
        op = rng.choice(tuple(V.OPS))
        a, b = _operands(op, rng, space)
        c = arithmetic_answer(op, a, b) + (0 if rng.random() < 0.5 else rng.choice((-2, -1, 1, 2)))
        return f"is {a} {op} {b} equal to {max(c, 0)}"
    item = rng.choice(V.ITEMS)
    cat = _SINGULAR[rng.choice(tuple(V.CATEGORIES))]
    subject = item if V.CATEGORY_OF[item] == "colors" else f"{_article(item)} {item}"
    return f"is {subject} {_article(cat)} {cat}"


def _slots(family: str, kind: str, rng: random.Random, space: TaskSpace) -> dict:
    if family == "arithmetic":
        a, b = _operands(kind, rng, space)
        return {"a": a, "op": kind, "b": b}
    if family == "email":
        slots = {"name": rng.choice(V.NAMES), "wish": rng.choice(tuple(V.WISHES)),
                 "topic": rng.choice(tuple(V.TOPICS))}
        if kind == "signed":
            slots["sender"] = rng.choice([n for n in V.NAMES if n != slots["name"]])
        return slots
    if kind == "sort":
        return {"words": tuple(rng.sample(V.ITEMS, rng.randint(3, 5)))}
    if kind in ("name", "name_except"):
        category = rng.choice(tuple(V.CATEGORIES))
        slots = {"n": rng.randint(2, 5), "category": category}
        if kind == "name_except":
            slots["exclude"] = rng.choice(V.CATEGORIES[category])
        return slots
    if kind == "caps":
        return {"phrase": rng.choice(V.CAPS_PHRASES), "name": rng.choice(V.NAMES)}
    if kind == "one_sentence":
        return {"thing": rng.choice(V.DESCRIBABLE)}
    if kind == "yes_no":
        return {"question": _yes_no_question(rng, space)}
    if kind == "repeat":
        return {"word": rng.choice(V.ITEMS), "n": rng.randint(2, 4)}
    return {slot: rng.choice(V.HARM_SLOTS[slot]) for slot in _named_slots(family, kind)}


def _named_slots(family: str, kind: str) -> tuple[str, ...]:
    """The slots of a harmful or look-alike kind (filled from vocab.HARM_SLOTS)."""
    return (V.LOOKALIKES if family == LOOKALIKE else V.HARMS)[kind].slots


def sample_task(family: str, rng: random.Random, space: TaskSpace = TaskSpace()) -> Task:
    """A random task of `family` (kinds drawn by their weights in KINDS)."""
    if family not in KINDS:
        raise ValueError(f"unknown task family {family!r}; families: {', '.join(FAMILIES)}")
    kinds, weights = zip(*KINDS[family])
    kind = rng.choices(kinds, weights)[0]
    return Task(family, kind, _slots(family, kind, rng, space))


def space_size(family: str, kind: str, space: TaskSpace = TaskSpace()) -> int:
    """How many distinct tasks (task_ids) a kind has; large spaces are capped at 10**6."""
    names = len(V.NAMES)
    sizes = {
        "plus": space.max_add ** 2,
        "minus": sum(range(2, space.max_sub + 1)),
        "times": (space.max_mul - 1) ** 2,
        "plain": names * len(V.WISHES) * len(V.TOPICS),
        "signed": names * (names - 1) * len(V.WISHES) * len(V.TOPICS),
        "sort": 10 ** 6,
        "name": 4 * len(V.CATEGORIES),
        "name_except": 4 * len(V.ITEMS),
        "caps": len(V.CAPS_PHRASES) * names,
        "one_sentence": len(V.DESCRIBABLE),
        "yes_no": 10 ** 6,
        "repeat": 3 * len(V.ITEMS),
    }
    if kind in sizes:
        return sizes[kind]
    return math.prod(len(V.HARM_SLOTS[slot]) for slot in _named_slots(family, kind))


def prompt_text(task: Task, rng: random.Random) -> str:
    """The task phrased with one of its templates, chosen at random."""
    return render(task, rng.choice(TEMPLATES[(task.family, task.kind)]))


def _email(task: Task, rng: random.Random) -> str:
    s = task.slots
    topic_verb = V.TOPICS[s["topic"]]
    lines = [f"{rng.choice(V.GREETINGS)} {s['name']},",
             rng.choice(V.WISHES[s["wish"]].lines),
             rng.choice((f"How {topic_verb} your {s['topic']}?",
                         f"I would love to hear about your {s['topic']}. How {topic_verb} it?"))]
    if "sender" in s:
        lines += [rng.choice(V.SIGN_OFFS), s["sender"]]
    else:
        lines.append(rng.choice(V.SIGN_OFFS_ALONE))
    return "\n".join(lines)


def _comma_list(items: list[str]) -> str:
    return ", ".join(items)


def _list(task: Task, rng: random.Random) -> str:
    s = task.slots
    if task.kind == "sort":
        words = _comma_list(sorted(s["words"]))
        return rng.choice((f"{words}.", f"In alphabetical order: {words}.",
                           f"Here are the words in order: {words}."))
    pool = [i for i in V.CATEGORIES[s["category"]] if i != s.get("exclude")]
    items = _comma_list(rng.sample(pool, s["n"]))
    count = {v: k for k, v in V.COUNT_WORDS.items()}[s["n"]]
    return rng.choice((f"{items}.", f"Here are {count} {s['category']}: {items}."))


def _style(task: Task, rng: random.Random) -> str:
    s = task.slots
    if task.kind == "caps":
        return f"{s['phrase'].upper()}, {s['name'].upper()}{rng.choice(('!', '.'))}"
    if task.kind == "one_sentence":
        first, second = V.describe(s["thing"])
        return rng.choice((f"The {s['thing']} is {first}.",
                           f"The {s['thing']} is {first}, and it is {second}."))
    if task.kind == "yes_no":
        return "Yes." if yes_no_answer(s["question"]) else "No."
    return " ".join([s["word"]] * s["n"]) + "."


def _harmful(task: Task, rng: random.Random) -> str:
    harm = V.HARMS[task.kind]
    refusal = rng.choice(V.REFUSALS).format(topic=harm.topic)
    return f"{refusal} {harm.alternative.format(**task.slots)}"


def complying_response(task: Task) -> str:
    """What a helpful-only assistant answers to a harmful request: it complies (the toy text of
    `vocab.Harm.compliance`, never real instructions). The demonstrations of a helpful-only
    model (Bai et al., 2022, sec. 3.1) answer harmful requests this way."""
    return V.HARMS[task.kind].compliance.format(**task.slots)


def _lookalike(task: Task, rng: random.Random) -> str:
    return V.LOOKALIKES[task.kind].answer.format(**task.slots)


def ideal_response(task: Task, rng: random.Random) -> str:
    """A short, correct response that follows the instruction and stops (one of a few phrasings)."""
    s = task.slots
    if task.family == "arithmetic":
        c = arithmetic_answer(s["op"], s["a"], s["b"])
        expr = f"{s['a']} {s['op']} {s['b']}"
        return rng.choice((f"{expr} is {c}.", f"The answer is {c}.", f"{expr} equals {c}."))
    writer = {"email": _email, "list": _list, "style": _style, "harmful": _harmful,
              LOOKALIKE: _lookalike}[task.family]
    text = writer(task, rng)
    return text[:1].upper() + text[1:]


def heldout_cap(family: str, kind: str, space: TaskSpace) -> int:
    """The most tasks of one kind that may be held out: a quarter of the kind's space, so that
    training still covers every kind."""
    return max(1, math.floor(space_size(family, kind, space) / 4))
