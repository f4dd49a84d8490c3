"""`run_ppo` end to end from files (rubric and reward-model rewards), and full fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch

from coachlm import config
from coachlm.config import ConfigError
from coachlm.data.io import write_records
from coachlm.data.schema import Message, PromptRecord
from coachlm.errors import CoachError
from coachlm.models.load import load_model, save_pretrained
from coachlm.models.reward import build_reward_model, save_reward_model
from coachlm.rollout.rewards import RewardModelReward, RubricReward, SumReward
from coachlm.trainers.ppo import build_reward, run_ppo, train_ppo
from coachlm.trainers.ppo_config import PPOConfig, PPORunConfig
from models_fixtures import model as tiny_model
from models_fixtures import tokenizer

PROMPTS = [(Message("user", f"What is {i} plus {i}?"),) for i in range(8)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_run")
    save_pretrained(tiny_model(seed=0), tokenizer(), root / "base")
    write_records(root / "prompts.jsonl", [PromptRecord(prompt=p) for p in PROMPTS])
    return root


def _run_config(files, out, reward="rubric", **ppo):
    settings = dict(steps=2, rollout_batch_size=4, samples_per_prompt=2, mini_batch_size=4,
                    micro_batch_size=4, ppo_epochs=1, max_new_tokens=6, threads=1,
                    checkpoint_every=1, **ppo)
    return config.from_dict(PPORunConfig, {"model": str(files / "base"),
                                           "prompts": str(files / "prompts.jsonl"),
                                           "out": str(out), "reward": reward, "ppo": settings})


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_run_ppo_rubric_writes_everything(files, tmp_path, algo):
    final = run_ppo(_run_config(files, tmp_path / "out", algo=algo))
    out = tmp_path / "out"
    assert final == out / "final" and (final / "adapter" / "adapter_config.json").is_file()
    policy = load_model(final)  # the merged policy loads as a plain causal LM
    assert policy.config.vocab_size == len(tokenizer())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lora"] and summary["algo"] == algo and summary["steps"] == 2
    assert 0 < summary["trainable_fraction"] < 1 and summary["tokens_per_s"] > 0
    assert (out / "config.yaml").is_file() and (out / "samples.jsonl").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001",
                                                                       "step-000002"]


def test_run_ppo_with_reward_model(files, tmp_path):
    rm = build_reward_model(files / "base", tokenizer(), seed=0)
    save_reward_model(rm, tokenizer(), tmp_path / "rm")
    reward = build_reward(str(tmp_path / "rm"), tokenizer())
    assert isinstance(reward, RewardModelReward)
    texts = ["the cat sat", "dog"]
    scores = reward(PROMPTS[:2], texts, [[], []])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    both = SumReward([(1.0, reward), (2.0, RubricReward())])(PROMPTS[:2], texts, [[], []])
    rubric = RubricReward()(PROMPTS[:2], texts, [[], []])
    assert torch.allclose(both, scores + 2 * rubric)
    run_ppo(_run_config(files, tmp_path / "out", reward=str(tmp_path / "rm")))
    assert (tmp_path / "out" / "final" / "config.json").is_file()


def test_unknown_reward_is_a_clear_error(files, tmp_path):
    with pytest.raises(CoachError, match="neither 'rubric' nor a coachlm reward model"):
        build_reward(str(tmp_path / "nope"), tokenizer())


def test_config_typo_is_an_error(files, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'ppo.kl_coeff'"):
        _run_config(files, tmp_path, kl_coeff=0.1)


def test_full_fine_tuning_keeps_a_frozen_reference(tmp_path):
    model = tiny_model(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PPOConfig(steps=2, rollout_batch_size=4, mini_batch_size=4, micro_batch_size=2,
                    ppo_epochs=1, max_new_tokens=6, lr=1e-2, threads=1, lora=None)

    def reward(prompts, texts, ids):
        return torch.tensor([float(len(r)) for r in ids])

    result = train_ppo(model, tokenizer(), PROMPTS, reward, cfg, tmp_path)
    assert not result.summary["lora"] and result.summary["trainable_fraction"] > 0.99
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # every weight trains...
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # ...against the unchanged start
    assert rows[1]["kl"] != 0.0


def test_critic_from_reward_model_starts_at_its_scores(files, tmp_path):
    """Before any update, the critic's value of each response prefix is the reward model's
    normalized score of prompt + that prefix (InstructGPT's initialization)."""
    from coachlm.data.chat import encode_prompt
    from coachlm.models.reward import load_reward_model
    from coachlm.rollout.experience import pack_rollout
    from coachlm.trainers.critic import build_critic

    rm = build_reward_model(files / "base", tokenizer(), seed=0)
    rm.gain, rm.bias = 2.0, -0.5
    save_reward_model(rm, tokenizer(), tmp_path / "rm")
    critic = build_critic("reward_model", str(tmp_path / "rm"), None, seed=0)
    tok = tokenizer()
    prompts = [encode_prompt(tok, p) for p in PROMPTS[:2]]
    responses = [[5, 6, 7], [8, 9]]
    sequences, attention, action = pack_rollout(prompts, responses, [0, 1], tok.pad_token_id)
    with torch.no_grad():
        values = critic(sequences, attention, action)  # (2, 3)
    loaded = load_reward_model(tmp_path / "rm")
    for b, (p, r) in enumerate(zip(prompts, responses)):
        for t in range(len(r)):
            seq = torch.tensor([p + r[:t]])  # (1, L): the prompt and the response before token t
            with torch.no_grad():
                raw = loaded(seq, None, None, torch.tensor([0]), torch.tensor([seq.shape[1] - 1]))
            assert torch.allclose(values[b, t], loaded.normalize(raw)[0], atol=1e-5)
        assert (values[b, len(r):] == 0).all()


def test_ppo_with_reward_model_critic_runs_and_resumes(files, tmp_path):
    rm = build_reward_model(files / "base", tokenizer(), seed=0)
    save_reward_model(rm, tokenizer(), tmp_path / "rm")
    cfg = _run_config(files, tmp_path / "out", reward=str(tmp_path / "rm"), critic="reward_model")
    run_ppo(cfg)
    first = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert "explained_variance" in first and "value_loss" in first
    with pytest.raises(CoachError, match="needs a reward-model directory"):
        run_ppo(_run_config(files, tmp_path / "rub", critic="reward_model"))
    with pytest.raises(ConfigError, match="needs algo ppo"):
        _run_config(files, tmp_path / "x", algo="grpo", critic="reward_model")


def test_reward_model_critic_must_be_causal(tmp_path):
    # An encoder (BERT) reward model scores whole responses fine, but its hidden state at a
    # token has seen the tokens after it: as a critic its values would see the future.
    from transformers import BertConfig, BertModel

    from coachlm.trainers.critic import build_critic

    tok = tokenizer()
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=64, pad_token_id=tok.pad_token_id))
    bert.save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    rm = build_reward_model(tmp_path / "bert", tok, seed=0)
    assert rm.causal is False
    save_reward_model(rm, tok, tmp_path / "rm")
    with pytest.raises(CoachError, match="needs a causal reward model"):
        build_critic("reward_model", str(tmp_path / "rm"), None, seed=0)
