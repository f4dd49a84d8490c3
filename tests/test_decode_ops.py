"""The sampler's decode loop after the per-token operator cuts (issue 15): the same tokens as a
plain per-row decode without a KV cache, and few operators of its own per decode step."""

from __future__ import annotations

import sys

import pytest
import torch

from coachlm.rollout.sampling import SamplingConfig, generate, row_uniforms
from models_fixtures import model as tiny_model
from models_fixtures import REPO, random_prompts, tokenizer


def _plain_decode(model, prompt, steps, stops, pad_id, u=None, temperature=1.0):
    """One row, the whole sequence through the model every step (no cache, no batch): greedy
    over the non-pad tokens, or the inverse-CDF draw of uniform `u[t]`."""
    ids = list(prompt)
    out = []
    for t in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()  # (V,)
        logits[pad_id] = float("-inf")
        if u is None:
            tok = int(logits.argmax())
        else:
            cdf = (logits / temperature).softmax(-1).double().cumsum(-1)
            tok = int(torch.searchsorted(cdf, (u[t] * cdf[-1]).reshape(1), right=True))
        out.append(tok)
        ids.append(tok)
        if tok in stops:
            break
    return out


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_decode_gives_the_plain_per_row_decode(temperature):
    tok, model = tokenizer(), tiny_model().eval()
    prompts = random_prompts([3, 9, 5, 12, 1, 7], len(tok), seed=5)
    free = generate(model, tok, prompts, SamplingConfig(max_new_tokens=10, temperature=0))
    stops = (free.response_ids[1][3], free.response_ids[4][6])  # some rows stop mid-way
    cfg = SamplingConfig(max_new_tokens=10, temperature=temperature, batch_size=4, seed=3,
                         stop_token_ids=stops)
    gen = generate(model, tok, prompts, cfg)
    all_stops = set(stops) | {tok.eos_token_id}
    for i, prompt in enumerate(prompts):
        u = None if temperature == 0 else row_uniforms(3, [i], 10)[0]  # row i's own stream
        want = _plain_decode(model, prompt, 10, all_stops, tok.pad_token_id, u, temperature)
        assert gen.response_ids[i] == want
        assert gen.finished[i] == (want[-1] in all_stops)
        assert len(gen.logprobs[i]) == len(want)
    if temperature == 0:
        assert 0 < sum(gen.finished) < len(prompts)  # rows left the batch mid-way


def _sampler_ops_per_step(model, tok, prompts, cfg) -> float:
    """aten operators dispatched outside the model's forwards, per decode step."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from decode_ops import profiled_generate
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    gen, outside, _ = profiled_generate(model, tok, prompts, cfg)
    return outside / max(len(r) for r in gen.response_ids)


def test_a_decode_step_dispatches_few_operators_of_its_own():
    # Before the cuts (issue 15) a step took ~51 operators greedy and ~71 sampled (32 rows,
    # world-small); after, ~28 and ~45. The bounds leave room for torch versions.
    tok, model = tokenizer(), tiny_model().eval()
    prompts = random_prompts([4, 6, 5, 8] * 4, len(tok), seed=1)
    never = (len(tok) + 1,)  # no row stops: every step runs the whole batch
    greedy = _sampler_ops_per_step(model, tok, prompts, SamplingConfig(
        max_new_tokens=24, temperature=0, batch_size=16, stop_token_ids=never))
    sampled = _sampler_ops_per_step(model, tok, prompts, SamplingConfig(
        max_new_tokens=24, temperature=1.0, batch_size=16, stop_token_ids=never))
    assert greedy < 40 and sampled < 56, (greedy, sampled)
