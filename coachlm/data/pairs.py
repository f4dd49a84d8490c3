"""Preference pairs for DPO: tokenized (prompt, chosen, rejected) and their batch layouts.

A pair's chosen and rejected responses share the prompt. Three layouts turn a batch of B pairs
into model inputs (`collate`); in all of them the 2B sequences' response tokens are listed as
*scored tokens* (the position whose logits predict the token, the token, and which sequence it
belongs to), so the trainer runs the LM head only on response positions and sums per sequence:

  - "pad": one right-padded row per sequence (prompt + chosen, prompt + rejected), as TRL does.
    No attention mask is needed: under the causal mask a real token never attends to the
    padding after it, so the plain causal kernel runs.
  - "pack": the same 2B sequences packed first-fit into rows as wide as the longest, with
    position ids restarting at each sequence; transformers builds the block-diagonal causal
    mask from the position ids (as SFT's packing does), so there is almost no padding.
  - "share": prefix sharing. Each pair is one segment, prompt then chosen then rejected; the
    rejected response attends to the prompt and to itself only, with positions continuing
    from the prompt (a 4-D mask), so the prompt is computed once for both responses.
    The logits at the prompt's last position predict the first token of both responses.
All three give the same log-probabilities (tested); which is fastest depends on how long the
prompts are relative to the responses (see `trainers.dpo.choose_layout`).

`num_tokens` counts prompt + response tokens of both sequences of every pair (what an unshared
trainer processes, and what TRL counts), so tokens/s compares work done; `processed_tokens`
counts the non-pad tokens the model actually ran (fewer with "share").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from coachlm.data.chat import encode_prompt, encode_response
from coachlm.data.collate import _epoch_rng, bucketed_order, _Resumable
from coachlm.data.io import PreferencePair
from coachlm.data.schema import Prompt

Layout = Literal["pad", "pack", "share"]
LAYOUTS = ("pad", "pack", "share")


@dataclass(frozen=True)
class Pair:
    """Token ids of one preference pair; responses end with EOS unless truncated."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]


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
    """Fit prompt + each response into `max_length`; returns (prompt, chosen, rejected, cut).

    As in `chat.encode_example`: the prompt is cut from the left (its end, the request, matters
    most) down to `max_length - longest response` but not below half of `max_length`; a response
    still too long is cut from the right, losing its EOS (`cut` counts those responses).
    """
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return tuple(prompt), tuple(chosen), tuple(rejected), 0
    keep = min(len(prompt), max(max_length - longest, max_length // 2))
    prompt = prompt[len(prompt) - keep:]
    room = max_length - len(prompt)
    cut = (len(chosen) > room) + (len(rejected) > room)
    return tuple(prompt), tuple(chosen[:room]), tuple(rejected[:room]), cut


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
        out.append(Pair(p, c, r))
        counts["pairs"] += 1
    return out, counts


def share_saving(pairs: Sequence[Pair]) -> float:
    """Fraction of tokens prefix sharing saves: the prompt counted once instead of twice."""
    full = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return sum(len(p.prompt_ids) for p in pairs) / max(full, 1)


# ----------------------------------------------------------------------------------- layouts


def _segments(pairs: Sequence[Pair], layout: Layout) -> list[tuple[int, tuple[int, ...], list[tuple[int, ...]]]]:
    """(pair, prompt, responses): one segment per pair when sharing, else one per sequence.

    Responses are listed chosen first; a segment's k-th response is sequence `pair + k * B`
    when sharing, and the sequence named by the segment's order otherwise (see `_scored`).
    """
    if layout == "share":
        return [(i, p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for i, p in enumerate(pairs)]
    return ([(i, p.prompt_ids, [p.chosen_ids]) for i, p in enumerate(pairs)]
            + [(i, p.prompt_ids, [p.rejected_ids]) for i, p in enumerate(pairs)])


def _place(lengths: Sequence[int], width: int, one_per_row: bool) -> list[list[int]]:
    """Segment indices of each row: one per row, or first-fit decreasing into `width` tokens."""
    if one_per_row:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, used in enumerate(fill) if used + lengths[i] <= width), None)
        if r is None:
            rows.append([])
            fill.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        fill[r] += lengths[i]
    return rows


def collate(pairs: Sequence[Pair], layout: Layout, pad_id: int,
            index: Sequence[int] | None = None) -> PairBatch:
    """One PairBatch of `pairs` in `layout` ("pad", "pack" or "share")."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    b = len(pairs)
    segs = _segments(pairs, layout)
    lengths = [len(p) + sum(map(len, rs)) for _, p, rs in segs]
    width = max(lengths)
    placement = _place(lengths, width, one_per_row=layout == "pad")
    input_ids = torch.full((len(placement), width), pad_id, dtype=torch.long)  # (R, T)
    position_ids = torch.zeros(len(placement), width, dtype=torch.long)  # (R, T)
    seg_id = torch.full((len(placement), width), -1, dtype=torch.long)  # (R, T), -1 on padding
    part = torch.zeros(len(placement), width, dtype=torch.long)  # (R, T): 0 prompt, k response k
    scored: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # (rows, predicting cols, tokens, seqs)
    for row, members in enumerate(placement):
        start = 0
        for s in members:
            pair, prompt, responses = segs[s]
            n_p = len(prompt)
            input_ids[row, start:start + n_p] = torch.tensor(prompt, dtype=torch.long)
            position_ids[row, start:start + n_p] = torch.arange(n_p)
            seg_id[row, start:start + n_p] = s
            at = start + n_p
            for k, resp in enumerate(responses):
                n_r = len(resp)
                seq = pair + b * (k if layout == "share" else int(s >= b))
                tokens = torch.tensor(resp, dtype=torch.long)  # (L,)
                input_ids[row, at:at + n_r] = tokens
                position_ids[row, at:at + n_r] = torch.arange(n_p, n_p + n_r)
                seg_id[row, at:at + n_r] = s
                part[row, at:at + n_r] = k + 1
                # Token j is predicted at the position before it, except the first, which the
                # prompt's last token predicts (also when another response sits in between).
                pred = torch.arange(at - 1, at + n_r - 1)  # (L,)
                pred[:1] = start + n_p - 1
                first = 0 if n_p > 0 else min(1, n_r)  # nothing predicts a first token without a prompt
                scored.append((torch.full((n_r - first,), row), pred[first:], tokens[first:],
                               torch.full((n_r - first,), seq)))
                at += n_r
            start = at
        position_ids[row, start:] = torch.arange(width - start)
    rows, cols, targets, seqs = (torch.cat(x) for x in zip(*scored))  # each (N,)
    per_seq = torch.bincount(seqs, minlength=2 * b)  # (2B,)
    mask = _share_mask(seg_id, part) if layout == "share" else None
    index = torch.arange(b) if index is None else torch.as_tensor(index, dtype=torch.long)
    return PairBatch(
        input_ids=input_ids, position_ids=None if layout == "pad" else position_ids,
        attention_mask=mask, pred_rows=rows, pred_cols=cols, targets=targets, seq_index=seqs,
        chosen_lengths=per_seq[:b], rejected_lengths=per_seq[b:], index=index,
        num_tokens=sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs),
        processed_tokens=int((seg_id >= 0).sum()))


def _share_mask(seg_id: Tensor, part: Tensor) -> Tensor:
    """(R, 1, T, T) bool: query j sees key i iff both lie in one segment, i <= j, and key i is
    in the prompt (part 0) or in j's own response. Padding sees itself only, so no softmax row
    is empty (an all-masked row gives NaN, and NaN * 0 still poisons gradients)."""
    width = seg_id.shape[1]
    same = (seg_id[:, :, None] == seg_id[:, None, :]) & (seg_id[:, :, None] >= 0)  # (R, T, T)
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # (T, T)
    visible = (part[:, None, :] == 0) | (part[:, :, None] == part[:, None, :])  # (R, T, T)
    return ((same & causal & visible) | torch.eye(width, dtype=torch.bool))[:, None]


def with_reference(batch: PairBatch, ref_logps: Tensor) -> PairBatch:
    """`batch` with its cached reference logps; ref_logps: (n_pairs, 2) rows (chosen, rejected)."""
    rows = ref_logps[batch.index]  # (B, 2)
    return replace(batch, ref_chosen_logps=rows[:, 0], ref_rejected_logps=rows[:, 1])


def unit_length(pair: Pair, layout: Layout) -> int:
    """The length that decides padding: the longest sequence, or the whole shared segment."""
    if layout == "share":
        return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


# ------------------------------------------------------------------------------ batch sources


class PairBatches(_Resumable):
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
        self.pairs, self.batch_size, self.pad_id, self.layout = list(pairs), batch_size, pad_id, layout
        self.lengths = np.array([unit_length(p, layout) for p in self.pairs])
        self.bucket_batches, self.shuffle, self.ref_logps = bucket_batches, shuffle, ref_logps
        super().__init__(seed)

    def _epoch_order(self, epoch: int) -> list[np.ndarray]:
        n, bs = len(self.pairs), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i:i + bs] for i in range(0, n, bs)]
        return bucketed_order(self.lengths, bs, self.bucket_batches, _epoch_rng(self.seed, epoch))

    def _collate(self, idx: np.ndarray) -> PairBatch:
        batch = collate([self.pairs[i] for i in idx], self.layout, self.pad_id, idx)
        return batch if self.ref_logps is None else with_reference(batch, self.ref_logps)

    def next_batch(self) -> PairBatch:
        return self._collate(self._next_indices())

    def epoch_batches(self) -> Iterator[PairBatch]:
        """One pass over the current epoch's order without moving the position."""
        for idx in self._epoch_order(self.epoch):
            yield self._collate(idx)
