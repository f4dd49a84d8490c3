"""DPO pair data: truncation, the three batch layouts (same logps as scoring each sequence
alone), batch sources, and reading preference records into pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coachlm.data.io import preference_pairs
from coachlm.data.pairs import (Pair, PairBatches, collate, encode_pairs, share_saving, truncate,
                                with_reference)
from coachlm.data.schema import Comparison, Message, Ranking, Response
from coachlm.models.logprobs import logprobs_from_logits
from coachlm.trainers.dpo_logps import choose_layout, layout_supported, sequence_logps
from trainers_fixtures import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _random_pairs(n: int, seed: int = 0) -> list[Pair]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo: int, hi: int) -> tuple[int, ...]:
        n_tok = int(torch.randint(lo, hi, (1,), generator=g))
        return tuple(torch.randint(7, 290, (n_tok,), generator=g).tolist())

    return [Pair(ids(1, 12), ids(1, 9), ids(1, 9)) for _ in range(n)]


def test_truncate_cuts_prompt_from_left_then_responses_from_right():
    assert truncate([1, 2, 3], [4], [5, 6], 10) == ((1, 2, 3), (4,), (5, 6), 0)
    # longest response 4: the prompt keeps max(8 - 4, 8 // 2) = 4 tokens from its end
    assert truncate(list(range(10)), [1, 2, 3, 4], [5], 8) == ((6, 7, 8, 9), (1, 2, 3, 4), (5,), 0)
    # a response of 9 cannot fit: the prompt keeps half (4), responses get 4 tokens
    assert truncate(list(range(10)), list(range(9)), [5], 8) == ((6, 7, 8, 9), (0, 1, 2, 3), (5,), 1)


def test_share_layout_scores_the_right_tokens_from_the_right_positions():
    pairs = [Pair((5, 6, 7), (8, 9), (10, 11, 12)), Pair((13,), (14,), (15, 16))]
    b = collate(pairs, "share", pad_id=0, width_multiple=1)  # tight rows, checked by hand
    # first-fit decreasing: pair 0 (8 tokens) fills row 0, pair 1 (4 tokens) opens row 1
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 0, 0, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5], [0, 1, 1, 2, 0, 1, 2, 3]]
    # sequence 0 = chosen of pair 0, 1 = chosen of pair 1, 2 and 3 the rejected responses
    scored = list(zip(b.pred_rows.tolist(), b.pred_cols.tolist(), b.targets.tolist(), b.seq_index.tolist()))
    assert scored == [(0, 2, 8, 0), (0, 3, 9, 0), (0, 2, 10, 2), (0, 5, 11, 2), (0, 6, 12, 2),
                      (1, 0, 14, 1), (1, 0, 15, 3), (1, 2, 16, 3)]
    mask = b.attention_mask[0, 0]  # (T, T) of row 0
    assert mask[5].tolist() == [True, True, True, False, False, True, False, False]  # no chosen
    assert mask[4].tolist() == [True] * 5 + [False] * 3
    assert b.chosen_lengths.tolist() == [2, 1] and b.rejected_lengths.tolist() == [3, 2]
    assert b.num_tokens == (3 + 2 + 3 + 3) + (1 + 1 + 1 + 2) and b.processed_tokens == 12
    assert share_saving(pairs) == pytest.approx(4 / 16)


def test_pack_layout_restarts_positions_and_shares_rows():
    pairs = [Pair((1, 2, 3, 4, 5), (6, 7), (8,)), Pair((9,), (10,), (11, 12))]
    b = collate(pairs, "pack", pad_id=0, width_multiple=1)  # tight rows, checked by hand
    assert b.attention_mask is None
    # widths 7, 2, 6, 3: rows [7], [6], [3 + 2]
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 8, 0], [9, 11, 12, 9, 10, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 0], [0, 1, 2, 0, 1, 0, 1]]
    scored = sorted(zip(b.seq_index.tolist(), b.pred_rows.tolist(), b.pred_cols.tolist(), b.targets.tolist()))
    assert scored == [(0, 0, 4, 6), (0, 0, 5, 7), (1, 2, 3, 10), (2, 1, 4, 8), (3, 2, 0, 11), (3, 2, 1, 12)]


@pytest.mark.parametrize("layout", ["pad", "pack", "share"])
def test_layouts_give_each_sequence_its_own_logps(tok, layout):
    model = tiny_model(tok).eval()
    pairs = _random_pairs(9, seed=1)

    def alone(prompt, response):
        ids = torch.tensor(prompt + response)
        lp = logprobs_from_logits(model(input_ids=ids[None]).logits[0, :-1], ids[1:])  # (L-1,)
        return lp[len(prompt) - 1:].sum()

    with torch.no_grad():
        want = torch.stack([alone(p.prompt_ids, p.chosen_ids) for p in pairs]
                           + [alone(p.prompt_ids, p.rejected_ids) for p in pairs])
        batch = collate(pairs, layout, tok.pad_token_id)
        got = sequence_logps(model, batch)
    if layout != "pad":
        assert batch.input_ids.shape[0] < 2 * len(pairs)  # rows really are shared
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert layout_supported(model, layout, tok.pad_token_id)


def test_batches_cover_each_pair_once_per_epoch_and_carry_cached_reference(tok):
    pairs = _random_pairs(10)
    ref = torch.arange(20, dtype=torch.float32).view(10, 2)  # (n, 2): chosen, rejected
    src = PairBatches(pairs, 4, tok.pad_token_id, "pack", seed=3, bucket_batches=2, ref_logps=ref)
    assert len(src) == 3
    seen = []
    for _ in range(3):
        b = src.next_batch()
        seen += b.index.tolist()
        assert b.ref_chosen_logps.tolist() == [2.0 * i for i in b.index.tolist()]
        assert b.ref_rejected_logps.tolist() == [2.0 * i + 1 for i in b.index.tolist()]
    assert sorted(seen) == list(range(10))
    state = src.state_dict()
    nxt = src.next_batch().index.tolist()
    again = PairBatches(pairs, 4, tok.pad_token_id, "pack", seed=3, bucket_batches=2)
    again.load_state_dict(state)
    assert again.next_batch().index.tolist() == nxt  # resumes exactly
    ordered = list(PairBatches(pairs, 4, tok.pad_token_id, "share", shuffle=False).epoch_batches())
    lengths = [len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids)
               for b in ordered for i in b.index.tolist()]
    assert lengths == sorted(lengths) and np.all(np.diff(lengths) >= 0)
    b = with_reference(collate(pairs[:2], "pad", 0, index=[7, 3]), ref)
    assert b.ref_chosen_logps.tolist() == [14.0, 6.0]


def test_encode_pairs_expands_rankings_and_skips_ties_and_identical_pairs(tok):
    prompt = (Message("user", "What is 2 plus 2?"),)
    records = [
        Comparison(prompt=prompt, a=Response("4."), b=Response("5."), choice="b"),
        Comparison(prompt=prompt, a=Response("4."), b=Response("3."), choice="tie"),
        Comparison(prompt=prompt, a=Response("same"), b=Response("same"), choice="a"),
        Ranking(prompt=prompt, responses=(Response("4."), Response("5."), Response("6.")),
                ranks=(1, 2, 3)),
    ]
    pairs, counts = encode_pairs(preference_pairs(records), tok, max_length=64)
    assert counts["pairs"] == 1 + 3 and counts["skipped_identical"] == 1
    assert tok.decode(pairs[0].chosen_ids, skip_special_tokens=True) == "5."
    assert pairs[0].chosen_ids[-1] == tok.eos_token_id
    assert len({p.prompt_ids for p in pairs}) == 1  # the prompt is encoded once, shared


def test_split_keeps_a_prompt_truncated_two_ways_on_one_side(tok):
    from coachlm.trainers.dpo import split_by_prompt

    records = []
    for i in range(10):
        prompt = (Message("user", " ".join(["the cat sat on a mat"] * 4) + f" {i}"),)
        for short, long in (("a.", "b."), ("a.", "the big red dog ran on the small blue hat.")):
            records.append(Comparison(prompt=prompt, a=Response(short), b=Response(long),
                                      choice="a"))
    pairs, _ = encode_pairs(preference_pairs(records), tok, max_length=40)
    by_key = {}
    for p in pairs:
        by_key.setdefault(p.key, set()).add(p.prompt_ids)
    assert all(len(v) == 2 for v in by_key.values()), "each prompt must be truncated two ways"
    for seed in range(5):
        train, val, note = split_by_prompt(pairs, 0.3, seed)
        assert len(val) == 6 and note is None
        assert not {p.key for p in train} & {p.key for p in val}
    train, val, note = split_by_prompt(pairs[:2], 0.05, 0)  # one prompt: no validation split
    assert len(train) == 2 and val == [] and "no validation split" in note


def test_auto_shares_prompts_that_save_a_fifth_of_the_tokens(tok):
    """World comparisons save ~19% of their tokens by prefix sharing, which is faster than
    packing there (measured at world-small fp32 and world-25m bf16; dpo_logps.SHARE_MIN_SAVING)."""
    model = tiny_model(tok)
    pairs = [Pair(tuple(range(5, 15)), tuple(range(20, 35)), tuple(range(40, 55)))] * 4
    assert share_saving(pairs) == pytest.approx(0.2)
    assert choose_layout("auto", model, pairs, tok.pad_token_id) == "share"
    few = [Pair((5, 6), tuple(range(20, 36)), tuple(range(40, 56)))] * 4  # saves 6%
    assert choose_layout("auto", model, few, tok.pad_token_id) == "pack"
