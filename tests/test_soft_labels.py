"""Soft labels in reward-model training (RL-CAI): Bradley-Terry against a target probability,
by hand; AI-labelled comparisons grouped with their targets; the mix of AI and other labels;
and a short real training run on AI soft labels mixed with simulated ones."""

from __future__ import annotations

import math

import pytest
import torch

from coachlm.data.io import write_records
from coachlm.data.reward_batches import Group, build_groups, collate
from coachlm.data.schema import Comparison, Response, as_prompt
from coachlm.errors import CoachError
from coachlm.losses import bradley_terry, bradley_terry_soft
from coachlm.models.load import save_pretrained
from coachlm.engine.config import TrainConfig
from coachlm.trainers.reward import RMConfig, mix_sources, rm, rm_loss
from models_fixtures import model as tiny_lm
from models_fixtures import tokenizer
from test_reward_train import FixedRewards


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_soft_bradley_terry_by_hand():
    r_a, r_b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, -1.0])
    p = torch.tensor([0.8, 0.5, 1.0])
    out = bradley_terry_soft(r_a, r_b, p)
    expected = [-(0.8 * log_sigmoid(1.0) + 0.2 * log_sigmoid(-1.0)),  # 0.51326
                math.log(2.0),  # equal rewards, p = 1/2
                -log_sigmoid(3.0)]  # p = 1 is plain Bradley-Terry
    assert out.tolist() == pytest.approx(expected, rel=1e-6)
    assert out[0].item() == pytest.approx(0.513262, abs=1e-6)
    assert out[2].item() == pytest.approx(bradley_terry(r_a, r_b)[2].item(), rel=1e-6)
    # The gradient vanishes where sigmoid(r_a - r_b) = p: the model learns the probability.
    d = torch.tensor([math.log(0.8 / 0.2)], requires_grad=True)
    bradley_terry_soft(d, torch.zeros(1), torch.tensor([0.8])).sum().backward()
    assert abs(d.grad.item()) < 1e-6


def _ai(prompt: str, a: str, b: str, p: float, **kw) -> Comparison:
    return Comparison(prompt=as_prompt(prompt), a=Response(a), b=Response(b),
                      choice="a" if p > 0.5 else "b" if p < 0.5 else "tie", source="ai",
                      labeler="ai:m", meta={"probability": p, "principle": "harmless"}, **kw)


def test_soft_comparisons_group_with_their_targets():
    tok = tokenizer()
    records = [_ai("Say hi.", "Hi.", "Go away.", 0.9), _ai("Say hi.", "Hi.", "Hello.", 0.3),
               _ai("Say hi.", "Hello.", "Go away.", 0.5),
               Comparison(prompt=as_prompt("Say hi."), a=Response("Go away."), b=Response("Hi."),
                          choice="b", source="simulated")]
    [g], counts = build_groups(records, tok, soft=True)
    assert g.comparisons == [(0, 1, 0.0, False), (0, 2, 0.0, False), (2, 1, 0.0, False),
                             (0, 1, 0.0, False)]
    assert g.soft == {0: 0.9, 1: 0.3, 2: 0.5} and counts["soft_comparisons"] == 3
    batch = collate([g], "pad", tok.pad_token_id)
    assert batch.pair_target.tolist() == pytest.approx([0.9, 0.3, 0.5, 1.0])
    assert batch.pair_soft.tolist() == [True, True, True, False]
    # Without soft labels the AI records count by their choice (the 0.5 one is a skipped tie).
    [hard], counts = build_groups(records, tok)
    assert hard.soft == {} and counts["skipped_tie"] == 1 and len(hard.comparisons) == 3
    with pytest.raises(CoachError, match="meta.probability must be a number in"):
        build_groups([_ai("x", "a", "b", 1.5)], tok, soft=True)


def test_rm_loss_mixes_soft_and_hard_pairs():
    tok = tokenizer()
    g = Group([1, 7], [[8, 2], [9, 2], [10, 2]], [(0, 1, 0.0, False), (1, 2, 0.5, False)], [],
              {0: 0.8})
    out = rm_loss(FixedRewards([1.0, 0.0, 2.0]), collate([g], "pad", tok.pad_token_id))
    soft = -(0.8 * log_sigmoid(1.0) + 0.2 * log_sigmoid(-1.0))
    hard = -log_sigmoid(0.0 - 2.0 - 0.5)  # 1 preferred over 2 with margin 0.5
    assert out.loss_sum.item() == pytest.approx(soft + hard, rel=1e-6)
    assert out.count == 2 and out.metrics["accuracy"] == 1.0  # the soft pair is in order


def test_mix_sources_reaches_the_share():
    records = ([_ai(f"p{i}", "a", "b", 0.7) for i in range(30)]
               + [Comparison(prompt=as_prompt(f"q{i}"), a=Response("a"), b=Response("b"),
                             choice="a", source="simulated") for i in range(90)])
    for share in (0.25, 0.5, 0.75):
        kept, counts = mix_sources(records, share, seed=0)
        ai = sum(r.source == "ai" for r in kept)
        assert ai / len(kept) == pytest.approx(share, abs=0.01)
        assert kept == [r for r in records if r in kept]  # order kept
    assert len(mix_sources(records, 0.25, 0)[0]) == 120  # already at 1/4: nothing dropped
    with pytest.raises(CoachError, match="needs both"):
        mix_sources(records[:30], 0.5, 0)
    with pytest.raises(ValueError, match="ai_share"):
        RMConfig(model="m", data=("d",), out="o", ai_share=1.0)


def test_reward_model_trains_on_mixed_soft_and_simulated_labels(tmp_path):
    """AI soft labels (the happy ending preferred with p = 0.9) mixed 1:1 with simulated hard
    labels on other prompts: the run uses both and learns the AI's preference."""
    tok = tokenizer()
    save_pretrained(tiny_lm(seed=0), tok, tmp_path / "base")
    happy, sad = "the dog was happy.", "the dog was sad."
    ai = [_ai(f"Tell me a story {i}.", happy, sad, 0.9) if i % 2 else
          _ai(f"Tell me a story {i}.", sad, happy, 0.1) for i in range(40)]
    sim = [Comparison(prompt=as_prompt(f"What is {i} plus {i}?"), a=Response(f"It is {2 * i}."),
                      b=Response("a red hat."), choice="a", source="simulated")
           for i in range(60)]
    write_records(tmp_path / "prefs.jsonl", ai + sim)
    cfg = RMConfig(model=tmp_path / "base", data=(tmp_path / "prefs.jsonl",), out=tmp_path / "run",
                   epochs=None, val_fraction=0.0, ai_share=0.5,
                   train=TrainConfig(lr=1e-2, warmup_steps=2, max_steps=30, batch_size=16,
                                     threads=1, bf16=False))
    result, final = rm(cfg)
    counts = result.summary["records"]
    assert counts["soft_comparisons"] == 40 and counts["comparisons"] == 40
    assert counts["mixed_ai"] == 40 and counts["mixed_other"] == 40
    from coachlm.labelers import RewardModelJudge

    judge = RewardModelJudge(final)
    p = judge.prefer(as_prompt("Tell me a story 99."), happy, sad)
    assert p > 0.6
