"""LoRA: targets per architecture, save/reload, the adapter-disabled reference, merging."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from coachlm.errors import CoachError
from coachlm.models.load import load_model, save_pretrained
from coachlm.models.lora import (GPT2_TARGETS, LLAMA_TARGETS, LoRAConfig, adapter_disabled,
                                 apply_lora, merge_lora, trainable_fraction)
from models_fixtures import model as tiny_model
from models_fixtures import tokenizer

IDS = torch.tensor([[1, 4, 20, 30, 40, 50, 60, 5], [1, 4, 70, 80, 90, 100, 110, 5]])


def _logits(model, ids=IDS):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _perturb_adapter(model, seed=0):
    """LoRA starts as the identity (B = 0); give B weights so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _wrapped(model) -> set[str]:
    """Names of the modules that carry a LoRA adapter (e.g. "q_proj")."""
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1]
            for n, _ in model.named_parameters() if "lora_A" in n}


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      vocab_size=len(tokenizer()), bos_token_id=1, eos_token_id=2))


def test_llama_targets_and_trainable_fraction():
    model = apply_lora(tiny_model(), LoRAConfig(r=4, alpha=8))
    assert _wrapped(model) == set(LLAMA_TARGETS)
    # Per layer: r * (in + out) for each projection; d = 32, f = 64, r = 4, 2 layers.
    d, f, r = 32, 64, 4
    lora = 2 * (4 * r * (d + d) + 2 * r * (d + f) + r * (f + d))
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == lora
    assert trainable_fraction(model) == pytest.approx(lora / total)


def test_fresh_adapter_leaves_output_unchanged():
    base = tiny_model()
    expected = _logits(base)
    assert torch.equal(_logits(apply_lora(base, LoRAConfig())), expected)


def test_adapter_disabled_gives_the_base_model():
    base_logits = _logits(tiny_model())
    model = apply_lora(tiny_model(), LoRAConfig(r=4))
    _perturb_adapter(model)
    assert not torch.allclose(_logits(model), base_logits)
    with adapter_disabled(model) as ref:
        assert torch.equal(_logits(ref), base_logits)
    assert not torch.allclose(_logits(model), base_logits)  # back on afterwards


def test_adapter_disabled_refuses_a_plain_model():
    with pytest.raises(TypeError, match="peft"):
        with adapter_disabled(tiny_model()):
            pass


def test_save_adapter_and_merged_model_reload_identically(tmp_path):
    model = apply_lora(tiny_model(), LoRAConfig(r=4))
    _perturb_adapter(model)
    expected = _logits(model)
    out = save_pretrained(model, tokenizer(), tmp_path / "lora")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    # The adapter, in peft format, on a fresh copy of the base weights.
    again = PeftModel.from_pretrained(tiny_model(), str(out / "adapter"))
    assert torch.equal(_logits(again), expected)
    # The merged full model, readable by plain transformers.
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert torch.allclose(_logits(merged), expected, atol=1e-5)
    # The caller's model was not merged in place: its adapter still switches off.
    assert isinstance(model, PeftModel)
    with adapter_disabled(model):
        assert torch.equal(_logits(model), _logits(tiny_model()))


def test_adapter_only_directory_loads_on_its_base(tmp_path):
    save_pretrained(tiny_model(), tokenizer(), tmp_path / "base")
    base = load_model(tmp_path / "base")
    model = apply_lora(base, LoRAConfig(r=4))
    _perturb_adapter(model)
    expected = _logits(model)
    save_pretrained(model, tokenizer(), tmp_path / "run", merged=False)
    assert not (tmp_path / "run" / "config.json").exists()
    again = load_model(tmp_path / "run" / "adapter", tokenizer=tokenizer())
    assert isinstance(again, PeftModel)
    assert torch.equal(_logits(again), expected)


def test_adapter_on_a_model_without_a_local_base_is_a_clear_error(tmp_path):
    model = apply_lora(tiny_model(), LoRAConfig(r=4))  # built in memory: no base path
    save_pretrained(model, tokenizer(), tmp_path, merged=False)
    with pytest.raises(CoachError, match="base model"):
        load_model(tmp_path / "adapter")


def test_merge_lora_matches_the_adapter():
    model = apply_lora(tiny_model(), LoRAConfig(r=4))
    _perturb_adapter(model)
    expected = _logits(model)
    merged = merge_lora(model)
    assert not isinstance(merged, PeftModel)
    assert torch.allclose(_logits(merged), expected, atol=1e-5)


def test_gpt2_targets_conv1d_projections(tmp_path):
    model = apply_lora(_gpt2(), LoRAConfig(r=2))
    assert _wrapped(model) == set(GPT2_TARGETS)
    _perturb_adapter(model)
    expected = _logits(model)
    out = save_pretrained(model, tokenizer(), tmp_path)
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(str(out))), expected, atol=1e-5)
    assert torch.equal(_logits(PeftModel.from_pretrained(_gpt2(), str(out / "adapter"))), expected)


def test_missing_targets_are_a_clear_error():
    with pytest.raises(CoachError, match="target modules"):
        apply_lora(tiny_model(), LoRAConfig(target_modules=("nope",)))
