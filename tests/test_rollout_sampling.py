"""Our batched KV-cache sampler: equal to HF generate when greedy, batch-invariant, stops at EOS."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from coachlm.errors import CoachError
from coachlm.models.logprobs import sequence_logprobs
from coachlm.rollout import sampling
from coachlm.rollout.sampling import SamplingConfig, decode_responses, generate
from models_fixtures import model as tiny_model
from models_fixtures import random_prompts, tokenizer

LENGTHS = [3, 9, 5, 12, 1, 7]


def _hf_greedy(model, tok, prompts, max_new, eos):
    """HF generate (greedy, left-padded), each row cut after its first stop token."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                         max_new_tokens=max_new, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                         suppress_tokens=[tok.pad_token_id])
    rows = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


@pytest.mark.parametrize("greedy", [dict(temperature=0.0), dict(top_k=1)])
def test_greedy_equals_hf_generate(greedy):
    tok, model = tokenizer(), tiny_model()
    prompts = random_prompts(LENGTHS, len(tok))
    gen = generate(model, tok, prompts, SamplingConfig(max_new_tokens=16, batch_size=4, **greedy))
    assert gen.response_ids == _hf_greedy(model, tok, prompts, 16, [tok.eos_token_id])
    assert gen.prompt_index == list(range(len(prompts)))


def test_stops_at_the_first_stop_token_like_hf():
    tok, model = tokenizer(), tiny_model()
    prompts = random_prompts(LENGTHS, len(tok))
    free = generate(model, tok, prompts, SamplingConfig(max_new_tokens=16, temperature=0))
    stop = free.response_ids[0][3]  # a token row 0 emits at step 4: make it a stop token
    cfg = SamplingConfig(max_new_tokens=16, temperature=0, stop_token_ids=(stop,))
    gen = generate(model, tok, prompts, cfg)
    assert gen.response_ids == _hf_greedy(model, tok, prompts, 16, [tok.eos_token_id, stop])
    for ids, done in zip(gen.response_ids, gen.finished):
        assert done == (ids[-1] in (stop, tok.eos_token_id))
        assert done or len(ids) == 16
        assert stop not in ids[:-1] and tok.pad_token_id not in ids
    assert gen.finished[0] and len(gen.response_ids[0]) <= 4
    assert gen.num_tokens == sum(len(r) for r in gen.response_ids)


def test_rows_stop_early_when_all_finish():
    tok, model = tokenizer(), tiny_model()
    prompts = random_prompts([4, 4], len(tok))
    first = generate(model, tok, prompts, SamplingConfig(max_new_tokens=1, temperature=0))
    stops = tuple(r[0] for r in first.response_ids)
    gen = generate(model, tok, prompts, SamplingConfig(max_new_tokens=50, temperature=0,
                                                       stop_token_ids=stops))
    assert gen.finished == [True, True] and [len(r) for r in gen.response_ids] == [1, 1]


def test_batched_equals_one_by_one():
    tok, model = tokenizer(), tiny_model()
    prompts = random_prompts(LENGTHS + [2, 10, 6], len(tok), seed=3)
    free = generate(model, tok, prompts, SamplingConfig(max_new_tokens=12, temperature=0))
    # Stop tokens that end some rows early, so finished rows leave the batch mid-way.
    stops = (free.response_ids[0][2], free.response_ids[3][5])
    cfg = SamplingConfig(max_new_tokens=12, temperature=0, batch_size=4, stop_token_ids=stops)
    batched = generate(model, tok, prompts, cfg)
    assert 0 < sum(batched.finished) < len(prompts)
    alone = [generate(model, tok, [p], cfg) for p in prompts]
    assert batched.response_ids == [g.response_ids[0] for g in alone]
    for b, a in zip(batched.logprobs, alone):
        assert b == pytest.approx(a.logprobs[0], abs=1e-5)


def test_seeds_reproduce_samples_and_n_orders_by_prompt():
    tok, model = tokenizer(), tiny_model()
    prompts = random_prompts([4, 6, 2], len(tok))
    cfg = SamplingConfig(max_new_tokens=10, n=3, seed=11, batch_size=4)
    a, b = generate(model, tok, prompts, cfg), generate(model, tok, prompts, cfg)
    c = generate(model, tok, prompts, SamplingConfig(max_new_tokens=10, n=3, seed=12, batch_size=4))
    assert a.response_ids == b.response_ids and a.response_ids != c.response_ids
    assert a.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(set(map(tuple, a.response_ids[:3]))) > 1  # samples of one prompt differ


def test_sampled_logprobs_match_the_recomputed_ones():
    tok, model = tokenizer(), tiny_model()
    prompts = random_prompts([5, 8, 3], len(tok))
    gen = generate(model, tok, prompts, SamplingConfig(max_new_tokens=6, temperature=0.7, seed=0))
    for p, r, lps in zip(prompts, gen.response_ids, gen.logprobs):
        ids = torch.tensor([p + r])
        resp = torch.tensor([[0] * len(p) + [1] * len(r)])
        with torch.no_grad():
            ref = sequence_logprobs(model, ids, torch.ones_like(ids), resp, temperature=0.7,
                                    banned=tok.pad_token_id)
        assert lps == pytest.approx(ref[0, len(p):].tolist(), abs=1e-5)


def test_filter_top_k_and_top_p_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    kept = lambda out: torch.isfinite(out[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(sampling._filter(logits, top_k=2, top_p=1.0)) == [0, 1]
    assert kept(sampling._filter(logits, top_k=0, top_p=0.5)) == [0]  # 0.5 already reaches p
    assert kept(sampling._filter(logits, top_k=0, top_p=0.6)) == [0, 1]
    assert kept(sampling._filter(logits, top_k=0, top_p=0.9)) == [0, 1, 2]
    assert kept(sampling._filter(logits, top_k=1, top_p=0.9)) == [0]


def test_inverse_cdf_draws_follow_the_distribution():
    probs = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.7, 0.0]).expand(20000, 6)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draws = sampling._inverse_cdf(probs, u)
    freq = torch.bincount(draws, minlength=6).double() / len(draws)
    assert freq[[0, 2, 5]].sum() == 0  # zero-probability tokens are never drawn
    # binomial standard deviation <= 0.0033 at n = 20000: allow 4 of them
    assert torch.allclose(freq, probs[0].double(), atol=0.013)


def test_pad_is_never_sampled_and_logprobs_use_the_temperature():
    logits = torch.tensor([[10.0, 0.0, math.log(3.0)]])  # pad (id 0) is by far the likeliest
    g = torch.Generator().manual_seed(0)
    for temperature in (0.0, 1.0):
        cfg = SamplingConfig(temperature=temperature)
        for _ in range(20):
            u = torch.rand(1, generator=g, dtype=torch.float64)
            tok, lp = sampling._sample_next(logits.clone(), cfg, torch.tensor([0]), u=u)
            assert tok.item() != 0
    tok, lp = sampling._sample_next(logits.clone(), SamplingConfig(temperature=0.0),
                                    torch.tensor([0]), u=None)
    assert tok.item() == 2  # greedy over the non-pad tokens
    # the logprob of the distribution sampled from: the pad token has no mass in it
    assert lp.item() == pytest.approx(math.log(3.0) - math.log(1 + 3), abs=1e-5)


def test_bf16_sampling_keeps_the_model_and_its_mode():
    tok, model = tokenizer(), tiny_model()
    model.train()
    gen = generate(model, tok, random_prompts([4, 6], len(tok)),
                   SamplingConfig(max_new_tokens=5, temperature=0, dtype="bf16"))
    assert all(len(r) >= 1 for r in gen.response_ids)
    assert model.training and next(model.parameters()).dtype == torch.float32


def test_decode_drops_the_stop_token_and_keeps_specials_inside_the_response():
    tok = tokenizer()
    words = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = words("the cat sat") + [tok.eos_token_id]
    inner = words("the cat") + [tok.bos_token_id] + words("sat") + [tok.eos_token_id]
    cut = words("the cat") + [tok.bos_token_id]  # unfinished: no stop token to drop
    gen = sampling.Generation(prompt_index=[0, 0, 0], response_ids=[ids, inner, cut],
                              finished=[True, True, False])
    plain, marked, unfinished = decode_responses(tok, gen)
    assert plain == "the cat sat"
    # A special token mid-response is visible to the rewards that read the text.
    assert tok.bos_token in marked and marked != plain
    assert unfinished.endswith(tok.bos_token)
    assert tok(marked, add_special_tokens=False)["input_ids"] == inner[:-1]


def test_user_errors():
    tok, model = tokenizer(), tiny_model()
    with pytest.raises(CoachError, match="empty prompt"):
        generate(model, tok, [[]], SamplingConfig())
    with pytest.raises(CoachError, match="context"):
        generate(model, tok, [[5] * 250], SamplingConfig(max_new_tokens=10))
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)


def _other_arch(arch: str):
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    ids = dict(vocab_size=len(tokenizer()), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, **ids)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **ids))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape))
    return MistralForCausalLM(MistralConfig(**shape))


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "mistral"])
def test_greedy_equals_hf_generate_on_other_architectures(arch):
    tok = tokenizer()
    model = _other_arch(arch).eval()  # GPT-2 has dropout, and HF generate leaves the mode as is
    prompts = random_prompts(LENGTHS, len(tok), seed=5)
    gen = generate(model, tok, prompts, SamplingConfig(max_new_tokens=10, temperature=0.0))
    assert gen.response_ids == _hf_greedy(model, tok, prompts, 10, [tok.eos_token_id])


def test_bf16_weights_sample_and_mostly_agree_with_fp32():
    tok = tokenizer()
    prompts = random_prompts(LENGTHS, len(tok), seed=2)
    cfg = SamplingConfig(max_new_tokens=4, temperature=0)
    fp32 = generate(tiny_model(), tok, prompts, cfg)
    bf16 = generate(tiny_model().to(torch.bfloat16), tok, prompts, cfg)
    assert [len(r) for r in bf16.response_ids] == [4] * len(prompts)
    assert sum(a[0] == b[0] for a, b in zip(fp32.response_ids, bf16.response_ids)) >= 4


def test_lora_policy_samples_and_its_reference_is_the_base():
    from coachlm.models.lora import LoRAConfig, adapter_disabled, apply_lora

    tok = tokenizer()
    prompts = random_prompts([3, 6], len(tok))
    cfg = SamplingConfig(max_new_tokens=8, temperature=0)
    base = generate(tiny_model(), tok, prompts, cfg)
    policy = apply_lora(tiny_model(), LoRAConfig(r=4))
    with adapter_disabled(policy):
        assert generate(policy, tok, prompts, cfg).response_ids == base.response_ids
    assert len(generate(policy, tok, prompts, cfg).response_ids) == 2


def _untied_llama_with_zero_pad_row():
    """A Llama whose head is untied from its embedding and whose pad embedding row is zero
    (`padding_idx`): a left-padded row's pad keys are exactly zero, so a static cache that
    inferred its write column from non-zero key slots of row 0 (transformers 4.x without
    `cache_position`) would write the decoded tokens at the wrong column."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)  # logits of order 1, decisive greedy
        model.get_input_embeddings().weight[tok.pad_token_id].zero_()
    assert model.get_input_embeddings().padding_idx == tok.pad_token_id
    return model


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_left_padded_rows_equal_unpadded_decoding_with_a_zero_pad_row(temperature):
    tok, model = tokenizer(), _untied_llama_with_zero_pad_row()
    prompts = random_prompts([2, 11, 5, 8], len(tok), seed=7)
    cfg = SamplingConfig(max_new_tokens=12, temperature=temperature, batch_size=4)
    batched = generate(model, tok, prompts, cfg)
    assert batched.response_ids[0] and not all(batched.finished)
    for i, p in enumerate(prompts):
        # Greedy rows must be the tokens of the row decoded alone; sampled rows (whose
        # uniform draws depend on the batch) the logprobs a padding-free forward gives them.
        alone = generate(model, tok, [p], cfg)
        if temperature == 0:
            assert batched.response_ids[i] == alone.response_ids[0]
        ids = torch.tensor([p + batched.response_ids[i]])
        resp = torch.tensor([[0] * len(p) + [1] * len(batched.response_ids[i])])
        with torch.no_grad():
            ref = sequence_logprobs(model, ids, torch.ones_like(ids), resp, temperature or 1.0,
                                    banned=tok.pad_token_id)
        assert batched.logprobs[i] == pytest.approx(ref[0, len(p):].tolist(), abs=1e-4)


def test_fit_prompts_cuts_from_the_left_and_keeps_bos():
    tok, model = tokenizer(), tiny_model()
    bos = tok.bos_token_id
    long, short = [bos, 10, 11, 12, 13, 14], [10, 11]
    fitted, cut = sampling.fit_prompts(model, tok, [long, short, [20, 21, 22, 23, 24]], 8,
                                       max_prompt_length=4)
    assert fitted == [[bos, 12, 13, 14], [10, 11], [21, 22, 23, 24]] and cut == 2
    # None: what the context leaves after max_new_tokens; then sampling works
    context = model.config.max_position_embeddings
    fitted, cut = sampling.fit_prompts(model, tok, [[bos] + [5] * 2 * context], 10)
    assert cut == 1 and len(fitted[0]) == context - 10 and fitted[0][0] == bos
    gen = generate(model, tok, fitted, SamplingConfig(max_new_tokens=10))
    assert len(gen.response_ids[0]) >= 1


def test_sampling_and_lora_raise_no_deprecation_warnings():
    # The current transformers API (`cache`, not `past_key_values`) and peft's wrapping without
    # its `is_gradient_checkpointing` warning: a run prints no deprecation noise.
    import warnings

    from coachlm.models.lora import LoRAConfig, apply_lora

    tok = tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        model = apply_lora(tiny_model(), LoRAConfig(r=2))
        generate(model, tok, random_prompts([3, 6], len(tok)), SamplingConfig(max_new_tokens=4))


def test_a_row_samples_the_same_whatever_its_batch():
    """Each row draws from its own stream (row_uniforms): sampling a shard of the rows with
    their row numbers gives what sampling all of them gives (how PPO shards rollouts)."""
    tok, model = tokenizer(), tiny_model()
    prompts = random_prompts([3, 5, 4, 6], len(tok))
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, n=2, seed=7, batch_size=8)
    whole = generate(model, tok, prompts, cfg)
    halves = [generate(model, tok, prompts[:2], cfg),
              generate(model, tok, prompts[2:], cfg, row_offset=4)]
    assert whole.response_ids == halves[0].response_ids + halves[1].response_ids
    small = generate(model, tok, prompts, dataclasses.replace(cfg, batch_size=3))
    assert small.response_ids == whole.response_ids
