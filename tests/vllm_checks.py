"""Checks of the vLLM engine against the built-in sampler and the learner, run by
tests/test_vllm_engine.py under the vLLM environment's python (COACHLM_VLLM_PYTHON, see the
README, 'vLLM rollouts'); prints one JSON object of measurements for the test to judge.

The model is the tests' tiny Llama widened to head size 32 (vLLM's CPU attention supports head
sizes 32, 64, 80, ...; world-tiny's is 8), its embeddings scaled (as in test_ppo.policy) so that
sampled responses differ and some end with EOS, with a LoRA adapter as PPO trains it."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coachlm.data.chat import encode_prompt  # noqa: E402
from coachlm.data.schema import Message  # noqa: E402
from coachlm.errors import CoachError  # noqa: E402
from coachlm.models.lora import LoRAConfig, apply_lora, lora_view  # noqa: E402
from coachlm.rollout.experience import pack_rollout, policy_forward  # noqa: E402
from coachlm.rollout.sampling import Generation, SamplingConfig, generate  # noqa: E402
from coachlm.rollout.vllm_engine import VLLMGenerator  # noqa: E402
from coachlm.trainers.ppo import train_ppo  # noqa: E402
from coachlm.trainers.ppo_config import PPOConfig  # noqa: E402
from models_fixtures import model as tiny_model  # noqa: E402
from models_fixtures import tokenizer  # noqa: E402

PROMPTS = [(Message("user", f"What is {i} plus {i}?"),) for i in range(16)]


def policy():
    model = tiny_model(seed=0, hidden_size=64, num_attention_heads=2, num_key_value_heads=2)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.mul_(3.0)
        emb[tokenizer().eos_token_id].mul_(4.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return apply_lora(model, LoRAConfig(r=8, alpha=16.0))


def builtin(model, prompts, cfg: SamplingConfig) -> Generation:
    with lora_view(model, "merged"):
        return generate(model, tokenizer(), prompts, cfg)


def learner_logprobs(model, prompts, gen: Generation, temperature: float) -> list[list[float]]:
    """The learner's logprobs of the engine's tokens, as the PPO rollout recomputes them."""
    pad = tokenizer().pad_token_id
    seq, attn, act = pack_rollout(prompts, gen.response_ids, gen.prompt_index, pad)
    with torch.no_grad(), lora_view(model, "fused"):
        lp = policy_forward(model, None, seq, attn, act, temperature, pad_id=pad)[0]
    return [lp[b, :len(r)].tolist() for b, r in enumerate(gen.response_ids)]


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max((abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)), default=0.0)


def low_ids(prompts, texts, ids):
    """A rule reward: the share of response tokens in the lower half of the vocabulary."""
    half = len(tokenizer()) // 2
    return torch.tensor([sum(t < half for t in r) / max(len(r), 1) for r in ids])


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok, model = tokenizer(), policy()
    prompts = [encode_prompt(tok, p) for p in PROMPTS[:8]]
    engine = VLLMGenerator(model, tok)
    out: dict = {}
    greedy = SamplingConfig(max_new_tokens=16, temperature=0.0)
    ref, got = builtin(model, prompts, greedy), engine(prompts, greedy)
    out["greedy_equal"] = ref.response_ids == got.response_ids and ref.finished == got.finished
    out["greedy_finished"] = sum(ref.finished)
    out["greedy_tokens"] = ref.num_tokens
    out["greedy_logprob_max_abs_diff"] = max_diff(ref.logprobs, got.logprobs)
    sampled = SamplingConfig(max_new_tokens=16, temperature=0.7, n=2, seed=5)
    s1, s2 = engine(prompts, sampled), engine(prompts, sampled)
    out["seeded_repeat_equal"] = s1.response_ids == s2.response_ids
    out["sampled_tokens"] = s1.num_tokens
    out["sampled_logprob_max_abs_diff"] = max_diff(
        s1.logprobs, learner_logprobs(model, prompts, s1, sampled.temperature))
    out["sampled_stop_at_eos"] = all(
        (r[-1] == tok.eos_token_id) == f for r, f in zip(s1.response_ids, s1.finished) if r)
    out["pad_never_sampled"] = all(tok.pad_token_id not in r for r in s1.response_ids)
    # A real update through the engine: train_ppo samples with vLLM, corrects with truncated
    # importance weights and syncs the engine after each update.
    cfg = PPOConfig(algo="rloo", steps=2, rollout_batch_size=8, samples_per_prompt=2,
                    mini_batch_size=16, micro_batch_size=8, ppo_epochs=2, max_new_tokens=8,
                    lr=1e-1, kl_coef=0.01, no_eos_penalty=None, threads=1, sample_every=0,
                    lora=None, importance_cap=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        result = train_ppo(model, tok, PROMPTS, low_ids, cfg, tmp, generator=engine)
    after, got_after = builtin(model, prompts, greedy), engine(prompts, greedy)
    out["after_update_equal"] = (after.response_ids == got_after.response_ids
                                 and after.finished == got_after.finished)
    out["after_update_changed_tokens"] = after.response_ids != ref.response_ids
    out["after_update_logprob_change"] = max_diff(
        learner_logprobs(model, prompts, ref, 1.0), ref.logprobs)
    out["after_update_logprob_max_abs_diff"] = max_diff(after.logprobs, got_after.logprobs)
    out["is_weight_mean"] = result.metrics.get("is_weight_mean")
    out["is_weight_min"] = result.metrics.get("is_weight_min")
    engine.close()
    try:  # world-tiny's head size 8: refused in one line before vLLM starts
        VLLMGenerator(tiny_model(seed=0), tok)
        out["head_size_8_refused"] = False
    except CoachError as e:
        out["head_size_8_refused"] = "head size 8" in str(e)
    print("VLLM_CHECKS " + json.dumps(out))


if __name__ == "__main__":  # vLLM may spawn processes: keep the checks behind this guard
    main()
