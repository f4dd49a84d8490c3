"""Truncated importance weights, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from coachlm.importance import truncated_importance_weights


def test_weights_are_the_ratio_truncated_at_c_and_zero_off_the_mask():
    learner = torch.tensor([[math.log(0.5), math.log(0.2), math.log(0.9)],
                            [math.log(0.3), math.log(0.6), 0.0]])  # (2, 3)
    sampler = torch.tensor([[math.log(0.25), math.log(0.4), math.log(0.1)],
                            [math.log(0.3), math.log(0.1), 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w = truncated_importance_weights(learner, sampler, mask, cap=2.5)
    # 0.5/0.25 = 2; 0.2/0.4 = 0.5; 0.9/0.1 = 9 -> 2.5; 0.3/0.3 = 1; 0.6/0.1 = 6 -> 2.5; masked 0
    expected = torch.tensor([[2.0, 0.5, 2.5], [1.0, 2.5, 0.0]])
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=1e-6)


def test_no_gradient_and_a_positive_cap():
    learner = torch.zeros(1, 2, requires_grad=True)
    w = truncated_importance_weights(learner, torch.zeros(1, 2), torch.ones(1, 2), cap=1.0)
    assert not w.requires_grad and w.tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_importance_weights(learner, learner, torch.ones(1, 2), cap=0.0)
