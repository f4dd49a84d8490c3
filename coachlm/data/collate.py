"""Batches for causal-LM training: packed blocks (pretraining) and packed or padded examples
(SFT), both as resumable batch sources.

A batch source yields micro-batches forever (epoch after epoch) in an order fixed by
(seed, epoch, position), and its whole state is those integers: a checkpoint stores them and a
resumed run continues with exactly the batch it would have seen next.

Pretraining packs documents end to end (GPT-2 style; Radford et al., 2019): each document is
followed by EOS and the stream is cut into blocks of `seq_len` tokens with no padding. Attention
is left to cross the document boundary inside a block, as GPT-2/nanoGPT do: the EOS tells the
model a new document begins, and no token is wasted on padding.

SFT keeps examples apart. By default a micro-batch's examples are *packed* (`pack_examples`):
placed end to end in rows (first-fit decreasing) of the width that `pack_geometry` estimates
cheapest (at least the longest example; wider when short examples then share rows), with position
ids restarting at 0 at each example. Given position ids that restart and no attention mask,
transformers (>= 4.54) builds a block-diagonal causal mask, so no example attends to another and
each one's logits equal those it gets alone (tested), while the rows carry far less padding
than one padded row per example (1.4x faster per step on world-small SFT). The alternative,
`pad_examples`, right-pads one row per example.

Packed row widths are multiples of `width_multiple` tokens and a batch's row count is
rounded up to a multiple of `rows_multiple` (extra rows are all padding). Why: oneDNN compiles
and caches matmul kernels per input shape (~0.6 MB each, 1,024 kept); tight packing gives almost
every batch a new (rows, width) shape, and the churning cache fragments the heap (coachlm.memory:
the demo's SFT held 2.6 GB for a 2M-parameter model). Padding stays inert: it carries no labels
and forms its own position-id block, so no real token attends to it.

Optionally, examples are *length-bucketed*: the epoch's shuffled order is cut into chunks of
`bucket_batches` batches, each chunk is sorted by length and cut into batches, and the batches
are shuffled again, so a batch holds examples of similar length (less padding) while the epoch
stays random. It is off by default
(`bucket_batches=1`): when length tracks the kind of example, as in the built-in world, bucketed
batches are each one kind of task, and learning per step was measurably worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from coachlm.data.chat import IGNORE_INDEX


@dataclass(frozen=True)
class TokenBatch:
    """A causal-LM micro-batch. Labels are aligned with input_ids (the loss shifts them)."""

    input_ids: Tensor  # (B, T) int64, rows right-padded with the pad id
    labels: Tensor  # (B, T) int64, IGNORE_INDEX where no loss is taken (prompt, padding)
    attention_mask: Tensor  # (B, T) int64, 1 on real tokens
    num_tokens: int  # real (non-pad) input tokens: what tokens/s counts
    position_ids: Tensor | None = None  # (B, T) int64, restarting per packed example; None: 0..T-1


def pack_documents(docs: Iterable[Sequence[int]], seq_len: int, eos_id: int,
                   bos_id: int | None = None) -> Tensor:
    """Concatenate `[bos] doc eos` for every document and cut into blocks. Returns (N, seq_len).

    The tail that does not fill a whole block is dropped.
    """
    stream: list[int] = []
    for doc in docs:
        if bos_id is not None:
            stream.append(bos_id)
        stream.extend(doc)
        stream.append(eos_id)
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)  # (N, S)


# Attention's cost grows with row width: per token and layer, the matmuls do ~12 d^2 multiply-adds
# and attention over a packed row ~2 T d (scores and values; a block-diagonal mask computes the
# whole T x T), i.e. T / (6 d) of the matmuls' work: T / 3,072 at d_model 512. Attention runs
# slower per FLOP (fp32 under autocast, small matrices), so the estimate weights it ~2x: a row of
# width T costs T * (1 + T / 1600). Measured (world-25m bf16, same batches, one process): 1,600
# beat 800 and 400 (README, Benchmarks: packed widths by cost).
ATTENTION_WIDTH = 1600


def pad_examples(examples: Sequence[tuple[Tensor, Tensor]], pad_id: int) -> TokenBatch:
    """Right-pad (input_ids, labels) pairs of 1-D tensors into one TokenBatch."""
    lengths = [len(ids) for ids, _ in examples]
    b, t = len(examples), max(lengths)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((b, t), dtype=torch.long)  # (B, T)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = ids
        labels[i, : len(lab)] = lab
        attention_mask[i, : len(ids)] = 1
    return TokenBatch(input_ids, labels, attention_mask, sum(lengths))


def pack_examples(examples: Sequence[tuple[Tensor, Tensor]], pad_id: int, width_multiple: int = 1,
                  rows_multiple: int = 1, attention_width: float = ATTENTION_WIDTH) -> TokenBatch:
    """Pack (input_ids, labels) pairs into rows of a width that is a multiple of
    `width_multiple`, chosen by estimated cost (`pack_geometry`); the number of rows is rounded up
    to a multiple of `rows_multiple`.

    First-fit decreasing: longest examples first, each into the first row with room. Each
    example's first label is dropped (IGNORE_INDEX): it would be predicted from the previous
    example. The padding tail of a row (and every padding row) gets its own restarting position
    ids, so it forms a separate (unlabelled) sequence.
    """
    lengths = [len(ids) for ids, _ in examples]
    # rows: the example indices of each row
    width, rows = pack_geometry(lengths, width_multiple, rows_multiple, attention_width)
    rows += [[] for _ in range(round_up(len(rows), rows_multiple) - len(rows))]
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (R, T)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (R, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (R, T)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)  # (R, T)
    positions = torch.arange(width)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            ids, lab = examples[i]
            end = start + len(ids)
            input_ids[r, start:end] = ids
            labels[r, start + 1:end] = lab[1:]
            attention_mask[r, start:end] = 1
            position_ids[r, start:end] = positions[: len(ids)]
            start = end
        position_ids[r, start:] = positions[: width - start]
    return TokenBatch(input_ids, labels, attention_mask, sum(lengths), position_ids)


def pack_geometry(lengths: Sequence[int], width_multiple: int = 16, rows_multiple: int = 1,
                  attention_width: float = ATTENTION_WIDTH) -> tuple[int, list[list[int]]]:
    """The cheapest (width, rows) to pack items of `lengths` into: among widths that are
    multiples of `width_multiple`, from the longest item up to one row holding everything, the
    first-fit-decreasing packing of least estimated cost rows x width x (1 + width /
    attention_width), rows rounded up to `rows_multiple`. Ties go to the narrowest width.

    Why not the longest item's width: one long item then leaves every other row's tail empty; a
    little wider and two short items share a row, or a little narrower (a multiple of 16, not
    of 64) and the tails shrink. Returns the width and the item indices of each row."""
    total = sum(lengths)
    best: tuple[float, int, list[list[int]]] | None = None
    width = round_up(max(lengths), width_multiple)
    while True:
        rows = first_fit_decreasing(lengths, width)
        cost = round_up(len(rows), rows_multiple) * width * (1 + width / attention_width)
        if best is None or cost < best[0]:
            best = (cost, width, rows)
        # Any wider packing costs at least `total` tokens x (1 + width / attention_width); one
        # row holding everything is the widest worth trying.
        if width >= total or total * (1 + width / attention_width) >= best[0]:
            break
        width += width_multiple
    return best[1], best[2]


def round_up(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple` (shared by packing and pair layouts)."""
    return -(-n // multiple) * multiple


def first_fit_decreasing(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Item indices of each row of `width` tokens: longest items first, each into the first row
    with room (a new row when none has). Ties keep the items' order (the sort is stable)."""
    rows: list[list[int]] = []
    fill: list[int] = []  # tokens used in each row
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, used in enumerate(fill) if used + lengths[i] <= width), None)
        if row is None:
            rows.append([])
            fill.append(0)
            row = len(rows) - 1
        rows[row].append(i)
        fill[row] += lengths[i]
    return rows


def bucketed_order(lengths: np.ndarray, batch_size: int, bucket_batches: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches of indices: a random permutation cut into chunks of `bucket_batches`
    batches, each chunk sorted by length (less padding), then the batches shuffled."""
    n = len(lengths)
    perm = rng.permutation(n)
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, n, chunk):
        part = perm[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    # A SeedSequence of (seed, epoch): independent, reproducible streams per epoch.
    return np.random.default_rng([seed, epoch])


class _Resumable:
    """(epoch, position) bookkeeping shared by the batch sources."""

    def __init__(self, seed: int):
        self.seed, self.epoch, self.position = seed, 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[np.ndarray]:
        raise NotImplementedError

    def _next_indices(self) -> np.ndarray:
        if self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        idx = self._order[self.position]
        self.position += 1
        return idx

    def skip_batch(self) -> None:
        """Advance past the next batch without building it (another process takes it)."""
        self._next_indices()

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._order)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._epoch_order(self.epoch)


class LengthBatches(_Resumable):
    """Batches of indices into items of the given lengths (a subclass collates them): shuffled
    and optionally length-bucketed (`bucketed_order`), or, without shuffling, in length order
    (evaluation, scoring, reference precomputation: least padding)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int = 0,
                 bucket_batches: int = 1, shuffle: bool = True):
        self.lengths, self.batch_size = lengths, batch_size
        self.bucket_batches, self.shuffle = bucket_batches, shuffle
        super().__init__(seed)

    def _epoch_order(self, epoch: int) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i:i + bs] for i in range(0, n, bs)]
        return bucketed_order(self.lengths, bs, self.bucket_batches, _epoch_rng(self.seed, epoch))


class PackedBatches(_Resumable):
    """Shuffled batches of packed blocks; labels are the inputs (every token is predicted)."""

    def __init__(self, blocks: Tensor, batch_size: int, seed: int = 0):
        if len(blocks) < batch_size:
            raise ValueError(f"{len(blocks)} blocks are fewer than one batch of {batch_size}")
        self.blocks, self.batch_size = blocks, batch_size  # (N, S)
        self._mask = torch.ones((batch_size, blocks.shape[1]), dtype=torch.long)  # (B, S)
        super().__init__(seed)

    def _epoch_order(self, epoch: int) -> list[np.ndarray]:
        perm = _epoch_rng(self.seed, epoch).permutation(len(self.blocks))
        n = len(perm) // self.batch_size  # drop the last partial batch: all steps equal-sized
        return [perm[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n)]

    def next_batch(self) -> TokenBatch:
        ids = self.blocks[torch.from_numpy(self._next_indices())]  # (B, S)
        return TokenBatch(ids, ids, self._mask, ids.numel())


class ExampleBatches(_Resumable):
    """Shuffled (optionally length-bucketed) batches of (input_ids, labels) examples, packed
    (`pack_examples`, with its width and row rounding) or right-padded (`pad_examples`)."""

    def __init__(self, examples: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int,
                 pad_id: int, seed: int = 0, bucket_batches: int = 1, shuffle: bool = True,
                 pack: bool = True, width_multiple: int = 1, rows_multiple: int = 1):
        if not examples:
            raise ValueError("no examples to batch")
        self.examples = [(torch.tensor(ids, dtype=torch.long), torch.tensor(lab, dtype=torch.long))
                         for ids, lab in examples]
        self.lengths = np.array([len(ids) for ids, _ in examples])
        self.batch_size, self.pad_id = batch_size, pad_id
        self.bucket_batches, self.shuffle = bucket_batches, shuffle
        self._collate = (partial(pack_examples, width_multiple=width_multiple,
                                 rows_multiple=rows_multiple) if pack else pad_examples)
        super().__init__(seed)

    def _epoch_order(self, epoch: int) -> list[np.ndarray]:
        n, bs = len(self.examples), self.batch_size
        if not self.shuffle:
            return [np.arange(i, min(i + bs, n)) for i in range(0, n, bs)]
        return bucketed_order(self.lengths, bs, self.bucket_batches, _epoch_rng(self.seed, epoch))

    def next_batch(self) -> TokenBatch:
        return self._collate([self.examples[i] for i in self._next_indices()], self.pad_id)

    def epoch_batches(self) -> Iterable[TokenBatch]:
        """One pass over the current epoch's batches without moving the position (evaluation)."""
        for idx in self._epoch_order(self.epoch):
            yield self._collate([self.examples[i] for i in idx], self.pad_id)
