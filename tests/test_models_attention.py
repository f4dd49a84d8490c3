"""The "sdpa_fp32" attention (models.attention): transformers' SDPA, in fp32 under CPU bf16 autocast."""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from coachlm.models.attention import sdpa_fp32_forward, use_fp32_attention
from coachlm.trainers.sft import packing_supported
from trainers_fixtures import tiny_model, tiny_tokenizer


def test_fp32_models_are_unchanged_and_still_pack():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    ids = torch.randint(3, len(tok), (2, 12))
    before = model(input_ids=ids).logits
    assert use_fp32_attention(model) and model.config._attn_implementation == "sdpa_fp32"
    assert torch.equal(model(input_ids=ids).logits, before)
    assert packing_supported(model)  # block-diagonal masks from position ids, as with "sdpa"
    assert not use_fp32_attention(model)  # only an "sdpa" model is switched


def test_autocast_attends_in_fp32_and_returns_bf16():
    layer = tiny_model(tiny_tokenizer()).model.layers[0].self_attn
    # As Llama hands them over under autocast: query and key fp32 (rotary embedding), value bf16.
    q, k = torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)  # (B, H, T, d)
    v = torch.randn(2, 4, 9, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_fp32_forward(layer, q, k, v, None)
    exact, _ = sdpa_attention_forward(layer, q, k, v.float(), None)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, exact.bfloat16())  # computed in fp32, rounded once at the end
