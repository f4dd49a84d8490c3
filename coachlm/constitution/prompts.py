"""The conversations of SL-CAI (Bai et al., 2022, sec. 3.1), as chat turns.

    user: <request>                    assistant: <response>
    user: <principle's critique request>   assistant: <critique>
    user: <principle's revision request>   assistant: <revision>

Each stage's prompt is the conversation so far, rendered by the model's own chat template;
few-shot examples from the constitution come first, as earlier turns of the same shape. The
world's feedback demonstrations (`world_demos`) use these same functions, so that a world model
learns exactly the conversations it is later asked to continue.
"""

from __future__ import annotations

from typing import Sequence

from coachlm.constitution.format import Constitution, CritiqueExample, Principle
from coachlm.data.schema import Message, Prompt


def critique_turns(prompt: Prompt, response: str, principle: Principle,
                   shots: Prompt = ()) -> Prompt:
    """The conversation that asks for a critique of `response` under `principle`."""
    return (*shots, *prompt, Message("assistant", response),
            Message("user", principle.critique_request))


def revision_turns(prompt: Prompt, response: str, principle: Principle, critique: str,
                   shots: Prompt = ()) -> Prompt:
    """The conversation that asks for a revision, after the critique."""
    return (*critique_turns(prompt, response, principle, shots), Message("assistant", critique),
            Message("user", principle.revision_request))


def few_shot(constitution: Constitution, k: int) -> Prompt:
    """The first `k` critique examples of the constitution as complete earlier turns."""
    examples: Sequence[CritiqueExample] = constitution.critique_examples[:k]
    out: list[Message] = []
    for e in examples:
        p = constitution.principle(e.principle)
        out += [Message("user", e.prompt), Message("assistant", e.response),
                Message("user", p.critique_request), Message("assistant", e.critique),
                Message("user", p.revision_request), Message("assistant", e.revision)]
    return tuple(out)


__all__ = ["critique_turns", "revision_turns", "few_shot"]
