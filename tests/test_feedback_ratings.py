"""Elo and Bradley-Terry against hand-computed cases."""

import math

import numpy as np
import pytest

from coachlm.data import schema
from coachlm.feedback import ratings
from coachlm.feedback.ratings import Match


def test_elo_hand_computed():
    # A beats B at 1000/1000 with k=32: E = 0.5, A -> 1016, B -> 984. Then B beats A:
    # E_B = 1 / (1 + 10^(32/400)) = 0.454078; B gains 32 * (1 - 0.454078) = 17.4695.
    r = ratings.elo([Match("A", "B", 1.0)], k=32)
    assert r == {"A": 1016.0, "B": 984.0}
    r = ratings.elo([Match("A", "B", 1.0), Match("B", "A", 1.0)], k=32)
    e_b = 1 / (1 + 10 ** (32 / 400))
    assert r["B"] == pytest.approx(984 + 32 * (1 - e_b))
    assert r["A"] == pytest.approx(1016 - 32 * (1 - e_b))
    assert r["B"] == pytest.approx(1001.4695, abs=1e-3)
    assert ratings.elo([Match("A", "B", 0.5)], k=32) == {"A": 1000.0, "B": 1000.0}


def test_bradley_terry_hand_computed():
    # A beat B 3 times of 4, B beat C 3 times of 4, A and C never met. The likelihood equations
    # W_i = sum_j N_ij g_i / (g_i + g_j) give g_A / g_B = 3 and g_B / g_C = 3, so on the Elo
    # scale A = 1000 + 400 log10(3) = 1190.85, B = 1000, C = 809.15.
    m = [Match("A", "B", 1)] * 3 + [Match("B", "A", 1)] + [Match("B", "C", 1)] * 3 \
        + [Match("C", "B", 1)]
    r = ratings.bradley_terry(m)
    assert r["A"] == pytest.approx(1000 + 400 * math.log10(3), abs=1e-6)
    assert r["B"] == pytest.approx(1000.0, abs=1e-6)
    assert r["C"] == pytest.approx(1000 - 400 * math.log10(3), abs=1e-6)
    # Ties count half a win each: all ties means equal strength.
    r = ratings.bradley_terry([Match("A", "B", 0.5)] * 4)
    assert r["A"] == pytest.approx(r["B"])


def test_bradley_terry_solves_the_likelihood_equations():
    rng = np.random.default_rng(0)
    true = {"p": 1.5, "q": 0.5, "r": 0.0, "s": -1.0}
    names = list(true)
    m = []
    for _ in range(400):
        a, b = rng.choice(names, 2, replace=False)
        pa = 1 / (1 + math.exp(true[b] - true[a]))
        m.append(Match(a, b, float(rng.random() < pa)))
    wins, games = ratings._tables(m, sorted(true))
    theta = ratings.bt_strengths(wins, games)
    g = np.exp(theta)
    expected = (games * g[:, None] / (g[:, None] + g[None, :])).sum(1)
    np.testing.assert_allclose(expected, wins, rtol=1e-6)  # score equations hold at the MLE
    assert list(np.argsort(-theta)) == [0, 1, 2, 3]  # p > q > r > s


def test_leaderboard_bootstrap_intervals():
    m = [Match("good", "bad", 1)] * 30 + [Match("bad", "good", 1)] * 10
    board = ratings.leaderboard(m, rounds=100, seed=1)
    assert [s.name for s in board] == ["good", "bad"]
    for s in board:
        assert s.lo <= s.rating <= s.hi
        assert s.matches == 40
    assert board[0].wins == 30
    again = ratings.leaderboard(m, rounds=100, seed=1)
    assert again == board  # seeded: reproducible
    # With a prior, an unbeaten player stays finite.
    assert math.isfinite(ratings.leaderboard([Match("x", "y", 1)] * 5, rounds=10)[0].rating)


def test_matches_from_records():
    p = schema.as_prompt("q")
    A, B = schema.Response("a", "m1", "v1"), schema.Response("b", "m2")
    C = schema.Response("c", "m1", "v1")
    recs = [
        schema.Comparison(prompt=p, a=A, b=B, choice="b"),
        schema.Comparison(prompt=p, a=A, b=B, choice="both_bad"),
        schema.Ranking(prompt=p, responses=(A, B, C), ranks=(1, 1, 2)),
        schema.Rating(prompt=p, response=A, score=3),
    ]
    got = ratings.matches_from_records(recs)
    # The ranking gives A=B (tie), A>C (same model: skipped), B>C.
    assert got == [Match("m1@v1", "m2", 0.0), Match("m1@v1", "m2", 0.5),
                   Match("m1@v1", "m2", 0.5), Match("m2", "m1@v1", 1.0)]
    per = ratings.per_prompt(recs, rounds=10)
    assert {s.name for s in per["q"]} == {"a", "b", "c"}
