"""Hand-computed checks of coachlm.rl_math; each expected value's arithmetic is written out."""

import math

import pytest
import torch

from coachlm.rl_math import (
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    aggregation_weight,
    entropy_from_logits,
    explained_variance,
    gae,
    group_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_shaped_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), atol=atol, rtol=0)


X = torch.tensor([[1.0, 2.0, 100.0], [4.0, -50.0, -50.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])
# Unmasked entries are {1, 2, 4}: mean 7/3; squared deviations 16/9, 1/9, 25/9 sum to 42/9.


def test_masked_mean():
    close(masked_mean(X, MASK), 7 / 3)
    close(masked_mean(X, MASK, dim=1), [(1 + 2) / 2, 4 / 1])


def test_masked_mean_ignores_nan_in_padding_and_empty_mask_gives_zero():
    x = torch.tensor([1.0, float("nan"), -float("inf")])
    close(masked_mean(x, torch.tensor([1, 0, 0])), 1.0)
    close(masked_mean(x, torch.zeros(3)), 0.0)


def test_masked_var():
    close(masked_var(X, MASK, unbiased=False), (42 / 9) / 3)
    close(masked_var(X, MASK, unbiased=True), (42 / 9) / 2)
    # per row: row 0 {1, 2} -> biased 0.25, unbiased 0.5; row 1 {4} -> 0 (single entry)
    close(masked_var(X, MASK, dim=1, unbiased=True), [0.5, 0.0])


def test_masked_whiten_uses_only_unmasked_entries():
    std = math.sqrt(14 / 9)
    out = masked_whiten(X, MASK, eps=0.0)
    close(out, [[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]])
    different_padding = torch.where(MASK.bool(), X, torch.tensor(1e6))
    close(masked_whiten(different_padding, MASK, eps=0.0), out)
    close(masked_mean(out, MASK), 0.0)
    close(masked_var(out, MASK, unbiased=False), 1.0)


def test_masked_whiten_without_shift_keeps_mean():
    std = math.sqrt(14 / 9)
    out = masked_whiten(X, MASK, shift_mean=False, eps=0.0)
    close(out[0, 0], (1 - 7 / 3) / std + 7 / 3)
    close(masked_mean(out, MASK), 7 / 3)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # residual {0, 0, 1}: mean 1/3, var (1/9 + 1/9 + 4/9) / 3 = 2/9; var of {1, 2, 3} = 2/3
    close(explained_variance(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), returns, mask), 1 - (2 / 9) / (2 / 3))
    close(explained_variance(returns, returns, mask), 1.0)
    close(explained_variance(torch.full((1, 4), 2.0), returns, mask), 0.0)
    assert torch.isnan(explained_variance(returns, torch.ones(1, 4), mask))


def test_entropy_from_logits_by_hand():
    inf = float("inf")
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -inf, -inf]]])
    # uniform over 4 -> log 4;  p = (1/4, 3/4, 0, 0) -> -(1/4 log 1/4 + 3/4 log 3/4), 0 log 0 = 0
    close(entropy_from_logits(logits), [[math.log(4), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]])


def test_entropy_from_logits_matches_trl():
    pytest.importorskip("trl")
    from trl.trainer.utils import entropy_from_logits as trl_entropy

    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    close(entropy_from_logits(logits), trl_entropy(logits), atol=1e-5)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    close(kl_k1(logp, ref), [math.log(2)])
    close(kl_k2(logp, ref), [0.5 * math.log(2) ** 2])
    # r = ref / pi = 0.5: (r - 1) - log r = -0.5 + log 2
    close(kl_k3(logp, ref), [-0.5 + math.log(2)])


def test_k1_and_k3_are_unbiased_for_exact_kl():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    true_kl = (p * (p / q).log()).sum()  # KL(p || q), samples x ~ p
    for estimator in (kl_k1, kl_k3):
        close((p * estimator(p.log(), q.log())).sum(), true_kl, atol=1e-12)
    assert (kl_k3(p.log(), q.log()) >= 0).all()


def test_kl_shaped_rewards_by_hand():
    score = torch.tensor([2.0, -1.0, 5.0])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, -9.0], [-1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-0.4, -0.3, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    rewards, kl = kl_shaped_rewards(score, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # k1 = logp - ref: row 0 (0.5, -1.0, 0.0); row 1 (0.2, 0.0, padding); row 2 is empty
    close(kl, [[0.5, -1.0, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # -0.1 * kl everywhere; the score lands on the last real token; an empty row gets nothing
    close(rewards, [[-0.05, 0.1, 0.0 + 2.0], [-0.02, 0.0 - 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_kl_shaped_rewards_k3_and_bad_estimator():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    rewards, kl = kl_shaped_rewards(torch.tensor([1.0]), logp, ref, torch.ones(1, 1), 0.2, estimator="k3")
    close(kl, [[-0.5 + math.log(2)]])
    close(rewards, [[1.0 - 0.2 * (-0.5 + math.log(2))]])
    with pytest.raises(ValueError):
        kl_shaped_rewards(torch.tensor([1.0]), logp, ref, torch.ones(1, 1), 0.2, estimator="k4")


def test_gae_1x3_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # t=2: delta = 1 + 0 (terminal) - 0.7 = 0.3;  A2 = 0.3
    # t=1: delta = 0 + 0.7 - 0.6 = 0.1;           A1 = 0.1 + 0.95 * 0.3 = 0.385
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1;           A0 = 0.1 + 0.95 * 0.385 = 0.46575
    close(advantages, [[0.46575, 0.385, 0.3]])
    close(returns, [[0.46575 + 0.5, 0.385 + 0.6, 0.3 + 0.7]])


def test_gae_padding_bootstraps_zero_and_is_ignored():
    rewards = torch.tensor([[1.0, 2.0, 99.0]])
    values = torch.tensor([[3.0, 4.0, 99.0]])
    advantages, returns = gae(rewards, values, torch.tensor([[1, 1, 0]]), gamma=0.9, lam=0.5)
    # t=1 is last: delta = 2 + 0.9 * 0 - 4 = -2;        A1 = -2
    # t=0: delta = 1 + 0.9 * 4 - 3 = 1.6;               A0 = 1.6 + 0.9 * 0.5 * (-2) = 0.7
    close(advantages, [[0.7, -2.0, 0.0]])
    close(returns, [[3.7, 2.0, 0.0]])


def test_gae_lambda_one_gives_reward_to_go():
    rewards = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, 0.0]])
    values = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    _, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(returns, [[1 - 2 + 3, -2 + 3, 3], [0.5 + 0.25, 0.25, 0.0]], atol=1e-5)


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=64)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_kl_controller_matches_formula():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)  # error 9/6 - 1 = 0.5, clipped to 0.2
    close(ctl.value, 0.2 * (1 + 0.2 * 256 / 10000))
    ctl.update(current_kl=3.0, n_steps=512)  # error -0.5, clipped to -0.2
    close(ctl.value, 0.2 * (1 + 0.2 * 256 / 10000) * (1 - 0.2 * 512 / 10000))
    ctl.update(current_kl=torch.tensor(6.6), n_steps=100)  # error 0.1, inside the clip
    expected = 0.2 * (1 + 0.2 * 256 / 10000) * (1 - 0.2 * 512 / 10000) * (1 + 0.1 * 100 / 10000)
    close(ctl.value, expected)
    resumed = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    with pytest.raises(ValueError):
        AdaptiveKLController(init_kl_coef=0.2, target=0.0, horizon=10000)


def test_group_advantages_grpo():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1; group 2: all equal -> 0
    close(group_advantages(rewards, 3, "grpo"), [-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4), 0.0, 0.0, 0.0])
    close(group_advantages(rewards, 3, "grpo", scale_std=False), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def test_group_advantages_rloo():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 2.0])
    # r_i - mean of the other two: 1 - 5/2, 2 - 4/2, 3 - 3/2; 4 - 1, 0 - 3, 2 - 2
    close(group_advantages(rewards, 3, "rloo"), [-1.5, 0.0, 1.5, 3.0, -3.0, 0.0])


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2, "grpo")
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 1, "rloo")
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 2, "ppo")


def test_aggregate_token_and_sequence_by_hand():
    x = torch.tensor([[1.0, 3.0, 99.0], [4.0, 99.0, 99.0], [99.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    close(aggregate(x, mask, "token"), (1 + 3 + 4) / 3)
    # per-sequence means 2 and 4; the empty third row is left out (DeepSeekMath eq. 3)
    close(aggregate(x, mask, "sequence"), (2 + 4) / 2)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(x, mask, "batch")


@pytest.mark.parametrize("how", ["token", "sequence"])
def test_aggregation_weight_splits_a_mini_batch_into_micro_batches(how):
    x = torch.arange(12.0).view(4, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    whole = aggregate(x, mask, how)
    parts = sum(aggregate(x[rows], mask[rows], how) * aggregation_weight(mask[rows], how)
                for rows in ([0, 3], [1, 2]))
    close(parts / aggregation_weight(mask, how), whole)
    assert int(aggregation_weight(mask, how)) == (6 if how == "token" else 3)
