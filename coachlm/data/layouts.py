"""Batch layouts for groups of K responses to one prompt: "pad", "pack" and "share".

DPO scores a chosen and a rejected response per prompt (K = 2, `data.pairs`); the reward model
scores the K responses of a prompt that its judgements name (`data.reward_batches`). Both lay
out a batch of B such groups with `lay_out`, in one of three layouts:

  - "pad": one right-padded row per (prompt + response) sequence. Under a causal mask a real
    token never attends to the padding after it, so the plain causal kernel needs no mask;
    encoders take `Packed.padding_mask`.
  - "pack": every sequence is a segment; segments are packed first-fit decreasing into rows as
    wide as the longest (rounded up, below), with position ids restarting at each segment (and
    on a row's padding tail). Given no mask (and no KV cache: `use_cache=False`), transformers
    (>= 4.54) builds the block-diagonal causal mask from such position ids, as SFT's packing relies on;
    `Packed.attention_mask` spells it out for models that do not.
  - "share": prefix sharing. A group is one segment, its prompt then each of its responses; a
    response attends to the prompt and to itself only (`Packed.attention_mask`), with positions
    continuing from the prompt, so the prompt is computed once for all K responses.

Each sequence gets the logits it gets alone in every layout (tested). The caller numbers the
sequences (default: group order, a group's responses consecutively); unshared layouts list
their segments in that order, which decides how ties in the first-fit placement fall. `Packed`
records where each sequence lies, and users read the positions they need from it: the last
token (a reward model's score: `last_positions`) or each response token with the position whose
logits predict it (a policy's log-probability: `scored_tokens`).

Trainers round the row width up to a multiple of `WIDTH_MULTIPLE` tokens (`width_multiple`):
oneDNN compiles and caches matmul kernels per input shape, and tight widths give almost every
batch a new shape (see `collate.pack_examples`, which SFT rounds the same way). The padding
tail is inert in every layout: a causal model's real tokens never attend to it, and it forms
its own position-id block (and, with a mask, sees only itself).

`num_tokens` counts the prompt + response tokens of every sequence, what an unshared trainer
(TRL) processes, so tokens/s compares work done; `processed_tokens` counts the non-pad tokens
the model actually runs (fewer with "share").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from coachlm.data.collate import first_fit_decreasing, round_up
from coachlm.errors import CoachError

Layout = Literal["pad", "pack", "share"]
LAYOUTS = ("pad", "pack", "share")
Tokens = Sequence[int]
WIDTH_MULTIPLE = 16  # the trainers' row-width rounding (see the module docstring)

# Two groups small enough to score in any layout, with prompts and responses of unequal
# lengths, so that a wrong position id, mask or placement changes the scores: layout probes.
PROBE: tuple[tuple[Tokens, tuple[Tokens, ...]], ...] = (
    ((5, 6, 7), ((8, 9), (10, 11, 12))),
    ((13, 14), ((15,), (16, 17))),
)


def truncate(prompt: Tokens, responses: Sequence[Tokens],
             max_length: int) -> tuple[Tokens, list[Tokens], int]:
    """Fit prompt + each response into `max_length`; returns (prompt, responses, cut).

    As in `chat.encode_example`: the prompt is cut from the left (its end, the request, matters
    most) down to `max_length - longest response` but not below half of `max_length`; a response
    still too long is cut from the right, losing its EOS (`cut` counts those responses, so that
    they are reported, never silently hidden).
    """
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= max_length:
        return prompt, list(responses), 0
    keep = min(len(prompt), max(max_length - longest, max_length // 2))
    prompt = prompt[len(prompt) - keep:]
    room = max_length - len(prompt)
    return prompt, [r[:room] for r in responses], sum(len(r) > room for r in responses)


def share_saving(groups: Iterable[tuple[Tokens, Sequence[Tokens]]]) -> float:
    """Fraction of the tokens prefix sharing saves, over (prompt, responses) groups: each prompt
    runs once instead of K times, so (K - 1) P of K P + sum(L) tokens are saved."""
    saved = full = 0
    for prompt, responses in groups:
        saved += (len(responses) - 1) * len(prompt)
        full += len(responses) * len(prompt) + sum(len(r) for r in responses)
    return saved / max(full, 1)


def unit_length(prompt: Tokens, responses: Sequence[Tokens], layout: Layout) -> int:
    """The length that decides a group's padding: its longest sequence, or its shared segment."""
    if layout == "share":
        return len(prompt) + sum(len(r) for r in responses)
    return len(prompt) + max(len(r) for r in responses)


@dataclass(frozen=True)
class Packed:
    """B groups laid out in R rows: N sequences, indexed by their numbers."""

    input_ids: Tensor  # (R, T) int64, the pad id on padding
    position_ids: Tensor  # (R, T) int64, restarting at each segment and on a row's padding tail
    segment: Tensor  # (R, T) int64: the segment of each token, -1 on padding
    part: Tensor  # (R, T) int64: 0 in a prompt, k in the segment's k-th response (from 1)
    seq_row: Tensor  # (N,) int64: the row a sequence lies in
    seq_start: Tensor  # (N,) int64: the column of its first response token
    seq_length: Tensor  # (N,) int64: its response tokens
    prompt_end: Tensor  # (N,) int64: the column of its prompt's last token, -1 without a prompt
    placed: Tensor  # (N,) int64: sequence numbers in the order they were laid out
    num_tokens: int  # prompt + response tokens of the N sequences
    processed_tokens: int  # non-pad tokens the model runs

    def padding_mask(self) -> Tensor:
        """(R, T) int64, 1 on real tokens."""
        return (self.segment >= 0).long()

    def attention_mask(self) -> Tensor:
        """(R, 1, T, T) bool: query j sees key i iff both lie in one segment, i <= j, and key i
        is in the prompt (part 0) or in j's own response. Padding sees itself only, so no softmax
        row is empty (an all-masked row gives NaN, and NaN * 0 still poisons gradients).

        Built from one code per token, (segment, part) in one integer and a distinct negative
        one per padding column, so that "same segment and (key in the prompt or in the query's
        response)" is two (R, T, T) comparisons: half the time of comparing segment and part
        apart, which mattered at ~500-token rows (the mask is rebuilt for every batch)."""
        seg, part = self.segment, self.part
        width = seg.shape[1]
        col = torch.arange(width)  # (T,)
        big = int(part.max()) + 1
        code = torch.where(seg >= 0, seg * big + part, -1 - col)  # (R, T): padding sees itself
        prompt = torch.where(seg >= 0, seg * big, -1 - width)  # (R, T): the code of j's prompt
        keys = code[:, None, :]  # (R, 1, T)
        see = (keys == code[:, :, None]) | (keys == prompt[:, :, None])  # (R, T, T)
        return (see & (col[None, :] <= col[:, None]))[:, None]

    def last_positions(self) -> tuple[Tensor, Tensor]:
        """(rows, cols), each (N,): where each sequence's last token (its EOS) lies."""
        return self.seq_row, self.seq_start + self.seq_length - 1

    def scored_tokens(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(rows, cols, targets, seqs), each (M,), over every response token in layout order:
        token `targets[m]` of sequence `seqs[m]` is predicted by the logits at (rows[m], cols[m]).

        A token is predicted at the position before it, except a response's first, which the
        prompt's last token predicts (also when a sibling response sits in between); without a
        prompt nothing predicts it, and it is left out.
        """
        lengths = self.seq_length[self.placed]  # (N,) in layout order
        seqs = self.placed.repeat_interleave(lengths)  # (M,)
        first = (torch.cumsum(lengths, 0) - lengths).repeat_interleave(lengths)  # (M,)
        offset = torch.arange(len(seqs)) - first  # (M,): index of the token in its response
        rows, cols = self.seq_row[seqs], self.seq_start[seqs] + offset  # (M,), (M,)
        pred = torch.where(offset == 0, self.prompt_end[seqs], cols - 1)  # (M,)
        keep = pred >= 0
        return rows[keep], pred[keep], self.input_ids[rows, cols][keep], seqs[keep]


Segment = tuple[Tokens, list[tuple[int, Tokens]]]  # (prompt, [(sequence number, response)])


def _segments(prompts: Sequence[Tokens], responses: Sequence[Sequence[Tokens]],
              numbering: Sequence[Sequence[int]], layout: Layout) -> list[Segment]:
    """A whole group per segment when sharing, else one sequence per segment in number order."""
    groups = [(p, list(zip(nums, rs))) for p, rs, nums in zip(prompts, responses, numbering)]
    if layout == "share":
        return groups
    alone = sorted(((n, p, r) for p, members in groups for n, r in members), key=lambda x: x[0])
    return [(p, [(n, r)]) for n, p, r in alone]


def lay_out(prompts: Sequence[Tokens], responses: Sequence[Sequence[Tokens]], layout: Layout,
            pad_id: int, numbering: Sequence[Sequence[int]] | None = None,
            width_multiple: int = 1) -> Packed:
    """Groups (prompts[g], responses[g]) in `layout`. `numbering[g][k]` is the number of the
    sequence prompts[g] + responses[g][k]: a permutation of 0..N-1, by default group order.
    Rows are as wide as the longest segment rounded up to a multiple of `width_multiple`
    (packing fills them to that width)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if numbering is None:  # group order
        offsets = np.cumsum([0] + [len(rs) for rs in responses]).tolist()
        numbering = [range(o, o + len(rs)) for o, rs in zip(offsets, responses)]
    n_seq = sum(len(rs) for rs in responses)
    if sorted(n for nums in numbering for n in nums) != list(range(n_seq)):
        raise ValueError(f"numbering must number the {n_seq} sequences 0..{n_seq - 1}")
    segs = _segments(prompts, responses, numbering, layout)
    lengths = [len(p) + sum(len(r) for _, r in members) for p, members in segs]
    width = round_up(max(lengths), width_multiple)
    if layout == "pad":
        rows = [[s] for s in range(len(segs))]
    else:
        rows = first_fit_decreasing(lengths, width)
    fields = _fill(segs, rows, width, pad_id, n_seq)
    num_tokens = sum(len(p) * len(rs) + sum(len(r) for r in rs)
                     for p, rs in zip(prompts, responses))
    return Packed(**fields, num_tokens=num_tokens,
                  processed_tokens=int((fields["segment"] >= 0).sum()))


def _fill(segs: Sequence[Segment], rows: Sequence[Sequence[int]], width: int, pad_id: int,
          n_seq: int) -> dict[str, Tensor]:
    """Write the segments into their rows; returns Packed's tensor fields. (Filled as numpy
    arrays: a slice assignment there costs a fraction of torch's.)"""
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)  # (R, T)
    position_ids = np.zeros((len(rows), width), dtype=np.int64)  # (R, T)
    segment = np.full((len(rows), width), -1, dtype=np.int64)  # (R, T)
    part = np.zeros((len(rows), width), dtype=np.int64)  # (R, T)
    where = np.zeros((4, n_seq), dtype=np.int64)  # per sequence: row, start, length, prompt end
    placed: list[int] = []
    for row, members in enumerate(rows):
        start = 0
        for s in members:
            prompt, responses = segs[s]
            n_p = len(prompt)
            input_ids[row, start:start + n_p] = prompt
            position_ids[row, start:start + n_p] = np.arange(n_p)
            at = start + n_p
            for k, (number, resp) in enumerate(responses, 1):
                n_r = len(resp)
                input_ids[row, at:at + n_r] = resp
                position_ids[row, at:at + n_r] = np.arange(n_p, n_p + n_r)
                part[row, at:at + n_r] = k
                where[:, number] = (row, at, n_r, start + n_p - 1 if n_p else -1)
                placed.append(number)
                at += n_r
            segment[row, start:at] = s
            start = at
        position_ids[row, start:] = np.arange(width - start)  # padding restarts its own positions
    seq_row, seq_start, seq_length, prompt_end = torch.from_numpy(where)  # (N,) each
    return dict(input_ids=torch.from_numpy(input_ids), position_ids=torch.from_numpy(position_ids),
                segment=torch.from_numpy(segment), part=torch.from_numpy(part), seq_row=seq_row,
                seq_start=seq_start, seq_length=seq_length, prompt_end=prompt_end,
                placed=torch.tensor(placed, dtype=torch.long))


# ---------------------------------------------------------------------------- layout choice


def agrees_with_pad(model: Any, score: Callable[[str], Tensor], layout: str,
                    atol: float, rtol: float) -> bool:
    """Whether `score(layout)` equals `score("pad")` (one row per sequence) on `model`, in eval
    mode without gradients. A model that cannot run the layout at all does not agree."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want, got = score("pad"), score(layout)
    except (RuntimeError, ValueError, TypeError):
        return False
    finally:
        model.train(was_training)
    return torch.allclose(want, got, atol=atol, rtol=rtol)


def resolve_layout(layout: str, candidates: Sequence[str], supported: Callable[[str], bool],
                   error: str) -> str:
    """Resolve "auto" to the first of `candidates` the model supports ("pad" always is); an
    explicit layout other than "pad" that it does not support raises CoachError(`error`)."""
    if layout == "auto":
        return next((c for c in candidates if c == "pad" or supported(c)), "pad")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    if layout != "pad" and not supported(layout):
        raise CoachError(error)
    return layout
