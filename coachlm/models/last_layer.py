"""A causal backbone's last transformer layer at the positions read only (issue 15).

A reward model reads one hidden state per sequence, at its last token; a causal backbone's
last layer is needed everywhere only for its keys and values (what the read positions attend
to). So `hidden_at` runs the backbone up to its last layer, then that layer's input norm and key
and value projections over every position, and its query, attention, output projection and MLP
at the N read positions only, then the final norm there: of the last layer's FLOPs (Llama:
4 d^2 for the attention projections, 3 d f for the MLP, per position) only the key and value
projections remain, ~12% of it at world-25m (d = 512, f = 2,048), so ~1/7 of the backbone's work
goes (6 layers). The values equal the full forward's within rounding (`agrees`, tested).
Measured (`benchmarks/pair_ab.py rm`, world-25m, bf16, 1 thread, forward + backward of the same
batches): 1,843 -> 2,002 tokens per CPU s (+9%).

The policy's losses read at many positions per row (DPO's log-probabilities and SFT's loss:
every response position) through the same `hidden_at`: the reads of a row are its queries, so
the query and output projections, attention and MLP run at no prompt or padding position.
Session 9 ran only the MLP there (`pair_ab.py dpo`, world-25m bf16: +3%); the query side too,
with a row's reads as one attention (session 11, fp32 on an AVX2 CPU, forward + backward of the
same batches in one process): DPO +1% (world-small) / +4% (world-25m), SFT +1-2%, and the
reward model, whose attention gathered keys and values once per read before, +6% (world-small).

The backbone runs through its own forward up to the last layer: a forward pre-hook on that layer
takes its inputs (the residual stream; the mask, rotary cos/sin and the rest of its keyword
arguments) and stops the forward there (`_Reached`), so masks, position ids and LoRA work as in
the full forward. The last layer is then computed here for Llama-style blocks (pre-norm
attention and MLP, rotary embedding,
grouped-query attention; Llama, Mistral and Qwen2 without sliding windows); anything else
(`supported` is false) keeps the full forward. Attention runs in fp32 with autocast off, as
`models.attention`'s "sdpa_fp32" runs it under CPU autocast (faster there than in bf16).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")


class _Reached(Exception):
    """Raised by the pre-hook once the last layer's inputs are taken: the rest of the forward
    (the last layer at every position, the final norm) is skipped."""


def body_of(backbone: nn.Module) -> nn.Module:
    """The transformers body (e.g. `LlamaModel`) inside a possibly peft-wrapped backbone."""
    return getattr(backbone, "get_base_model", lambda: backbone)()


def _last(body: nn.Module) -> nn.Module:
    return body.layers[body.config.num_hidden_layers - 1]


def supported(backbone: nn.Module) -> bool:
    """Whether the backbone's last layer is a block this module computes (see the docstring)."""
    body = body_of(backbone)
    layers, config = getattr(body, "layers", None), getattr(body, "config", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(body, "norm") or config is None:
        return False
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True):
        return False
    layer = _last(body)
    attn = getattr(layer, "self_attn", None)
    return (all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm", "mlp"))
            and attn is not None and all(hasattr(attn, n) for n in ATTENTION_PARTS)
            and all(hasattr(attn, n) for n in ("head_dim", "scaling", "num_key_value_groups"))
            and not hasattr(attn, "q_norm") and not hasattr(attn, "k_norm"))


def sharded(backbone: nn.Module) -> bool:
    """Whether FSDP shards the last layer: its submodules then hold their parameters only
    inside the layer's own forward, so they cannot be called apart (the full forward runs)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    kinds = (FSDPModule, FullyShardedDataParallel)
    body = body_of(backbone)
    layer = _last(body)
    return any(isinstance(m, kinds) for m in (body, *layer.modules()))


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """transformers' rotary embedding, x*cos + rotate_half(x)*sin (Su et al., 2021)."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


def _inputs_of_last_layer(backbone: nn.Module, **inputs: Any) -> tuple[Tensor, dict[str, Any]]:
    """(hidden (R, T, D), the other keyword arguments): what the last layer receives (among
    them the mask transformers built and `position_embeddings`, cos and sin (R or 1, T, hd))."""
    taken: dict[str, Any] = {}

    def take(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        taken["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        taken["kwargs"] = kwargs
        raise _Reached

    handle = _last(body_of(backbone)).register_forward_pre_hook(take, with_kwargs=True)
    try:
        backbone(**inputs)
    except _Reached:
        pass
    finally:
        handle.remove()
    if "hidden" not in taken:
        raise RuntimeError("the backbone's forward never reached its last layer")
    return taken["hidden"], taken["kwargs"]


def read_slots(rows: Tensor, n_rows: int) -> tuple[Tensor, int]:
    """Each read's slot among its row's reads (numbered in the order given) and the most reads
    any row has: the reads of a row become that row's queries, (R, most) with padding."""
    counts = torch.bincount(rows, minlength=n_rows)  # (R,)
    order = torch.argsort(rows, stable=True)  # reads grouped by row, in their given order
    starts = torch.cumsum(counts, 0) - counts  # (R,) first read of each row in `order`
    slots = torch.empty_like(rows)
    slots[order] = torch.arange(len(rows), device=rows.device) - starts[rows[order]]
    return slots, int(counts.max()) if len(rows) else 0


def _last_layer(layer: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor, rows: Tensor,
                cols: Tensor, mask: Tensor | None, position_ids: Tensor | None) -> Tensor:
    """The layer's output (N, D) at (rows, cols); mask: (R, 1, T, T) bool, or None: causal
    within each example of a row, examples starting where the position ids (R or 1, T)
    restart (flash-attention kernels take packing that way, with no mask).

    The reads of each row are that row's queries: one attention per row, (R, H, most reads, T),
    against its keys and values where they are (no copy of them per read). Padding slots see
    the row's first key only (a fully masked query would give NaN); their outputs are never
    read."""
    attn = layer.self_attn
    n, (r, t, _) = len(rows), hidden.shape
    x = layer.input_layernorm(hidden)  # (R, T, D): every position's keys and values need it
    q = attn.q_proj(x[rows, cols]).view(n, -1, attn.head_dim)  # (N, H, hd)
    k = attn.k_proj(x).view(r, t, -1, attn.head_dim).transpose(1, 2)  # (R, Hkv, T, hd)
    v = attn.v_proj(x).view(r, t, -1, attn.head_dim).transpose(1, 2)  # (R, Hkv, T, hd)
    at = rows if cos.shape[0] > 1 else torch.zeros_like(rows)  # position ids per row, or shared
    q = _rotate(q, cos[at, cols][:, None], sin[at, cols][:, None])  # (N, H, hd)
    k = _rotate(k, cos[:, None], sin[:, None])  # (R, Hkv, T, hd)
    if attn.num_key_value_groups > 1:  # grouped-query attention: each kv head serves a group
        k = k.repeat_interleave(attn.num_key_value_groups, dim=1)  # (R, H, T, hd)
        v = v.repeat_interleave(attn.num_key_value_groups, dim=1)  # (R, H, T, hd)
    if mask is None:  # a query sees its example (its row, unpacked) up to itself
        pos = cols if position_ids is None else position_ids[at, cols]  # (N,)
        keys = torch.arange(t, device=cols.device)[None, :]  # (1, T)
        see = (keys <= cols[:, None]) & (keys >= (cols - pos)[:, None])  # (N, T)
    else:
        see = mask[rows, 0, cols]  # (N, T)
    slots, most = read_slots(rows, r)
    queries = q.new_zeros(r, most, *q.shape[1:]).index_put((rows, slots), q)  # (R, S, H, hd)
    sees = see.new_zeros(r, most, t)  # (R, S, T)
    sees[:, :, 0] = True
    sees = sees.index_put((rows, slots), see)
    dtype = v.dtype  # the projections' output dtype (bf16 under autocast), as "sdpa_fp32" returns
    with torch.autocast(hidden.device.type, enabled=False):
        out = F.scaled_dot_product_attention(queries.transpose(1, 2).float(), k.float(), v.float(),
                                             attn_mask=sees[:, None], scale=attn.scaling)
    out = out.transpose(1, 2)[rows, slots].reshape(n, -1).to(dtype)  # (N, H*hd)
    h = hidden[rows, cols] + attn.o_proj(out)  # (N, D)
    return h + layer.mlp(layer.post_attention_layernorm(h))  # (N, D)


def hidden_at(backbone: nn.Module, rows: Tensor, cols: Tensor, **inputs: Any) -> Tensor:
    """The backbone's final hidden states (N, D) at (rows, cols), its last layer computed at
    those positions only (keys and values everywhere). `inputs` go to the backbone (input_ids,
    attention_mask: None or a bool (R, 1, T, T) mask, position_ids, ...); the layer attends
    under the mask transformers hands it (block-diagonal for rows packed by position ids).
    Under a mask of another kind (eager attention's additive one) the layer's own attention
    runs everywhere and only its MLP at the reads. (rows, cols) may repeat."""
    mask = inputs.get("attention_mask")
    if mask is not None and (mask.dim() != 4 or mask.dtype != torch.bool):
        raise ValueError("hidden_at takes no mask (causal) or a bool (R, 1, T, T) mask")
    body = body_of(backbone)
    layer = _last(body)
    hidden, kwargs = _inputs_of_last_layer(backbone, **inputs)
    mask = kwargs.get("attention_mask")  # what the layer receives
    if mask is None or (mask.dim() == 4 and mask.dtype == torch.bool):
        cos, sin = kwargs["position_embeddings"]
        return body.norm(_last_layer(layer, hidden, cos, sin, rows, cols, mask,
                                     kwargs.get("position_ids")))
    h = hidden + layer.self_attn(hidden_states=layer.input_layernorm(hidden), **kwargs)[0]
    h = h[rows, cols]  # (N, D)
    return body.norm(h + layer.mlp(layer.post_attention_layernorm(h)))


def hidden_at_reads(backbone: nn.Module, rows: Tensor, cols: Tensor, **inputs: Any) -> Tensor:
    """The backbone's final hidden states (N, D) at (rows, cols): `hidden_at` where this
    module computes the last layer and FSDP does not shard it, else the full forward, read
    there. For the losses that read every response position (DPO's `sequence_logps`, SFT's
    `labelled_lm_loss`)."""
    if supported(backbone) and not sharded(backbone):
        return hidden_at(backbone, rows, cols, **inputs)
    return backbone(**inputs).last_hidden_state[rows, cols]


def agrees(backbone: nn.Module, atol: float = 1e-4, rtol: float = 1e-3) -> bool:
    """Whether `hidden_at` gives the full forward's last hidden states on a small probe (two
    rows, each read at two positions), in eval mode without gradients."""
    if not supported(backbone):
        return False
    device = next(backbone.parameters()).device
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]], device=device)  # (2, 5)
    rows = torch.tensor([0, 0, 1, 1], device=device)
    cols = torch.tensor([2, 4, 1, 4], device=device)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            kwargs = {"use_cache": False}
            want = backbone(input_ids=ids, **kwargs).last_hidden_state[rows, cols]  # (4, D)
            got = hidden_at(backbone, rows, cols, input_ids=ids, **kwargs)  # (4, D)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError):
        return False
    finally:
        backbone.train(was_training)
    return torch.allclose(want.float(), got.float(), atol=atol, rtol=rtol)
