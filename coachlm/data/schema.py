"""The feedback record schema: the contract between the web app, AI/simulated labelers and trainers.

Everything that produces feedback writes these records; everything that trains reads them.
Records are frozen dataclasses; `to_dict`/`from_dict` give their JSON form, with a `kind` field
naming the record type. A prompt is a conversation (a tuple of messages ending in a user turn);
in JSON it may also be a plain string, read as one user message.

Provenance on every record: who labeled it (`labeler`), what kind of labeler (`source`), which
model and version produced each response (`Response.model`, `Response.model_version`), when
(`created_at`, ISO-8601 UTC) and how long it took (`time_spent_s`).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Mapping, Union

from coachlm.errors import CoachError

ROLES = ("system", "user", "assistant")
SOURCES = ("human", "ai", "simulated", "model")
CHOICES = ("a", "b", "tie", "both_bad")
Role = Literal["system", "user", "assistant"]
Source = Literal["human", "ai", "simulated", "model"]
Choice = Literal["a", "b", "tie", "both_bad"]


class SchemaError(CoachError, ValueError):
    """A record does not match the schema; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def new_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


Prompt = tuple[Message, ...]


@dataclass(frozen=True)
class Response:
    """One model (or human) response, with the model and version that produced it."""

    text: str
    model: str | None = None
    model_version: str | None = None


@dataclass(frozen=True, kw_only=True)
class _Record:
    prompt: Prompt
    id: str = field(default_factory=new_id)
    labeler: str | None = None
    source: Source = "human"
    created_at: str = field(default_factory=utc_now)
    time_spent_s: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The last user turn: the instruction itself."""
        return self.prompt[-1].content


@dataclass(frozen=True, kw_only=True)
class PromptRecord(_Record):
    """A prompt with no response yet: RL prompts, prompts to sample from or to label."""

    source: Source = "model"


@dataclass(frozen=True, kw_only=True)
class Sample(_Record):
    """A policy's response to a prompt, not yet judged (what `coachlm sample` writes)."""

    response: Response
    source: Source = "model"


@dataclass(frozen=True, kw_only=True)
class Demonstration(_Record):
    """An ideal response, written or edited by a labeler (SFT data)."""

    response: Response


@dataclass(frozen=True, kw_only=True)
class Comparison(_Record):
    """A pairwise judgement: `a` better, `b` better, a tie, or both bad.

    `margin` is the optional strength of the preference (e.g. 1 slightly, 3 much better),
    usable as a Bradley-Terry margin (Touvron et al., 2023). `shown_order` records which
    response the labeler saw first ("ab" or "ba") so that position bias can be measured.
    """

    a: Response
    b: Response
    choice: Choice
    margin: float | None = None
    shown_order: str | None = None

    def chosen_rejected(self) -> tuple[Response, Response] | None:
        """(chosen, rejected), or None for a tie / both bad."""
        if self.choice == "a":
            return self.a, self.b
        if self.choice == "b":
            return self.b, self.a
        return None


@dataclass(frozen=True, kw_only=True)
class Ranking(_Record):
    """K responses ordered best to worst: `ranks[i]` is the rank of `responses[i]`.

    Rank 1 is best; equal ranks are ties; None leaves a response unranked (a partial ranking).
    """

    responses: tuple[Response, ...]
    ranks: tuple[int | None, ...]

    def pairs(self) -> list[tuple[int, int]]:
        """All (better, worse) index pairs implied by the ranking (ties and unranked skipped)."""
        out = []
        for i, ri in enumerate(self.ranks):
            for j, rj in enumerate(self.ranks):
                if ri is not None and rj is not None and ri < rj:
                    out.append((i, j))
        return out


@dataclass(frozen=True, kw_only=True)
class Rating(_Record):
    """A Likert score (1..scale) of one response, with flags and a free-text critique."""

    response: Response
    score: int
    scale: int = 7
    flags: tuple[str, ...] = ()
    critique: str = ""


Record = Union[PromptRecord, Sample, Demonstration, Comparison, Ranking, Rating]
KINDS: dict[str, type] = {
    "prompt": PromptRecord,
    "sample": Sample,
    "demonstration": Demonstration,
    "comparison": Comparison,
    "ranking": Ranking,
    "rating": Rating,
}
KIND_OF = {cls: kind for kind, cls in KINDS.items()}


# ---------------------------------------------------------------- JSON form


def as_prompt(value: Any, where: str = "prompt") -> Prompt:
    """A string (one user turn) or a list of {role, content} messages, as a Prompt."""
    if isinstance(value, str):
        return (Message("user", value),)
    if isinstance(value, (list, tuple)) and value:
        msgs = []
        for i, m in enumerate(value):
            if isinstance(m, Message):
                msgs.append(m)
                continue
            if not isinstance(m, Mapping):
                raise SchemaError(f"{where}[{i}]", "expected an object with role and content")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise SchemaError(f"{where}[{i}].role", f"must be one of {ROLES}, got {role!r}")
            if not isinstance(content, str):
                raise SchemaError(f"{where}[{i}].content", "must be a string")
            msgs.append(Message(role, content))
        return tuple(msgs)
    raise SchemaError(where, "must be a string or a non-empty list of messages")


def _response(value: Any, where: str) -> Response:
    if isinstance(value, str):
        return Response(value)
    if not isinstance(value, Mapping):
        raise SchemaError(where, "must be a string or an object with a text field")
    unknown = set(value) - {"text", "model", "model_version"}
    if unknown:
        raise SchemaError(f"{where}.{sorted(unknown)[0]}", "unknown field")
    text = value.get("text")
    if not isinstance(text, str):
        raise SchemaError(f"{where}.text", "must be a string")
    for key in ("model", "model_version"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise SchemaError(f"{where}.{key}", "must be a string or null")
    return Response(text, value.get("model"), value.get("model_version"))


def _check(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise SchemaError(where, message)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(kind: str, kw: dict[str, Any]) -> None:
    """Cross-field checks that types alone cannot express."""
    _check(kw.get("source", "human") in SOURCES, "source", f"must be one of {SOURCES}")
    if kind == "comparison":
        _check(kw["choice"] in CHOICES, "choice", f"must be one of {CHOICES}, got {kw['choice']!r}")
        m = kw.get("margin")
        _check(m is None or _number(m), "margin", "must be a number or null")
        _check(kw.get("shown_order") in (None, "ab", "ba"), "shown_order", "must be 'ab', 'ba' or null")
    elif kind == "ranking":
        n = len(kw["responses"])
        _check(n >= 2, "responses", "a ranking needs at least 2 responses")
        _check(len(kw["ranks"]) == n, "ranks", f"needs one entry per response ({n})")
        for i, r in enumerate(kw["ranks"]):
            _check(r is None or (isinstance(r, int) and not isinstance(r, bool) and r >= 1),
                   f"ranks[{i}]", "must be an integer >= 1 or null")
    elif kind == "rating":
        scale = kw.get("scale", 7)
        _check(isinstance(scale, int) and scale >= 2, "scale", "must be an integer >= 2")
        s = kw["score"]
        _check(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= scale,
               "score", f"must be an integer in 1..{scale}")
    ts = kw.get("time_spent_s")
    _check(ts is None or (_number(ts) and ts >= 0), "time_spent_s", "must be a number >= 0 or null")


def from_dict(d: Mapping[str, Any]) -> Record:
    """Build a record from its JSON form. Raises SchemaError naming the offending field."""
    if not isinstance(d, Mapping):
        raise SchemaError("", "a record must be a JSON object")
    kind = d.get("kind")
    if kind not in KINDS:
        raise SchemaError("kind", f"must be one of {sorted(KINDS)}, got {kind!r}")
    cls = KINDS[kind]
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names) - {"kind"}
    if unknown:
        raise SchemaError(sorted(unknown)[0], f"unknown field for a {kind} record")
    missing = [n for n, f in names.items()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and n not in d]
    if missing:
        raise SchemaError(missing[0], "missing")
    kw: dict[str, Any] = {}
    for name, value in d.items():
        if name == "kind":
            continue
        if name == "prompt":
            value = as_prompt(value)
        elif name in ("response", "a", "b"):
            value = _response(value, name)
        elif name == "responses":
            _check(isinstance(value, list), name, "must be a list")
            value = tuple(_response(v, f"responses[{i}]") for i, v in enumerate(value))
        elif name in ("ranks", "flags"):
            _check(isinstance(value, list), name, "must be a list")
            value = tuple(value)
            if name == "flags":
                _check(all(isinstance(v, str) for v in value), name, "must be a list of strings")
        elif name == "meta":
            _check(isinstance(value, Mapping), name, "must be an object")
        elif name in ("id", "critique") or (name in ("labeler", "created_at") and value is not None):
            _check(isinstance(value, str), name, "must be a string")
        kw[name] = value
    _validate(kind, kw)
    return cls(**kw)


def to_dict(record: Record) -> dict[str, Any]:
    """The JSON form of a record (inverse of from_dict). Single-user-turn prompts become strings."""
    out: dict[str, Any] = {"kind": KIND_OF[type(record)]}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name == "prompt":
            if len(value) == 1 and value[0].role == "user":
                value = value[0].content
            else:
                value = [dataclasses.asdict(m) for m in value]
        elif isinstance(value, Response):
            value = dataclasses.asdict(value)
        elif f.name == "responses":
            value = [dataclasses.asdict(r) for r in value]
        elif isinstance(value, tuple):
            value = list(value)
        elif f.name == "meta":
            value = dict(value)
        out[f.name] = value
    return out
