"""The fused LM-head log-probabilities (`models.head_logprobs`): hand-computed values, gradients
against autograd through the plain head, unlabelled rows, bias, autocast and a LoRA-wrapped
head (the plain path)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from coachlm.models.head_logprobs import head_logprobs


def _plain(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(head(hidden).float(), -1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
    return torch.where(labels >= 0, logp, torch.zeros_like(logp))


def test_hand_computed():
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    hidden = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), 0.0]])
    # softmax([0, log 3]) = [1/4, 3/4]; softmax([log 2, 0]) = [2/3, 1/3]
    out = head_logprobs(head, hidden, torch.tensor([1, 1]))
    assert torch.allclose(out, torch.tensor([math.log(3 / 4), math.log(1 / 3)]), atol=1e-6)
    # d log p(y) / d z = onehot(y) - p: row 0 -> [-1/4, 1/4]; W = I, so dh = dz
    hidden.requires_grad_(True)
    head_logprobs(head, hidden, torch.tensor([1, -100]))[0].backward()
    assert torch.allclose(hidden.grad, torch.tensor([[-0.25, 0.25], [0.0, 0.0]]), atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_equal_autograd_through_the_plain_head(bias):
    torch.manual_seed(0)
    head = nn.Linear(24, 37, bias=bias)
    hidden = torch.randn(10, 24, requires_grad=True)
    labels = torch.randint(0, 37, (10,))
    labels[[2, 7]] = -100  # unlabelled rows: 0, and no gradient
    weights = torch.randn(10)  # a weighted sum, so that each row's gradient scale differs
    ours = head_logprobs(head, hidden, labels)
    grads = torch.autograd.grad((ours * weights).sum(), [hidden, *head.parameters()])
    ref = _plain(head, hidden, labels)
    ref_grads = torch.autograd.grad((ref * weights).sum(), [hidden, *head.parameters()])
    assert ours.dtype == torch.float32 and torch.all(ours[[2, 7]] == 0)
    assert torch.allclose(ours, ref, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-5)
    assert torch.all(grads[0][[2, 7]] == 0)


def test_a_frozen_head_gets_no_gradient_and_the_input_still_does():
    torch.manual_seed(1)
    head = nn.Linear(8, 11, bias=False).requires_grad_(False)
    hidden = torch.randn(4, 8, requires_grad=True)
    head_logprobs(head, hidden, torch.tensor([0, 3, 5, 10])).sum().backward()
    assert head.weight.grad is None and hidden.grad is not None


def test_under_bf16_autocast_equals_autocast_through_the_plain_head():
    torch.manual_seed(2)
    head = nn.Linear(16, 29, bias=False)
    hidden = torch.randn(6, 16, requires_grad=True)
    labels = torch.randint(0, 29, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = head_logprobs(head, hidden, labels)
        ref = _plain(head, hidden, labels)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, ref, atol=1e-4)  # the same bf16 logits, softmax in fp32
    got = torch.autograd.grad(ours.sum(), [hidden, head.weight])
    want = torch.autograd.grad(ref.sum(), [hidden, head.weight])
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.float32
        assert torch.allclose(g, w, atol=2e-2, rtol=2e-2)  # bf16 matmuls of the gradient


def test_a_lora_wrapped_head_takes_the_plain_path():
    from peft import LoraConfig, get_peft_model

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = nn.Linear(8, 13, bias=False)

    torch.manual_seed(3)
    wrapped = get_peft_model(Tiny(), LoraConfig(r=2, target_modules=["lm_head"]))
    head = wrapped.base_model.model.lm_head
    with torch.no_grad():  # a non-zero adapter, so that missing it would show
        head.lora_B["default"].weight.normal_()
    hidden = torch.randn(5, 8)
    labels = torch.tensor([1, 2, -100, 4, 12])
    assert torch.allclose(head_logprobs(head, hidden, labels), _plain(head, hidden, labels), atol=1e-6)
