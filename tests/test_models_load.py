"""Load/save of local HF causal LMs (4 architectures), pad-token repair, clean errors, stories260K."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

from coachlm.errors import CoachError
from coachlm.models.load import load_model, load_tokenizer, save_pretrained, weights_hash
from coachlm.rollout.sampling import SamplingConfig, decode_responses, generate
from models_fixtures import STORIES260K, texts, tokenizer

V = 300
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=V, max_position_embeddings=64)
ARCHS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**SMALL)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                               vocab_size=V)),
}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _no_pad_tokenizer() -> PreTrainedTokenizerFast:
    """A BPE tokenizer with BOS/EOS but no pad token in its vocabulary (like GPT-2's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts(), trainers.BpeTrainer(
        vocab_size=V, special_tokens=["<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_save_then_hf_load_gives_identical_logits(arch, tmp_path):
    torch.manual_seed(0)
    model = ARCHS[arch]().eval()
    ids = torch.randint(3, V, (2, 11))
    out = save_pretrained(model, tokenizer(), tmp_path / arch)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    again = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(again) is type(model)
    assert torch.equal(_logits(again, ids), _logits(model, ids))
    # (transformers would load our tokenizer beside a qwen2 config as a Qwen2Tokenizer.)
    ours = load_model(out, tokenizer=tokenizer()).eval()
    assert torch.equal(_logits(ours, ids), _logits(model, ids))
    assert ours.config.pad_token_id == tokenizer().pad_token_id


def test_dropout_is_off_after_loading(tmp_path):
    torch.manual_seed(0)
    gpt2 = ARCHS["gpt2"]()
    llama = LlamaForCausalLM(LlamaConfig(**SMALL, attention_dropout=0.3))
    for name, model in (("gpt2", gpt2), ("llama", llama)):
        save_pretrained(model, tokenizer(), tmp_path / name)
        loaded = load_model(tmp_path / name).train()
        ids = torch.randint(3, V, (2, 9))
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert load_model(tmp_path / "gpt2").config.resid_pdrop == 0.0
    assert load_model(tmp_path / "llama").model.layers[0].self_attn.attention_dropout == 0.0


def test_load_model_dtype(tmp_path):
    save_pretrained(ARCHS["llama"](), tokenizer(), tmp_path)
    assert next(load_model(tmp_path, dtype="bf16").parameters()).dtype == torch.bfloat16
    assert next(load_model(tmp_path, dtype=torch.float32).parameters()).dtype == torch.float32
    with pytest.raises(CoachError, match="unknown dtype"):
        load_model(tmp_path, dtype="int3")


def test_pad_token_added_and_embeddings_resized(tmp_path):
    torch.manual_seed(0)
    tok = _no_pad_tokenizer()
    assert len(tok) == V and tok.pad_token_id is None
    model = ARCHS["gpt2"]().eval()
    save_pretrained(model, tok, tmp_path)
    tok2 = load_tokenizer(tmp_path)
    assert tok2.pad_token == "<pad>" and tok2.pad_token_id == V and len(tok2) == V + 1
    loaded = load_model(tmp_path, tokenizer=tok2).eval()
    assert loaded.get_input_embeddings().num_embeddings == V + 1
    emb = loaded.get_input_embeddings().weight
    assert torch.allclose(emb[V], emb[:V].mean(dim=0))  # deterministic: the mean of the others
    assert loaded.config.pad_token_id == V and loaded.generation_config.pad_token_id == V
    ids = torch.randint(2, V, (2, 9))
    assert torch.allclose(_logits(loaded, ids)[..., :V], _logits(model, ids), atol=1e-6)


def test_pad_equal_to_eos_is_replaced(tmp_path):
    tok = _no_pad_tokenizer()
    tok.pad_token = tok.eos_token
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert again.pad_token_id != again.eos_token_id and again.pad_token == "<pad>"


def test_existing_pad_string_is_reused_without_growth(tmp_path):
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer().backend_tokenizer,
                                  bos_token="<bos>", eos_token="<eos>")
    assert tok.pad_token_id is None
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert again.pad_token_id == 0 and len(again) == V


def test_missing_and_invalid_paths_raise_coach_errors(tmp_path):
    with pytest.raises(CoachError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(CoachError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(CoachError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(CoachError, match="cannot load"):
        load_model(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CoachError, match="not a directory"):
        load_model(tmp_path / "file")


def test_weights_hash_changes_with_the_weights(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["llama"]()
    save_pretrained(model, tokenizer(), tmp_path / "a")
    save_pretrained(model, tokenizer(), tmp_path / "b")
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0
    save_pretrained(model, tokenizer(), tmp_path / "c")
    ha, hb, hc = (weights_hash(tmp_path / x) for x in "abc")
    assert ha == hb != hc and len(ha) == 12


@pytest.mark.skipif(not STORIES260K.is_dir(), reason="needs ../shared/data (absent in a fresh clone)")
def test_stories260k_loads_and_tells_its_story():
    tok = load_tokenizer(STORIES260K)
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 512  # it has none of its own
    model = load_model(STORIES260K, tokenizer=tok)
    assert model.get_input_embeddings().num_embeddings == 513
    assert model.config.pad_token_id == 512
    # The model ends a story with BOS (SOURCE.md), so BOS is an extra stop token here.
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.0, stop_token_ids=(tok.bos_token_id,))
    text = decode_responses(tok, generate(model, tok, [[tok.bos_token_id]], cfg))[0]
    # The greedy story of llama2.c's test_all.py (verified in SOURCE.md).
    assert text.startswith("Once upon a time, there was a little girl named Lily.")
