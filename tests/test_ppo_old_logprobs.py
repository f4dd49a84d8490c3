"""GRPO with one optimizer step per rollout takes pi_old from the update's own forward
(`ppo_steps.old_logprobs_from_update`): the rollout's no-grad policy pass is skipped exactly
then, and the run (loss, gradients through the weights, logged metrics) equals the run with it."""

from __future__ import annotations

import json

import pytest
import torch

from coachlm.engine.checkpoint import trainable_state
from coachlm.trainers import ppo as ppo_module
from coachlm.trainers.ppo import train_ppo
from coachlm.trainers.ppo_steps import ActorCritic, old_logprobs_from_update
from test_ppo import PROMPTS, LowIds, policy, small
from models_fixtures import tokenizer


def grpo(**changes):
    return small(**{**dict(algo="grpo", rollout_batch_size=4, samples_per_prompt=2,
                           mini_batch_size=8, micro_batch_size=4, ppo_epochs=1,
                           sample_every=0), **changes})


def run(tmp_path, cfg, monkeypatch, skip_allowed=True):
    """(policy forwards with the adapter's gradients on, metrics rows, trainable weights)."""
    calls = []
    forward = ActorCritic.forward
    monkeypatch.setattr(ActorCritic, "forward",
                        lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    if not skip_allowed:
        monkeypatch.setattr(ppo_module, "old_logprobs_from_update", lambda *a: False)
    model = policy()
    train_ppo(model, tokenizer(), PROMPTS, LowIds(), cfg, tmp_path)
    monkeypatch.undo()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return len(calls), rows, trainable_state(model)


@pytest.mark.parametrize("changes, skipped", [
    ({}, True),
    ({"ppo_epochs": 2}, False),  # the second epoch's pi_old is not its pi_theta
    ({"mini_batch_size": 4}, False),  # the second mini-batch runs after a step
    ({"algo": "rloo"}, False),  # RLOO's reward reads pi_old's KL before the update
])
def test_the_policy_pass_is_skipped_only_with_one_step_per_rollout(tmp_path, monkeypatch,
                                                                   changes, skipped):
    cfg = grpo(**changes)
    calls, _, _ = run(tmp_path, cfg, monkeypatch)
    micro = cfg.episodes // cfg.micro_batch_size  # forwards per pass over the rollout
    expected = cfg.steps * micro * (cfg.ppo_epochs + (0 if skipped else 1))
    assert calls == expected


@pytest.mark.parametrize("bf16", [False, True])
def test_the_skip_changes_no_number(tmp_path, monkeypatch, bf16):
    cfg = grpo(bf16=bf16, steps=2)
    calls, rows, weights = run(tmp_path / "skip", cfg, monkeypatch)
    calls_ref, rows_ref, weights_ref = run(tmp_path / "pass", cfg, monkeypatch,
                                           skip_allowed=False)
    assert calls_ref == calls + cfg.steps * 2  # the path compared is the one with the pass
    for row, ref in zip(rows, rows_ref, strict=True):
        keys = set(ref) - {"tokens_per_s"}
        assert set(row) - {"tokens_per_s"} == keys
        for k in keys:
            assert row[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k
    assert rows[0]["clipfrac"] == 0 and rows[0]["approx_kl"] == pytest.approx(0, abs=1e-7)
    assert rows[-1]["kl"] > 0 and rows[-1]["entropy"] > 0  # measured, not left out
    for name, w in weights_ref.items():
        torch.testing.assert_close(weights[name], w, rtol=1e-5, atol=1e-6, msg=name)
    # The weights moved: two updates happened on both paths.
    assert any(not torch.equal(w, policy().state_dict().get(n, w)) for n, w in weights.items()
               if "lora_B" in n)


def test_dropout_another_engine_or_processes_keep_the_pass():
    ac, cfg = ActorCritic(policy(), None), grpo()
    assert old_logprobs_from_update(ac, cfg, 1, None)
    assert not old_logprobs_from_update(ac, cfg, 2, None)  # each process has a share of rows
    assert not old_logprobs_from_update(ac, cfg, 1, object())  # importance weights need pi_old
    ac.policy.config.attention_dropout = 0.1  # train mode would drop in the update's forward
    assert not old_logprobs_from_update(ac, cfg, 1, None)
