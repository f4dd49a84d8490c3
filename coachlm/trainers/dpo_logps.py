"""Log-probabilities of preference pairs for DPO, and the reference logps cached beside a run.

`sequence_logps` runs the backbone once over a batch (`coachlm.data.pairs`) and the LM head only
at the positions that predict response tokens (the prompt needs no logits), then sums fp32
log-softmax values per sequence. `choose_layout` picks the batch layout that runs fastest and is
exact on the model at hand. The reference logps of every pair are computed once before training
(`compute_reference`) and cached in `out/ref_logps-<key>.pt`, the key hashing the reference
weights, the pairs' tokens and the precision (`cached_reference`), so a rerun or a resumed run
reads them instead of recomputing, and no reference model is in memory while training.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from coachlm.data.layouts import PROBE, agrees_with_pad, resolve_layout
from coachlm.data.pairs import Pair, PairBatch, PairBatches, collate, share_saving
from coachlm.engine.accel import to_device
from coachlm.models import last_layer
from coachlm.models.load import weights_hash
from coachlm.models.head_logprobs import head_logprobs
from coachlm.models.logprobs import backbone_and_head
from coachlm.models.lora import adapter_disabled
from coachlm.models.modes import eval_mode

# Prefix sharing pays when prompts are a fair part of each pair; below some saving its 4-D mask
# costs more than position-id packing. Measured (fwd+bwd of 16-pair batches of world
# comparisons, sharing saves 19% of the tokens, 1 thread, counted tokens per CPU second, issue
# 15): world-small fp32 share 5,370 vs pack 4,790 (+12%); world-25m bf16 with fp32 attention
# share 1,500 vs pack 1,336 (+13%). An earlier measurement (world-small, 2 shared cores) had
# share only matching pack at that saving, hence the former threshold of 0.3; on HH-RLHF
# harmless-base (saves 34%) share was 5% faster than pack.
SHARE_MIN_SAVING = 0.15


def sequence_logps(model: Any, batch: PairBatch) -> Tensor:
    """Summed log-probabilities of the 2B responses of `batch` (chosen first), (2B,) fp32.

    The backbone runs over the whole batch, but its last layer's queries, attention and MLP
    (where the backbone is one `models.last_layer` supports) and the LM head only at the N
    predicting positions: no
    prompt position but the last, no response's last token and no padding needs them.
    """
    device = next(model.parameters()).device
    backbone, head = backbone_and_head(model)
    inputs = dict(
        input_ids=batch.input_ids.to(device),
        position_ids=None if batch.position_ids is None else batch.position_ids.to(device),
        attention_mask=None if batch.attention_mask is None else batch.attention_mask.to(device),
        use_cache=False)
    rows, cols = batch.pred_rows.to(device), batch.pred_cols.to(device)  # (N,), (N,)
    hidden = last_layer.hidden_at_reads(backbone, rows, cols, **inputs)  # (N, D)
    token_logps = head_logprobs(head, hidden, batch.targets.to(device))  # (N,)
    n_seq = 2 * batch.num_pairs
    return token_logps.new_zeros(n_seq).index_add(0, batch.seq_index.to(device), token_logps)


def layout_supported(model: Any, layout: str, pad_id: int) -> bool:
    """Whether `layout` gives the same logps as one padded row per sequence on this model."""
    probe = [Pair(prompt, *responses) for prompt, responses in PROBE]
    return agrees_with_pad(model, lambda lay: sequence_logps(model, collate(probe, lay, pad_id)),
                           layout, atol=1e-4, rtol=1e-4)


def choose_layout(layout: str, model: Any, pairs: Sequence[Pair], pad_id: int) -> str:
    """Resolve "auto": "share" when supported and it saves >= SHARE_MIN_SAVING of the tokens,
    else "pack" when supported, else "pad". An explicit layout the model cannot run is an error."""
    candidates = ("share",) if share_saving(pairs) >= SHARE_MIN_SAVING else ()
    return resolve_layout(layout, (*candidates, "pack", "pad"),
                          lambda lay: layout_supported(model, lay, pad_id),
                          f"layout {layout!r}: {type(model).__name__} does not give packed "
                          "sequences the logps it gives them alone; use layout: pad")


def reference_key(model_dir: Path, pairs: Sequence[Pair], bf16: bool) -> str:
    """Hash of the reference weights, the pairs' tokens (in order) and the precision."""
    h = hashlib.sha256(f"{weights_hash(model_dir, 64)}|bf16={bf16}|n={len(pairs)}".encode())
    for p in pairs:
        for ids in (p.prompt_ids, p.chosen_ids, p.rejected_ids):
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            h.update(b"|")
    return h.hexdigest()[:16]


def compute_reference(model: Any, pairs: Sequence[Pair], pad_id: int, layout: str,
                      batch_size: int, bf16: bool, adapter: bool) -> Tensor:
    """Reference logps of every pair in one no-grad pass: (n, 2) fp32 rows (chosen, rejected).

    Run on the starting weights (the adapter disabled with LoRA), in eval mode and under the
    training precision, so that at step 0 policy and reference logps agree."""
    out = torch.zeros(len(pairs), 2)
    batches = PairBatches(pairs, batch_size, pad_id, layout, shuffle=False)
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad(), \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), \
            (adapter_disabled(model) if adapter else nullcontext()):
        for batch in batches.epoch_batches():
            logps = sequence_logps(model, to_device(batch, device)).float().cpu()  # (2B,)
            out[batch.index] = logps.view(2, -1).T
    return out


def cached_reference(model: Any, model_dir: Path, out_dir: Path, pairs: Sequence[Pair],
                     pad_id: int, layout: str, batch_size: int, bf16: bool,
                     adapter: bool) -> tuple[Tensor, Path, bool]:
    """Load the reference logps cached beside the run, or compute and save them.

    `adapter`: the model is a LoRA model whose base weights are the reference.
    Returns (logps (n, 2), cache file, whether it was reused)."""
    key = reference_key(model_dir, pairs, bf16)
    path = out_dir / f"ref_logps-{key}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == key and saved["logps"].shape == (len(pairs), 2):
            return saved["logps"], path, True
    logps = compute_reference(model, pairs, pad_id, layout, batch_size, bf16, adapter)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, "logps": logps}, tmp)
    tmp.replace(path)
    return logps, path, False
