"""Reward-model batches: preference records grouped by prompt, each response forwarded once.

Records become *groups*: one prompt, its distinct responses, and the judgements over them
(comparisons as index pairs, rankings as rank lists). All records that share a prompt join one
group (up to `max_responses` responses), so every judgement of a prompt lands in one batch and
each response is forwarded once, however many comparisons name it: InstructGPT's fix for
rankings (Ouyang et al., 2022, sec. 3.5), applied to comparisons too. For `simulate_comparisons`
data (all pairs of n samples per prompt) that is n forwards instead of n(n-1).

Groups are laid out by `data.layouts` in "pad" (one right-padded row per sequence, with a 2-D
padding mask that a causal model drops and an encoder uses), "pack" (one segment per sequence,
packed into rows with restarting position ids and an explicit block-diagonal 4-D mask), or
"share" (prefix sharing: a group is one segment, its prompt computed once for all K
responses). All three give the same scores and gradients (tested);
`models.reward.choose_layout` says which runs fastest. Batches are shuffled per epoch and
optionally length-bucketed (`bucket_batches`), as in `collate.ExampleBatches`, and resume
exactly (their state is (seed, epoch, position)).

`num_tokens` counts the prompt + response tokens of every sequence scored, the way an unshared
trainer (TRL) counts them, so tokens/s measures work done; `processed_tokens` counts what the
model actually ran (fewer with "share").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from coachlm.data import layouts
from coachlm.data.chat import encode_prompt, encode_response
from coachlm.data.collate import LengthBatches
from coachlm.data.layouts import Layout
from coachlm.data.schema import Comparison, Prompt, Ranking, Record
from coachlm.errors import CoachError


@dataclass
class Group:
    """One prompt, its distinct responses, and the judgements over them.

    `comparisons` rows are (a, b, margin, tie): response a preferred over b (or a tie);
    `soft` maps a comparison's row number to its soft label P(a better than b) (AI labels,
    RL-CAI; rows not in it are hard: a preferred, probability 1);
    `rankings` rows are rank lists over the group's responses (lower is better, -1: not in it).
    """

    prompt_ids: list[int]
    response_ids: list[list[int]] = field(default_factory=list)
    comparisons: list[tuple[int, int, float, bool]] = field(default_factory=list)
    rankings: list[list[int]] = field(default_factory=list)
    soft: dict[int, float] = field(default_factory=dict)
    prompt_key: tuple[int, ...] = ()  # the full prompt's ids, before truncation

    def records(self) -> int:
        return len(self.comparisons) + len(self.rankings)

    @property
    def key(self) -> tuple[int, ...]:
        """The prompt's identity (its full ids): what a held-out split keeps on one side."""
        return self.prompt_key or tuple(self.prompt_ids)


@dataclass(frozen=True)
class RewardBatch:
    """Model inputs for N scored sequences, and the judgements over them (training only).

    Pair and rank indices point into the N sequences, in group order.
    """

    input_ids: Tensor  # (R, T) int64
    attention_mask: Tensor | None  # (R, T) padding mask ("pad") or (R, 1, T, T) bool ("pack"/"share")
    position_ids: Tensor | None  # (R, T) int64; None: 0..T-1
    rows: Tensor  # (N,) int64: row of each sequence's last token
    cols: Tensor  # (N,) int64: column of each sequence's last token
    num_tokens: int  # prompt + response tokens of the N sequences
    processed_tokens: int  # non-pad tokens the model runs
    pair_a: Tensor  # (C,) int64: preferred response (first of a tie)
    pair_b: Tensor  # (C,) int64
    pair_margin: Tensor  # (C,) float32
    pair_tie: Tensor  # (C,) bool
    pair_target: Tensor  # (C,) float32: P(a better than b); 1 for hard labels
    pair_soft: Tensor  # (C,) bool: a soft label (trained with losses.bradley_terry_soft)
    rank_index: Tensor  # (M,) int64: sequences taking part in a ranking
    rank_ranks: Tensor  # (M,) int64: their ranks, lower is better, -1 unranked
    rank_group: Tensor  # (M,) int64: which ranking record each belongs to
    n_rankings: int  # ranking records with at least one ordered pair

    @property
    def num_sequences(self) -> int:
        return len(self.rows)


# ----------------------------------------------------------------------------- records -> groups


class _Builder:
    """Accumulates the records of one prompt; responses deduplicated by text."""

    def __init__(self, prompt_ids: list[int]):
        self.group = Group(list(prompt_ids), prompt_key=tuple(prompt_ids))
        self.index: dict[str, int] = {}

    def respond(self, text: str, tok: Any) -> int:
        if text not in self.index:
            self.index[text] = len(self.group.response_ids)
            self.group.response_ids.append(encode_response(tok, text))
        return self.index[text]

    def room(self, texts: Iterable[str], limit: int) -> bool:
        new = {t for t in texts if t not in self.index}
        return not self.group.response_ids or len(self.group.response_ids) + len(new) <= limit


def soft_label(r: Comparison) -> float | None:
    """A comparison's soft label `meta["probability"]` = P(a better than b), if it has one."""
    p = r.meta.get("probability")
    if p is None:
        return None
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise CoachError(f"comparison {r.id}: meta.probability must be a number in [0, 1], "
                         f"got {p!r}")
    return float(p)


def build_groups(records: Iterable[Record], tok: Any, *, ties: bool = False,
                 margin_scale: float = 0.0, max_responses: int = 16,
                 soft: bool = False) -> tuple[list[Group], Counter]:
    """Group preference records by prompt; returns (groups, counts of what was used/skipped).

    Comparisons "a"/"b" give a pair (margin = margin_scale * record.margin, 0 when absent);
    ties give a tie pair when `ties`, else are skipped; "both_bad" is always skipped (it says
    nothing about the order), and so is a comparison of a response with itself (its loss is
    log 2 whatever the model, and it could never be scored in order). With `soft`, a comparison
    carrying a soft label (`meta["probability"]`, e.g. from the AI labeler) gives the pair
    (a, b) with that target instead, whatever its choice. Rankings without any ordered pair are
    skipped.
    """
    open_: dict[Prompt, _Builder] = {}
    done: list[Group] = []
    counts: Counter = Counter()
    prompt_cache: dict[Prompt, list[int]] = {}
    for r in records:
        target = soft_label(r) if soft and isinstance(r, Comparison) else None
        if isinstance(r, Comparison):
            if target is None and (r.choice == "both_bad" or (r.choice == "tie" and not ties)):
                counts[f"skipped_{r.choice}"] += 1
                continue
            if r.a.text == r.b.text:
                counts["skipped_identical"] += 1
                continue
            texts = [r.a.text, r.b.text]
        elif isinstance(r, Ranking):
            if not r.pairs():
                counts["skipped_ranking_without_order"] += 1
                continue
            texts = [x.text for x in r.responses]
        else:
            raise TypeError(f"not a preference record: {type(r).__name__}")
        b = open_.get(r.prompt)
        if b is None or not b.room(texts, max_responses):
            if b is not None:
                done.append(b.group)
            if r.prompt not in prompt_cache:
                prompt_cache[r.prompt] = encode_prompt(tok, r.prompt)
            b = open_[r.prompt] = _Builder(prompt_cache[r.prompt])
        idx = [b.respond(t, tok) for t in texts]
        if target is not None:
            b.group.soft[len(b.group.comparisons)] = target
            b.group.comparisons.append((idx[0], idx[1], 0.0, False))
            counts["soft_comparisons"] += 1
        elif isinstance(r, Comparison):
            tie = r.choice == "tie"
            a, w = (idx[0], idx[1]) if r.choice in ("a", "tie") else (idx[1], idx[0])
            margin = margin_scale * (r.margin or 0.0) if not tie else 0.0
            b.group.comparisons.append((a, w, margin, tie))
            counts["ties" if tie else "comparisons"] += 1
        else:
            ranks = [-1] * len(b.group.response_ids)
            for i, rank in zip(idx, r.ranks):
                ranks[i] = -1 if rank is None else rank
            b.group.rankings.append(ranks)
            counts["rankings"] += 1
            counts["ranking_pairs"] += len(r.pairs())
    done.extend(b.group for b in open_.values())
    for g in done:  # rankings recorded before later responses joined the group
        g.rankings = [rk + [-1] * (len(g.response_ids) - len(rk)) for rk in g.rankings]
    return done, counts


def truncate_group(group: Group, max_length: int) -> tuple[Group, int]:
    """Fit every prompt + response into `max_length` tokens (`layouts.truncate`); returns
    (group, responses cut). A comparison whose two responses truncation made identical is
    dropped (see `build_groups`; `group.records()` shows how many remain)."""
    prompt, responses, cut = layouts.truncate(group.prompt_ids, group.response_ids, max_length)
    kept = [k for k, c in enumerate(group.comparisons) if responses[c[0]] != responses[c[1]]]
    comparisons = [group.comparisons[k] for k in kept]
    soft = {new: group.soft[old] for new, old in enumerate(kept) if old in group.soft}
    return Group(list(prompt), responses, comparisons, group.rankings, soft=soft,
                 prompt_key=group.key), cut


def share_saving(groups: Sequence[Group]) -> float:
    """Fraction of tokens prefix sharing saves: 1 - sum(P + sum L) / sum(K P + sum L)."""
    return layouts.share_saving((g.prompt_ids, g.response_ids) for g in groups)


# ----------------------------------------------------------------------------------- layouts


def _targets(groups: Sequence[Group]) -> dict[str, Any]:
    a, b, margin, tie, target, soft = [], [], [], [], [], []
    rank_index, rank_ranks, rank_group = [], [], []
    offset, n_rankings = 0, 0
    for g in groups:
        for k, (i, j, m, t) in enumerate(g.comparisons):
            a.append(offset + i)
            b.append(offset + j)
            margin.append(m)
            tie.append(t)
            target.append(g.soft.get(k, 1.0))
            soft.append(k in g.soft)
        for ranks in g.rankings:
            members = [i for i, rk in enumerate(ranks) if rk >= 0]
            rank_index += [offset + i for i in members]
            rank_ranks += [ranks[i] for i in members]
            rank_group += [n_rankings] * len(members)
            n_rankings += 1
        offset += len(g.response_ids)
    long = dict(dtype=torch.long)
    return dict(pair_a=torch.tensor(a, **long), pair_b=torch.tensor(b, **long),
                pair_margin=torch.tensor(margin, dtype=torch.float32),
                pair_tie=torch.tensor(tie, dtype=torch.bool),
                pair_target=torch.tensor(target, dtype=torch.float32),
                pair_soft=torch.tensor(soft, dtype=torch.bool),
                rank_index=torch.tensor(rank_index, **long),
                rank_ranks=torch.tensor(rank_ranks, **long),
                rank_group=torch.tensor(rank_group, **long), n_rankings=n_rankings)


def collate(groups: Sequence[Group], layout: Layout, pad_id: int,
            width_multiple: int = layouts.WIDTH_MULTIPLE) -> RewardBatch:
    """One RewardBatch of `groups` in `layout` ("pad", "pack" or "share"), its rows rounded up
    to a multiple of `width_multiple` tokens (few distinct shapes for oneDNN: `data.layouts`)."""
    packed = layouts.lay_out([g.prompt_ids for g in groups], [g.response_ids for g in groups],
                             layout, pad_id, width_multiple=width_multiple)
    rows, cols = packed.last_positions()  # (N,), (N,)
    pad = layout == "pad"
    return RewardBatch(input_ids=packed.input_ids,
                       attention_mask=packed.padding_mask() if pad else packed.attention_mask(),
                       position_ids=None if pad else packed.position_ids, rows=rows, cols=cols,
                       num_tokens=packed.num_tokens, processed_tokens=packed.processed_tokens,
                       **_targets(groups))


def unit_length(group: Group, layout: Layout) -> int:
    """The length that decides padding: the longest sequence, or the whole shared segment."""
    return layouts.unit_length(group.prompt_ids, group.response_ids, layout)


# ------------------------------------------------------------------------------ batch sources


class GroupBatches(LengthBatches):
    """Shuffled, optionally length-bucketed batches of `batch_size` groups, collated in `layout`.

    Bucketing as in `collate.ExampleBatches`: the epoch's shuffled order is cut into chunks of
    `bucket_batches` batches, each chunk sorted by length and cut into batches, and the batches
    shuffled again. Without shuffling, batches follow length order (evaluation, scoring).
    """

    def __init__(self, groups: Sequence[Group], batch_size: int, pad_id: int, layout: Layout,
                 seed: int = 0, bucket_batches: int = 1, shuffle: bool = True):
        if not groups:
            raise ValueError("no groups to batch")
        self.groups, self.pad_id, self.layout = list(groups), pad_id, layout
        self._offsets = np.cumsum([0] + [len(g.response_ids) for g in self.groups])
        super().__init__(np.array([unit_length(g, layout) for g in self.groups]), batch_size, seed,
                         bucket_batches, shuffle)

    def next_batch(self) -> RewardBatch:
        return collate([self.groups[i] for i in self._next_indices()], self.layout, self.pad_id)

    @property
    def num_sequences(self) -> int:
        return int(self._offsets[-1])

    def epoch_batches(self) -> Iterator[tuple[list[int], RewardBatch]]:
        """(sequence indices, batch) over the current epoch's order, without moving the position.

        Sequences are numbered in group order (a group's responses consecutively)."""
        for idx in self._epoch_order(self.epoch):
            seqs = [s for g in idx for s in range(self._offsets[g], self._offsets[g + 1])]
            yield seqs, collate([self.groups[i] for i in idx], self.layout, self.pad_id)


def scoring_groups(items: Sequence[tuple[Prompt, str]], tok: Any, max_length: int,
                   max_responses: int = 16) -> tuple[list[Group], list[int], int]:
    """Groups for scoring (prompt, response) items: (groups, item -> sequence index, cut).

    Items with the same prompt share a group (and are scored once when identical); sequence
    indices count responses in group order, as `RewardBatch` rows do.
    """
    builders: dict[Prompt, tuple[int, _Builder]] = {}
    done: list[Group] = []
    where: list[tuple[int, int]] = []  # (group number, response index) per item
    for prompt, text in items:
        number, b = builders.get(prompt, (-1, None))
        if b is None or not b.room([text], max_responses):
            number, b = len(done), _Builder(encode_prompt(tok, prompt))
            builders[prompt] = (number, b)
            done.append(b.group)
        where.append((number, b.respond(text, tok)))
    cut = 0
    for i, g in enumerate(done):
        done[i], c = truncate_group(g, max_length)
        cut += c
    offsets = np.cumsum([0] + [len(g.response_ids) for g in done])
    return done, [int(offsets[g] + k) for g, k in where], cut
