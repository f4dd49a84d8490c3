"""Batches for causal-LM training: packed blocks (pretraining) and length-bucketed padded
examples (SFT), both as resumable batch sources.

A batch source yields micro-batches forever (epoch after epoch) in an order fixed by
(seed, epoch, position), and its whole state is those integers: a checkpoint stores them and a
resumed run continues with exactly the batch it would have seen next.

Pretraining packs documents end to end (GPT-2 style; Radford et al., 2019): each document is
followed by EOS and the stream is cut into blocks of `seq_len` tokens with no padding. Attention
is left to cross the document boundary inside a block, as GPT-2/nanoGPT do: the EOS tells the
model a new document begins, and no token is wasted on padding.

SFT keeps examples apart (no cross-example attention, which on CPU would need a 4D mask instead
of the fast causal kernel) and pads on the right. To waste little compute on padding, examples are
*length-bucketed*: the epoch's shuffled order is cut into chunks of `bucket_batches` batches,
each chunk is sorted by length and cut into batches, and the batches are shuffled again, so a
batch holds examples of similar length while the epoch stays random.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from coachlm.data.chat import IGNORE_INDEX


@dataclass(frozen=True)
class TokenBatch:
    """A causal-LM micro-batch. Labels are aligned with input_ids (the loss shifts them)."""

    input_ids: Tensor  # (B, T) int64, right-padded with the pad id
    labels: Tensor  # (B, T) int64, IGNORE_INDEX where no loss is taken (prompt, padding)
    attention_mask: Tensor  # (B, T) int64, 1 on real tokens
    num_tokens: int  # real (non-pad) input tokens: what tokens/s counts


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

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._order)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._epoch_order(self.epoch)


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


class BucketedBatches(_Resumable):
    """Length-bucketed, right-padded batches of (input_ids, labels) examples."""

    def __init__(self, examples: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int,
                 pad_id: int, seed: int = 0, bucket_batches: int = 16, shuffle: bool = True):
        if not examples:
            raise ValueError("no examples to batch")
        self.examples = [(torch.tensor(ids, dtype=torch.long), torch.tensor(lab, dtype=torch.long))
                         for ids, lab in examples]
        self.lengths = np.array([len(ids) for ids, _ in examples])
        self.batch_size, self.pad_id = batch_size, pad_id
        self.bucket_batches, self.shuffle = bucket_batches, shuffle
        super().__init__(seed)

    def _epoch_order(self, epoch: int) -> list[np.ndarray]:
        n, bs = len(self.examples), self.batch_size
        if not self.shuffle:
            return [np.arange(i, min(i + bs, n)) for i in range(0, n, bs)]
        rng = _epoch_rng(self.seed, epoch)
        perm = rng.permutation(n)
        chunk = bs * self.bucket_batches
        batches = []
        for start in range(0, n, chunk):
            part = perm[start:start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches.extend(part[i:i + bs] for i in range(0, len(part), bs))
        return [batches[i] for i in rng.permutation(len(batches))]

    def next_batch(self) -> TokenBatch:
        return pad_examples([self.examples[i] for i in self._next_indices()], self.pad_id)

    def epoch_batches(self) -> Iterable[TokenBatch]:
        """One pass over the current epoch's batches without moving the position (evaluation)."""
        for idx in self._epoch_order(self.epoch):
            yield pad_examples([self.examples[i] for i in idx], self.pad_id)
