"""models.fast_ops: the fused RMSNorm and rotary Functions inside transformers' Llama blocks give
transformers' logits bit for bit and its gradients (fp32: to rounding; bf16 autocast: no further
from fp32 than transformers' own), and leave the model a plain LlamaForCausalLM."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama as llama

from coachlm.models.attention import use_fp32_attention
from coachlm.models.fast_ops import (FastLlamaAttention, FastProjectedRMSNorm, FastRMSNorm,
                                     _RMSNormFn, _RotaryFn, use_fast_ops, use_plain_ops)
from coachlm.models.load import load_model, save_pretrained
from coachlm.models.lora_config import LoRAConfig
from tests import models_fixtures as fx

VOCAB = 101


def _pair(seed: int = 0, kv_heads: int = 2) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """A plain transformers Llama (norm weights moved off 1) and a fast copy of it."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv_heads,
                         max_position_embeddings=64, attn_implementation="sdpa", pad_token_id=0)
    torch.manual_seed(seed)
    plain = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    use_fp32_attention(plain)  # what training uses
    fast = copy.deepcopy(plain)
    assert use_fast_ops(fast) == 2 * 3 + 1  # per layer: 2 norms + attention; the final norm
    return plain, fast


def _run(model, bf16: bool = False, **inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(**inputs).logits
    w = torch.linspace(-1, 1, logits.shape[-1])  # a loss touching every logit unequally
    (logits.float() * w).sin().mean().backward()
    return logits.detach().float(), {n: p.grad for n, p in model.named_parameters()
                                     if p.grad is not None}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _inputs() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # left padding
    mask[2, 12:] = 0  # right padding
    packed = torch.tensor([list(range(7)) + list(range(10))])  # two examples in one row
    return {"padded": dict(input_ids=ids, attention_mask=mask),
            "packed": dict(input_ids=ids[:1], position_ids=packed)}


@pytest.mark.parametrize("case", ["padded", "packed"])
def test_fp32_logits_and_every_gradient_match_transformers(case):
    plain, fast = _pair()
    inputs = _inputs()[case]
    logits, grads = _run(plain, **inputs)
    fast_logits, fast_grads = _run(fast, **inputs)
    assert torch.equal(fast_logits, logits)  # the forward is transformers' bit for bit
    assert fast_grads.keys() == grads.keys() and len(grads) == len(list(plain.parameters()))
    for name, grad in grads.items():
        assert _rel(fast_grads[name], grad) < 1e-5, name


@pytest.mark.parametrize("case", ["padded", "packed"])
def test_bf16_autocast_is_as_close_to_fp32_as_transformers(case):
    plain, fast = _pair(seed=2)
    inputs = _inputs()[case]
    ref_logits, ref_grads = _run(plain, **inputs)  # fp32: the reference both are judged by
    logits, grads = _run(plain, bf16=True, **inputs)
    fast_logits, fast_grads = _run(fast, bf16=True, **inputs)
    assert torch.equal(fast_logits, logits)  # bf16 norm outputs: the values autocast cast to
    for name, ref in ref_grads.items():
        assert _rel(fast_grads[name], ref) <= 1.5 * _rel(grads[name], ref) + 2e-3, name


def test_lora_gradients_match_and_frozen_norms_get_none():
    from coachlm.models.lora import peft_lora

    plain, fast = _pair(seed=3)
    cfg = LoRAConfig(r=4, alpha=8.0)
    torch.manual_seed(0)
    plain = peft_lora(plain, cfg, "CAUSAL_LM")
    torch.manual_seed(0)
    fast = peft_lora(fast, cfg, "CAUSAL_LM")
    with torch.no_grad():  # B = 0 at init would leave A's gradient 0
        for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
            if "lora_B" in name:
                p.normal_(0, 0.1)
                q.copy_(p)
    inputs = _inputs()["padded"]
    logits, grads = _run(plain, **inputs)
    fast_logits, fast_grads = _run(fast, **inputs)
    assert _rel(fast_logits, logits) < 1e-6
    assert fast_grads.keys() == grads.keys() and all("lora_" in n for n in grads)
    for name, grad in grads.items():
        assert _rel(fast_grads[name], grad) < 1e-5, name


def test_generation_with_kv_cache_is_unchanged():
    plain, fast = _pair(seed=4)
    ids = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5))
    kwargs = dict(max_new_tokens=8, do_sample=False, output_scores=True,
                  return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        a = plain.generate(ids, **kwargs)
        b = fast.generate(ids, **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    for sa, sb in zip(a.scores, b.scores):
        assert _rel(sb, sa) < 1e-6


def test_a_bf16_model_runs_transformers_forward_bit_for_bit():
    plain, fast = _pair(seed=5)
    plain, fast = plain.to(torch.bfloat16), fast.to(torch.bfloat16)
    ids = _inputs()["padded"]
    with torch.no_grad():
        assert torch.equal(fast(**ids).logits, plain(**ids).logits)


def test_the_model_stays_a_plain_llama(tmp_path):
    plain, fast = _pair(seed=6)
    assert type(fast) is LlamaForCausalLM
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in plain.named_modules()]
    layer = fast.model.layers[0]
    assert isinstance(layer.input_layernorm, llama.LlamaRMSNorm)
    assert type(layer.input_layernorm) is FastProjectedRMSNorm
    assert type(fast.model.norm) is FastRMSNorm  # the final norm feeds the head: stays fp32
    assert type(layer.self_attn) is FastLlamaAttention
    assert use_fast_ops(fast) == 0  # idempotent
    fast.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 plain.state_dict().values()))


def test_use_plain_ops_gives_back_transformers_modules():
    plain, fast = _pair(seed=9)
    assert use_plain_ops(fast) == 2 * 3 + 1
    assert [type(m) for m in fast.modules()] == [type(m) for m in plain.modules()]


def test_build_model_and_load_model_apply_it(tmp_path):
    model = fx.model()
    assert type(model.model.layers[0].self_attn) is FastLlamaAttention
    save_pretrained(model, fx.tokenizer(), tmp_path)
    loaded = load_model(tmp_path, tokenizer=fx.tokenizer())
    assert type(loaded.model.layers[0].post_attention_layernorm) is FastProjectedRMSNorm


def test_other_architectures_are_left_alone():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2))
    assert use_fast_ops(gpt2) == 0


def test_hand_written_backwards_pass_gradcheck():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormFn.apply(x, w, 1e-6, torch.float64),
                                    (x, w))
    q = torch.randn(2, 3, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(2, 1, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    cos, sin = torch.randn(2, 1, 5, 8, dtype=torch.float64, generator=g).unbind(0)
    assert torch.autograd.gradcheck(lambda q, k: _RotaryFn.apply(q, k, cos, sin), (q, k))
    # and the forward is transformers' rotary embedding (any cos/sin, not only cat(f, f))
    exact = llama.apply_rotary_pos_emb(q, k, cos.squeeze(1), sin.squeeze(1))
    for a, b in zip(_RotaryFn.apply(q, k, cos, sin), exact):
        assert torch.allclose(a, b)


def test_dynamo_traces_the_fast_model_in_one_graph():
    _, fast = _pair(seed=8)
    ids = _inputs()["padded"]
    compiled = torch.compile(fast, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(**ids).logits, fast(**ids).logits, atol=1e-5)
