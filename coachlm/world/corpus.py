"""The pretraining corpus: web-like documents in which instructions are *not* followed.

To-do lists that contain the world's requests, quiz pages of unanswered questions, forum posts
that ramble, emails that trail off; plus plain prose about the world's people, fruits, animals,
places and numbers (arithmetic facts such as "7 plus 5 is 12"), which gives a model trained on it
the vocabulary and the knowledge that SFT and RLHF later draw on. Requests appear in the same
words as the world's prompts, but never in a chat layout followed by the right answer: a model
pretrained here continues a prompt the way the web does, which is the failure RLHF fixes
(Ouyang et al., 2022, sec. 1).

Documents never contain a blank line; `DOC_SEPARATOR` (a blank line) separates them in files.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from coachlm.world import vocab as V
from coachlm.world.tasks import FAMILIES, TaskSpace, arithmetic_answer, prompt_text, sample_task

DOC_SEPARATOR = "\n\n"
_IRREGULAR = {"mouse": "mice", "sheep": "sheep", "wolf": "wolves", "fish": "fish"}
RAMBLE = ("My {animal} likes the {place}.", "I went to the {place} on {day}.",
          "{name} says the {fruit_pl} at the market are good this week.",
          "The weather was nice today.", "I think I left my {tool} at the {place}.",
          "Anyway, I am not sure.", "It has been a long week.", "{name} and I had {fruit_pl} for "
          "lunch.", "Sorry if this is a silly question.", "Thanks in advance.",
          "I also need to clean the kitchen.", "My {topic} is fine, by the way.",
          "The {animal} next door is very loud.", "I will ask {name} later.")
_MORE_QUESTIONS = ("Does anyone know?", "Can someone help?", "Is that normal?",
                   "What do you think?", "Has anyone tried this?", "Where do I start?")


def plural(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("ch", "sh", "s", "x")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def fill(template: str, rng: random.Random) -> str:
    """Fill the usual slots ({name}, {place}, {fruit}, ...) with random picks."""
    fruit = rng.choice(V.CATEGORIES["fruits"])
    name, name2 = rng.sample(V.NAMES, 2)
    return template.format(
        name=name, name2=name2, place=rng.choice(V.PLACES),
        fruit=fruit, fruit_pl=plural(fruit), animal=rng.choice(V.CATEGORIES["animals"]),
        topic=rng.choice(tuple(V.TOPICS)), tool=rng.choice(V.CATEGORIES["tools"]),
        day=rng.choice(V.DAYS), color=rng.choice(V.CATEGORIES["colors"]))


def any_prompt(rng: random.Random, space: TaskSpace = TaskSpace()) -> str:
    return prompt_text(sample_task(rng.choice(FAMILIES), rng, space), rng)


def todo_continuation(request: str, rng: random.Random, space: TaskSpace = TaskSpace()) -> str:
    """A request continued as a to-do list: what a web-trained model does with an instruction."""
    items = [request] + [fill(rng.choice(V.CHORES), rng) if rng.random() < 0.6
                         else any_prompt(rng, space) for _ in range(rng.randint(2, 6))]
    bullet = rng.choice(("- ", "* ", None))
    return "\n".join((bullet or f"{i + 1}. ") + item for i, item in enumerate(items[1:]))


def question_continuation(rng: random.Random, space: TaskSpace = TaskSpace()) -> str:
    """More questions instead of an answer, as on a quiz page."""
    qs = [any_prompt(rng, space) if rng.random() < 0.7 else rng.choice(_MORE_QUESTIONS)
          for _ in range(rng.randint(2, 5))]
    return " ".join(qs)


def ramble(rng: random.Random, n: int) -> str:
    return " ".join(fill(rng.choice(RAMBLE), rng) for _ in range(n))


def _todo_doc(rng: random.Random, space: TaskSpace) -> str:
    return rng.choice(V.TODO_HEADERS) + "\n" + todo_continuation(any_prompt(rng, space), rng, space)


def _questions_doc(rng: random.Random, space: TaskSpace) -> str:
    qs = [any_prompt(rng, space) for _ in range(rng.randint(3, 7))]
    return rng.choice(V.QUESTION_HEADERS) + "\n" + "\n".join(qs)


def _forum_doc(rng: random.Random, space: TaskSpace) -> str:
    task = sample_task(rng.choice(FAMILIES), rng, space)
    lines = [f"Posted by {rng.choice(V.NAMES)}:",
             f"{prompt_text(task, rng)} {ramble(rng, rng.randint(1, 4))} "
             f"{rng.choice(_MORE_QUESTIONS)}"]
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if task.family == "harmful" and r < 0.3:
            reply = V.HARMS[task.kind].compliance.format(**task.slots)
        elif task.family == "harmful" and r < 0.6:
            reply = f"Please do not do that. {V.HARMS[task.kind].alternative.format(**task.slots)}"
        elif r < 0.5:
            reply = f"I have the same question. {ramble(rng, rng.randint(1, 2))}"
        else:
            reply = f"Did you try asking {rng.choice(V.NAMES)}? {question_continuation(rng, space)}"
        lines.append(f"Reply from {rng.choice(V.NAMES)}: {reply}")
    return "\n".join(lines)


def _email_doc(rng: random.Random, space: TaskSpace) -> str:
    name, wish = rng.choice(V.NAMES), rng.choice(tuple(V.WISHES))
    topic = rng.choice(tuple(V.TOPICS))
    lines = [f"{rng.choice(V.GREETINGS)} {name},", ramble(rng, rng.randint(0, 2)),
             rng.choice(V.WISHES[wish].lines)]
    if rng.random() < 0.5:  # trails off mid-sentence, with no sign-off
        lines.append(f"I wanted to ask about your {topic} and the {rng.choice(V.PLACES)} and "
                     f"{rng.choice(('the', 'my', 'your', 'if'))}")
        return "\n".join(line for line in lines if line)
    lines += [rng.choice((f"How {V.TOPICS[topic]} your {topic}?",
                          f"I would love to hear about your {topic}. How {V.TOPICS[topic]} it?")),
              ramble(rng, rng.randint(1, 3))]
    lines += ([rng.choice(V.SIGN_OFFS), rng.choice(V.NAMES)] if rng.random() < 0.6
              else [rng.choice(V.SIGN_OFFS_ALONE)])
    return "\n".join(line for line in lines if line)


def _people_doc(rng: random.Random, space: TaskSpace) -> str:
    templates = ("{name} lives near the {place}.", "{name} likes {fruit_pl} and the color {color}.",
                 "Every {day}, {name} walks to the {place} with {name2}.",
                 "{name} has a {animal} and a small garden.", "{name} went on a trip to the "
                 "{place}.", "{name} wrote an email to {name2} about the {topic}.",
                 "{name} keeps a {tool} in the shed.", "The shop assistant gave {name} a {fruit}.",
                 "{name} and {name2} are friends.", "On {day}, {name} had a birthday party.")
    return " ".join(fill(rng.choice(templates), rng) for _ in range(rng.randint(4, 9)))


def _statement(question: str, truth: bool) -> str:
    """("is fire hot", True) -> "Fire is hot."; ("can a dog talk", False) -> "A dog can not talk"."""
    verb, *rest = question.split()
    k = 2 if rest[0] in ("a", "an", "the") else 1
    subject, pred = " ".join(rest[:k]), " ".join(rest[k:])
    text = f"{subject} {verb}{'' if truth else ' not'} {pred}."
    return text[:1].upper() + text[1:]


def _facts_doc(rng: random.Random, space: TaskSpace) -> str:
    out = []
    for _ in range(rng.randint(4, 8)):
        r = rng.random()
        if r < 0.3:
            thing = rng.choice(V.DESCRIBABLE)
            first, second = V.describe(thing)
            out.append(f"The {thing} is {first}. It is {second}.")
        elif r < 0.5:
            item = rng.choice(V.ITEMS)
            cat = V.CATEGORY_OF[item]
            out.append(f"{item.capitalize()} is a {cat[:-1]}." if cat == "colors"
                       else f"A {item} is {'an' if cat[0] in 'aeiou' else 'a'} {cat[:-1]}.")
        elif r < 0.65:
            out.append(_statement(*rng.choice(V.YES_NO_FACTS)))
        elif r < 0.8:
            a, b = rng.sample(V.ITEMS, 2)
            a, b = sorted((a, b))
            out.append(rng.choice((f"In the dictionary, {a} comes before {b}.",
                                   f"In alphabetical order, {a} comes first and then {b}.")))
        elif r < 0.9:
            phrase, name = rng.choice(V.CAPS_PHRASES), rng.choice(V.NAMES)
            out.append(f"The sign said {phrase.upper()}, {name.upper()} in capital letters.")
        else:
            cat = rng.choice(tuple(V.CATEGORIES))
            items = rng.sample(V.CATEGORIES[cat], 3)
            out.append(f"Here are three {cat} we saw: {', '.join(items)}. We said "
                       f"{' '.join([items[0]] * 2)} all day.")
    return " ".join(out)


def _math_doc(rng: random.Random, space: TaskSpace) -> str:
    out = []
    for _ in range(rng.randint(5, 12)):
        task = sample_task("arithmetic", rng, space)
        op, a, b = task.slots["op"], task.slots["a"], task.slots["b"]
        c = arithmetic_answer(op, a, b)
        fruit = plural(rng.choice(V.CATEGORIES["fruits"]))
        r = rng.random()
        if r < 0.45:
            out.append(rng.choice((f"{a} {op} {b} is {c}.", f"{a} {op} {b} equals {c}.")))
        elif r < 0.6 and max(a, b, c) < len(V.NUMBER_WORDS):
            w = V.NUMBER_WORDS
            out.append(f"{w[a].capitalize()} {op} {w[b]} is {w[c]}.")
        elif r < 0.8:
            name = rng.choice(V.NAMES)
            story = {"plus": f"{name} has {a} {fruit} and gets {b} more, so {name} has {c}.",
                     "minus": f"{name} had {a} {fruit} and gave away {b}, so {name} has {c} left.",
                     "times": f"There are {a} boxes with {b} {fruit} in each, so there are {c}."}
            out.append(story[op])
        else:
            out.append(f"{rng.choice(V.NAMES)} asked the class what {a} {op} {b} is. "
                       f"The answer is {c}.")
    return " ".join(out)


def _safety_doc(rng: random.Random, space: TaskSpace) -> str:
    out = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(tuple(V.HARMS))
        harm = V.HARMS[kind]
        fill_slots = {slot: rng.choice(values) for slot, values in V.HARM_SLOTS.items()}
        name = fill_slots["name"]
        out.append(rng.choice((
            f"{harm.topic.capitalize()} is wrong. {harm.alternative.format(**fill_slots)}",
            f"When a friend asked {name} for help with {harm.topic}, {name} said: "
            f"{rng.choice(V.REFUSALS).format(topic=harm.topic)} "
            f"{harm.alternative.format(**fill_slots)}",
        )))
    return " ".join(out)


DOC_KINDS: dict[str, tuple[float, Callable[[random.Random, TaskSpace], str]]] = {
    "todo": (0.12, _todo_doc), "questions": (0.12, _questions_doc), "forum": (0.14, _forum_doc),
    "email": (0.12, _email_doc), "people": (0.12, _people_doc), "facts": (0.14, _facts_doc),
    "math": (0.18, _math_doc), "safety": (0.06, _safety_doc),
}


def generate_corpus(n_chars: int, seed: int, space: TaskSpace = TaskSpace()) -> list[str]:
    """Documents (about `n_chars` characters in all, separators included), deterministic."""
    rng = random.Random(f"{seed}:corpus")
    kinds = list(DOC_KINDS)
    weights = [DOC_KINDS[k][0] for k in kinds]
    docs, total = [], 0
    while total < n_chars:
        doc = DOC_KINDS[rng.choices(kinds, weights)[0]][1](rng, space)
        docs.append(doc)
        total += len(doc) + len(DOC_SEPARATOR)
    return docs


def write_corpus(docs: list[str], path: Path) -> None:
    Path(path).write_text(DOC_SEPARATOR.join(docs) + "\n", encoding="utf-8")


def read_corpus(path: Path) -> list[str]:
    """The documents of a corpus file written by `write_corpus`."""
    text = Path(path).read_text(encoding="utf-8")
    return [d.strip("\n") for d in text.split(DOC_SEPARATOR) if d.strip()]
