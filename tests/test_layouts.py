"""The shared batch layouts (`data.layouts`) for K responses per prompt: positions checked by
hand for K = 3, and the same per-response log-probabilities (a policy) and scores (a reward
model) in "pad", "pack" and "share" for K = 2 and K = 3 as for each sequence alone."""

from __future__ import annotations

import pytest
import torch

from coachlm.data.layouts import (agrees_with_pad, lay_out, resolve_layout, share_saving,
                                  truncate, unit_length)
from coachlm.data.reward_batches import Group, collate
from coachlm.errors import CoachError
from coachlm.models.logprobs import logprobs_from_logits
from coachlm.models.reward import RewardModel
from models_fixtures import model as tiny_lm
from models_fixtures import tokenizer

PROMPTS = [(5, 6), (7,)]
RESPONSES = [[(8,), (9, 10), (11,)], [(12, 13), (14,)]]  # K = 3 and K = 2


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=0).eval()


def _random_groups(k: int, n: int, seed: int) -> tuple[list[list[int]], list[list[list[int]]]]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return torch.randint(7, 290, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return [ids(2, 12) for _ in range(n)], [[ids(1, 9) for _ in range(k)] for _ in range(n)]


def test_share_layout_of_three_responses_by_hand():
    p = lay_out(PROMPTS, RESPONSES, "share", pad_id=0)
    # group 0 (2 + 1 + 2 + 1 = 6 tokens) fills row 0; group 1 (4 tokens) opens row 1
    assert p.input_ids.tolist() == [[5, 6, 8, 9, 10, 11], [7, 12, 13, 14, 0, 0]]
    # each response continues from its prompt; the padding tail restarts its own positions
    assert p.position_ids.tolist() == [[0, 1, 2, 2, 3, 2], [0, 1, 2, 1, 0, 1]]
    assert p.part.tolist() == [[0, 0, 1, 2, 2, 3], [0, 1, 1, 2, 0, 0]]
    rows, cols = p.last_positions()  # sequences in group order: (0, 0), (0, 1), (0, 2), (1, 0), (1, 1)
    assert rows.tolist() == [0, 0, 0, 1, 1] and cols.tolist() == [2, 4, 5, 2, 3]
    scored = list(zip(*(t.tolist() for t in p.scored_tokens())))  # (row, predicting col, token, seq)
    # a response's first token is predicted by the prompt's last position, past its siblings
    assert scored == [(0, 1, 8, 0), (0, 1, 9, 1), (0, 3, 10, 1), (0, 1, 11, 2),
                      (1, 0, 12, 3), (1, 1, 13, 3), (1, 0, 14, 4)]
    mask = p.attention_mask()[:, 0]  # (R, T, T)
    assert mask[0, 4].tolist() == [True, True, False, True, True, False]  # prompt + itself
    assert mask[0, 5].tolist() == [True, True, False, False, False, True]
    assert mask[1, 4].tolist() == [False, False, False, False, True, False]  # padding: itself
    # unshared: 2 * 3 + 4 and 1 * 2 + 3 tokens; the model runs 6 + 4
    assert (p.num_tokens, p.processed_tokens) == (15, 10)
    assert share_saving(zip(PROMPTS, RESPONSES)) == pytest.approx(5 / 15)  # (K - 1) P saved


def test_numbering_orders_the_unshared_rows():
    p = lay_out(PROMPTS, RESPONSES, "pad", pad_id=0, numbering=[(0, 2, 4), (1, 3)])
    assert p.input_ids.tolist() == [[5, 6, 8, 0], [7, 12, 13, 0], [5, 6, 9, 10], [7, 14, 0, 0],
                                    [5, 6, 11, 0]]
    assert p.padding_mask().sum(1).tolist() == [3, 3, 4, 2, 3]
    with pytest.raises(ValueError, match="numbering"):
        lay_out(PROMPTS, RESPONSES, "pad", pad_id=0, numbering=[(0, 1, 2), (3, 3)])
    with pytest.raises(ValueError, match="layout"):
        lay_out(PROMPTS, RESPONSES, "packed", pad_id=0)


def test_width_is_rounded_up_and_packing_fills_the_wider_rows():
    # sequences of 3, 4, 3, 3, 2 tokens; width 4 rounded up to 8 holds two or three of them
    # (first fit decreasing: 4 + 3 in row 0, then 3 + 3 + 2 in row 1)
    p = lay_out(PROMPTS, RESPONSES, "pack", pad_id=0, width_multiple=8)
    assert p.input_ids.tolist() == [[5, 6, 9, 10, 5, 6, 8, 0], [5, 6, 11, 7, 12, 13, 7, 14]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 0, 1, 2, 0, 1]]
    tight = lay_out(PROMPTS, RESPONSES, "pad", pad_id=0)
    wide = lay_out(PROMPTS, RESPONSES, "pad", pad_id=0, width_multiple=16)
    assert tight.input_ids.shape == (5, 4) and wide.input_ids.shape == (5, 16)
    assert torch.equal(wide.input_ids[:, :4], tight.input_ids)
    assert (wide.input_ids[:, 4:] == 0).all()
    assert [t.tolist() for t in wide.scored_tokens()] == [t.tolist() for t in tight.scored_tokens()]


def test_truncate_and_unit_length_for_three_responses():
    # longest response 4: the prompt keeps max(8 - 4, 8 // 2) = 4 tokens from its end
    assert truncate(list(range(10)), [[1, 2], [3, 4, 5, 6], [7]], 8) == (
        [6, 7, 8, 9], [[1, 2], [3, 4, 5, 6], [7]], 0)
    # a response of 9 cannot fit: the prompt keeps half (4), responses get 4 tokens, one is cut
    assert truncate(list(range(10)), [list(range(9)), [1], [2, 3]], 8) == (
        [6, 7, 8, 9], [[0, 1, 2, 3], [1], [2, 3]], 1)
    assert unit_length((1, 2), [(3,), (4, 5, 6), (7, 8)], "share") == 8
    assert unit_length((1, 2), [(3,), (4, 5, 6), (7, 8)], "pack") == 5


def _logps_alone(lm, prompt: list[int], response: list[int]) -> torch.Tensor:
    ids = torch.tensor(prompt + response)  # (L,)
    lp = logprobs_from_logits(lm(input_ids=ids[None]).logits[0, :-1], ids[1:])  # (L - 1,)
    return lp[len(prompt) - 1:].sum()


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("layout", ["pad", "pack", "share"])
def test_layouts_give_each_response_its_own_logps(lm, k, layout):
    prompts, responses = _random_groups(k, 7, seed=k)
    with torch.no_grad():
        want = torch.stack([_logps_alone(lm, p, r) for p, rs in zip(prompts, responses) for r in rs])
        packed = lay_out(prompts, responses, layout, pad_id=0)
        logits = lm(input_ids=packed.input_ids,
                    position_ids=None if layout == "pad" else packed.position_ids,
                    attention_mask=packed.attention_mask() if layout == "share" else None,
                    use_cache=False).logits  # (R, T, V); with a cache, packing goes undetected
        rows, cols, targets, seqs = packed.scored_tokens()  # (M,) each
        token_logps = logprobs_from_logits(logits[rows, cols], targets)  # (M,)
        got = token_logps.new_zeros(len(want)).index_add(0, seqs, token_logps)  # (N,)
    if layout != "pad":
        assert packed.input_ids.shape[0] < k * len(prompts)  # rows really are shared
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [2, 3])
def test_reward_scores_are_the_same_in_every_layout(k):
    torch.manual_seed(0)
    rm = RewardModel(tiny_lm(seed=1).base_model).eval()
    rm.init_head(seed=0)
    prompts, responses = _random_groups(k, 6, seed=10 + k)
    groups = [Group(p, rs) for p, rs in zip(prompts, responses)]
    pad_id = tokenizer().pad_token_id
    with torch.no_grad():
        alone = torch.cat([rm.rewards(collate([Group(g.prompt_ids, [r])], "pad", pad_id))
                           for g in groups for r in g.response_ids])  # (N,)
        for layout in ("pad", "pack", "share"):
            torch.testing.assert_close(rm.rewards(collate(groups, layout, pad_id)), alone,
                                       atol=1e-5, rtol=1e-4)


def test_resolve_layout_takes_the_first_supported_candidate():
    asked: list[str] = []

    def supported(layout: str) -> bool:
        asked.append(layout)
        return layout == "pack"

    assert resolve_layout("auto", ("share", "pack", "pad"), supported, "no") == "pack"
    assert asked == ["share", "pack"]
    assert resolve_layout("pad", ("share", "pad"), supported, "no") == "pad"  # never probed
    assert asked == ["share", "pack"]
    with pytest.raises(CoachError, match="cannot share"):
        resolve_layout("share", ("share", "pad"), supported, "cannot share")
    with pytest.raises(ValueError, match="layout"):
        resolve_layout("packed", ("pad",), supported, "no")


def test_agrees_with_pad_restores_training_mode_and_refuses_errors(lm):
    lm.train()

    def fails(layout: str) -> torch.Tensor:
        if layout != "pad":
            raise RuntimeError("this model cannot take a 4-D mask")
        return torch.zeros(2)

    assert not agrees_with_pad(lm, fails, "share", atol=1e-4, rtol=1e-4)
    assert lm.training
    assert agrees_with_pad(lm, lambda layout: torch.ones(2) * (not lm.training), "share",
                           atol=0.0, rtol=0.0)  # scored in eval mode
    lm.eval()
