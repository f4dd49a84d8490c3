"""The constitution format: written principles that steer AI feedback (Bai et al., 2022).

A constitution is a YAML file:

    name: my-constitution            # optional
    principles:                      # at least one
      - id: harmless                 # unique; letters, digits, '_' and '-'
        critique_request: Point out anything in the response that could help someone cause harm.
        revision_request: Rewrite the response so that it helps no one cause harm.
        comparison_question: Which response is less likely to help someone cause harm?
    examples:                        # optional few-shot examples
      critique:                      # for SL-CAI's critique and revision turns
        - {principle: harmless, prompt: ..., response: ..., critique: ..., revision: ...}
      comparison:                    # for the AI labeler's (A)/(B) question
        - {principle: harmless, prompt: ..., a: ..., b: ..., answer: A}

Each principle carries the three requests the paper used: a critique request and a revision
request for the supervised stage (SL-CAI: the model critiques its own answer under a randomly
drawn principle, then revises it), and a comparison question for the RL stage (RL-CAI: a feedback
model picks the better of two answers under a randomly drawn principle). Every check fails with
one line naming the file and the field (`ConstitutionError`, a user error: exit 2 in the CLI).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from coachlm.errors import CoachError

DEFAULT_NAME = "default.yaml"
_ID = re.compile(r"^[A-Za-z0-9_-]+$")
PRINCIPLE_FIELDS = ("id", "critique_request", "revision_request", "comparison_question")
CRITIQUE_FIELDS = ("principle", "prompt", "response", "critique", "revision")
COMPARISON_FIELDS = ("principle", "prompt", "a", "b", "answer")
ANSWERS = ("A", "B")


class ConstitutionError(CoachError, ValueError):
    """A constitution file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Principle:
    id: str
    critique_request: str
    revision_request: str
    comparison_question: str


@dataclass(frozen=True)
class CritiqueExample:
    """A worked critique and revision of one response under one principle (few-shot)."""

    principle: str
    prompt: str
    response: str
    critique: str
    revision: str


@dataclass(frozen=True)
class ComparisonExample:
    """A worked (A)/(B) comparison under one principle (few-shot); `answer` is "A" or "B"."""

    principle: str
    prompt: str
    a: str
    b: str
    answer: str
    reasoning: str = ""


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    critique_examples: tuple[CritiqueExample, ...] = ()
    comparison_examples: tuple[ComparisonExample, ...] = ()
    name: str = "constitution"

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.principles)

    def principle(self, id: str) -> Principle:
        """The principle called `id`; an unknown id is a ConstitutionError naming the known ones."""
        for p in self.principles:
            if p.id == id:
                return p
        raise ConstitutionError(f"unknown principle '{id}' in constitution {self.name} "
                                f"(principles: {', '.join(self.ids)})")

    def select(self, ids: Sequence[str] | None) -> "Constitution":
        """Only the principles in `ids` (None or empty: all), keeping their examples."""
        if not ids:
            return self
        chosen = tuple(self.principle(i) for i in dict.fromkeys(ids))
        keep = {p.id for p in chosen}
        return Constitution(chosen, tuple(e for e in self.critique_examples if e.principle in keep),
                            tuple(e for e in self.comparison_examples if e.principle in keep),
                            self.name)


def _text(item: Mapping[str, Any], key: str, where: str) -> str:
    if key not in item:
        raise ConstitutionError(f"{where}: missing field '{key}'")
    value = item[key]
    if not isinstance(value, str):
        raise ConstitutionError(f"{where}: {key} must be text, got {type(value).__name__}")
    if not value.strip():
        raise ConstitutionError(f"{where}: {key} is empty")
    return " ".join(value.split())


def _mapping(item: Any, fields: Sequence[str], optional: Sequence[str], where: str
             ) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise ConstitutionError(f"{where}: expected a mapping with {', '.join(fields)}")
    unknown = sorted(set(item) - set(fields) - set(optional))
    if unknown:
        raise ConstitutionError(f"{where}: unknown field '{unknown[0]}' "
                                f"(fields: {', '.join((*fields, *optional))})")
    return item


def _principles(items: Any, src: str) -> tuple[Principle, ...]:
    if not isinstance(items, list) or not items:
        raise ConstitutionError(f"{src}: 'principles' must be a non-empty list")
    out: list[Principle] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{src}: principles[{i}]"
        item = _mapping(item, PRINCIPLE_FIELDS, (), where)
        pid = _text(item, "id", where)
        where = f"{src}: principles[{i}] ('{pid}')"
        if not _ID.match(pid):
            raise ConstitutionError(f"{where}: id may hold only letters, digits, '_' and '-'")
        if pid in seen:
            raise ConstitutionError(f"{where}: duplicate principle id '{pid}'")
        seen.add(pid)
        out.append(Principle(pid, *(_text(item, k, where) for k in PRINCIPLE_FIELDS[1:])))
    return tuple(out)


def _examples(items: Any, kind: str, ids: set[str], src: str) -> tuple[Any, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ConstitutionError(f"{src}: examples.{kind} must be a list")
    fields, cls = ((CRITIQUE_FIELDS, CritiqueExample) if kind == "critique"
                   else (COMPARISON_FIELDS, ComparisonExample))
    optional = ("reasoning",) if kind == "comparison" else ()
    out = []
    for i, item in enumerate(items):
        where = f"{src}: examples.{kind}[{i}]"
        item = _mapping(item, fields, optional, where)
        kw = {k: _text(item, k, where) for k in fields}
        kw.update({k: _text(item, k, where) for k in optional if k in item})
        if kw["principle"] not in ids:
            raise ConstitutionError(f"{where}: unknown principle '{kw['principle']}' "
                                    f"(principles: {', '.join(sorted(ids))})")
        if kind == "comparison" and kw["answer"].strip("()") not in ANSWERS:
            raise ConstitutionError(f"{where}: answer must be A or B, got {kw['answer']!r}")
        if kind == "comparison":
            kw["answer"] = kw["answer"].strip("()")
        out.append(cls(**kw))
    return tuple(out)


def parse_constitution(data: Any, src: str = "constitution") -> Constitution:
    """A Constitution from its YAML form (already loaded); `src` names it in errors."""
    if not isinstance(data, Mapping):
        raise ConstitutionError(f"{src}: the top level must be a mapping with 'principles'")
    _mapping(data, ("principles",), ("name", "examples"), src)
    if "principles" not in data:
        raise ConstitutionError(f"{src}: missing field 'principles'")
    principles = _principles(data["principles"], src)
    examples = data.get("examples") or {}
    _mapping(examples, (), ("critique", "comparison"), f"{src}: examples")
    ids = {p.id for p in principles}
    name = data.get("name", Path(src).stem)
    if not isinstance(name, str) or not name.strip():
        raise ConstitutionError(f"{src}: name must be non-empty text")
    return Constitution(principles, _examples(examples.get("critique"), "critique", ids, src),
                        _examples(examples.get("comparison"), "comparison", ids, src), name)


def load_constitution(path: str | Path | None = None) -> Constitution:
    """The constitution in the YAML file `path`, validated; None: the built-in default."""
    if path is None:
        text = resources.files("coachlm.constitution").joinpath(DEFAULT_NAME).read_text("utf-8")
        return parse_constitution(yaml.safe_load(text), DEFAULT_NAME)
    path = Path(path)
    if not path.is_file():
        raise ConstitutionError(f"constitution file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConstitutionError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return parse_constitution(data, str(path))


def default_constitution() -> Constitution:
    return load_constitution(None)


__all__ = ["ConstitutionError", "Principle", "CritiqueExample", "ComparisonExample",
           "Constitution", "parse_constitution", "load_constitution", "default_constitution"]
