"""The AI labeler of RL-CAI (Bai et al., 2022, "Constitutional AI", sec. 4).

For each pair of responses (a, b) to a prompt, a principle is drawn (seeded by the pair, so a
rerun draws the same one) and the feedback model reads

    Consider the following conversation between a human and an assistant:
    Human: ...
    <principle's comparison question>
    Options:
    (A) <a>
    (B) <b>
    The answer is: (

optionally preceded (`few_shot`) by the constitution's worked comparisons in the same form,
answered, as the paper prompted its feedback model few-shot. The label is the normalized
probability of the option tokens, P(A) / (P(A) + P(B)): a soft label (sec. 4.1). With
`both_orders` the question is also asked with the responses swapped and the two probabilities
of `a` averaged, which cancels the feedback model's preference for a position (LLM judges favour
one position; swapping is the usual remedy: Zheng et al., 2023, "Judging LLM-as-a-judge").
With `chain_of_thought` the model first writes its reasoning after "Let's think step by step:"
(greedy), then the option probabilities are read after it, clamped to [0.4, 0.6]: the paper
found chain-of-thought answers nearly always confident, and clamping them to 40-60% gave
better-behaved preference models.

Records: Comparison(source="ai", labeler="ai:<model>", choice = the likelier response,
meta = {principle, probability (P(a better)), p_ab, p_ba, feedback_model, cost, tokens, ...}).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

from coachlm.data.schema import Comparison, Prompt, Record, Response, Sample, Source, as_prompt
from coachlm.errors import CoachError
from coachlm.labelers.base import SampleGroup

OPTIONS = ("A", "B")


@runtime_checkable
class Principle(Protocol):
    """What the AI labeler needs of a principle (`coachlm.constitution.Principle`)."""

    id: str
    comparison_question: str


class Example(Protocol):
    """A worked comparison (`coachlm.constitution.ComparisonExample`), shown few-shot."""

    principle: str
    prompt: str
    a: str
    b: str
    answer: str  # "A" or "B"
    reasoning: str


@runtime_checkable
class FeedbackModel(Protocol):
    """Where the feedback model runs (`labelers.backends`)."""

    name: str

    def option_logprobs(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """log P(option | context) for each context (rows) and option (columns)."""
        ...

    def generate(self, contexts: Sequence[str], max_tokens: int) -> list[str]:
        """Greedy continuations (chain-of-thought reasoning)."""
        ...

    # Optional: `fits(texts, extra_tokens) -> list[bool]`, whether each text plus `extra_tokens`
    # more tokens fits the model's context. A backend that cannot tell (an endpoint) omits it,
    # and the endpoint's own error on a too-long text is a one-line FeedbackModelError.


@dataclass(frozen=True)
class AIConfig:
    both_orders: bool = True  # ask in both orders and average (cancels position bias)
    # Prepend the constitution's worked comparisons (Bai et al., 2022, sec. 4.1 prompted a large
    # pretrained LM few-shot). Off by default: the world's 256-token models have no room for them
    # and learn the task from the world's own comparison demonstrations instead.
    few_shot: bool = False
    chain_of_thought: bool = False
    cot_max_tokens: int = 64
    cot_clamp: tuple[float, float] = (0.4, 0.6)  # Bai et al., 2022 (chain-of-thought labels)
    seed: int = 0  # principle draw (per pair) and, with one order, which order is shown
    batch_size: int = 16  # pairs per call to the feedback model
    cost_per_1k_tokens: float = 0.0  # for meta.cost when the backend counts tokens

    def __post_init__(self) -> None:
        lo, hi = self.cot_clamp
        if not 0.0 <= lo <= 0.5 <= hi <= 1.0:
            raise ValueError("cot_clamp must be (lo, hi) with 0 <= lo <= 0.5 <= hi <= 1")
        if self.batch_size < 1 or self.cot_max_tokens < 1:
            raise ValueError("batch_size and cot_max_tokens must be >= 1")


def render_conversation(prompt: Prompt) -> str:
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n".join(f"{names[m.role]}: {m.content}" for m in prompt)


def question(prompt: Prompt, first: str, second: str, principle: Principle) -> str:
    """The multiple-choice context up to where the option letter goes (module docstring)."""
    return ("Consider the following conversation between a human and an assistant:\n"
            f"{render_conversation(prompt)}\n{principle.comparison_question}\nOptions:\n"
            f"(A) {first}\n(B) {second}\n")


ANSWER = "The answer is: ("
THINK = "Let's think step by step:"


def few_shot(examples: Sequence[Example], principles: Sequence[Principle], cot: bool) -> str:
    """The worked comparisons, each under its own principle's question, answered (with its
    reasoning first in chain-of-thought mode); examples of principles not in use are left out."""
    by_id = {p.id: p for p in principles}
    parts = []
    for e in examples:
        if e.principle in by_id:
            body = question(as_prompt(e.prompt), e.a, e.b, by_id[e.principle])
            if cot and e.reasoning:
                body += f"{THINK} {e.reasoning}\n"
            parts.append(f"{body}{ANSWER}{e.answer})\n\n")
    return "".join(parts)


def pair_key(prompt: Prompt, a: Response, b: Response) -> str:
    """A stable id of a judged pair (prompt, a, b), for principle draws and resuming."""
    text = repr(([(m.role, m.content) for m in prompt], a.text, a.model, a.model_version,
                 b.text, b.model, b.model_version))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def normalize(logprobs: Sequence[float]) -> list[float]:
    """Probabilities of the options renormalized over the options: softmax of their logprobs."""
    top = max(logprobs)
    if not all(math.isfinite(x) or x == -math.inf for x in logprobs) or not math.isfinite(top):
        raise CoachError(f"the feedback model gave unusable option logprobs {list(logprobs)}")
    e = [math.exp(x - top) for x in logprobs]
    return [x / sum(e) for x in e]


@dataclass(frozen=True)
class _Item:
    sample_a: Sample
    sample_b: Sample
    principle: Principle
    key: str
    orders: tuple[str, ...]  # "ab", "ba"


class AILabeler:
    """`label(groups)`: a soft-labelled Comparison for every pair of every group."""

    source: Source = "ai"

    def __init__(self, model: FeedbackModel, principles: Sequence[Principle],
                 cfg: AIConfig = AIConfig(), examples: Sequence[Example] = ()):
        if not principles:
            raise CoachError("the AI labeler needs at least one principle")
        for p in principles:
            if not str(getattr(p, "comparison_question", "")).strip():
                raise CoachError(f"principle {getattr(p, 'id', '?')!r} has an empty "
                                 "comparison question")
        self.model, self.principles, self.cfg = model, list(principles), cfg
        self.prefix = few_shot(examples, principles, cfg.chain_of_thought) if cfg.few_shot else ""
        self.id = f"ai:{model.name}"
        self.skipped_too_long = 0  # pairs whose question exceeds the feedback model's context

    def items(self, groups: Sequence[SampleGroup]) -> list[_Item]:
        """Every pair of every group with its drawn principle and the order(s) to ask in."""
        out = []
        for g in groups:
            for x, y in g.pairs():
                key = pair_key(g.prompt, x.response, y.response)
                rng = random.Random(f"{self.cfg.seed}:{key}")
                principle = self.principles[rng.randrange(len(self.principles))]
                orders = ("ab", "ba") if self.cfg.both_orders else (rng.choice(("ab", "ba")),)
                out.append(_Item(x, y, principle, key, orders))
        return out

    def label(self, groups: Sequence[SampleGroup]) -> list[Record]:
        items = self.items(groups)
        out: list[Record] = []
        for start in range(0, len(items), self.cfg.batch_size):
            out += self.label_items(items[start:start + self.cfg.batch_size])
        return out

    def fitting(self, items: Sequence[_Item]) -> list[_Item]:
        """The items whose every question (in each order, with the answer, or the reasoning
        room in chain-of-thought mode) fits the feedback model's context; the others are
        skipped and counted in `skipped_too_long`: a long pair is not a run error."""
        fits = getattr(self.model, "fits", None)
        if fits is None or not items:
            return list(items)
        extra = 2 + (self.cfg.cot_max_tokens if self.cfg.chain_of_thought else 0)
        texts = [self._context(it, o) + (THINK if self.cfg.chain_of_thought else ANSWER)
                 for it in items for o in it.orders]
        ok, k, keep = fits(texts, extra), 0, []
        for it in items:
            if all(ok[k:k + len(it.orders)]):
                keep.append(it)
            k += len(it.orders)
        self.skipped_too_long += len(items) - len(keep)
        return keep

    def label_items(self, items: Sequence[_Item]) -> list[Comparison]:
        items = self.fitting(items)
        if not items:
            return []
        t0, tokens0 = time.perf_counter(), getattr(self.model, "tokens_used", 0)
        contexts = [self._context(it, order) for it in items for order in it.orders]
        if self.cfg.chain_of_thought:
            reasons = self.model.generate([c + THINK for c in contexts], self.cfg.cot_max_tokens)
            contexts = [c + THINK + r.rstrip() + "\n" + ANSWER for c, r in zip(contexts, reasons)]
        else:
            contexts = [c + ANSWER for c in contexts]
        probs = [normalize(lp) for lp in self.model.option_logprobs(contexts, OPTIONS)]
        seconds = (time.perf_counter() - t0) / max(len(items), 1)
        tokens = (getattr(self.model, "tokens_used", 0) - tokens0) / max(len(items), 1)
        out, k = [], 0
        for it in items:
            p_a = {}
            for order in it.orders:  # P(a better) as read in this order
                p = probs[k][0] if order == "ab" else probs[k][1]
                if self.cfg.chain_of_thought:
                    p = min(max(p, self.cfg.cot_clamp[0]), self.cfg.cot_clamp[1])
                p_a[order], k = p, k + 1
            out.append(self._record(it, sum(p_a.values()) / len(p_a), p_a, seconds, tokens))
        return out

    def _context(self, it: _Item, order: str) -> str:
        a, b = it.sample_a.response.text, it.sample_b.response.text
        first, second = (a, b) if order == "ab" else (b, a)
        return self.prefix + question(it.sample_a.prompt, first, second, it.principle)

    def _record(self, it: _Item, p: float, p_a: dict[str, float], seconds: float,
                tokens: float) -> Comparison:
        choice = "tie" if p == 0.5 else ("a" if p > 0.5 else "b")
        first = it.sample_a.meta
        meta: dict[str, Any] = {k: first[k] for k in ("family", "task_id") if k in first}
        meta.update(principle=it.principle.id, probability=p, p_ab=p_a.get("ab"),
                    p_ba=p_a.get("ba"), feedback_model=self.model.name, pair_key=it.key,
                    chain_of_thought=self.cfg.chain_of_thought,
                    sample_ids=[it.sample_a.id, it.sample_b.id],
                    tokens=round(tokens, 1), cost=tokens / 1000 * self.cfg.cost_per_1k_tokens)
        return Comparison(prompt=it.sample_a.prompt, a=it.sample_a.response,
                          b=it.sample_b.response, choice=choice,
                          shown_order=it.orders[0] if len(it.orders) == 1 else None,
                          labeler=self.id, source="ai", time_spent_s=round(seconds, 4),
                          meta=meta)


def position_bias(records: Sequence[Comparison]) -> dict[str, float | int]:
    """How much the feedback model's answer depends on the order shown, from AI records asked
    in both orders: `first_rate`, the share of single-order answers (two per record) that
    prefer whichever response was shown first (0.5 when unbiased); `flip_rate`, the share of
    records whose preferred response changes with the order (what swapping cancels)."""
    both = [r for r in records if r.meta.get("p_ab") is not None and r.meta.get("p_ba") is not None]
    if not both:
        return {"records": 0, "first_rate": float("nan"), "flip_rate": float("nan")}
    first = sum((r.meta["p_ab"] > 0.5) + (r.meta["p_ba"] < 0.5) for r in both)
    flips = sum((r.meta["p_ab"] > 0.5) != (r.meta["p_ba"] > 0.5) for r in both)
    return {"records": len(both), "first_rate": first / (2 * len(both)),
            "flip_rate": flips / len(both)}


class AIJudge:
    """The AI labeler as a judge: `prefer(prompt, a, b)` is its soft label P(a better)."""

    def __init__(self, labeler: AILabeler):
        self.labeler, self.id = labeler, labeler.id

    def prefer(self, prompt: Prompt, a: str, b: str) -> float:
        group = SampleGroup(prompt, (Sample(prompt=prompt, response=Response(a)),
                                     Sample(prompt=prompt, response=Response(b))))
        return self.labeler.label([group])[0].meta["probability"]

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        raise CoachError("the AI judge compares two responses; it gives no absolute score")
