"""GRPO with one optimizer step per rollout takes pi_old from the update's own forward
(`ppo_steps.old_logprobs_from_update`): the rollout's no-grad policy pass is skipped exactly
then, and the run (loss, gradients through the weights, logged metrics) equals the run with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from coachlm.engine.checkpoint import trainable_state
from coachlm.trainers import ppo as ppo_module
from coachlm.trainers.ppo import train_ppo
from coachlm.trainers.ppo_steps import ActorCritic, old_logprobs_from_update
from test_ppo import PROMPTS, LowIds, policy, small
from models_fixtures import tokenizer
from test_engine_multiprocess import _free_port, assert_same_ppo_run, ppo_args
from test_engine_multiprocess import files  # noqa: F401  (fixture)


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


def test_dropout_or_another_engine_keep_the_pass():
    ac, cfg = ActorCritic(policy(), None), grpo()
    assert old_logprobs_from_update(ac, cfg, None)
    assert not old_logprobs_from_update(ac, cfg, object())  # importance weights need pi_old
    ac.policy.config.attention_dropout = 0.1  # train mode would drop in the update's forward
    assert not old_logprobs_from_update(ac, cfg, None)


# `coachlm ppo` with the decision wrapped: "pass" forces the no-grad pass; each process writes
# what was decided to decisions-RANK.txt in the run's directory.
_LAUNCHED = """
import os, sys
from coachlm.trainers import ppo
mode, out = sys.argv.pop(1), sys.argv[sys.argv.index("--out") + 1]
decide = ppo.old_logprobs_from_update

def decided(*args):
    skip = mode == "skip" and decide(*args)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"decisions-{os.environ.get('RANK', '0')}.txt"), "a") as f:
        f.write(f"{skip}\\n")
    return skip

ppo.old_logprobs_from_update = decided
from coachlm.cli.app import main
main()
"""


@pytest.mark.slow
def test_two_processes_skip_the_pass_and_change_no_number(files, tmp_path):
    """GRPO, one step per rollout, on 2 processes (`accelerate launch`): each process's update
    forward gives its own rows' pi_old and the processes share them for the logged KL and
    entropy; the run equals the one with the no-grad pass (per-step KL, reward, losses,
    entropy, final weights)."""
    script = tmp_path / "launched.py"
    script.write_text(_LAUNCHED)
    args = {}
    for mode in ("skip", "pass"):
        args[mode] = [a.replace("ppo.ppo_epochs=2", "ppo.ppo_epochs=1").replace(
            "ppo.mini_batch_size=4", "ppo.mini_batch_size=8")
            for a in ppo_args(files, tmp_path / mode, "grpo")]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               str(script), mode, *args[mode]]
        env = {**os.environ, "COACHLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        for rank in (0, 1):  # two rollouts, each skipped (or not) on both processes
            decisions = (tmp_path / mode / f"decisions-{rank}.txt").read_text().split()
            assert decisions == [str(mode == "skip")] * 2
    assert "ppo.mini_batch_size=8" in args["skip"]  # the whole rollout: one step per rollout
    assert_same_ppo_run(tmp_path / "pass", tmp_path / "skip")
