"""Tiny Llama presets: sizes, special ids, reproducible init, clear errors."""

from __future__ import annotations

import pytest
import torch

from coachlm.errors import CoachError
from coachlm.models.presets import (PRESETS, build_model, count_parameters, preset_config,
                                    preset_vocab_size)
from models_fixtures import tokenizer


def test_world_tiny_matches_hand_count():
    tok = tokenizer()  # 300 entries
    model = build_model("world-tiny", tok)
    d, f, layers, v = 32, 64, 2, 300
    per_layer = 4 * d * d + 3 * d * f + 2 * d  # q,k,v,o + gate,up,down + two RMSNorms
    assert count_parameters(model) == v * d + layers * per_layer + d  # tied head, final norm


def test_config_takes_ids_from_tokenizer_and_has_no_dropout():
    tok = tokenizer()
    cfg = build_model("world-tiny", tok).config
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (300, 0, 1, 2)
    assert cfg.attention_dropout == 0.0
    assert cfg.tie_word_embeddings


def test_world_small_size_with_a_2k_vocab():
    # 2048 * 192 embedding + 4 layers of (4 * 192^2 + 3 * 192 * 512 + 2 * 192) + final norm
    shape = preset_config("world-small")
    d, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    assert 2048 * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d == 2_164_416


def test_world_25m_is_25m_parameters_with_its_512_vocabulary():
    # issue 15's real shape: 6 layers x 512, head dim 64, 4x MLP, a 512-entry vocabulary
    shape = preset_config("world-25m")
    d, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    assert d // shape["num_attention_heads"] == 64 and layers == 6 and d == 512
    v = preset_vocab_size("world-25m")
    assert v == 512 and preset_vocab_size("world-small") == 2048
    total = v * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d
    assert total == 25_434_624


def test_preset_vocab_size_of_an_unknown_preset_is_an_error():
    with pytest.raises(CoachError, match="world-huge"):
        preset_vocab_size("world-huge")


def test_seed_gives_identical_weights_and_leaves_global_rng_alone():
    tok = tokenizer()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = build_model("world-tiny", tok, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_model("world-tiny", tok, seed=7)
    c = build_model("world-tiny", tok, seed=8)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_dict_preset_overrides_a_named_one():
    model = build_model({"preset": "world-tiny", "num_hidden_layers": 3}, tokenizer())
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 32


def test_unknown_preset_lists_valid_names():
    with pytest.raises(CoachError) as e:
        build_model("world-huge", tokenizer())
    assert all(name in str(e.value) for name in PRESETS)


def test_unknown_setting_is_an_error():
    with pytest.raises(CoachError, match="hidden_sise"):
        build_model({"preset": "world-tiny", "hidden_sise": 8}, tokenizer())
