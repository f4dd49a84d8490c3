"""Attention in fp32 under CPU bf16 autocast (issue 15): the "sdpa_fp32" implementation.

On CPU, SDPA's flash kernel runs its forward and backward about 2.3x slower in bf16 than in
fp32 (world-25m shapes: 6 rows x 8 heads x 90 positions x 64, 18.5 vs 8.2 ms of CPU for forward
+ backward, 1 thread, on an AMX Xeon), while the matmuls around it gain ~5x from AMX. So under
CPU bf16 autocast this implementation casts query, key and value up to fp32, runs transformers'
own SDPA attention with autocast off, and hands bf16 back to the output projection; attention
is a small share of the FLOPs, so the fp32 copies cost little, and its softmax is the more
precise for it. Anywhere else (fp32, GPUs) it is transformers' SDPA attention unchanged, so
masks, packing by position ids and prefix sharing behave exactly as with "sdpa".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_fp32"


def sdpa_fp32_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, in fp32 where it would run in bf16 on CPU: under CPU
    autocast (which casts SDPA's inputs down; Llama's query and key arrive in fp32 from the
    rotary embedding, its value in bf16) or with bf16 inputs. The output is bf16 there."""
    low = query.device.type == "cpu" and (
        torch.is_autocast_enabled("cpu") or torch.bfloat16 in (query.dtype, key.dtype, value.dtype))
    if not low:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                              attention_mask, **kwargs)
    return out.to(torch.bfloat16), weights


AttentionInterface.register(NAME, sdpa_fp32_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks "sdpa" gets


def use_fp32_attention(model: nn.Module) -> bool:
    """Switch a model that attends with "sdpa" to "sdpa_fp32" (in place); whether it did."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True
