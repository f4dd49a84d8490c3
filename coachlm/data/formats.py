"""Foreign record formats: TRL dataset formats and Anthropic HH-RLHF transcripts.

`from_foreign` maps one object (a JSONL line, a Parquet row, a `datasets` row) with no `kind`
field to a schema record. The format is recognised by exactly which *format keys* the object has:

    format keys               format                                   record
    prompt                    TRL prompt-only                          PromptRecord
    prompt, completion        TRL prompt-completion                    Demonstration
    messages                  TRL conversational language modelling    Demonstration
    prompt, chosen, rejected  TRL preference, explicit prompt          Comparison
    chosen, rejected          HH-RLHF transcripts (strings), or TRL    Comparison
                              preference with implicit prompt (lists)

A prompt, completion, chosen or rejected value is a string or, in TRL's conversational variant,
a list of {role, content} messages; a response is the text of the assistant message(s). From a
`messages` conversation (or an implicit-prompt list), the prompt is every turn before the last
assistant turn, which is the response. Comparisons are `a=chosen, b=rejected, choice="a"`.

Columns other than the format keys are kept, not refused (datasets carry ids, scores, sources):
a string or integer `id` becomes the record id (as a string), a `source` naming one of
`schema.SOURCES` becomes the record's source, and every other column goes to `meta["extra"]`.
`meta["format"]` names the format read. Null values count as absent (a Parquet table has a cell
for every column). Imported records get `source="human"` unless a `source` column says
otherwise: HH-RLHF and the usual TRL preference sets were labelled by people (Bai et al., 2022).
(Prompt-only records keep PromptRecord's default, "model".)

TRL's unpaired preference format (prompt, completion, boolean label; used by KTO) is refused:
a thumbs-down completion is not a demonstration, and the schema has no unpaired kind.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping

from coachlm.data.schema import (
    SOURCES,
    Comparison,
    Demonstration,
    Message,
    Prompt,
    PromptRecord,
    Record,
    Response,
    SchemaError,
    as_prompt,
)

FORMAT_KEYS = frozenset({"prompt", "completion", "chosen", "rejected", "messages", "label"})
FORMATS = (
    "canonical (a 'kind' field)",
    "TRL prompt-only {prompt}",
    "TRL prompt-completion {prompt, completion}",
    "TRL conversational {messages}",
    "TRL preference {prompt, chosen, rejected}",
    "HH-RLHF or implicit-prompt preference {chosen, rejected}",
)

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def foreign_id(obj: Mapping[str, Any], n: int) -> str:
    """A stable id for a record that has none: a hash of its content and position.

    Reading the same file twice gives the same ids (so imports are idempotent), and two equal
    lines of one file still get different ids.
    """
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(f"{n}\0{blob}".encode()).hexdigest()[:32]


def from_foreign(obj: Mapping[str, Any], n: int) -> Record:
    """The record for one foreign object (`n` is its 1-based position, used for its id).

    Raises SchemaError naming the offending field, or (field "") saying which formats were tried.
    """
    present = {k: v for k, v in obj.items() if v is not None}
    keys = frozenset(present) & FORMAT_KEYS
    rest = {k: v for k, v in present.items() if k not in FORMAT_KEYS}
    if keys == {"prompt"}:
        name, kw = "trl-prompt-only", {"prompt": as_prompt(present["prompt"])}
        cls: type = PromptRecord
    elif keys == {"prompt", "completion"}:
        name, cls = "trl-prompt-completion", Demonstration
        kw = {"prompt": as_prompt(present["prompt"]),
              "response": Response(_response_text(present["completion"], "completion"))}
    elif keys == {"messages"}:
        name, cls = "trl-conversational", Demonstration
        prompt, text = _split_conversation(present["messages"], "messages")
        kw = {"prompt": prompt, "response": Response(text)}
    elif keys == {"prompt", "chosen", "rejected"}:
        name, cls = "trl-preference", Comparison
        kw = {"prompt": as_prompt(present["prompt"]), "choice": "a",
              "a": Response(_response_text(present["chosen"], "chosen")),
              "b": Response(_response_text(present["rejected"], "rejected"))}
    elif keys == {"chosen", "rejected"}:
        name, cls, kw = _implicit_preference(present["chosen"], present["rejected"])
    elif keys == {"prompt", "completion", "label"}:
        raise SchemaError("label", "unpaired preference (KTO) records are not supported: "
                                   "a rated completion is not a demonstration")
    else:
        raise SchemaError("", f"matches no known record format (keys: {', '.join(sorted(obj))}); "
                              f"tried: {'; '.join(FORMATS)}")
    return cls(**kw, **_provenance(name, rest, obj, n))


def _provenance(name: str, rest: dict[str, Any], obj: Mapping[str, Any], n: int) -> dict[str, Any]:
    """id, source and meta for an imported record; unknown columns are kept in meta["extra"]."""
    out: dict[str, Any] = {"id": foreign_id(obj, n)}
    if isinstance(rest.get("id"), (str, int)) and not isinstance(rest["id"], bool):
        out["id"] = str(rest.pop("id"))
    if rest.get("source") in SOURCES:
        out["source"] = rest.pop("source")
    meta: dict[str, Any] = {"format": name}
    if rest:
        # Parquet cells may be dates or bytes: keep them as JSON can, so records write back.
        meta["extra"] = json.loads(json.dumps(rest, ensure_ascii=False, default=str))
    out["meta"] = meta
    return out


def _response_text(value: Any, where: str) -> str:
    """A completion: a string, or a list of assistant messages (their texts joined)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise SchemaError(where, "must be a string or a non-empty list of messages")
    msgs = as_prompt(value, where)
    for i, m in enumerate(msgs):
        if m.role != "assistant":
            raise SchemaError(f"{where}[{i}].role", f"a response holds assistant messages only, "
                                                    f"got {m.role!r}")
    return "\n\n".join(m.content for m in msgs)


def _split_conversation(value: Any, where: str) -> tuple[Prompt, str]:
    """(turns before the last assistant turn, that turn's text) of a message list."""
    if not isinstance(value, list) or not value:
        raise SchemaError(where, "must be a non-empty list of messages")
    msgs = as_prompt(value, where)
    if msgs[-1].role != "assistant":
        raise SchemaError(f"{where}[{len(msgs) - 1}].role",
                          "the conversation must end with an assistant turn (the response)")
    if len(msgs) < 2:
        raise SchemaError(where, "needs at least one turn before the assistant's response")
    return msgs[:-1], msgs[-1].content


def _implicit_preference(chosen: Any, rejected: Any) -> tuple[str, type, dict[str, Any]]:
    """{chosen, rejected}: two HH-RLHF transcripts, or two TRL conversations with a shared prompt."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        (p_chosen, chosen_text), (p_rejected, rejected_text) = (
            split_hh(chosen, "chosen"), split_hh(rejected, "rejected"))
        name = "hh-rlhf"
    elif isinstance(chosen, list) and isinstance(rejected, list):
        (p_chosen, chosen_text), (p_rejected, rejected_text) = (
            _split_conversation(chosen, "chosen"), _split_conversation(rejected, "rejected"))
        name = "trl-preference-implicit"
    else:
        raise SchemaError("rejected", "chosen and rejected must both be strings (HH-RLHF "
                                      "transcripts) or both lists of messages")
    if p_chosen != p_rejected:
        at = next((i for i, (x, y) in enumerate(zip(p_chosen, p_rejected)) if x != y),
                  min(len(p_chosen), len(p_rejected)))
        raise SchemaError("rejected", f"its prompt (the conversation before the last assistant "
                                      f"turn) differs from chosen's, from turn {at + 1} on")
    kw = {"prompt": p_chosen, "choice": "a", "a": Response(chosen_text),
          "b": Response(rejected_text)}
    return name, Comparison, kw


def split_hh(text: str, where: str) -> tuple[Prompt, str]:
    """Split an HH-RLHF transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." (Bai et al., 2022).

    The response follows the last "\\n\\nAssistant:"; the text before it is the prompt, read as
    turns (Human -> user, Assistant -> assistant). Turn texts are stripped of surrounding space.
    """
    i = text.rfind(HH_ASSISTANT)
    if i < 0:
        raise SchemaError(where, "an HH-RLHF transcript needs a '\\n\\nAssistant:' turn")
    head = text[:i]
    if head.startswith("Human:"):  # some copies drop the leading blank line
        head = "\n\n" + head
    parts = _HH_TURN.split(head)  # [before, role, content, role, content, ...]
    if parts[0].strip() or len(parts) < 3:
        raise SchemaError(where, "an HH-RLHF transcript must start with '\\n\\nHuman:'")
    turns = tuple(Message(_HH_ROLES[role], content.strip())
                  for role, content in zip(parts[1::2], parts[2::2]))
    return turns, text[i + len(HH_ASSISTANT):].strip()
