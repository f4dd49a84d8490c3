"""Logprobs of given tokens: hand-computed values, temperature, masking, left padding."""

from __future__ import annotations

import math

import pytest
import torch

from coachlm.models import logprobs as lp_mod
from coachlm.models.logprobs import logprobs_from_logits, position_ids_from_mask, sequence_logprobs
from models_fixtures import model as tiny_model


def test_logprobs_from_logits_hand_computed():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0]]])  # (1, 2, 2)
    labels = torch.tensor([[1, 1]])
    # softmax([0, log 3]) = [1/4, 3/4]; softmax([log 2, 0]) = [2/3, 1/3]
    expected = torch.tensor([[math.log(3 / 4), math.log(1 / 3)]])
    assert torch.allclose(logprobs_from_logits(logits, labels), expected, atol=1e-6)


def test_temperature_divides_the_logits():
    logits = torch.tensor([[0.0, math.log(9.0)]])  # (1, 2)
    # at T = 2 the logits are [0, log 3]: p(1) = 3/4
    out = logprobs_from_logits(logits, torch.tensor([1]), temperature=2.0)
    assert out.item() == pytest.approx(math.log(3 / 4), abs=1e-6)
    with pytest.raises(ValueError):
        logprobs_from_logits(logits, torch.tensor([1]), temperature=0.0)


def test_ignore_index_gives_zero_and_bf16_is_computed_in_fp32():
    logits = torch.randn(2, 3, 11).to(torch.bfloat16)
    labels = torch.tensor([[1, -100, 3], [-100, 5, 6]])
    out = logprobs_from_logits(logits, labels)
    assert out.dtype == torch.float32
    ref = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(out, torch.where(labels >= 0, ref, 0.0), atol=1e-6)


def test_chunking_gives_the_same_result(monkeypatch):
    logits, labels = torch.randn(3, 7, 13), torch.randint(0, 13, (3, 7))
    full = logprobs_from_logits(logits, labels)
    monkeypatch.setattr(lp_mod, "CHUNK_TOKENS", 4)
    assert torch.allclose(logprobs_from_logits(logits, labels), full, atol=1e-6)


def test_position_ids_ignore_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def _reference(model, ids: list[int], start: int, temperature: float = 1.0) -> list[float]:
    """Unpadded single-sequence logprobs of ids[start:], straight from log_softmax."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float() / temperature  # (T, V)
    logp = torch.log_softmax(logits, -1)
    return [logp[t - 1, ids[t]].item() for t in range(start, len(ids))]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_logprobs_with_left_padded_prompts(temperature):
    model = tiny_model().eval()
    pad = 0
    # Row 0: prompt of 5, response of 3; row 1: prompt of 3 (left-padded by 2), response of 2
    # followed by one right pad. Both responses start at column 5.
    p0, r0 = [1, 4, 20, 21, 5], [30, 31, 2]
    p1, r1 = [1, 4, 5], [40, 2]
    input_ids = torch.tensor([p0 + r0, [pad, pad] + p1 + r1 + [pad]])
    attention_mask = torch.tensor([[1] * 8, [0, 0, 1, 1, 1, 1, 1, 0]])
    response_mask = torch.tensor([[0] * 5 + [1] * 3, [0] * 5 + [1, 1, 0]])
    with torch.no_grad():
        out = sequence_logprobs(model, input_ids, attention_mask, response_mask, temperature)
    assert out.shape == (2, 8) and out.dtype == torch.float32
    assert torch.all(out[response_mask == 0] == 0)
    assert out[0, 5:].tolist() == pytest.approx(_reference(model, p0 + r0, 5, temperature), abs=1e-5)
    assert out[1, 5:7].tolist() == pytest.approx(_reference(model, p1 + r1, 3, temperature), abs=1e-5)


def test_sequence_logprobs_gradient_flows_and_empty_mask():
    model = tiny_model()
    ids = torch.tensor([[1, 4, 20, 5, 30, 2]])
    mask = torch.ones_like(ids)
    resp = torch.tensor([[0, 0, 0, 0, 1, 1]])
    sequence_logprobs(model, ids, mask, resp).sum().backward()
    assert model.model.embed_tokens.weight.grad is not None
    assert torch.all(sequence_logprobs(model, ids, mask, torch.zeros_like(ids)) == 0)
