"""`engine.loop.update`'s optimizer step: the N / count scaling and the clip coefficient folded
into one factor (inside fused AdamW, or one multiply), against a hand-written AdamW step."""

from __future__ import annotations

import copy

import pytest
import torch

from coachlm.data.chat import encode_example
from coachlm.data.collate import pad_examples
from coachlm.engine import loop
from coachlm.engine.accel import Engine
from coachlm.engine.config import TrainConfig
from coachlm.trainers.lm_loss import causal_lm_loss
from trainers_fixtures import tiny_demos, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _micro_batches(tok, seed: int):
    """Two micro-batches of 3 and 5 examples with different token counts."""
    demos = tiny_demos(8, seed=seed)
    ex = [encode_example(tok, d.prompt, d.response.text + " ok" * i) for i, d in enumerate(demos)]
    ex = [(torch.tensor(i), torch.tensor(l)) for i, l in ex]
    return [pad_examples(ex[:3], tok.pad_token_id), pad_examples(ex[3:], tok.pad_token_id)]


def _mean_gradient(model, micro) -> tuple[float, list[torch.Tensor]]:
    """The token-level mean loss over all micro-batches' labelled tokens and its gradient."""
    model.zero_grad(set_to_none=True)
    outs = [causal_lm_loss(model, b) for b in micro]
    loss = sum(o.loss_sum for o in outs) / sum(o.count for o in outs)
    loss.backward()
    return float(loss.detach()), [p.grad.detach().clone() for p in model.parameters()]


def _adamw(params, grads, state, step: int, lr: float, cfg: TrainConfig, decay: set[int]) -> None:
    """AdamW (Loshchilov & Hutter, 2019, Algorithm 2) with bias correction, in place."""
    b1, b2 = cfg.betas
    with torch.no_grad():
        for p, g in zip(params, grads):
            m, v = state.setdefault(id(p), (torch.zeros_like(p), torch.zeros_like(p)))
            if id(p) in decay:
                p.mul_(1 - lr * cfg.weight_decay)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat, v_hat = m / (1 - b1 ** step), v / (1 - b2 ** step)
            p.sub_(lr * m_hat / (v_hat.sqrt() + cfg.eps))


@pytest.mark.parametrize("fused", [True, False])
def test_step_equals_hand_computed_adamw_with_clipping(tok, fused):
    """Step 1 clips (max_grad_norm a fifth of the gradient norm), step 2 does not (max_grad_norm
    None): parameters, logged loss and pre-clip norm equal a hand-written AdamW on the big-batch
    mean gradient. eps near the gradients' size makes the update depend on their scale."""
    cfg = TrainConfig(lr=1e-2, eps=1e-3, weight_decay=0.1, betas=(0.9, 0.95), bf16=False,
                      threads=1, max_steps=10)
    model = tiny_model(tok, seed=0)
    ref = copy.deepcopy(model)
    opt = loop.make_optimizer(model, cfg)
    if not fused:  # the path for parameters fused AdamW does not take
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)
    assert bool(opt.param_groups[0]["fused"]) == fused
    t = loop.prepare(Engine.from_config(cfg), model, causal_lm_loss, opt)
    decay = {id(rp) for rp, p in zip(ref.parameters(), model.parameters())
             if any(p is q for q in opt.param_groups[0]["params"])}
    state: dict = {}
    for step, seed in [(1, 3), (2, 4)]:
        micro = _micro_batches(tok, seed)
        loss, grads = _mean_gradient(ref, micro)
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        max_norm = norm / 5 if step == 1 else None
        coef = min(1.0, max_norm / (norm + 1e-6)) if max_norm else 1.0
        assert (coef < 0.5) == (step == 1)
        _adamw(list(ref.parameters()), [g * coef for g in grads], state, step, 1e-2, cfg, decay)
        metrics, _ = loop.update(t, micro, 1e-2, max_norm)
        assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)
        assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
        for p, r in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, r, atol=1e-6, rtol=1e-5)
        assert all(p.grad is None for p in model.parameters())
        assert not hasattr(opt, "grad_scale")  # the factor is not left for a later step


def test_unclipped_step_is_not_changed_by_clipping(tok):
    """max_grad_norm above the norm and None give the same step (coefficient exactly 1)."""
    out = []
    for max_norm in (1e9, None):
        cfg = TrainConfig(lr=1e-2, eps=1e-3, bf16=False, threads=1, max_steps=10)
        model = tiny_model(tok, seed=0)
        t = loop.prepare(Engine.from_config(cfg), model, causal_lm_loss, loop.make_optimizer(model, cfg))
        metrics, _ = loop.update(t, _micro_batches(tok, 3), 1e-2, max_norm)
        out.append((metrics["grad_norm"], torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert out[0][0] == out[1][0]
    torch.testing.assert_close(out[0][1], out[1][1], atol=0, rtol=0)
