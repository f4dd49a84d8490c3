"""The causal-LM losses pretraining and SFT hand to the engine.

`causal_lm_loss` runs the model's own forward; `labelled_lm_loss` (SFT, where about half of a
batch's positions are prompt or padding) runs the backbone, then the last layer (but its keys
and values) and the LM head only at the positions that predict a labelled token, as DPO does
(`dpo_logps`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coachlm.data.chat import IGNORE_INDEX
from coachlm.data.collate import TokenBatch
from coachlm.engine.loop import LossOut
from coachlm.models import last_layer
from coachlm.models.head_logprobs import head_logprobs
from coachlm.models.logprobs import backbone_and_head


# The LM head runs on positions from the first labelled one on, that start rounded down to a
# multiple of this: with packed widths rounded to a multiple of it too (SFTConfig.pack_width_multiple)
# the head's matmul takes few distinct shapes, so oneDNN's per-shape kernel cache stays small
# (coachlm.memory). The positions this adds before the first label cost a few head rows.
HEAD_START_MULTIPLE = 16
# `labelled_lm_loss` reads a multiple of this many positions (repeats of the first one, with no
# label, fill the rest), for the same reason: few distinct shapes for the head and the last layer
# (a batch of 32 world demonstrations has ~400-600 labels: ~7 shapes, ~16 filler rows).
HEAD_ROWS_MULTIPLE = 32


def causal_lm_loss(model: torch.nn.Module, batch: TokenBatch) -> LossOut:
    """Summed next-token cross-entropy over labelled tokens (all tokens when pretraining,
    response tokens for SFT).

    No attention mask is passed. Padded batches are right-padded, so under the causal mask a
    real token never attends to the padding after it, and positions 0..L-1 of each row are
    already right: skipping the mask keeps the fast causal kernel, and pad positions produce
    outputs no label reads. Packed batches carry restarting position ids, from which
    transformers builds the block-diagonal mask itself (only without a KV cache: use_cache=False).
    """
    targets = batch.labels[:, 1:]  # (B, T-1): the token each position predicts
    labelled = (targets != IGNORE_INDEX).any(dim=0).nonzero()  # (K, 1) positions with a label
    first = int(labelled[0]) if len(labelled) else 0
    start = first - first % HEAD_START_MULTIPLE
    inputs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    if start == 0:
        logits = model(**inputs).logits[:, :-1]  # (B, T-1, V)
    else:
        # Prompt positions before `start` (SFT) skip the LM head: it sees the last T - start
        # positions, of which the last predicts nothing.
        logits = model(**inputs, logits_to_keep=targets.shape[1] + 1 - start).logits[:, :-1]
        targets = targets[:, start:]  # (B, T-1-start)
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    count = int((targets != IGNORE_INDEX).sum())
    return LossOut(loss_sum, count, batch.num_tokens)


def labelled_lm_loss(model: torch.nn.Module, batch: TokenBatch) -> LossOut:
    """`causal_lm_loss` with the last layer (but its keys and values) and the LM head computed
    only at the M positions that predict a labelled token: of an SFT batch of world
    demonstrations ~46% of the positions, so the head's matmul and log-softmax (V = 1,375 at
    world-small) and the last layer shrink by about half. For models whose logits are the head
    of the backbone's last hidden state (`models.logprobs.head_matches`); the loss equals
    `causal_lm_loss`'s up to rounding (tested). The head and its log-softmax are one pass
    (`models.head_logprobs`)."""
    targets = batch.labels[:, 1:]  # (B, T-1): the token each position predicts
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)  # (M,) each
    count = len(rows)
    labels = targets[rows, cols]  # (M,)
    # A batch with no label (prompts only, from a custom batch source) still reads one block
    # of filler rows: the last layer cannot take zero reads; the loss is then an exact 0.
    extra = -count % HEAD_ROWS_MULTIPLE if count else HEAD_ROWS_MULTIPLE
    if extra:  # filler positions: the first one again, unlabelled
        fill = rows.new_zeros(extra)
        rows, cols = torch.cat([rows, fill]), torch.cat([cols, fill])
        labels = torch.cat([labels, labels.new_full((extra,), IGNORE_INDEX)])
    backbone, head = backbone_and_head(model)
    inputs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    hidden = last_layer.hidden_at_reads(backbone, rows, cols, **inputs)  # (M', D)
    loss_sum = -head_logprobs(head, hidden, labels).sum()  # filler rows add 0
    return LossOut(loss_sum, count, batch.num_tokens)
