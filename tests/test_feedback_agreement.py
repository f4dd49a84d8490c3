"""Agreement metrics against values computed by hand (worked in the comments)."""

import math

import pytest

from coachlm.feedback import agreement as ag


def test_cohen_kappa_hand_computed():
    # p_o = 4/5; labeler a says 1 three times, b twice: p_e = (3*2 + 2*3) / 25 = 12/25;
    # kappa = (0.8 - 0.48) / (1 - 0.48) = 8/13.
    assert ag.cohen_kappa([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(8 / 13)
    assert ag.cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert math.isnan(ag.cohen_kappa(["a", "a"], ["a", "a"]))  # chance agreement is 1: undefined


def test_fleiss_kappa_hand_computed():
    # Items [a,a,a] [a,a,b] [b,b,b], 3 labelers: P_i = 1, 1/3, 1 -> P_bar = 7/9;
    # p_a = 5/9, p_b = 4/9 -> P_e = 41/81; kappa = (63/81 - 41/81) / (40/81) = 0.55.
    items = [["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"]]
    assert ag.fleiss_kappa(items) == pytest.approx(0.55)
    # Replace the last item by [b,b,a]: P_bar = 5/9 = P_e, so kappa = 0.
    assert ag.fleiss_kappa(items[:2] + [["b", "b", "a"]]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        ag.fleiss_kappa([["a", "b"], ["a", "b", "a"]])


def test_krippendorff_alpha_nominal_hand_computed():
    # Same items. Coincidences (each ordered pair weighs 1/(m-1) = 1/2): o_aa = 3 + 1 = 4,
    # o_ab = o_ba = 1, o_bb = 3; n_a = 5, n_b = 4, n = 9. D_o = 2/9, D_e = 2*5*4 / (9*8) = 5/9;
    # alpha = 1 - (2/9) / (5/9) = 0.6.
    items = [["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"]]
    assert ag.krippendorff_alpha(items) == pytest.approx(0.6)
    # An item with a single label cannot be paired and changes nothing.
    assert ag.krippendorff_alpha(items + [["a"]]) == pytest.approx(0.6)


def test_krippendorff_alpha_interval_hand_computed():
    # Items [1,2] and [3,3]: o_12 = o_21 = 1, o_33 = 2; n_1 = n_2 = 1, n_3 = 2, n = 4.
    # D_o = (1 + 1) / 4 = 1/2. D_e = (2*1*1*1 + 2*1*2*4 + 2*1*2*1) / (4*3) = 22/12.
    # alpha = 1 - (1/2) / (11/6) = 8/11.
    assert ag.krippendorff_alpha([[1, 2], [3, 3]], "interval") == pytest.approx(8 / 11)
    assert ag.krippendorff_alpha([[1, 2], [3, 3]], "nominal") == pytest.approx(
        1 - (2 / 4) / ((2 * 1 * 1 + 2 * 1 * 2 + 2 * 1 * 2) / 12))


def test_majority_item_and_gold():
    labels = {
        1: {"x": "a", "y": "a", "z": "a", "w": "b"},
        2: {"x": "b", "y": "b", "z": "a", "w": "b"},
        3: {"x": "a", "y": "b"},
    }
    # Item 1: x, y, z agree with the others' majority (a); w does not. Item 2: x, y, w agree
    # (the others say b, b, a); z: the others say b, b, b, so z disagrees. Item 3: each other
    # is a single label, which is its own majority: x vs b (no), y vs a (no).
    assert ag.majority_agreement(labels) == {"x": (2, 3), "y": (2, 3), "z": (1, 2), "w": (1, 2)}
    assert ag.item_agreement(labels) == {1: 0.75, 2: 0.75, 3: 0.5}
    gold = {1: "a", 2: "b"}
    assert ag.gold_accuracy(labels, gold) == {"x": (2, 2), "y": (2, 2), "z": (1, 2), "w": (1, 2)}
    kappas = ag.pairwise_kappas(labels)
    assert kappas[("x", "y")][1] == 3 and kappas[("w", "x")][1] == 2
