"""Prompt templates of the world's tasks: render a task as text, and parse text back to the task.

A task is a family, a kind and canonical slot values (`{"a": 17, "op": "plus", "b": 25}`). Each
kind has several templates ("What is {a} {op} {b}?", "Compute {a} {op} {b}."); a template is
also compiled into a regular expression, so that `parse_prompt` recovers the task from any
rendered prompt. The rubric relies on that: it scores a (prompt, response) pair from the text
alone, after any round trip through files or the web app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from coachlm.world import vocab as V

FAMILIES = ("arithmetic", "email", "list", "style", "harmful")
# Benign look-alikes of harmful requests (vocab.LOOKALIKES): written only when a world asks for
# them (WorldConfig.lookalike_*), never part of the five families the corpus and demos draw from.
LOOKALIKE = "lookalike"


@dataclass(frozen=True)
class Task:
    """One task: e.g. family "arithmetic", kind "plus", slots {"a": 17, "op": "plus", "b": 25}."""

    family: str
    kind: str
    slots: Mapping[str, Any] = field(default_factory=dict)

    @property
    def task_id(self) -> str:
        """A canonical key: two prompts with the same task_id ask for the same thing."""
        parts = []
        for k in sorted(self.slots):
            v = self.slots[k]
            parts.append(f"{k}={','.join(sorted(v)) if isinstance(v, tuple) else v}")
        return f"{self.family}/{self.kind}/" + ";".join(parts)


_ARITH = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "How much is {a} {op} {b}?",
          "Calculate {a} {op} {b}.", "Please tell me what {a} {op} {b} is.",
          "What do you get for {a} {op} {b}?")
TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("arithmetic", "plus"): _ARITH,
    ("arithmetic", "minus"): _ARITH,
    ("arithmetic", "times"): _ARITH,
    ("email", "plain"): (
        "Write a short email to {name} {wish_ing} and asking about their {topic}.",
        "Send {name} a short email to {wish_to}. Also ask about their {topic}.",
        "Write an email to {name} to {wish_to} and ask about their {topic}."),
    ("email", "signed"): (
        "Write a short email from {sender} to {name} {wish_ing} and asking about their {topic}.",
        "Write a short email to {name} {wish_ing} and asking about their {topic}. Sign it "
        "{sender}.",
        "Send {name} a short email from {sender} to {wish_to}. Also ask about their {topic}."),
    ("list", "sort"): (
        "Sort these words alphabetically: {words}.", "Put these words in alphabetical order: "
        "{words}.", "Sort the words {words} in alphabetical order."),
    ("list", "name"): ("List {n} {category}.", "Name {n} {category}.", "Give me {n} {category}.",
                       "Write a list of {n} {category}."),
    ("list", "name_except"): ("List {n} {category}, but not {exclude}.",
                              "Name {n} {category} other than {exclude}.",
                              "Give me {n} {category}, but not {exclude}."),
    ("style", "caps"): ("Say {phrase} to {name} in all capital letters.",
                        "Write {phrase} to {name} in capital letters.",
                        "Say {phrase} to {name} using only capital letters."),
    ("style", "one_sentence"): ("Describe the {thing} in one sentence.",
                                "Tell me about the {thing} in one sentence.",
                                "In one sentence, describe the {thing}."),
    ("style", "yes_no"): ("Answer with only yes or no: {question}?",
                          "Reply with just yes or no. {Question}?", "Yes or no only: {question}?"),
    ("style", "repeat"): ("Repeat the word {word} {n} times.", "Say the word {word} {n} times.",
                          "Write the word {word} {n} times."),
    **{("harmful", k): h.templates for k, h in V.HARMS.items()},
    **{(LOOKALIKE, k): x.templates for k, x in V.LOOKALIKES.items()},
}


def _alt(options: Any) -> str:
    """A regex alternation, longest first so that "new house" wins over "house"."""
    return "|".join(re.escape(o) for o in sorted(options, key=len, reverse=True))


_NAME_OF = {n.lower(): n for n in V.NAMES}
_WISH_ING = {w.ing: k for k, w in V.WISHES.items()}
_WISH_TO = {w.to: k for k, w in V.WISHES.items()}
_COUNT_OF = V.COUNT_WORDS
_WORD_OF_COUNT = {v: k for k, v in _COUNT_OF.items()}


@dataclass(frozen=True)
class Slot:
    """How a template slot maps to a canonical task slot: key, regex, render and parse."""

    key: str
    regex: str
    text: Callable[[Any], str] = str
    value: Callable[[str], Any] = str.lower


SLOTS: dict[str, Slot] = {
    "a": Slot("a", r"\d+", str, int),
    "b": Slot("b", r"\d+", str, int),
    "op": Slot("op", _alt(V.OPS)),
    "name": Slot("name", _alt(V.NAMES), str, lambda s: _NAME_OF[s.lower()]),
    "sender": Slot("sender", _alt(V.NAMES), str, lambda s: _NAME_OF[s.lower()]),
    "wish_ing": Slot("wish", _alt(_WISH_ING), lambda w: V.WISHES[w].ing,
                     lambda s: _WISH_ING[s.lower()]),
    "wish_to": Slot("wish", _alt(_WISH_TO), lambda w: V.WISHES[w].to,
                    lambda s: _WISH_TO[s.lower()]),
    "topic": Slot("topic", _alt(V.TOPICS)),
    "words": Slot("words", r"[a-z]+(?:, [a-z]+)+", ", ".join,
                  lambda s: tuple(w.strip() for w in s.lower().split(","))),
    "n": Slot("n", _alt(_COUNT_OF), lambda n: _WORD_OF_COUNT[n], lambda s: _COUNT_OF[s.lower()]),
    "category": Slot("category", _alt(V.CATEGORIES)),
    "exclude": Slot("exclude", _alt(V.ITEMS)),
    "phrase": Slot("phrase", _alt(V.CAPS_PHRASES)),
    "thing": Slot("thing", _alt(V.DESCRIBABLE)),
    "question": Slot("question", r"[a-z0-9 ]+"),
    "Question": Slot("question", r"[a-z0-9 ]+", lambda q: q[:1].upper() + q[1:]),
    "word": Slot("word", _alt(V.ITEMS)),
    "place": Slot("place", _alt(V.PLACES)),
    "subject": Slot("subject", _alt(V.SUBJECTS)),
    "shop": Slot("shop", _alt(V.SHOPS)),
    "pet": Slot("pet", _alt(V.PETS)),
}
_SLOT_RE = re.compile(r"\{(\w+)\}")


def render(task: Task, template: str) -> str:
    """Fill one template with the task's slot values."""
    return _SLOT_RE.sub(lambda m: SLOTS[m.group(1)].text(task.slots[SLOTS[m.group(1)].key]),
                        template)


def _compile(template: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _SLOT_RE.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>{SLOTS[m.group(1)].regex})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out), re.IGNORECASE)


_COMPILED = [(family, kind, _compile(t)) for (family, kind), ts in TEMPLATES.items() for t in ts
             if family != "arithmetic" or kind == "plus"]


def normalize(text: str) -> str:
    return " ".join(text.split())


def yes_no_answer(question: str) -> bool | None:
    """The true answer to a world yes/no question (lowercase, no "?"), or None if unknown."""
    q = normalize(question.lower())
    facts = dict(V.YES_NO_FACTS)
    if q in facts:
        return facts[q]
    m = re.fullmatch(r"is (\d+) (plus|minus|times) (\d+) equal to (\d+)", q)
    if m:
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        return V.OPS[op](a, b) == c
    m = re.fullmatch(r"is (?:an? )?([a-z]+) an? (fruit|animal|color|vegetable|tool)", q)
    if m and m.group(1) in V.CATEGORY_OF:
        return V.CATEGORY_OF[m.group(1)] == m.group(2) + "s"
    return None


def _valid(task: Task) -> bool:
    s = task.slots
    if task.kind == "sort":
        return len(set(s["words"])) == len(s["words"]) and all(w.isalpha() for w in s["words"])
    if task.kind == "name_except":
        return V.CATEGORY_OF.get(s["exclude"]) == s["category"]
    if task.kind == "yes_no":
        return yes_no_answer(s["question"]) is not None
    if task.kind == "signed":
        return s["sender"] != s["name"]
    return True


def parse_prompt(text: str) -> Task | None:
    """The task a prompt asks for, re-derived from its text; None when it is no world prompt."""
    text = normalize(text)
    for family, kind, pattern in _COMPILED:
        m = pattern.fullmatch(text)
        if not m:
            continue
        slots = {SLOTS[g].key: SLOTS[g].value(v) for g, v in m.groupdict().items()}
        if family == "arithmetic":  # the three kinds share templates; the operator decides
            kind = slots["op"]
        task = Task(family, kind, slots)
        if _valid(task):
            return task
    return None
