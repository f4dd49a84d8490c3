"""The generation-engine seam with the truncated importance-sampling correction.

vLLM itself runs in its own environment (tests/test_vllm_engine.py); here a stand-in engine
plays its part with real parts: its own copy of the weights, given by value through `sync` as
vLLM's are, sampled by the built-in sampler under bf16 autocast, so that its logprobs differ
from the learner's fp32 ones as another engine's do."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from coachlm import config
from coachlm.config import ConfigError
from coachlm.losses import ppo_clip
from coachlm.rl_math import aggregation_weight
from coachlm.rollout.generators import BuiltinGenerator, learner_weights, make_generator
from coachlm.rollout.sampling import generate
from coachlm.errors import CoachError
from coachlm.trainers.ppo import run_ppo, train_ppo
from coachlm.trainers.ppo_config import PPOConfig, PPORunConfig
from coachlm.trainers.ppo_steps import ActorCritic, _micro_loss, rollout
from models_fixtures import model as tiny_model
from models_fixtures import tokenizer
from test_ppo import PROMPTS, LowIds, policy, small


class StandInEngine:
    """Another engine: its own weights (a differently seeded model until the first sync),
    sampled in bf16."""

    external = True

    def __init__(self):
        self.model = tiny_model(seed=1).eval()
        self.syncs = 0

    def __call__(self, prompt_ids, cfg, *, row_offset=0, on_batch=None):
        return generate(self.model, tokenizer(), prompt_ids, replace(cfg, dtype="bf16"),
                        on_batch=on_batch, row_offset=row_offset)

    def sync(self, model):
        self.model.load_state_dict(learner_weights(model))
        self.syncs += 1

    def close(self):
        pass


def _prompt_ids(k: int = 4) -> list[list[int]]:
    from coachlm.data.chat import encode_prompt

    return [encode_prompt(tokenizer(), p) for p in PROMPTS[:k]]


def test_ppo_clip_weights_each_tokens_term_by_hand():
    # ratio = exp(lp - old): [2, 0.5 | 1, e^0.1]; A = [1, -2 | 3, 1]; eps 0.2; weights [2, 0.5 | 1, 0]
    lp = torch.tensor([[math.log(2.0), math.log(0.5)], [0.0, 0.1]])
    old = torch.zeros(2, 2)
    adv = torch.tensor([[1.0, -2.0], [3.0, 1.0]])
    mask = torch.ones(2, 2)
    w = torch.tensor([[2.0, 0.5], [1.0, 0.0]])
    loss, _, _ = ppo_clip(lp, old, adv, mask, 0.2, "token", w)
    # per token max(-A r, -A clip(r)): -1.2 (clipped at 1.2), 2*0.8=1.6 (clipped 0.8 > 0.5),
    # -3, -min(e^0.1, 1.2) = -1.10517; weighted: -2.4, 0.8, -3, 0 -> mean -1.15
    assert float(loss) == pytest.approx(-1.15, abs=1e-6)
    unweighted, _, _ = ppo_clip(lp, old, adv, mask, 0.2, "token")
    assert float(unweighted) == pytest.approx((-1.2 + 1.6 - 3.0 - math.exp(0.1)) / 4, abs=1e-6)


def test_another_engines_rollout_gets_truncated_weights_and_the_loss_uses_them():
    torch.manual_seed(0)
    ac = ActorCritic(policy(), None)
    engine = StandInEngine()
    engine.sync(ac.policy)
    cfg = small(algo="rloo", samples_per_prompt=2, rollout_batch_size=4, mini_batch_size=8,
                micro_batch_size=8, importance_cap=1.01)
    exp, gen, _ = rollout(ac, None, tokenizer(), _prompt_ids(), cfg, seed=3,
                          autocast=lambda: torch.autocast("cpu", enabled=False), generator=engine)
    mask = exp.action_mask.bool()
    mu = torch.zeros_like(exp.logprobs)
    for b, lp in enumerate(gen.logprobs):
        mu[b, :len(lp)] = torch.tensor(lp)
    ratio = torch.exp(exp.logprobs - mu)
    assert not torch.allclose(ratio[mask], torch.ones_like(ratio[mask]), atol=1e-6)  # bf16 differs
    torch.testing.assert_close(exp.is_weights[mask], ratio[mask].clamp(max=1.01))
    assert float(exp.is_weights[~mask].abs().sum()) == 0.0
    assert float(exp.is_weights.max()) <= 1.01 + 1e-7
    # The loss at the first epoch (ratio pi / pi_old = 1, no clipping): -mean over tokens of w * A.
    exp.advantages = torch.linspace(-1.0, 1.0, exp.logprobs.numel()).view_as(exp.logprobs)
    exp.advantages = exp.advantages * exp.action_mask
    e = exp.select(torch.arange(exp.sequences.shape[0]))
    loss, _ = _micro_loss(ac, e, None, cfg, aggregation_weight(e.action_mask, "token"), 0.0)
    expected = -(exp.is_weights * exp.advantages)[mask].sum() / mask.sum()
    assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-5)
    # The built-in sampler samples the learner itself: no correction.
    exp2, _, _ = rollout(ac, None, tokenizer(), _prompt_ids(), cfg, seed=3,
                         autocast=lambda: torch.autocast("cpu", enabled=False),
                         generator=BuiltinGenerator(ac.policy, tokenizer()))
    assert exp2.is_weights is None


def test_train_ppo_gives_the_engine_the_learners_weights_after_every_update(tmp_path):
    engine = StandInEngine()
    model = policy()
    cfg = small(steps=2, lora=None)
    result = train_ppo(model, tokenizer(), PROMPTS, LowIds(), cfg, tmp_path, generator=engine)
    assert engine.syncs == 1 + cfg.steps  # at the start, then after each update
    for name, value in learner_weights(model).items():
        assert torch.equal(engine.model.state_dict()[name], value), name
    assert 0 < result.metrics["is_weight_mean"] <= cfg.importance_cap
    assert result.metrics["is_weight_min"] <= result.metrics["is_weight_mean"]


def test_importance_cap_is_validated_and_typed():
    with pytest.raises(ConfigError, match="importance_cap must be > 0"):
        config.from_dict(PPOConfig, {"importance_cap": 0})
    with pytest.raises(ConfigError):
        config.from_dict(PPOConfig, {"generator": "vllmm"})
    assert config.from_dict(PPOConfig, {"importance_cap": None}).importance_cap is None
    assert make_generator("builtin", None, None) is None


NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                             reason="vLLM is installed in this environment")


@NO_VLLM
def test_asking_for_vllm_without_it_is_one_line_exit_2(tmp_path):
    from test_rollout_sample_cmd import _setup

    model_dir, prompts = _setup(tmp_path), tmp_path / "prompts.jsonl"
    out = subprocess.run([sys.executable, "-m", "coachlm.cli", "sample", "--model", str(model_dir),
                          "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                          "--generator", "vllm"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = [x for x in (out.stdout + out.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and "vLLM is not installed" in lines[0], lines
    assert "Traceback" not in out.stderr


@NO_VLLM
def test_rl_with_vllm_without_it_stops_before_loading_anything(tmp_path):
    cfg = PPORunConfig(model=tmp_path / "absent", prompts=tmp_path / "absent.jsonl",
                       out=tmp_path / "o", ppo=PPOConfig(generator="vllm"))
    with pytest.raises(CoachError, match="vLLM is not installed"):
        run_ppo(cfg)
    assert not (tmp_path / "o").exists()
