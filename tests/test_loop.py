"""The shared training loop: schedule, exact accumulation, config checks, metrics files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from coachlm import config
from coachlm.config import ConfigError
from coachlm.errors import CoachError
from coachlm.data.chat import encode_example
from coachlm.data.collate import pad_examples
from coachlm.engine.accel import Engine, fast_bf16
from coachlm.engine.checkpoint import list_checkpoints
from coachlm.engine.config import TrainConfig, lr_at
from coachlm.engine import loop
from coachlm.engine.loop import make_optimizer, prepare, train
from coachlm.trainers.lm_loss import causal_lm_loss
from trainers_fixtures import ListSource, tiny_demos, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_schedule_matches_hand_computation():
    cos = TrainConfig(lr=1.0, warmup_steps=2, max_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(0, cos) == pytest.approx(0.5)  # warm-up: (0 + 1) / 2
    assert lr_at(1, cos) == pytest.approx(1.0)
    assert lr_at(2, cos) == pytest.approx(1.0)  # decay starts at its peak
    assert lr_at(6, cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # 0.55
    assert lr_at(10, cos) == pytest.approx(0.1)  # the floor, reached at max_steps
    lin = config.replace(cos, schedule="linear")
    assert lr_at(4, lin) == pytest.approx(0.1 + 0.9 * (1 - 2 / 8))  # 0.775
    const = config.replace(cos, schedule="constant")
    assert lr_at(7, const) == 1.0
    ratio = TrainConfig(lr=2.0, warmup_ratio=0.1, max_steps=50)  # 5 warm-up steps
    assert ratio.warmup == 5 and lr_at(0, ratio) == pytest.approx(0.4)


@pytest.mark.parametrize("override, message", [
    ("lr=0", "lr must be > 0"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("grad_accum=0", "grad_accum must be >= 1"),
    ("schedule=cosin", "must be one of"),
    ("warmup_steps=20", "warm-up (20 steps) must be shorter than max_steps"),
    ("betas=[0.9]", "betas must be two numbers"),
    ("max_step=5", "unknown config key 'max_step' (did you mean 'max_steps'?)"),
    ("max_grad_norm=-1", "max_grad_norm must be > 0"),
])
def test_config_errors_are_clear(override, message):
    with pytest.raises(ConfigError) as e:
        config.load(TrainConfig, overrides=["max_steps=10", override])
    assert message in str(e.value)


def test_config_from_yaml(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lr: 1e-4\nbetas: [0.9, 0.99]\nbf16: true\nthreads: null\n")
    cfg = config.load(TrainConfig, path, overrides=["grad_accum=4"])
    assert (cfg.lr, cfg.betas, cfg.bf16, cfg.grad_accum) == (1e-4, (0.9, 0.99), True, 4)


def test_weight_decay_skips_norms_and_embeddings(tok):
    model = tiny_model(tok)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim == 2 and "embed" not in name), name


def _batches(tok, n=8):
    """Examples of different lengths, so token weighting matters."""
    demos = tiny_demos(n, seed=3)
    examples = [encode_example(tok, d.prompt, d.response.text + " ok" * i) for i, d in enumerate(demos)]
    return [(torch.tensor(i), torch.tensor(l)) for i, l in examples]


def test_grad_accumulation_equals_one_big_batch(tok, tmp_path):
    ex = _batches(tok)
    results = []
    # Micro-batches of 3 and 5 examples with different token counts: a mean of micro-batch means
    # would differ from the big batch; a token-weighted sum must not.
    for accum, groups in [(2, [ex[:3], ex[3:]]), (1, [ex])]:
        model = tiny_model(tok, seed=0)
        cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=8 // accum, grad_accum=accum,
                          bf16=False, threads=1)
        source = ListSource([pad_examples(g, tok.pad_token_id) for g in groups])
        result = train(model, source, causal_lm_loss, cfg, tmp_path / str(accum))
        results.append((torch.cat([p.detach().flatten() for p in model.parameters()]),
                        result.metrics["loss"]))
    # Adam divides by sqrt(v): float noise in a near-zero gradient moves a weight by up to ~lr * 1e-3.
    torch.testing.assert_close(results[0][0], results[1][0], atol=2e-5, rtol=1e-4)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)


def test_accumulated_gradient_is_the_big_batch_token_mean(tok):
    """With SGD at lr 1 the update is minus the gradient: compare it tightly, and against the
    hand-computed gradient of the token-level mean over all 8 examples."""
    ex = _batches(tok)
    cfg = TrainConfig(lr=1.0, schedule="constant", max_steps=1, grad_accum=2, bf16=False,
                      max_grad_norm=None)
    model = tiny_model(tok, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    micro = [pad_examples(ex[:3], tok.pad_token_id), pad_examples(ex[3:], tok.pad_token_id)]
    loop.update(prepare(Engine.from_config(cfg), model, causal_lm_loss, sgd), micro, lr_at(0, cfg),
                cfg.max_grad_norm)
    update = [b - p.detach() for b, p in zip(before, model.parameters())]

    ref = tiny_model(tok, seed=0)
    big = pad_examples(ex, tok.pad_token_id)
    logits = ref(input_ids=big.input_ids, attention_mask=big.attention_mask).logits  # (B, T, V)
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), big.labels[:, 1:].flatten())
    manual.backward()  # cross_entropy's default: mean over all non-ignored tokens
    for u, p in zip(update, ref.parameters()):
        torch.testing.assert_close(u, p.grad, atol=1e-6, rtol=1e-4)


def test_metrics_summary_and_checkpoints_written(tok, tmp_path):
    ex = _batches(tok, 4)
    model = tiny_model(tok)
    cfg = TrainConfig(max_steps=5, batch_size=2, log_every=2, checkpoint_every=2,
                      keep_checkpoints=2, eval_every=4, threads=1, bf16=False)
    source = ListSource([pad_examples(ex[:2], tok.pad_token_id), pad_examples(ex[2:], tok.pad_token_id)])
    steps = []
    result = train(model, source, causal_lm_loss, cfg, tmp_path, on_step=lambda s, m: steps.append(s),
                   eval_fn=lambda m: {"val_loss": 1.5}, extra_summary={"examples": 4})
    assert steps == [1, 2, 3, 4, 5]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 4, 5, 5]  # logs, eval at 4, last step, final eval
    for key in ("loss", "lr", "grad_norm", "tokens", "tokens_per_s"):
        assert key in rows[0]
    assert rows[-1]["val_loss"] == 1.5
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("steps", "tokens", "tokens_per_s", "seconds", "peak_rss_mb", "final_metrics",
                "trainable_params"):
        assert key in summary, key
    assert summary["steps"] == 5 and summary["examples"] == 4
    b0, b1 = (b.num_tokens for b in source.batches)  # steps 1..5 see b0 b1 b0 b1 b0
    assert summary["tokens"] == result.tokens == 3 * b0 + 2 * b1
    assert summary["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000005"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_bf16_auto_is_resolved():
    assert Engine("cpu", bf16=True).precision == "bf16"
    assert Engine("cpu", bf16=False).precision == "no"
    assert Engine("cpu").bf16 == fast_bf16(torch.device("cpu")) \
        == bool(torch.cpu._is_amx_tile_supported())


def test_bf16_autocast_trains(tok, tmp_path):
    ex = _batches(tok, 4)
    model = tiny_model(tok)
    cfg = TrainConfig(max_steps=2, bf16=True, threads=1, log_every=1)
    result = train(model, ListSource([pad_examples(ex, tok.pad_token_id)]), causal_lm_loss, cfg, tmp_path)
    assert math.isfinite(result.metrics["loss"]) and result.summary["bf16"] is True
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_resume_refuses_a_changed_data_order(tok, tmp_path):
    ex = _batches(tok, 4)
    source = ListSource([pad_examples(ex, tok.pad_token_id)])
    cfg = TrainConfig(max_steps=2, checkpoint_every=1, bf16=False, threads=1, batch_size=4)
    train(tiny_model(tok), source, causal_lm_loss, cfg, tmp_path)
    with pytest.raises(CoachError, match="train.batch_size was 4, now 2"):
        train(tiny_model(tok), source, causal_lm_loss, config.replace(cfg, batch_size=2), tmp_path,
              resume=True)
