"""Simulated labelers: agreement calibration (~73%, InstructGPT), biases, ties and valid records."""

import pytest

from coachlm.data.schema import Comparison, Ranking, Rating, Response, Sample, as_prompt, from_dict
from coachlm.data.schema import to_dict
from coachlm.world import (LabelerConfig, SimulatedLabeler, expected_agreement, make_comparisons,
                           make_labelers, make_pairs, measure_agreement, noise_for_agreement,
                           prefer, simulate_comparisons, simulate_rankings)

P = "What is 17 plus 25?"
GOOD = Response("17 plus 25 is 42.", model="policy", model_version="v2")
WRONG = Response("17 plus 25 is 41.", model="policy", model_version="v1")
TODO = Response("- Buy milk and bread.\n- Water the garden.", model="base")


def _exact(**kw):
    """A labeler with (almost) no noise and no bias: it follows the rubric."""
    return SimulatedLabeler("exact", noise=1e-6, **kw)


def test_default_agreement_reproduces_instructgpt():
    """Two default labelers agree on 0.73 +- 0.03 of the typical comparison mix (Ouyang et al.,
    2022: 72.6 +- 1.5%); measured on a fresh mix and fresh labelers, not the calibration ones."""
    cfg = LabelerConfig()
    assert expected_agreement(noise_for_agreement(cfg), cfg) == pytest.approx(0.73, abs=0.002)
    measured = measure_agreement(make_labelers(6, seed=1), make_pairs(1000, seed=99))
    assert measured == pytest.approx(0.73, abs=0.03)


def test_agreement_knob_sets_noise():
    assert noise_for_agreement(LabelerConfig(agreement=0.78)) < noise_for_agreement(LabelerConfig())
    with pytest.raises(ValueError, match="out of reach"):
        noise_for_agreement(LabelerConfig(agreement=0.99))
    with pytest.raises(ValueError, match="agreement"):
        LabelerConfig(agreement=0.4)


def test_noise_free_labeler_follows_the_rubric_and_ties_equal_responses():
    lab = _exact()
    for a, b in ((GOOD, WRONG), (WRONG, GOOD), (GOOD, TODO)):
        c = lab.compare(P, a, b)
        assert c.choice == ("a" if prefer(P, a.text, b.text) > 0 else "b")
    tie = lab.compare(P, GOOD, Response("17 plus 25 is 42."))
    assert tie.choice == "tie" and tie.margin is None
    assert lab.compare(P, GOOD, TODO).margin == 3.0  # 1.0 vs 0.2: a big difference


def test_position_and_length_biases():
    first = _exact(position_bias=0.5)
    picks = [first.compare(P, GOOD, GOOD) for _ in range(40)]
    assert all(c.choice == ("a" if c.shown_order == "ab" else "b") for c in picks)
    assert {c.shown_order for c in picks} == {"ab", "ba"}
    wordy = _exact(length_bias=0.5)
    long = Response("I think that 17 plus 25 is 42.")  # same utility: 7 words, under the limit
    assert wordy.compare(P, GOOD, long).choice == "b"


def test_records_are_canonical_and_keep_provenance():
    lab = make_labelers(1, seed=3)[0]
    c = lab.compare(P, GOOD, WRONG, meta={"batch": 1})
    r = lab.rank(P, [GOOD, WRONG, TODO])
    rt = lab.rate(P, TODO)
    assert isinstance(c, Comparison) and isinstance(r, Ranking) and isinstance(rt, Rating)
    for rec in (c, r, rt):
        assert rec.source == "simulated" and rec.labeler == lab.id and rec.time_spent_s > 0
        assert rec.prompt == as_prompt(P)
        assert from_dict(to_dict(rec)) == rec
    assert c.a == GOOD and c.b.model_version == "v1" and c.meta == {"batch": 1}
    assert sorted(r.meta["shown_order"]) == [0, 1, 2]
    assert 1 <= rt.score <= 7 and "does_not_stop" in rt.flags and rt.critique


def test_exact_ranking_and_rating():
    lab = _exact()
    r = lab.rank(P, [TODO, GOOD, WRONG, Response("17 plus 25 is 42.")])
    assert r.ranks == (4, 1, 3, 1)  # 0.2 < 0.7 < 1.0 = 1.0, equal utilities share rank 1
    assert (1, 0) in r.pairs() and (3, 2) in r.pairs()
    assert lab.rate(P, GOOD).score == 7 and lab.rate(P, GOOD).flags == ()
    assert lab.rate(P, WRONG).score == 1 + round(0.7 * 6)


def _samples():
    out = []
    for prompt, texts in ((P, ("42.", "41.", "What is 3 plus 4?")),
                          ("Say hello to Sam in all capital letters.", ("HELLO, SAM!", "hi", "x"))):
        for i, t in enumerate(texts):
            out.append(Sample(prompt=as_prompt(prompt), response=Response(t, "pi", str(i)),
                              meta={"family": "x", "task_id": prompt}))
    return out


def test_simulate_comparisons_pairs_within_prompts_by_distinct_labelers():
    samples = _samples()
    comps = simulate_comparisons(samples, n_labelers=4, per_item=2, seed=5)
    assert len(comps) == 2 * 3 * 2  # 2 prompts x C(3, 2) pairs x 2 labelers each
    for x, y in zip(comps[::2], comps[1::2]):  # the two judgements of one pair
        assert x.labeler != y.labeler and x.a == y.a and x.b == y.b
        assert x.prompt_text == x.meta["task_id"] and len(x.meta["sample_ids"]) == 2
    again = simulate_comparisons(samples, n_labelers=4, per_item=2, seed=5)
    assert [c.choice for c in again] == [c.choice for c in comps]
    ranks = simulate_rankings(samples, n_labelers=2, per_item=2, seed=5)
    assert len(ranks) == 4 and all(len(r.ranks) == 3 for r in ranks)


def test_make_comparisons_follows_the_rubric():
    comps = make_comparisons(60, seed=0)
    assert len(comps) == 60 and {c.meta["family"] for c in comps} >= {"arithmetic", "harmful"}
    for c in comps:
        d = prefer(c.prompt_text, c.a.text, c.b.text)
        assert c.choice == ("a" if d > 0 else "b" if d < 0 else "tie")
        assert from_dict(to_dict(c)) == c
    assert [c.id for c in make_comparisons(5, seed=0)] == [c.id for c in comps[:5]]
