"""The causal-LM loss pretraining and SFT hand to the engine."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coachlm.data.chat import IGNORE_INDEX
from coachlm.data.collate import TokenBatch
from coachlm.engine.loop import LossOut


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
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,) positions with a label
    inputs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    if len(keep) == targets.shape[1]:
        logits = model(**inputs).logits[:, :-1]  # (B, T-1, V)
    else:
        # Only positions some row has a label for go through the LM head (SFT prompts do not).
        logits = model(**inputs, logits_to_keep=keep).logits  # (B, K, V)
        targets = targets[:, keep]  # (B, K)
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    count = int((targets != IGNORE_INDEX).sum())
    return LossOut(loss_sum, count, batch.num_tokens)
