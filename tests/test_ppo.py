"""PPO / GRPO / RLOO: config validation, rollout layout (EOS truncation, masking), KL-shaped
rewards on a real rollout, scoring options, learning a rule reward, and exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from coachlm import config
from coachlm.config import ConfigError
from coachlm.data.schema import Message
from coachlm.models.lora import LoRAConfig, apply_lora
from coachlm.rollout.experience import pack_rollout
from coachlm.rollout.sampling import Generation
from coachlm.engine.checkpoint import trainable_state
from coachlm.trainers.ppo import PromptStream, train_ppo
from coachlm.trainers.ppo_config import PPOConfig
from coachlm.trainers.ppo_steps import (ActorCritic, RewardNorm, ppo_advantages, rollout,
                                        score_responses, shape_rewards)
from models_fixtures import model as tiny_model
from models_fixtures import tokenizer

PROMPTS = [(Message("user", f"What is {i} plus {i}?"),) for i in range(16)]


def policy(lora: bool = True, eos_scale: float = 1.0):
    """The tiny Llama with its (tied) embeddings scaled up: a fresh world-tiny model has
    near-zero logits (init std 0.02, d = 32), so no LoRA adapter could move its nearly uniform
    distribution far; x10 gives logits of order 1 like a trained model's."""
    model = tiny_model(seed=0)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.mul_(10.0)
        emb[tokenizer().eos_token_id].mul_(eos_scale)
    if lora:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = apply_lora(model, LoRAConfig(r=8, alpha=16.0))
    return model


class LowIds:
    """A rule reward: the fraction of response tokens whose id is in the lower half of the vocab."""

    def __call__(self, prompts, texts, ids):
        half = len(tokenizer()) // 2
        return torch.tensor([sum(t < half for t in r) / max(len(r), 1) for r in ids])


def small(**changes) -> PPOConfig:
    base = dict(steps=2, rollout_batch_size=8, samples_per_prompt=1, mini_batch_size=8,
                micro_batch_size=4, ppo_epochs=2, max_new_tokens=8, lr=5e-2, kl_coef=0.01,
                no_eos_penalty=None, threads=1, sample_every=1, lora=None)
    return PPOConfig(**{**base, **changes})


# ------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, message", [
    ({"rollout_batch_size": 6, "mini_batch_size": 4}, "must be a multiple of mini_batch_size"),
    ({"mini_batch_size": 8, "micro_batch_size": 3}, "multiple of micro_batch_size"),
    ({"algo": "grpo", "samples_per_prompt": 1}, "samples_per_prompt must be >= 2"),
    ({"ppo_epochs": 0}, "ppo_epochs must be >= 1"),
    ({"temperature": 0}, "temperature must be > 0"),
    ({"kl_estimator": "k9"}, "kl_estimator"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict(PPOConfig, overrides)


def test_config_sizes():
    cfg = PPOConfig(rollout_batch_size=4, samples_per_prompt=4, mini_batch_size=8,
                    micro_batch_size=4, ppo_epochs=2, steps=3, algo="rloo")
    assert cfg.episodes == 16 and cfg.optimizer_steps == 3 * 2 * 2


# ------------------------------------------------------------------------------- rollout layout


def test_pack_rollout_layout():
    eos, pad = 2, 0
    seq, attn, act = pack_rollout([[5, 6, 7], [8]], [[9, eos], [10, 11, 12], []], [0, 1, 1], pad)
    assert seq.tolist() == [[5, 6, 7, 9, eos, pad], [pad, pad, 8, 10, 11, 12],
                            [pad, pad, 8, pad, pad, pad]]
    assert attn.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0]]
    assert act.tolist() == [[True, True, False], [True, True, True], [False, False, False]]


@pytest.fixture(scope="module")
def real_rollout():
    """A rollout of 8 prompts x 2 samples from a perturbed LoRA policy whose EOS is likely,
    so rows stop at different lengths and policy and reference differ."""
    torch.manual_seed(0)
    model = policy(eos_scale=6.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    cfg = small(samples_per_prompt=2, rollout_batch_size=8, mini_batch_size=16, max_new_tokens=12)
    ac = ActorCritic(model, 32)
    tok = tokenizer()
    from coachlm.data.chat import encode_prompt

    ids = [encode_prompt(tok, p) for p in PROMPTS[:8]]
    exp, gen, entropy = rollout(ac, None, tok, ids, cfg, seed=3,
                                autocast=lambda: torch.autocast("cpu", enabled=False))
    return exp, gen, entropy, cfg, ids


def test_rollout_truncates_at_eos_and_masks_after(real_rollout):
    exp, gen, entropy, cfg, ids = real_rollout
    eos, pad = tokenizer().eos_token_id, tokenizer().pad_token_id
    lengths = [len(r) for r in gen.response_ids]
    assert any(gen.finished) and not all(gen.finished), "the test needs both kinds of rows"
    assert len(set(lengths)) > 1
    P = exp.prompt_width
    for b, resp in enumerate(gen.response_ids):
        assert eos not in resp[:-1]  # nothing is generated after the first stop token
        assert gen.finished[b] == (resp[-1] == eos)
        assert exp.action_mask[b].tolist() == [t < len(resp) for t in range(cfg.max_new_tokens)]
        assert exp.sequences[b, P:P + len(resp)].tolist() == resp
        assert (exp.sequences[b, P + len(resp):] == pad).all()
        assert (exp.logprobs[b, len(resp):] == 0).all() and (exp.values[b, len(resp):] == 0).all()
        assert exp.sequences[b, P - len(ids[gen.prompt_index[b]]):P].tolist() == \
            ids[gen.prompt_index[b]]
    # Recomputed logprobs match the sampler's (same distribution: pure sampling, T = 1).
    for b, lp in enumerate(gen.logprobs):
        assert torch.allclose(exp.logprobs[b, :len(lp)], torch.tensor(lp), atol=1e-4)
    assert 0 < entropy < 6.0


def test_kl_shaped_reward_layout(real_rollout):
    exp, gen, _, cfg, _ = real_rollout
    exp.scores = torch.arange(exp.sequences.shape[0], dtype=torch.float32)  # (B,) 0, 1, 2, ...
    beta = 0.1
    shape_rewards(exp, beta, cfg)
    k1 = exp.logprobs - exp.ref_logprobs  # (B, N)
    assert k1.abs().max() > 1e-3, "policy and reference must differ"
    for b, resp in enumerate(gen.response_ids):
        n = len(resp)
        expected = -beta * k1[b, :n]
        expected[n - 1] += exp.scores[b]
        assert torch.allclose(exp.rewards[b, :n], expected, atol=1e-6)
        assert (exp.rewards[b, n:] == 0).all() and (exp.kl[b, n:] == 0).all()
    ppo_advantages(exp, cfg)
    assert (exp.advantages[~exp.action_mask] == 0).all()
    assert abs(float(exp.advantages[exp.action_mask].mean())) < 1e-5  # whitened


def test_score_normalization_clip_and_eos_penalty():
    gen = Generation(prompt_index=[0, 0, 1, 1], response_ids=[[5], [6], [7], [8]],
                     finished=[True, False, True, True])
    raw_values = torch.tensor([1.0, 3.0, 5.0, 7.0])

    def reward(prompts, texts, ids):
        return raw_values

    cfg = small(normalize_reward=True, reward_clip=1.0, no_eos_penalty=0.5)
    norm = RewardNorm()
    raw, scores = score_responses(reward, PROMPTS, ["a"] * 4, gen, cfg, norm)
    # mean 4, population std sqrt(5): z = (-1.342, -0.447, 0.447, 1.342), clipped to 1,
    # then the unfinished row loses 0.5.
    z = (raw_values - 4.0) / 5 ** 0.5
    expected = z.clamp(-1, 1) - torch.tensor([0.0, 0.5, 0.0, 0.0])
    assert torch.equal(raw, raw_values) and torch.allclose(scores, expected, atol=1e-6)
    # The normalization is fitted once (on the reference policy's samples) and then kept.
    _, again = score_responses(lambda *a: raw_values + 1, PROMPTS, ["a"] * 4, gen, cfg, norm)
    assert norm.fitted and torch.allclose(again[2], expected[2] + 1 / 5 ** 0.5, atol=1e-6)


def test_prompt_stream_resumes():
    a = PromptStream(5, seed=1)
    first = a.take(3) + a.take(3) + a.take(3)
    assert sorted(first[:5]) == list(range(5))  # the first epoch is a permutation
    b = PromptStream(5, seed=1)
    b.take(3)
    c = PromptStream(5, seed=1)
    c.load_state_dict(b.state_dict())
    assert c.take(6) == first[3:]


# ------------------------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "grpo", "rloo"])
def test_learns_rule_reward(tmp_path, algo):
    # Reward = fraction of response tokens in the lower half of the vocabulary: about 0.5 for
    # the starting policy. 16 iterations move it to about 0.65-0.8 for every algorithm (seeds
    # 0-2 checked); the margin below leaves room for sampling noise.
    torch.manual_seed(0)
    if algo == "ppo":
        cfg = small(algo=algo, steps=16, rollout_batch_size=16, mini_batch_size=8, ppo_epochs=4,
                    micro_batch_size=8, sample_every=10, lr=0.1)
    else:
        cfg = small(algo=algo, steps=16, rollout_batch_size=8, samples_per_prompt=4,
                    mini_batch_size=16, micro_batch_size=8, ppo_epochs=4, sample_every=10, lr=0.1)
    result = train_ppo(policy(), tokenizer(), PROMPTS, LowIds(), cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward_raw"] for r in rows]
    start, end = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    assert end > start + 0.12 and end > 0.6, rewards
    for key in ("kl", "entropy", "clipfrac", "approx_kl", "response_length", "eos_rate",
                "reward", "kl_coef", "tokens_per_s"):
        assert key in rows[-1]
    if algo == "ppo":
        assert "value_loss" in rows[-1] and "explained_variance" in rows[-1]
    assert 0 < result.summary["trainable_fraction"] < 1 and result.summary["peak_rss_mb"] > 0
    assert result.summary["generated_tokens"] > 0
    samples = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert {json.loads(s)["step"] for s in samples} == {s for s in (1, 10, 20) if s <= cfg.steps}


# ------------------------------------------------------------------------------- resume


def _weights(model):
    return {k: v.clone() for k, v in trainable_state(model).items()}


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "rloo"])
def test_resume_equals_uninterrupted(tmp_path, algo):
    spp = 1 if algo == "ppo" else 2
    cfg = small(algo=algo, steps=4, samples_per_prompt=spp, rollout_batch_size=4,
                mini_batch_size=2 * spp, micro_batch_size=spp, checkpoint_every=1,
                kl_target=0.5, kl_horizon=100.0, normalize_reward=True)
    full = policy()
    train_ppo(full, tokenizer(), PROMPTS, LowIds(), cfg, tmp_path / "full")
    part = policy()
    train_ppo(part, tokenizer(), PROMPTS, LowIds(), config.replace(cfg, steps=2), tmp_path / "r")
    resumed = policy()
    train_ppo(resumed, tokenizer(), PROMPTS, LowIds(), cfg, tmp_path / "r", resume=True)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    full_rows, resumed_rows = rows(tmp_path / "full"), rows(tmp_path / "r")
    assert [r["step"] for r in resumed_rows] == [1, 2, 3, 4]
    for x, y in zip(full_rows, resumed_rows):
        assert x["reward_raw"] == y["reward_raw"] and x["kl_coef"] == y["kl_coef"]
    assert full_rows[-1]["kl_coef"] != cfg.kl_coef  # the adaptive controller moved and resumed


def test_resume_rejects_changed_settings(tmp_path):
    cfg = small(steps=1, rollout_batch_size=4, mini_batch_size=4)
    train_ppo(policy(), tokenizer(), PROMPTS, LowIds(), cfg, tmp_path)
    with pytest.raises(Exception, match="rollout_batch_size was 4"):
        train_ppo(policy(), tokenizer(), PROMPTS, LowIds(),
                  config.replace(cfg, steps=2, rollout_batch_size=8, mini_batch_size=8), tmp_path,
                  resume=True)


# ------------------------------------------------------------------------------- GRPO's KL


def _tied_group(kls):
    """A GRPO group of 4 one-token responses, all scored 1, whose k1 KLs are `kls`."""
    from coachlm.rollout.experience import Experience

    B = len(kls)
    exp = Experience(sequences=torch.zeros(B, 2, dtype=torch.long),
                     attention_mask=torch.ones(B, 2, dtype=torch.long),
                     action_mask=torch.ones(B, 1, dtype=torch.bool),
                     finished=torch.ones(B, dtype=torch.bool), prompt_index=torch.zeros(B).long(),
                     logprobs=torch.tensor(kls).view(B, 1) - 1.0,
                     ref_logprobs=torch.full((B, 1), -1.0))
    exp.scores = torch.ones(B)
    return exp


def test_grpo_advantages_ignore_the_kl():
    # Issue 13, by hand: beta 0.05, scores (1, 1, 1, 1), per-sequence KLs (0.5, 1, 1.5, 2).
    # Folded into the reward before the std division, the KL alone gave advantages
    # -0.05 * (KL - 1.25) / (0.05 * std(KL) + 1e-4) = (+1.16, +0.39, -0.39, -1.16) (std(KL) =
    # 0.6455), more than an informative group (1, 0, 1, 0) gets (+-0.87). DeepSeekMath eq. 3:
    # the scores alone.
    from coachlm.rl_math import group_advantages
    from coachlm.trainers.ppo_steps import group_relative_advantages

    kls = [0.5, 1.0, 1.5, 2.0]
    folded = group_advantages(1 - 0.05 * torch.tensor(kls), 4, "grpo")
    assert torch.allclose(folded, torch.tensor([1.158, 0.386, -0.386, -1.158]), atol=1e-3)
    assert torch.allclose(group_advantages(torch.tensor([1.0, 0, 1, 0]), 4, "grpo").abs(),
                          torch.full((4,), 0.866), atol=1e-3)
    for scale_std in (True, False):
        cfg = small(algo="grpo", samples_per_prompt=4, rollout_batch_size=2, mini_batch_size=8,
                    scale_std=scale_std)
        exp = _tied_group(kls)
        shape_rewards(exp, 0.05, cfg)
        group_relative_advantages(exp, cfg)
        assert torch.equal(exp.advantages, torch.zeros(4, 1))
        # the KL is measured (k3, for the logs and the controller), not put in the reward
        d = -torch.tensor(kls)  # log ref - log pi
        assert torch.allclose(exp.kl.squeeze(1), torch.expm1(d) - d)
        assert torch.equal(exp.rewards.squeeze(1), exp.scores)


def test_rloo_keeps_the_kl_in_the_reward_at_weight_beta():
    # RLOO (Ahmadian et al., 2024) is unscaled: the KL's weight in the advantage stays beta.
    from coachlm.trainers.ppo_steps import group_relative_advantages

    cfg = small(algo="rloo", samples_per_prompt=4, rollout_batch_size=2, mini_batch_size=8)
    exp = _tied_group([0.5, 1.0, 1.5, 2.0])
    shape_rewards(exp, 0.05, cfg)
    group_relative_advantages(exp, cfg)
    # r_i = 1 - 0.05 * KL_i; A_i = r_i - mean of the other three = (4/3) * (r_i - mean r)
    expected = -0.05 * (torch.tensor([0.5, 1.0, 1.5, 2.0]) - 1.25) * 4 / 3
    assert torch.allclose(exp.advantages.squeeze(1), expected, atol=1e-6)


def test_kl_estimator_defaults_and_checks():
    assert small().kl_kind == "k1" and small().aggregation == "token"
    grpo = small(algo="grpo", samples_per_prompt=2)
    assert grpo.kl_kind == "k3" and grpo.aggregation == "sequence" and grpo.scale_std
    with pytest.raises(ConfigError, match="needs kl_estimator k3"):
        config.from_dict(PPOConfig, {"algo": "grpo", "samples_per_prompt": 2, "kl_estimator": "k1"})
    with pytest.warns(UserWarning, match="biased"):
        small(kl_estimator="k3")


def test_grpo_update_with_tied_scores_pulls_toward_the_reference(tmp_path):
    # Every response scores the same: the advantages are 0 and the only force is the KL term,
    # so the policy's KL to the reference shrinks from a perturbed start.
    torch.manual_seed(0)
    model = policy()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    # From a KL of about 0.2 nats, 10 steps bring it to about 0.04 (seed 0); a larger start or
    # lr makes the k3 gradient (1 - ref / pi per token) too noisy for 16 samples.
    cfg = small(algo="grpo", steps=10, rollout_batch_size=4, samples_per_prompt=4,
                mini_batch_size=16, micro_batch_size=8, ppo_epochs=2, kl_coef=1.0, lr=0.01)
    train_ppo(model, tokenizer(), PROMPTS, lambda p, t, ids: torch.ones(len(t)), cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(r["policy_loss"]) < 1e-6 for r in rows) and rows[0]["kl_loss"] > 0
    kls = [r["kl"] for r in rows]
    assert max(kls[-3:]) < 0.5 * kls[0], kls


def test_rollout_logprobs_leave_out_the_pad_token_as_sampling_does():
    # The sampler never emits the pad token; the logprobs (policy and reference) must be those
    # of that distribution, not of a softmax in which a likely pad token takes mass.
    tok = tokenizer()
    model = policy()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # tied: the pad's output row as well
        emb[tok.pad_token_id] = 8.0 * emb[tok.eos_token_id]  # as scaling EOS makes it likely
    ac = ActorCritic(model, None)
    from coachlm.data.chat import encode_prompt

    ids = [encode_prompt(tok, p) for p in PROMPTS[:4]]
    exp, gen, _ = rollout(ac, None, tok, ids, small(rollout_batch_size=4, mini_batch_size=4),
                          seed=0, autocast=lambda: torch.autocast("cpu", enabled=False))
    N = exp.action_mask.shape[1]
    with torch.no_grad():
        logits = model(input_ids=exp.sequences, attention_mask=exp.attention_mask,
                       position_ids=(exp.attention_mask.cumsum(-1) - 1).clamp(min=0)
                       ).logits[:, -(N + 1):-1]  # (B, N, V)
    p_pad = logits.softmax(-1)[..., tok.pad_token_id][exp.action_mask]
    assert float(p_pad.mean()) > 0.05, "the test needs a likely pad token"
    logits[..., tok.pad_token_id] = float("-inf")
    expected = logits.log_softmax(-1).gather(-1, exp.sequences[:, -N:, None]).squeeze(-1)
    expected = torch.where(exp.action_mask, expected, torch.zeros_like(expected))
    assert torch.allclose(exp.logprobs, expected, atol=1e-5)
    assert torch.allclose(exp.ref_logprobs, expected, atol=1e-5)  # a fresh adapter: pi = ref
    for b, lp in enumerate(gen.logprobs):
        assert torch.allclose(torch.tensor(lp), expected[b, :len(lp)], atol=1e-5)


def test_lora_dropout_is_rejected_and_the_no_grad_passes_run_in_eval_mode():
    with pytest.raises(ConfigError, match="lora.dropout must be 0"):
        config.from_dict(PPOConfig, {"lora": {"r": 2, "dropout": 0.1}})
    # A library caller's model with LoRA dropout, left in train mode (as the update leaves it):
    # the recomputed logprobs are still the sampler's (eval mode), not dropout-noisy ones.
    model = apply_lora(policy(lora=False), LoRAConfig(r=8, alpha=16.0, dropout=0.5))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    ac = ActorCritic(model, 32)
    ac.train()
    from coachlm.data.chat import encode_prompt

    ids = [encode_prompt(tokenizer(), p) for p in PROMPTS[:4]]
    exp, gen, _ = rollout(ac, None, tokenizer(), ids, small(rollout_batch_size=4, mini_batch_size=4),
                          seed=0, autocast=lambda: torch.autocast("cpu", enabled=False))
    for b, lp in enumerate(gen.logprobs):
        assert torch.allclose(exp.logprobs[b, :len(lp)], torch.tensor(lp), atol=1e-4)
    assert ac.training  # its mode is restored


def test_long_prompts_are_cut_from_the_left_and_counted(tmp_path):
    long = (Message("user", " ".join(["What is 2 plus 2?"] * 100)),)
    cfg = small(steps=1, rollout_batch_size=4, mini_batch_size=4)
    result = train_ppo(policy(), tokenizer(), [long] + PROMPTS[:3], LowIds(), cfg, tmp_path)
    assert result.summary["truncated_prompts"] == 1


@pytest.mark.parametrize("lora", [True, False])
def test_bf16_run_keeps_fp32_weights_and_attends_in_fp32(tmp_path, lora):
    """bf16 (CPU autocast): the sampler's bf16 copy and the cast base weights are transient;
    the policy stays fp32, trains, and attends in fp32 (`models.attention`)."""
    model = policy(lora=lora)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = small(algo="rloo", bf16=True, steps=1, rollout_batch_size=4, samples_per_prompt=2,
                mini_batch_size=8, micro_batch_size=4, ppo_epochs=1, sample_every=0)
    result = train_ppo(model, tokenizer(), PROMPTS, LowIds(), cfg, tmp_path)
    assert result.summary["bf16"] and model.config._attn_implementation == "sdpa_fp32"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("lora_" in k) == lora for k in changed)  # LoRA: the adapter only
    assert all(v == v for v in result.metrics.values() if isinstance(v, float))  # no NaN


def test_default_threads_follow_the_free_cores_each_rollout(tmp_path, monkeypatch):
    """threads None: the thread count is chosen again before each rollout from the cores other
    work leaves free (a busy process that comes mid-run takes one of two cores away)."""
    from coachlm.engine import accel

    free = iter([{0, 1}, {0}, {0, 1}])
    chosen = []
    monkeypatch.setattr(accel, "usable_cpus", lambda: 2)
    monkeypatch.setattr(accel, "free_cpus", lambda: next(free))
    monkeypatch.setattr(accel.torch, "set_num_threads", chosen.append)  # the suite's count stays
    result = train_ppo(policy(), tokenizer(), PROMPTS, LowIds(),
                       small(threads=None, steps=3, sample_every=0), tmp_path)
    assert chosen == [2, 1, 2] and result.summary["threads"] == 2
