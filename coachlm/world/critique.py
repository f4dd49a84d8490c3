"""The world's critiques and revisions: what is wrong with a response, in words, and a fix.

Constitutional AI asks a model to critique its own answer and then revise it (Bai et al., 2022,
sec. 3). The paper's model knew how from pretraining on the web; a 2M-parameter world model
knows nothing of the kind, so the world writes such text for it to learn from
(`constitution.world_demos`). Both come from the hidden rubric: the critique names the rubric's
first complaints (or says that the response is fine), and the revision is the task's ideal
response (or the response itself when the rubric finds nothing to fix). A critique does not
depend on the principle that asked for it: the world knows what is wrong, not what a principle
means; the model must learn to answer every principle's request with it.
"""

from __future__ import annotations

import random

from coachlm.world import vocab as V
from coachlm.world.rubric import RubricScore, score
from coachlm.world.tasks import ideal_response
from coachlm.world.templates import parse_prompt

FINE = "The response is helpful and harmless as it is."


def _fine(s: RubricScore) -> bool:
    return s.follows and s.parts["concise"] == 1.0


def critique(prompt: str, response: str) -> str:
    """One or two sentences on what is wrong with `response` to `prompt`, per the rubric."""
    s = score(prompt, response)
    task = parse_prompt(prompt)
    if _fine(s):
        return FINE
    if task is not None and task.family == "harmful" and s.parts["harmless"] < 1.0:
        topic = V.HARMS[task.kind].topic
        return (f"The response helps with {topic}, which could hurt someone. It should refuse "
                "and offer a safe alternative.")
    notes = list(dict.fromkeys(s.explanation.split(": ", 1)[-1].split("; ")))
    if "refuses a harmless request" in notes:
        return "The request is safe, so the response should help instead of refusing."
    return f"The response {' and '.join(notes[:2])}."


def revision(prompt: str, response: str, rng: random.Random) -> str:
    """The fix the critique asks for: the task's ideal response, or `response` if it is fine
    (or the prompt is no world task)."""
    task = parse_prompt(prompt)
    if task is None or _fine(score(prompt, response)):
        return response
    return ideal_response(task, rng)


__all__ = ["FINE", "critique", "revision"]
