"""Reward model: head init, layouts that score identically, save -> load, encoders, LoRA, grouping."""

from __future__ import annotations

import json
import math

import pytest
import torch

from coachlm.data.reward_batches import Group, GroupBatches, build_groups, collate, truncate_group
from coachlm.data.schema import Comparison, Message, Ranking, Response
from coachlm.errors import CoachError
from coachlm.models.load import ModelLoadError, save_pretrained
from coachlm.models.lora import LoRAConfig
from coachlm.models.reward import (RewardModel, build_reward_model, choose_layout,
                                   fit_normalization, load_reward_model, save_reward_model,
                                   score_items, share_saving, share_supported)
from models_fixtures import model as tiny_lm
from models_fixtures import tokenizer


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("base")
    save_pretrained(tiny_lm(seed=0), tok, path)
    return path


def _groups():
    return [Group([1, 7, 8, 9], [[10, 11, 2], [12, 2], [13, 14, 15, 16, 2]],
                  [(0, 1, 0.0, False)], [[1, 2, -1]]),
            Group([1, 20, 21], [[22, 2], [23, 24, 2]], [(1, 0, 0.5, False)], [])]


def test_head_init_and_no_dropout(base_dir, tok):
    rm = build_reward_model(base_dir, tok, seed=3)
    d = rm.head.in_features
    assert rm.head.bias.item() == 0.0
    std = rm.head.weight.std().item()
    assert 0.5 / math.sqrt(d + 1) < std < 1.5 / math.sqrt(d + 1)  # N(0, 1/sqrt(d+1)), d = 32
    assert rm.causal
    assert all(m.p == 0.0 for m in rm.modules() if isinstance(m, torch.nn.Dropout))
    same = build_reward_model(base_dir, tok, seed=3)
    assert torch.equal(rm.head.weight, same.head.weight)  # seeded, reproducible


def test_layouts_give_identical_scores_and_gradients(base_dir, tok):
    rm = build_reward_model(base_dir, tok, seed=0)
    scores, grads = {}, {}
    for layout in ("pad", "pack", "share"):
        rm.zero_grad()
        batch = collate(_groups(), layout, tok.pad_token_id)
        r = rm.rewards(batch)
        (r * torch.arange(1, 6)).sum().backward()
        scores[layout] = r.detach()
        grads[layout] = rm.head.weight.grad.clone()
    for layout in ("pack", "share"):
        torch.testing.assert_close(scores[layout], scores["pad"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grads[layout], grads["pad"], atol=1e-5, rtol=1e-4)


def test_share_layout_counts_tokens_and_targets(tok):
    batch = collate(_groups(), "share", tok.pad_token_id)
    # Unshared: 3 * 4 + (3 + 2 + 5) + 2 * 3 + (2 + 3) = 33 tokens; shared: 14 + 8 = 22.
    assert (batch.num_tokens, batch.processed_tokens) == (33, 22)
    assert batch.input_ids.shape == (2, 16)  # 14 rounded up to a multiple of 16
    # the padding tail restarts its own positions
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 5, 4, 5, 6, 7, 8, 0, 1]
    assert batch.cols.tolist() == [6, 8, 13, 4, 7]
    assert batch.pair_a.tolist() == [0, 4] and batch.pair_b.tolist() == [1, 3]
    assert batch.pair_margin.tolist() == [0.0, 0.5]
    assert batch.rank_index.tolist() == [0, 1] and batch.rank_ranks.tolist() == [1, 2]
    # A response sees the prompt and itself, never a sibling response.
    mask = batch.attention_mask[0, 0]  # (T, T)
    assert mask[7, :4].all() and not mask[7, 4:7].any() and mask[8, 7]
    assert share_saving(_groups()) == pytest.approx(1 - 22 / 33)


def test_build_groups_dedupes_and_skips(tok):
    p = (Message("user", "Say hi."),)
    a, b, c = Response("Hi."), Response("Hello."), Response("Go away.")
    records = [Comparison(prompt=p, a=a, b=c, choice="a", margin=2.0),
               Comparison(prompt=p, a=c, b=b, choice="b"),
               Comparison(prompt=p, a=a, b=b, choice="tie"),
               Comparison(prompt=p, a=a, b=b, choice="both_bad"),
               Ranking(prompt=p, responses=(b, a, c), ranks=(2, 1, 3)),
               Ranking(prompt=(Message("user", "x"),), responses=(a, b), ranks=(1, 1))]
    groups, counts = build_groups(records, tok, margin_scale=0.5)
    assert len(groups) == 1 and len(groups[0].response_ids) == 3  # each response once
    assert groups[0].comparisons == [(0, 1, 1.0, False), (2, 1, 0.0, False)]
    # Group order is first appearance: Hi (0), Go away (1), Hello (2).
    assert groups[0].rankings == [[1, 3, 2]]
    assert counts["skipped_tie"] == counts["skipped_both_bad"] == 1
    assert counts["skipped_ranking_without_order"] == 1
    groups, counts = build_groups(records, tok, ties=True)
    assert (0, 2, 0.0, True) in groups[0].comparisons and counts["ties"] == 1


def test_truncation_keeps_prompt_end_and_reports_cuts():
    g = Group(list(range(10)), [[1, 2, 2], [3, 2]], [(0, 1, 0.0, False)], [])
    short, cut = truncate_group(g, 8)
    assert short.prompt_ids == [5, 6, 7, 8, 9] and cut == 0
    long, cut = truncate_group(Group(list(range(10)), [list(range(9))], [], []), 8)
    assert long.prompt_ids == [6, 7, 8, 9] and long.response_ids == [[0, 1, 2, 3]] and cut == 1


def test_group_batches_resume_and_cover_every_group(tok):
    groups = [Group([1, 5 + i], [[6] * (1 + i % 4) + [2], [7, 2]], [(0, 1, 0.0, False)], [])
              for i in range(20)]
    src = GroupBatches(groups, 4, tok.pad_token_id, "pad", seed=1, bucket_batches=2)
    first = [src.next_batch().input_ids for _ in range(3)]
    state = src.state_dict()
    nxt = src.next_batch().input_ids
    again = GroupBatches(groups, 4, tok.pad_token_id, "pad", seed=1, bucket_batches=2)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch().input_ids, nxt) and len(first) == 3
    seen = sorted(s for seqs, _ in src.epoch_batches() for s in seqs)
    assert seen == list(range(40)) and src.num_sequences == 40


def test_save_load_identical_scores_with_normalization(tmp_path, base_dir, tok):
    rm = build_reward_model(base_dir, tok, seed=0)
    items = [((Message("user", f"What is {i} plus {i}?"),), f"{i} plus {i} is {2 * i}.")
             for i in range(12)]
    raw, _ = score_items(rm, tok, items, batch_size=5)
    rm.gain, rm.bias = fit_normalization(raw)
    normalized = rm.normalize(raw)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalized.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    save_reward_model(rm, tok, tmp_path / "rm", {"source": "test"})
    info = json.loads((tmp_path / "rm" / "reward.json").read_text())
    assert info["gain"] == rm.gain and info["normalization"] == {"source": "test"}
    back = load_reward_model(tmp_path / "rm")
    raw_back, _ = score_items(back, tok, items, batch_size=3, layout="share")
    torch.testing.assert_close(raw_back, raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back.normalize(raw_back), normalized, atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelLoadError, match="not a coachlm reward model"):
        load_reward_model(base_dir)


def test_normalization_needs_spread():
    with pytest.raises(CoachError, match="same raw score"):
        fit_normalization(torch.ones(4))
    gain, bias = fit_normalization(torch.tensor([1.0, 3.0]))
    assert (gain, bias) == (pytest.approx(1.0), pytest.approx(-2.0))


def test_lora_reward_model_trains_adapter_and_head_and_reloads(tmp_path, base_dir, tok):
    rm = build_reward_model(base_dir, tok, lora=LoRAConfig(r=2), seed=0)
    trainable = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= set(trainable)
    with torch.no_grad():  # move the adapter off zero so the merge matters
        for n, p in rm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    batch = collate(_groups(), "pad", tok.pad_token_id)
    before = rm.eval().rewards(batch)
    save_reward_model(rm, tok, tmp_path / "rm")
    assert (tmp_path / "rm" / "adapter" / "adapter_config.json").is_file()
    after = load_reward_model(tmp_path / "rm").rewards(batch)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_encoder_backbone_scores_last_token_with_padding_mask(tok):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32,
                                pad_token_id=tok.pad_token_id), add_pooling_layer=False).eval()
    rm = RewardModel(bert)
    assert not rm.causal and not share_supported(rm, tok.pad_token_id)
    assert choose_layout("auto", rm, tok.pad_token_id) == "pad"
    with pytest.raises(CoachError, match="4-D attention mask"):
        choose_layout("share", rm, tok.pad_token_id)
    batch = collate(_groups(), "pad", tok.pad_token_id)
    together = rm.rewards(batch)
    alone = [rm.rewards(collate([Group(g.prompt_ids, [r], [], [])], "pad", tok.pad_token_id))
             for g in _groups() for r in g.response_ids]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-4)
