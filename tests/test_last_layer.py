"""The reward model's last layer at its scored positions only (`models.last_layer`): the same
scores and gradients as the full forward in every layout, fp32 and bf16 autocast, with LoRA and
grouped-query attention; unsupported backbones keep the full forward."""

from __future__ import annotations

import pytest
import torch

from coachlm.data.reward_batches import Group, collate
from coachlm.models import last_layer
from coachlm.models.fast_ops import use_fast_ops
from coachlm.models.lora import LoRAConfig
from coachlm.models.reward import RewardModel, apply_lora_backbone
from models_fixtures import model as tiny_lm
from models_fixtures import tokenizer


def _groups() -> list[Group]:
    g = torch.Generator().manual_seed(4)

    def ids(n: int) -> list[int]:
        return torch.randint(7, 290, (n,), generator=g).tolist()

    return [Group(ids(5), [ids(3), ids(7), ids(2)]), Group(ids(9), [ids(4), ids(1)]),
            Group(ids(2), [ids(6), ids(5)])]


def _reward_model(seed: int = 1, **shape) -> RewardModel:
    backbone = tiny_lm(seed=seed, **shape).base_model
    use_fast_ops(backbone)
    rm = RewardModel(backbone)
    rm.init_head(seed=0)
    return rm


def _scores_and_grads(rm: RewardModel, layout: str, full: bool, bf16: bool = False):
    rm.zero_grad()
    rm.last_layer_at_scores = not full
    batch = collate(_groups(), layout, tokenizer().pad_token_id)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        r = rm.rewards(batch)  # (N,)
    (r * torch.arange(1.0, len(r) + 1)).sum().backward()
    grads = {n: p.grad.clone() for n, p in rm.named_parameters() if p.grad is not None}
    return r.detach(), grads


@pytest.mark.parametrize("layout", ["pad", "pack", "share"])
def test_scores_and_gradients_equal_the_full_forward(layout):
    rm = _reward_model()
    assert rm.last_layer_at_scores  # the tiny Llama is supported and agrees
    want, want_grads = _scores_and_grads(rm, layout, full=True)
    got, got_grads = _scores_and_grads(rm, layout, full=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], atol=1e-5, rtol=1e-4)


def test_bf16_autocast_within_bf16_rounding():
    rm = _reward_model()
    want, want_grads = _scores_and_grads(rm, "share", full=True, bf16=True)
    got, got_grads = _scores_and_grads(rm, "share", full=False, bf16=True)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    w, g = want_grads["head.weight"], got_grads["head.weight"]
    assert (w - g).norm() <= 0.02 * w.norm()


def test_grouped_query_attention_and_lora():
    rm = _reward_model(seed=2, num_attention_heads=4, num_key_value_heads=2)
    assert rm.backbone.config.num_key_value_heads == 2 and rm.last_layer_at_scores
    rm.backbone = apply_lora_backbone(rm.backbone, LoRAConfig(r=2, alpha=4, dropout=0.0))
    for p in rm.backbone.parameters():  # non-zero B: the adapter changes the scores
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    want, _ = _scores_and_grads(rm, "pad", full=True)
    got, _ = _scores_and_grads(rm, "pad", full=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_hidden_at_stops_before_the_last_layer_and_removes_its_hook():
    rm = _reward_model()
    body = last_layer.body_of(rm.backbone)
    calls = []
    handle = body.layers[-1].mlp.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    ids = torch.tensor([[5, 6, 7, 8]])
    last_layer.hidden_at(rm.backbone, torch.tensor([0]), torch.tensor([3]), input_ids=ids,
                         use_cache=False)
    handle.remove()
    assert calls == [torch.Size([1, body.config.hidden_size])]  # the MLP ran at one position
    assert not body.layers[-1]._forward_pre_hooks  # the stopping hook is gone
    rm.backbone(input_ids=ids)  # and the full forward still runs


def test_read_slots_number_each_rows_reads_in_order():
    rows = torch.tensor([2, 0, 2, 2, 0, 3])
    slots, most = last_layer.read_slots(rows, 5)
    assert slots.tolist() == [0, 0, 1, 2, 1, 0] and most == 3
    assert last_layer.read_slots(torch.tensor([], dtype=torch.long), 2)[1] == 0


def _packed_by_position_ids():
    """Two rows, each two examples end to end with restarting position ids (as SFT packs)."""
    ids = torch.randint(7, 290, (2, 9), generator=torch.Generator().manual_seed(5))  # (2, 9)
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    rows = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])  # repeats allowed (SFT's filler reads)
    cols = torch.tensor([2, 4, 8, 0, 5, 6, 8, 2])
    return {"input_ids": ids, "position_ids": position_ids, "use_cache": False}, rows, cols


@pytest.mark.parametrize("attn", ["sdpa", "eager", "position ids only"])
def test_hidden_at_packed_rows_equal_the_full_forward(attn, monkeypatch):
    """Rows packed by position ids: the last layer attends under the block-diagonal mask
    transformers builds, or with no mask (as flash-attention kernels take packing) within the
    examples the position ids mark, its query projection at the reads only; eager attention's
    additive mask takes the layer's own attention instead. Values and gradients as the full
    forward's."""
    lm = tiny_lm(seed=6)
    use_fast_ops(lm)
    lm.set_attn_implementation("eager" if attn == "eager" else "sdpa")
    if attn == "position ids only":
        taken = last_layer._inputs_of_last_layer

        def without_mask(backbone, **inputs):
            hidden, kwargs = taken(backbone, **inputs)
            assert kwargs["attention_mask"] is not None  # sdpa's block-diagonal mask, dropped
            return hidden, {**kwargs, "attention_mask": None}

        monkeypatch.setattr(last_layer, "_inputs_of_last_layer", without_mask)
    inputs, rows, cols = _packed_by_position_ids()
    attn_rows = []
    body = last_layer.body_of(lm.base_model)
    handle = body.layers[-1].self_attn.q_proj.register_forward_hook(
        lambda m, a, o: attn_rows.append(a[0].shape[:-1]))

    def hidden_and_grads(fn):
        lm.zero_grad()
        h = fn()  # (N, D)
        (h * torch.linspace(-1, 1, h.numel()).view_as(h)).sum().backward()
        return h.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()
                            if p.grad is not None}

    backbone = lm.base_model
    got, got_grads = hidden_and_grads(lambda: last_layer.hidden_at(backbone, rows, cols, **inputs))
    want, want_grads = hidden_and_grads(lambda: backbone(**inputs).last_hidden_state[rows, cols])
    handle.remove()
    assert attn_rows[0] == ((2, 9) if attn == "eager" else (len(rows),))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], atol=1e-5, rtol=1e-4)


def test_a_sharded_last_layer_keeps_the_full_forward(monkeypatch):
    rm = _reward_model()
    assert not last_layer.sharded(rm.backbone)
    calls = []
    monkeypatch.setattr(last_layer, "sharded", lambda backbone: True)  # as under FSDP
    monkeypatch.setattr(last_layer, "hidden_at", lambda *a, **k: calls.append(1))
    batch = collate(_groups(), "pad", tokenizer().pad_token_id)
    assert rm.rewards(batch).shape == (7,) and not calls


def test_unsupported_backbones_keep_the_full_forward():
    rm = _reward_model()
    body = last_layer.body_of(rm.backbone)
    body.layers[-1].self_attn.q_norm = torch.nn.Identity()  # e.g. Qwen3's query norm
    assert not last_layer.supported(rm.backbone) and not last_layer.agrees(rm.backbone)
    with pytest.raises(ValueError, match="mask"):
        last_layer.hidden_at(rm.backbone, torch.tensor([0]), torch.tensor([0]),
                             input_ids=torch.tensor([[5]]), attention_mask=torch.ones(1, 1))


@pytest.mark.parametrize("layout", ["pad", "pack", "share"])
def test_dpo_logps_with_the_mlp_at_predicting_positions_equal_the_full_forward(layout, monkeypatch):
    from coachlm.data.pairs import Pair, collate as pair_collate
    from coachlm.trainers.dpo_logps import sequence_logps

    lm = tiny_lm(seed=3)
    use_fast_ops(lm)
    groups = _groups()
    pairs = [Pair(tuple(g.prompt_ids), tuple(g.response_ids[0]), tuple(g.response_ids[1]))
             for g in groups]
    batch = pair_collate(pairs, layout, tokenizer().pad_token_id)
    mlp_rows = []
    body = last_layer.body_of(lm.base_model)
    handle = body.layers[-1].mlp.register_forward_hook(lambda m, a, o: mlp_rows.append(a[0].shape))

    def logps_and_grads():
        lm.zero_grad()
        logps = sequence_logps(lm, batch)  # (2B,)
        (logps * torch.arange(1.0, len(logps) + 1)).sum().backward()
        return logps.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()
                                if p.grad is not None}

    got, got_grads = logps_and_grads()
    assert mlp_rows == [torch.Size([len(batch.pred_rows), body.config.hidden_size])]
    monkeypatch.setattr(last_layer, "supported", lambda backbone: False)
    want, want_grads = logps_and_grads()
    handle.remove()
    assert mlp_rows[1] == torch.Size([*batch.input_ids.shape, body.config.hidden_size])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], atol=1e-5, rtol=1e-4)
