"""Preference pairs for DPO: tokenized (prompt, chosen, rejected) and their batch layouts.

A pair is a group of K = 2 responses to one prompt, laid out by `data.layouts` in "pad",
"pack" or "share" (prefix sharing: the prompt computed once for both responses). Sequence
s < B of a batch of B pairs is the chosen response of pair s, sequence B + s its rejected one.
All response tokens are listed as *scored tokens* (the position whose logits predict the token,
the token, and its sequence), so the trainer runs the LM head only on response positions and sums
per sequence. "pad" and "pack" pass no attention mask: the plain causal kernel, and for "pack"
the block-diagonal mask transformers builds from the restarting position ids, run faster than an
explicit 4-D mask; "share" needs its 4-D mask. All three give the same log-probabilities
(tested); which is fastest depends on how long the prompts are relative to the responses (see
`trainers.dpo_logps.choose_layout`).

`num_tokens` counts prompt + response tokens of both sequences of every pair (what an unshared
trainer processes, and what TRL counts), so tokens/s compares work done; `processed_tokens`
counts the non-pad tokens the model actually ran (fewer with "share").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from coachlm.data import layouts
from coachlm.data.chat import encode_prompt, encode_response
from coachlm.data.collate import LengthBatches
from coachlm.data.io import PreferencePair
from coachlm.data.layouts import Layout
from coachlm.data.schema import Prompt


@dataclass(frozen=True)
class Pair:
    """Token ids of one preference pair; responses end with EOS unless truncated."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    prompt_key: tuple[int, ...] = ()  # the full prompt's ids, before truncation

    @property
    def key(self) -> tuple[int, ...]:
        """The prompt's identity (its full ids): what a held-out split keeps on one side."""
        return self.prompt_key or self.prompt_ids


@dataclass(frozen=True)
class PairBatch:
    """Model inputs for B pairs (2B sequences) and the response tokens to score.

    Sequence s < B is the chosen response of pair s, sequence B + s its rejected response.
    Scored token n is `targets[n]`, predicted by the logits at (`pred_rows[n]`, `pred_cols[n]`).
    """

    input_ids: Tensor  # (R, T) int64
    position_ids: Tensor | None  # (R, T) int64; None: 0..T-1 ("pad")
    attention_mask: Tensor | None  # (R, 1, T, T) bool for "share"; None otherwise
    pred_rows: Tensor  # (N,) int64
    pred_cols: Tensor  # (N,) int64
    targets: Tensor  # (N,) int64
    seq_index: Tensor  # (N,) int64 in [0, 2B)
    chosen_lengths: Tensor  # (B,) int64: scored tokens of each chosen response
    rejected_lengths: Tensor  # (B,) int64
    index: Tensor  # (B,) int64: the pairs' positions in the dataset (reference-cache rows)
    num_tokens: int  # prompt + response tokens of the 2B sequences
    processed_tokens: int  # non-pad tokens the model runs
    ref_chosen_logps: Tensor | None = None  # (B,) cached reference logps, when precomputed
    ref_rejected_logps: Tensor | None = None  # (B,)

    @property
    def num_pairs(self) -> int:
        return len(self.index)


# ----------------------------------------------------------------------------- records -> pairs


def truncate(prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int],
             max_length: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
    """Fit prompt + each response into `max_length` (`layouts.truncate`); returns
    (prompt, chosen, rejected, responses cut)."""
    prompt, (chosen, rejected), cut = layouts.truncate(prompt, (chosen, rejected), max_length)
    return tuple(prompt), tuple(chosen), tuple(rejected), cut


def encode_pairs(pairs: Iterable[PreferencePair], tok: Any, max_length: int) -> tuple[list[Pair], Counter]:
    """Tokenize preference pairs through the chat template; returns (pairs, counts).

    Pairs whose responses are identical after truncation are dropped (their DPO gradient is
    zero, yet they would count in the mean); counts say how many were used, cut and dropped.
    """
    out: list[Pair] = []
    counts: Counter = Counter()
    prompts: dict[Prompt, list[int]] = {}
    for pp in pairs:
        if pp.prompt not in prompts:
            prompts[pp.prompt] = encode_prompt(tok, pp.prompt)
        p, c, r, cut = truncate(prompts[pp.prompt], encode_response(tok, pp.chosen.text),
                                encode_response(tok, pp.rejected.text), max_length)
        counts["truncated_responses"] += cut
        if c == r:
            counts["skipped_identical"] += 1
            continue
        out.append(Pair(p, c, r, tuple(prompts[pp.prompt])))
        counts["pairs"] += 1
    return out, counts


def share_saving(pairs: Sequence[Pair]) -> float:
    """Fraction of tokens prefix sharing saves: the prompt counted once instead of twice."""
    return layouts.share_saving((p.prompt_ids, (p.chosen_ids, p.rejected_ids)) for p in pairs)


# ----------------------------------------------------------------------------------- layouts


def collate(pairs: Sequence[Pair], layout: Layout, pad_id: int,
            index: Sequence[int] | None = None,
            width_multiple: int = layouts.WIDTH_MULTIPLE) -> PairBatch:
    """One PairBatch of `pairs` in `layout` ("pad", "pack" or "share"), its rows rounded up to a
    multiple of `width_multiple` tokens (few distinct shapes for oneDNN: `data.layouts`)."""
    b = len(pairs)
    packed = layouts.lay_out([p.prompt_ids for p in pairs],
                             [(p.chosen_ids, p.rejected_ids) for p in pairs], layout, pad_id,
                             numbering=[(i, b + i) for i in range(b)],
                             width_multiple=width_multiple)
    rows, cols, targets, seqs = packed.scored_tokens()  # each (N,)
    per_seq = torch.bincount(seqs, minlength=2 * b)  # (2B,)
    index = torch.arange(b) if index is None else torch.as_tensor(index, dtype=torch.long)
    return PairBatch(
        input_ids=packed.input_ids, position_ids=None if layout == "pad" else packed.position_ids,
        attention_mask=packed.attention_mask() if layout == "share" else None,
        pred_rows=rows, pred_cols=cols, targets=targets, seq_index=seqs,
        chosen_lengths=per_seq[:b], rejected_lengths=per_seq[b:], index=index,
        num_tokens=packed.num_tokens, processed_tokens=packed.processed_tokens)


def with_reference(batch: PairBatch, ref_logps: Tensor) -> PairBatch:
    """`batch` with its cached reference logps; ref_logps: (n_pairs, 2) rows (chosen, rejected)."""
    rows = ref_logps[batch.index]  # (B, 2)
    return replace(batch, ref_chosen_logps=rows[:, 0], ref_rejected_logps=rows[:, 1])


def unit_length(pair: Pair, layout: Layout) -> int:
    """The length that decides padding: the longest sequence, or the whole shared segment."""
    return layouts.unit_length(pair.prompt_ids, (pair.chosen_ids, pair.rejected_ids), layout)


# ------------------------------------------------------------------------------ batch sources


class PairBatches(LengthBatches):
    """Shuffled, optionally length-bucketed batches of `batch_size` pairs in `layout`.

    Bucketing as in `collate.ExampleBatches` (off with `bucket_batches=1`). Without shuffling,
    batches follow length order (reference precomputation, evaluation). With `ref_logps`
    ((n, 2) per pair), every batch carries its cached reference logps.
    """

    def __init__(self, pairs: Sequence[Pair], batch_size: int, pad_id: int, layout: Layout,
                 seed: int = 0, bucket_batches: int = 1, shuffle: bool = True,
                 ref_logps: Tensor | None = None):
        if not pairs:
            raise ValueError("no pairs to batch")
        self.pairs, self.pad_id, self.layout, self.ref_logps = list(pairs), pad_id, layout, ref_logps
        super().__init__(np.array([unit_length(p, layout) for p in self.pairs]), batch_size, seed,
                         bucket_batches, shuffle)

    def _collate(self, idx: np.ndarray) -> PairBatch:
        batch = collate([self.pairs[i] for i in idx], self.layout, self.pad_id, idx)
        return batch if self.ref_logps is None else with_reference(batch, self.ref_logps)

    def next_batch(self) -> PairBatch:
        return self._collate(self._next_indices())

    def epoch_batches(self) -> Iterator[PairBatch]:
        """One pass over the current epoch's order without moving the position."""
        for idx in self._epoch_order(self.epoch):
            yield self._collate(idx)
