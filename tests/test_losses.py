"""Hand-computed checks of coachlm.losses, plus TRL 1.16 as an independent oracle.

TRL computes its DPO and reward losses inline in ``DPOTrainer._compute_loss`` and
``RewardTrainer.compute_loss``; no standalone function exposes them. The oracle helpers below
call those methods on a trainer built with ``object.__new__`` and a stub model that returns
fixed per-token log-probs / rewards, so TRL's own loss code runs on our numbers. They depend on
TRL internals: they skip when TRL is not installed, and FAIL when it is but its internals
changed, so that the oracle comparison can never silently stop running (then update the
helpers to the new TRL, or pin it in the dev extra).
"""

import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from coachlm.losses import (bradley_terry, bradley_terry_tie, dpo, ipo, kl_penalty, nll, ppo_clip, ranking,
                            value_clip)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), atol=atol, rtol=0)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), written out for hand-computed expectations."""
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------
# TRL oracles
# ---------------------------------------------------------------------------------------------


class _IdentityAccelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x


def _bare_trainer(cls, **attrs):
    trainer = object.__new__(cls)
    base = dict(
        model=torch.nn.Module().eval(),
        accelerator=_IdentityAccelerator(),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    for name, value in {**base, **attrs}.items():
        object.__setattr__(trainer, name, value)
    return trainer


def trl_version() -> str:
    import trl

    return trl.__version__


def trl_reward_loss(chosen, rejected, margin=None):
    """TRL RewardTrainer.compute_loss on fixed rewards (B,): a scalar mean loss."""
    pytest.importorskip("trl")
    from trl.trainer.reward_trainer import RewardTrainer

    trainer = _bare_trainer(RewardTrainer, args=SimpleNamespace(center_rewards_coefficient=None))
    logits = torch.cat([chosen, rejected]).unsqueeze(-1)  # (2B, 1), TRL's [chosen; rejected] layout
    ones = torch.ones(len(logits), 2, dtype=torch.long)
    inputs = {"input_ids": ones, "attention_mask": ones}
    if margin is not None:
        inputs["margin"] = margin
    try:
        return trainer.compute_loss(lambda **_: SimpleNamespace(logits=logits), inputs)
    except (AttributeError, KeyError, TypeError) as err:
        pytest.fail(f"TRL {trl_version()} RewardTrainer internals changed (update this "
                    f"oracle): {err!r}")


def trl_dpo_loss(loss_type, beta, chosen_tok, rejected_tok, mask, ref_chosen, ref_rejected, label_smoothing=0.0):
    """TRL DPOTrainer._compute_loss on fixed per-token policy logps (B, T) and precomputed
    reference sequence logps (B,). ``mask`` (2B, T) marks completion tokens. A scalar mean loss."""
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DPOTrainer

    trainer = _bare_trainer(
        DPOTrainer,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
    )
    per_token = torch.cat([chosen_tok, rejected_tok]) * mask  # (2B, T), 0 off the completion
    rows, T = per_token.shape
    zeros = torch.zeros(rows, T)
    outputs = SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    completion_mask = torch.cat([torch.zeros(rows, 1), mask], dim=1).long()  # one prompt token, then T
    inputs = {
        "input_ids": torch.ones(rows, T + 1, dtype=torch.long),
        "attention_mask": torch.ones(rows, T + 1, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    try:
        return trainer._compute_loss(lambda **_: outputs, inputs, False)
    except (AttributeError, KeyError, TypeError) as err:
        pytest.fail(f"TRL {trl_version()} DPOTrainer internals changed (update this "
                    f"oracle): {err!r}")


@pytest.mark.parametrize("which", ["reward", "dpo"])
def test_trl_oracles_fail_rather_than_skip_when_trl_internals_change(monkeypatch, which):
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.reward_trainer import RewardTrainer

    def changed(self, *args, **kwargs):
        raise AttributeError("'Trainer' object has no attribute 'renamed'")

    monkeypatch.setattr(RewardTrainer, "compute_loss", changed)
    monkeypatch.setattr(DPOTrainer, "_compute_loss", changed)
    outcome = None
    try:  # catch everything: a skip (an outcome, not an Exception) must show up here too
        if which == "reward":
            trl_reward_loss(torch.tensor([1.0]), torch.tensor([0.0]))
        else:
            trl_dpo_loss("sigmoid", 0.1, CHOSEN_TOK, REJECTED_TOK, DPO_MASK, REF_CHOSEN,
                         REF_REJECTED)
    except BaseException as e:  # noqa: BLE001
        outcome = e
    assert isinstance(outcome, pytest.fail.Exception), repr(outcome)
    assert "internals changed" in str(outcome)


# Two pairs of 3-token completions; the second chosen response has only 2 real tokens.
CHOSEN_TOK = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, -7.0]])  # (B, T)
REJECTED_TOK = torch.tensor([[-2.0, -1.0, -1.0], [-0.1, -0.4, -0.9]])
DPO_MASK = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]])  # (2B, T): chosen rows, rejected rows
REF_CHOSEN = torch.tensor([-3.0, -1.0])  # (B,) sequence sums
REF_REJECTED = torch.tensor([-3.5, -1.2])


def _sums_and_counts():
    chosen_mask, rejected_mask = DPO_MASK.chunk(2)
    chosen = (CHOSEN_TOK * chosen_mask).sum(1)  # (-3.5, -0.5)
    rejected = (REJECTED_TOK * rejected_mask).sum(1)  # (-4.0, -1.4)
    return chosen, rejected, chosen_mask.sum(1), rejected_mask.sum(1)


# ---------------------------------------------------------------------------------------------
# Language modelling
# ---------------------------------------------------------------------------------------------


def test_nll_by_hand():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0], [5.0, 0.0, 0.0]]])  # (1, 3, 3)
    labels = torch.tensor([[1, 1, -100]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: uniform -> -log(1/3) = log 3;  token 1: p = (1, 3, 1) / 5 -> -log(3/5);  token 2 masked
    expected = (math.log(3) - math.log(3 / 5)) / 2  # = log(5) / 2
    close(nll(logits, labels, mask), expected)
    close(expected, math.log(5) / 2)
    close(nll(logits, labels, mask), F.cross_entropy(logits[0], labels[0], ignore_index=-100))


# ---------------------------------------------------------------------------------------------
# Reward model losses
# ---------------------------------------------------------------------------------------------


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5])
    # -log sigmoid(x) = log(1 + e^-x): x = 1 and x = -0.5
    close(bradley_terry(chosen, rejected), [softplus(-1.0), softplus(0.5)])
    # with margin (0.5, 0): x = 1 - 0.5 = 0.5 and x = -0.5
    close(bradley_terry(chosen, rejected, torch.tensor([0.5, 0.0])), [softplus(-0.5), softplus(0.5)])


def test_bradley_terry_matches_trl_reward_trainer():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.5]), torch.tensor([0.0, 0.5, -1.0])
    margin = torch.tensor([0.5, 0.0, 1.0])
    close(bradley_terry(chosen, rejected).mean(), trl_reward_loss(chosen, rejected))
    close(bradley_terry(chosen, rejected, margin).mean(), trl_reward_loss(chosen, rejected, margin))


def test_bradley_terry_tie_by_hand():
    # d = (r_a - r_b) / 2 = log 2: e^d = 2, e^-d = 1/2, nu = 1 -> Z = 3.5
    r_a, r_b = torch.tensor([2 * math.log(2), 2 * math.log(2), 1.0]), torch.tensor([0.0, 0.0, 1.0])
    tie = torch.tensor([False, True, True])
    # P(a > b) = 2 / 3.5;  P(tie) = 1 / 3.5;  equal rewards: P(tie) = 1 / (1 + 1 + 1)
    close(bradley_terry_tie(r_a, r_b, tie), [math.log(3.5 / 2), math.log(3.5), math.log(3)])


def test_bradley_terry_tie_is_a_distribution_and_reduces_to_bt():
    r_a, r_b = torch.tensor([0.3, -1.2]), torch.tensor([1.0, 0.4])
    log_nu = torch.tensor(-0.7)
    no, yes = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    p_a = torch.exp(-bradley_terry_tie(r_a, r_b, no, log_nu))
    p_b = torch.exp(-bradley_terry_tie(r_b, r_a, no, log_nu))
    p_tie = torch.exp(-bradley_terry_tie(r_a, r_b, yes, log_nu))
    close(p_a + p_b + p_tie, [1.0, 1.0])
    close(bradley_terry_tie(r_a, r_b, no, log_nu=-float("inf")), bradley_terry(r_a, r_b))


def test_bradley_terry_tie_pulls_tied_rewards_together():
    r_a = torch.tensor([1.0], requires_grad=True)
    bradley_terry_tie(r_a, torch.tensor([0.0]), torch.tensor([True])).sum().backward()
    assert r_a.grad.item() > 0  # descending the loss lowers r_a toward r_b


def test_ranking_k2_equals_bradley_terry():
    chosen, rejected = torch.tensor([1.0, -0.3, 0.7]), torch.tensor([0.2, 0.4, 0.7])
    # pair 1 is stored rejected-first: only the rank (0 = better) says which is chosen
    rewards = torch.tensor([chosen[0], rejected[0], rejected[1], chosen[1], chosen[2], rejected[2]])
    ranks = torch.tensor([0, 1, 1, 0, 0, 1])
    loss, n_pairs = ranking(rewards, ranks, torch.tensor([0, 0, 1, 1, 2, 2]))
    close(loss, bradley_terry(chosen, rejected).mean())
    assert n_pairs.item() == 3


def test_ranking_k3_is_hand_average_of_its_three_pairs():
    rewards = torch.tensor([1.0, 0.2, -0.5])
    ranks = torch.tensor([1, 0, 2])  # order: response 1 > response 0 > response 2
    loss, n_pairs = ranking(rewards, ranks, torch.tensor([0, 0, 0]))
    # pairs (better - worse): 0.2 - 1.0 = -0.8;  0.2 - (-0.5) = 0.7;  1.0 - (-0.5) = 1.5
    close(loss, (softplus(0.8) + softplus(-0.7) + softplus(-1.5)) / 3)
    assert n_pairs.item() == 3


def test_ranking_weights_each_prompt_once():
    rewards = torch.tensor([1.0, 0.2, -0.5, 0.0, 2.0])
    ranks = torch.tensor([1, 0, 2, 0, 1])
    group_ids = torch.tensor([7, 7, 7, 3, 3])  # ids need not be contiguous or sorted
    loss, n_pairs = ranking(rewards, ranks, group_ids)
    group_7 = (softplus(0.8) + softplus(-0.7) + softplus(-1.5)) / 3
    group_3 = softplus(2.0)  # 0.0 ranked above 2.0: x = -2
    close(loss, (group_7 + group_3) / 2)  # not (3 * group_7 + group_3) / 4
    assert n_pairs.item() == 4


def test_ranking_skips_ties_and_unranked():
    rewards = torch.tensor([0.5, 1.0, -1.0, 3.0])
    ranks = torch.tensor([0, 1, 1, -1])  # 1 and 2 tied; 3 unranked
    loss, n_pairs = ranking(rewards, ranks, torch.zeros(4, dtype=torch.long))
    # pairs: 0 > 1 (0.5 - 1.0 = -0.5) and 0 > 2 (0.5 + 1.0 = 1.5)
    close(loss, (softplus(0.5) + softplus(-1.5)) / 2)
    assert n_pairs.item() == 2


def test_ranking_without_pairs_is_zero_and_differentiable():
    rewards = torch.tensor([0.5, 1.0], requires_grad=True)
    loss, n_pairs = ranking(rewards, torch.tensor([0, 0]), torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == 0.0 and n_pairs.item() == 0
    close(rewards.grad, [0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# DPO / IPO
# ---------------------------------------------------------------------------------------------


def test_dpo_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5))
    # chosen log-ratio -1 - (-2) = 1; rejected -3 - (-2.5) = -0.5; h = 1.5; beta h = 0.75
    losses, chosen_rewards, rejected_rewards = dpo(pc, pr, rc, rr, beta=0.5)
    close(losses, [softplus(-0.75)])
    close(chosen_rewards, [0.5 * 1.0])
    close(rejected_rewards, [0.5 * -0.5])
    smoothed, _, _ = dpo(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    close(smoothed, [0.9 * softplus(-0.75) + 0.1 * softplus(0.75)])


def test_dpo_rewards_are_detached():
    pc = torch.tensor([-1.0], requires_grad=True)
    losses, chosen_rewards, _ = dpo(pc, torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), 0.1)
    assert losses.requires_grad and not chosen_rewards.requires_grad


def test_dpo_matches_trl_sigmoid():
    chosen, rejected, _, _ = _sums_and_counts()
    expected = trl_dpo_loss("sigmoid", 0.1, CHOSEN_TOK, REJECTED_TOK, DPO_MASK, REF_CHOSEN, REF_REJECTED)
    close(dpo(chosen, rejected, REF_CHOSEN, REF_REJECTED, beta=0.1)[0].mean(), expected, atol=1e-5)


def test_dpo_label_smoothing_matches_trl_cdpo_form():
    # TRL 1.16 keeps the cDPO form only in its "aot" loss, which sorts log-ratios across the batch;
    # with one pair per call the sort is the identity, so it is cDPO exactly.
    chosen, rejected, _, _ = _sums_and_counts()
    for i in range(2):
        pair = slice(i, i + 1)
        mask = DPO_MASK[[i, i + 2]]
        expected = trl_dpo_loss(
            "aot", 0.5, CHOSEN_TOK[pair], REJECTED_TOK[pair], mask, REF_CHOSEN[pair], REF_REJECTED[pair], 0.2
        )
        ours = dpo(chosen[pair], rejected[pair], REF_CHOSEN[pair], REF_REJECTED[pair], 0.5, label_smoothing=0.2)
        close(ours[0].mean(), expected, atol=1e-5)


def test_ipo_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5))
    # h = 1.5 as in test_dpo_by_hand; 1 / (2 beta) = 1 -> (1.5 - 1)^2 = 0.25
    losses, chosen_rewards, rejected_rewards = ipo(pc, pr, rc, rr, beta=0.5)
    close(losses, [0.25])
    close(chosen_rewards, [0.5])
    close(rejected_rewards, [-0.25])


def test_ipo_matches_trl_with_length_averaged_logps():
    chosen, rejected, n_chosen, n_rejected = _sums_and_counts()
    expected = trl_dpo_loss("ipo", 0.1, CHOSEN_TOK, REJECTED_TOK, DPO_MASK, REF_CHOSEN, REF_REJECTED)
    averaged = ipo(chosen / n_chosen, rejected / n_rejected, REF_CHOSEN / n_chosen, REF_REJECTED / n_rejected, 0.1)
    close(averaged[0].mean(), expected, atol=1e-4)
    # TRL averages per token; passing sequence sums gives the (different) literal eq. 17.
    summed = ipo(chosen, rejected, REF_CHOSEN, REF_REJECTED, 0.1)
    assert not torch.isclose(summed[0].mean(), expected)


# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------


def test_ppo_clip_by_hand():
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    logprobs = (old + torch.log(torch.tensor([[1.5, 0.5, 0.5, 9.0]]))).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipfrac, approx_kl = ppo_clip(logprobs, old, advantages, mask, clip_eps=0.2)
    # tok0: rho 1.5, A  1: max(-1.5, -1.2) = -1.2 (clipped)
    # tok1: rho 0.5, A  1: max(-0.5, -0.8) = -0.5 (unclipped)
    # tok2: rho 0.5, A -2: max( 1.0,  1.6) =  1.6 (clipped); tok3 masked
    close(loss, (-1.2 - 0.5 + 1.6) / 3)
    close(clipfrac, 2 / 3)
    # k3 with r = rho: (rho - 1) - log rho
    close(approx_kl, ((0.5 - math.log(1.5)) + 2 * (-0.5 - math.log(0.5))) / 3)
    loss.backward()
    # clipped tokens get no gradient; tok1: d(-A rho)/d logp = -A rho / 3 = -0.5 / 3
    close(logprobs.grad, [[0.0, -0.5 / 3, 0.0, 0.0]])


def test_ppo_clip_on_policy_is_minus_mean_advantage():
    logprobs = torch.tensor([[-0.5, -2.0]])
    loss, clipfrac, approx_kl = ppo_clip(logprobs, logprobs, torch.tensor([[1.0, 3.0]]), torch.ones(1, 2))
    close(loss, -(1.0 + 3.0) / 2)
    close(clipfrac, 0.0)
    close(approx_kl, 0.0)


def test_ppo_clip_sequence_aggregation_by_hand():
    # On policy (rho = 1) the loss is -A per token; row 0 has 2 tokens, row 1 has 1.
    logprobs = torch.tensor([[-0.5, -2.0], [-1.0, -1.0]])
    advantages = torch.tensor([[1.0, 3.0], [6.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    token, _, _ = ppo_clip(logprobs, logprobs, advantages, mask, aggregation="token")
    sequence, _, _ = ppo_clip(logprobs, logprobs, advantages, mask, aggregation="sequence")
    close(token, -(1.0 + 3.0 + 6.0) / 3)
    close(sequence, -((1.0 + 3.0) / 2 + 6.0) / 2)


def test_kl_penalty_by_hand():
    half, quarter = math.log(0.5), math.log(0.25)
    logprobs = torch.tensor([[half, 0.0], [half, quarter]], requires_grad=True)
    ref = torch.tensor([[quarter, 0.0], [half, half]])
    mask = torch.tensor([[1, 0], [1, 1]])
    # k3 = r - 1 - log r, r = ref / pi: tok (0.5 -> 0.25) r = 0.5: log 2 - 0.5;
    # tok (0.5 -> 0.5) r = 1: 0; tok (0.25 -> 0.5) r = 2: 1 - log 2
    k_a, k_c = math.log(2) - 0.5, 1 - math.log(2)
    loss, kl = kl_penalty(logprobs, ref, mask, beta=0.05, aggregation="sequence")
    close(kl, (k_a + (0.0 + k_c) / 2) / 2)  # the mean of the two sequences' means
    close(loss, 0.05 * (k_a + k_c / 2) / 2)
    _, kl_token = kl_penalty(logprobs, ref, mask, beta=0.05, aggregation="token")
    close(kl_token, (k_a + 0.0 + k_c) / 3)  # = 1/6
    loss.backward()
    # d k3 / d logp = 1 - r; each sequence weighs 1/2, a token of row 1 another 1/2
    close(logprobs.grad, [[0.05 * (1 - 0.5) / 2, 0.0], [0.0, 0.05 * (1 - 2.0) / 4]])


def test_value_clip_by_hand():
    old_values = torch.zeros(1, 5)
    values = torch.tensor([[0.5, 0.1, -0.5, 0.5, 7.0]])
    returns = torch.tensor([[1.0, 0.0, -1.0, 0.3, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clipfrac = value_clip(values, old_values, returns, mask, clip_eps=0.2)
    # tok0: V_clip 0.2:  max((0.5-1)^2, (0.2-1)^2)   = max(0.25, 0.64) = 0.64 (clipped)
    # tok1: V_clip 0.1:  max(0.01, 0.01)             = 0.01
    # tok2: V_clip -0.2: max((-0.5+1)^2, (-0.2+1)^2) = max(0.25, 0.64) = 0.64 (clipped)
    # tok3: V_clip 0.2:  max((0.5-0.3)^2, (0.2-0.3)^2) = max(0.04, 0.01) = 0.04; tok4 masked
    close(loss, 0.5 * (0.64 + 0.01 + 0.64 + 0.04) / 4)
    close(clipfrac, 2 / 4)


def test_losses_module_does_not_import_transformers():
    code = "import coachlm.losses, coachlm.rl_math, sys; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
