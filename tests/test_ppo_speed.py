"""The fast paths of PPO/GRPO/RLOO give the results of the plain ones: trimmed, length-sorted and
prompt-sharing micro-batches (exact first-epoch ratio, same mini-batch token mean), the LoRA
views (merged for sampling, fused for training, base for the reference; every weight restored
bit for bit), and the shared prefill of the sampler."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import replace

import pytest
import torch
from peft.tuners.lora import LoraLayer

from coachlm.data.chat import encode_prompt
from coachlm.data.schema import Message
from coachlm.models.lora import LoRAConfig, adapter_disabled, apply_lora, lora_view
from coachlm.rollout import sampling
from coachlm.rollout.experience import (share_prompts, shared_prompts_supported,
                                        sorted_micro_batches, used_columns)
from coachlm.rollout.sampling import SamplingConfig, generate
from coachlm.trainers.ppo_config import PPOConfig
from coachlm.trainers.ppo_steps import ActorCritic, _micro_loss, rollout
from models_fixtures import model as tiny_model
from models_fixtures import random_prompts, tokenizer

# Prompts of several lengths, so that trimming cuts left padding too.
PROMPTS = [(Message("user", f"What is {i} plus {i}?" + " the cat sat" * (i % 3)),)
           for i in range(8)]
NO_AUTOCAST = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731


def lora_policy():
    """The tiny Llama with logits of order 1 (embeddings x10), a likely EOS (so responses end
    at different lengths) and a perturbed LoRA adapter (so policy and base differ)."""
    model = tiny_model(seed=0)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.mul_(10.0)
        emb[tokenizer().eos_token_id].mul_(6.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = apply_lora(model, LoRAConfig(r=8, alpha=16.0))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    return model


def config(samples: int, **changes) -> PPOConfig:
    base = dict(algo="ppo", steps=1, rollout_batch_size=8, samples_per_prompt=samples,
                mini_batch_size=8 * samples, micro_batch_size=4, ppo_epochs=1, max_new_tokens=12,
                no_eos_penalty=None, threads=1, lora=None)
    return PPOConfig(**{**base, **changes})


def make_rollout(samples: int):
    tok = tokenizer()
    ac = ActorCritic(lora_policy(), 32)
    # A nonzero value head, so that values are checked too; drawn from its own stream: from the
    # global one, the module's data depended on whatever ran before in the process (the tests
    # an xdist worker drew, which varies with load), and so did the float noise checked below.
    with torch.no_grad():
        ac.value_head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    ids = [encode_prompt(tok, p) for p in PROMPTS]
    cfg = config(samples)
    exp, gen, _ = rollout(ac, None, tok, ids, cfg, seed=3, autocast=NO_AUTOCAST)
    return ac, exp, gen, cfg


@pytest.fixture(scope="module")
def grouped():
    """8 prompts x 4 samples: prompts are shared in the forward passes."""
    return make_rollout(4)


@pytest.fixture(scope="module")
def single():
    """8 prompts x 1 sample: trimmed, length-sorted padded rows."""
    return make_rollout(1)


# ------------------------------------------------------------------- micro-batch layouts


def test_sorted_micro_batches_partition_by_length_and_prompt(grouped):
    _, exp, _, _ = grouped
    rows = torch.randperm(32, generator=torch.Generator().manual_seed(0))[:20]
    for by_prompt in (False, True):
        batches = sorted_micro_batches(rows, exp, 6, by_prompt=by_prompt)
        flat = torch.cat(batches)
        assert sorted(flat.tolist()) == sorted(rows.tolist())
        assert [len(b) for b in batches] == [6, 6, 6, 2]
        # The grouping depends only on the set of rows, not on their (shuffled) order.
        again = sorted_micro_batches(rows.flip(0), exp, 6, by_prompt=by_prompt)
        assert all(torch.equal(a, b) for a, b in zip(batches, again))
        if by_prompt:  # each prompt's rows are consecutive
            prompts = exp.prompt_index[flat].tolist()
            runs = [p for i, p in enumerate(prompts) if i == 0 or p != prompts[i - 1]]
            assert len(runs) == len(set(prompts))
        else:  # response lengths never decrease
            lengths = exp.action_mask[flat].sum(1)
            assert (lengths[1:] >= lengths[:-1]).all()


def test_trimmed_rows_give_the_padded_results(single):
    ac, exp, gen, cfg = single
    lengths = exp.response_lengths
    assert len(set(lengths.tolist())) > 2, "the test needs responses of several lengths"
    prompt_lengths = exp.attention_mask[:, :exp.prompt_width].sum(1)
    short = (prompt_lengths < prompt_lengths.max()).nonzero().squeeze(1)
    rows = short[lengths[short].argsort()[:3]]  # short prompts and responses: much padding
    e = exp.select(rows).trimmed()
    start, n = used_columns(exp.attention_mask[rows], exp.action_mask[rows])
    assert n == int(lengths[rows].max()) < exp.action_mask.shape[1]
    assert e.sequences.shape[1] == exp.prompt_width - start + n and start > 0
    assert e.logprobs.shape == (3, n) and torch.equal(e.logprobs, exp.logprobs[rows, :n])
    with torch.no_grad():
        full = ac(exp.sequences[rows], exp.attention_mask[rows], exp.action_mask[rows], 1.0,
                  with_entropy=True)
        cut = ac(e.sequences, e.attention_mask, e.action_mask, 1.0, with_entropy=True)
    for a, b in zip(full, cut):  # logprobs, values, entropy
        assert torch.allclose(a[:, :n], b, atol=1e-6) and (a[:, n:] == 0).all()


def test_shared_prompts_give_the_padded_results_and_gradients(grouped):
    ac, exp, gen, cfg = grouped
    rows = torch.arange(12)  # prompts 0, 1, 2: four samples each
    e = exp.select(rows).trimmed()
    shared = share_prompts(e.sequences, e.attention_mask, e.action_mask, e.prompt_index,
                           exp.pad_id)
    assert shared.input_ids.shape[0] == 3  # one layout row per prompt
    assert len(shared.targets) == int(e.action_mask.sum())
    results = []
    for layout in (None, shared):
        ac.zero_grad()
        out = ac(e.sequences, e.attention_mask, e.action_mask, 1.0, with_entropy=True,
                 shared=layout)
        (out[0].sum() + out[1].sum()).backward()
        grads = [p.grad.clone() for p in ac.parameters() if p.requires_grad]
        results.append(([t.detach() for t in out], grads))
    (padded, g_padded), (shared_out, g_shared) = results
    for a, b in zip(padded, shared_out):  # logprobs, values, entropy
        assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(g_padded, g_shared))
    ac.zero_grad()


@pytest.mark.parametrize("fixture, shares", [("single", False), ("grouped", True)])
def test_first_epoch_ratio_is_exactly_one(request, fixture, shares):
    """With the whole rollout as the mini-batch, the update forwards the rollout's own
    micro-batches (in any shuffled order), so its logprobs equal the recomputed ones bit for bit."""
    ac, exp, _, cfg = request.getfixturevalue(fixture)
    assert ac.shares_prompts is shares
    ac.train()
    mini = torch.randperm(exp.sequences.shape[0], generator=torch.Generator().manual_seed(1))
    for micro in sorted_micro_batches(mini, exp, cfg.micro_batch_size, by_prompt=shares):
        e, shared = exp.micro_batch(micro, shares)
        with lora_view(ac.policy, "fused"):  # as `update` runs it, with gradients
            logprobs, values, _ = ac(e.sequences, e.attention_mask, e.action_mask, 1.0,
                                     shared=shared, pad_id=e.pad_id)
        assert torch.equal(logprobs, e.logprobs) and torch.equal(values, e.values)


@pytest.mark.parametrize("fixture, aggregation", [("single", "token"), ("grouped", "token"),
                                                  ("grouped", "sequence")])
def test_micro_losses_sum_to_the_mini_batch_token_mean(request, fixture, aggregation):
    """The regrouped, trimmed (and prompt-sharing, fused-LoRA) micro-batch losses add up to the
    clipped loss of the whole mini-batch in one plain padded pass through peft (a token mean
    over it), gradients included.

    In float64: the two paths add the same terms in different orders and layouts, and in fp32
    that noise reached ~7e-6 on gradient entries near 0 (entries up to ~2.6, sums over ~300
    tokens: ~300 * 2^-24 * 2.6 ~ 5e-5 at worst), past atol 1e-6 for 4 in 10 draws of the value
    head. In float64 it is ~1e-13; what is left is the rounding of logprobs and values to fp32
    (`policy_forward` returns fp32), ~1e-7 on a gradient, 20x under the tolerance."""
    from coachlm.losses import ppo_clip, value_clip

    from coachlm.rl_math import aggregation_weight

    ac, exp, _, cfg = request.getfixturevalue(fixture)
    cfg = replace(cfg, loss_aggregation=aggregation)
    ac = copy.deepcopy(ac).double()  # perturbed below; the fixture's stays as it sampled
    g = torch.Generator().manual_seed(2)
    exp = replace(exp, advantages=torch.randn(exp.logprobs.shape, generator=g) * exp.action_mask,
                  returns=torch.randn(exp.logprobs.shape, generator=g) * exp.action_mask)
    mini = torch.randperm(exp.sequences.shape[0], generator=g)[:16]
    # Perturb the policy, so that ratios are not 1 and some clip.
    with torch.no_grad():
        for name, p in ac.named_parameters():
            if "lora_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    m = exp.select(mini)
    ac.zero_grad()
    logprobs, values, _ = ac(m.sequences, m.attention_mask, m.action_mask, 1.0, pad_id=m.pad_id)
    pg, _, _ = ppo_clip(logprobs, m.logprobs, m.advantages, m.action_mask, cfg.clip_eps,
                        aggregation)
    vf, _ = value_clip(values, m.values, m.returns, m.action_mask, cfg.value_clip_eps,
                       aggregation)
    whole = pg + cfg.vf_coef * vf
    whole.backward()
    want = [p.grad.clone() for p in ac.parameters() if p.requires_grad]
    ac.zero_grad()
    n_tokens = aggregation_weight(m.action_mask, aggregation)
    total = clipped = 0.0
    share = ac.shares_prompts
    for micro in sorted_micro_batches(mini, exp, cfg.micro_batch_size, by_prompt=share):
        with lora_view(ac.policy, "fused"):  # as `update` runs it
            loss, stats = _micro_loss(ac, *exp.micro_batch(micro, share), cfg, n_tokens, 0.0)
        loss.backward()
        total += float(loss.detach())
        clipped += stats["clipfrac"]
    got = [p.grad.clone() for p in ac.parameters() if p.requires_grad]
    assert clipped > 0  # the clip is active on some tokens
    assert total == pytest.approx(float(whole), abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(want, got))


def test_the_rollouts_checked_here_do_not_depend_on_the_global_rng():
    """The module's fixtures give the same data whatever ran before them in the process."""
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        _, exp, _, _ = make_rollout(1)
        runs.append(exp)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert torch.equal(runs[0].values, runs[1].values)


@pytest.mark.parametrize("lora", [True, False])
def test_first_rollout_policy_equals_reference(lora):
    """A fresh adapter (B = 0) through the fused view, or full fine-tuning against a frozen
    copy: the first rollout's policy and reference logprobs agree bit for bit (KL 0)."""
    tok = tokenizer()
    model = tiny_model(seed=0)
    if lora:
        model = apply_lora(model, LoRAConfig(r=4, alpha=8.0))
    ref = None if lora else copy.deepcopy(model).eval().requires_grad_(False)
    ac = ActorCritic(model, None)
    ids = [encode_prompt(tok, p) for p in PROMPTS[:4]]
    exp, _, _ = rollout(ac, ref, tok, ids, config(2, rollout_batch_size=4, mini_batch_size=8),
                        seed=0, autocast=NO_AUTOCAST)
    assert ac.shares_prompts and exp.action_mask.sum() > 8
    assert torch.equal(exp.logprobs, exp.ref_logprobs)


def test_shared_prompts_supported_on_causal_lms():
    from test_rollout_sampling import _other_arch

    pad = tokenizer().pad_token_id
    assert shared_prompts_supported(tiny_model(), pad)
    assert shared_prompts_supported(lora_policy(), pad)
    for arch in ("qwen2", "mistral", "gpt2"):  # each takes 4-D masks and is backbone + head
        assert shared_prompts_supported(_other_arch(arch), pad) is True
    # A forward that does more than backbone + LM head (here: doubles the logits) gives shared
    # rows other logprobs than padded rows: the check must say no.
    model = tiny_model()
    plain = model.forward

    def doubled(**kwargs):
        out = plain(**kwargs)
        out.logits = out.logits * 2
        return out

    model.forward = doubled
    assert shared_prompts_supported(model, pad) is False


# ------------------------------------------------------------------- sampling


def test_lora_views_compute_the_policy_and_the_base_and_restore_every_module():
    tok, model = tokenizer(), lora_policy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    ids = torch.tensor([random_prompts([7], len(tok))[0]])  # (1, 7)
    with torch.no_grad():
        policy_logits = model(input_ids=ids).logits
        with adapter_disabled(model):
            base_logits = model(input_ids=ids).logits
    assert not torch.allclose(policy_logits, base_logits, atol=1e-3)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    for view, want in (("merged", policy_logits), ("fused", policy_logits),
                       ("base", base_logits)):
        with lora_view(model, view), torch.no_grad():
            swapped = model.base_model.model.model.layers[0].self_attn.q_proj
            assert swapped is not layer and not isinstance(swapped, LoraLayer)
            assert torch.allclose(model(input_ids=ids).logits, want, atol=1e-5)
            if view == "merged":  # W + (alpha / r) B A
                delta = layer.scaling["default"] * layer.lora_B["default"].weight @ \
                    layer.lora_A["default"].weight
                assert torch.allclose(swapped.weight, layer.base_layer.weight + delta, atol=1e-6)
    after = model.state_dict()
    assert dict(model.named_modules()).keys() == modules.keys()
    assert all(modules[k] is m for k, m in model.named_modules())  # the peft modules are back
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit, base included
    plain = tiny_model()
    with lora_view(plain, "merged"):  # not a LoRA model: nothing to swap
        assert isinstance(plain.model.layers[0].self_attn.q_proj, torch.nn.Linear)


def test_fused_lora_trains_the_adapter_as_peft_does():
    model = lora_policy()
    ids = torch.tensor([random_prompts([9], len(tokenizer()))[0]])  # (1, 9)
    grads = []
    for view in (None, "fused"):
        model.zero_grad()
        with lora_view(model, view) if view else contextlib.nullcontext():
            model(input_ids=ids).logits.logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 7 * 2 * 2  # 2 layers, A and B
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-5, rtol=1e-4) for k in grads[0])


def test_sampling_through_the_merged_view_samples_the_policy():
    tok, model = tokenizer(), lora_policy()
    prompts = random_prompts([3, 7, 5], len(tok))
    cfg = SamplingConfig(max_new_tokens=10, n=3, seed=5)
    unmerged = generate(model, tok, prompts, cfg)
    with lora_view(model, "merged"):
        merged = generate(model, tok, prompts, cfg)
    # The same distribution up to rounding: on this model and seed, the same tokens (a draw
    # that falls within rounding of a CDF boundary could differ, rarely).
    assert merged.response_ids == unmerged.response_ids
    assert all(a == pytest.approx(b, abs=1e-5) for a, b in zip(merged.logprobs,
                                                                unmerged.logprobs))


def test_shared_prefill_equals_a_prefill_per_row():
    tok, model = tokenizer(), tiny_model()
    prompts = random_prompts([4, 6], len(tok), seed=1)
    rows = [prompts[0], prompts[0], prompts[1], prompts[0], prompts[1]]
    input_ids, mask = sampling._left_pad(rows, tok.pad_token_id)  # (5, 6)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits, cache = sampling._prefill(model, input_ids, mask, positions, 16)
        want = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                     use_cache=True)
    assert logits.shape == (5, len(tok))
    assert torch.allclose(logits, want.logits[:, -1], atol=1e-5)
    for layer, want_layer in zip(cache.layers, want.past_key_values.layers):
        assert torch.allclose(layer.keys[:, :, :6], want_layer.keys, atol=1e-5)
        assert torch.allclose(layer.values[:, :, :6], want_layer.values, atol=1e-5)


@pytest.mark.parametrize("dtype", ["model", "bf16"])
def test_samples_of_one_prompt_equal_a_prompt_alone(dtype):
    """Greedy, the n samples of a prompt (which share its prefill) are what a batch holding
    that prompt once gives (no sharing)."""
    tok, model = tokenizer(), tiny_model()
    prompts = random_prompts([3, 9, 5], len(tok), seed=4)
    shared = generate(model, tok, prompts, SamplingConfig(max_new_tokens=8, temperature=0, n=2,
                                                          dtype=dtype))
    alone = generate(model, tok, prompts, SamplingConfig(max_new_tokens=8, temperature=0,
                                                         dtype=dtype))
    assert shared.response_ids == [r for r in alone.response_ids for _ in range(2)]
    if dtype == "model":
        for i, lp in enumerate(shared.logprobs):
            assert lp == pytest.approx(alone.logprobs[i // 2], abs=1e-5)


# ------------------------------------------------------------------- bf16 (issue 15)

BF16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731


@pytest.mark.parametrize("view", ["merged", "fused", "base"])
def test_lora_views_with_weights_cast_once_equal_autocast_bit_for_bit(view):
    """Under bf16 autocast the views' frozen weights cast once on entry give exactly what
    autocast's own cast in every forward gives (logits, and the adapter's gradients)."""
    model = lora_policy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([random_prompts([9], len(tokenizer()))[0]])  # (1, 9)
    out = []
    for dtype in (None, torch.bfloat16):
        model.zero_grad()
        with BF16(), lora_view(model, view, dtype):
            logits = model(input_ids=ids).logits
            if dtype is not None and view != "base":  # the swapped layer holds bf16 weights
                layer = model.base_model.model.model.layers[0].self_attn.q_proj
                assert next(t for t in (getattr(layer, "weight", None),
                                        getattr(getattr(layer, "base", None), "weight", None))
                            if t is not None).dtype == torch.bfloat16
        if view == "fused":  # the only view that trains the adapter
            logits.float().logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()
                 if p.requires_grad and p.grad is not None}
        out.append((logits, grads))
    assert torch.equal(out[0][0], out[1][0])
    assert out[0][1].keys() == out[1][1].keys()
    assert all(torch.equal(out[0][1][k], out[1][1][k]) for k in out[0][1])
    assert (len(out[0][1]) == 28) == (view == "fused")  # base and merged: no adapter in the graph
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # fp32, untouched


def test_bf16_sampling_copy_keeps_the_policy_ties_and_rotary_frequencies():
    from coachlm.models.attention import use_fp32_attention
    from coachlm.rollout.sampling import cast_copy

    model = lora_policy()
    assert use_fp32_attention(model)
    with torch.no_grad(), lora_view(model, "merged", torch.bfloat16):
        c = cast_copy(model, torch.bfloat16)
    assert {p.dtype for p in c.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in c.parameters())
    assert c.lm_head.weight is c.model.embed_tokens.weight  # tied as in the policy
    assert c.model.rotary_emb.inv_freq.dtype == torch.float32
    assert c.config._attn_implementation == "sdpa"  # decode attends in bf16 ...
    assert model.config._attn_implementation == "sdpa_fp32"  # ... the policy's config unchanged
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = torch.tensor([random_prompts([9], len(tokenizer()))[0]])  # (1, 9)
    with torch.no_grad():
        want = model(input_ids=ids).logits.log_softmax(-1)
        got = c(input_ids=ids).logits.float().log_softmax(-1)
    assert (got - want).abs().max() < 0.1  # the policy, up to bf16 rounding


def test_bf16_rollout_samples_a_bf16_copy_and_recomputes_under_autocast(monkeypatch):
    """A bf16 rollout decodes on a bf16 copy of the merged policy (a static cache, no casts),
    leaves the fp32 policy as it was, and its recomputed logprobs are the policy's."""
    tok = tokenizer()
    ac = ActorCritic(lora_policy(), None)
    before = {k: v.clone() for k, v in ac.state_dict().items()}
    seen = []
    plain = sampling._generate_batch

    def spy(model, *args, **kwargs):
        seen.append({p.dtype for p in model.parameters()})
        return plain(model, *args, **kwargs)

    monkeypatch.setattr(sampling, "_generate_batch", spy)
    ids = [encode_prompt(tok, p) for p in PROMPTS]
    cfg = config(2, algo="rloo")
    exp, gen, _ = rollout(ac, None, tok, ids, cfg, seed=3, autocast=BF16, dtype=torch.bfloat16)
    assert seen == [{torch.bfloat16}]
    assert all(torch.equal(before[k], v) for k, v in ac.state_dict().items())
    with torch.no_grad():  # the fp32 policy's logprobs of the sampled tokens
        want, _, _ = ac(exp.sequences, exp.attention_mask, exp.action_mask, 1.0)
    mask = exp.action_mask
    assert (exp.logprobs - want).abs()[mask].max() < 0.1
    assert (exp.logprobs - want).abs()[mask].mean() < 0.02


def test_cast_base_weights_are_shared_and_follow_in_place_changes():
    model = lora_policy()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    ids = torch.tensor([random_prompts([9], len(tokenizer()))[0]])  # (1, 9)

    def cast_weight():
        with lora_view(model, "base", torch.bfloat16):
            return model.base_model.model.model.layers[0].self_attn.q_proj.weight

    first = cast_weight()
    assert cast_weight() is first  # one cast for the policy's, the reference's and the update's
    with torch.no_grad():
        layer.base_layer.weight.mul_(2.0)  # e.g. a checkpoint loaded into the model
    assert cast_weight() is not first
    for view in ("fused", "base"):
        with BF16(), torch.no_grad():
            with lora_view(model, view):
                want = model(input_ids=ids).logits
            with lora_view(model, view, torch.bfloat16):
                assert torch.equal(model(input_ids=ids).logits, want)


@pytest.mark.parametrize("tied", [True, False])
def test_full_fine_tuning_reference_cast_once_equals_autocast_bit_for_bit(tied):
    """Full fine-tuning's frozen reference under bf16 holds its Linear weights in bf16, cast
    once (no fp32 copy), and gives under autocast the logits of an fp32 copy bit for bit;
    embeddings, norms and a Linear weight tied to the embeddings stay fp32; the policy is
    untouched."""
    from coachlm.models.attention import use_fp32_attention
    from coachlm.trainers.ppo_steps import frozen_reference

    model = tiny_model(seed=0, tie_word_embeddings=tied)
    assert use_fp32_attention(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref32, ref16 = frozen_reference(model), frozen_reference(model, torch.bfloat16)
    emb = ref16.get_input_embeddings().weight
    assert (ref16.lm_head.weight is emb) == tied
    linear = [m.weight for m in ref16.modules() if type(m) is torch.nn.Linear]
    assert {w.dtype for w in linear if w is not emb} == {torch.bfloat16}
    others = [p for n, p in ref16.named_parameters() if "norm" in n] + [emb]
    assert {p.dtype for p in others} == {torch.float32}
    assert not ref16.training and not any(p.requires_grad for p in ref16.parameters())
    ids = torch.tensor(random_prompts([9, 9], len(tokenizer())))  # (2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    with BF16(), torch.no_grad():
        want = ref32(input_ids=ids, attention_mask=mask).logits
        got = ref16(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(want, got)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
