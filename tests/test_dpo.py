"""DPO trainer: the loss against hand values, cached vs adapter-disabled reference, the reference
cache, data formats, and a tiny model whose preference accuracy rises on a toy set."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from coachlm import config
from coachlm.config import ConfigError
from coachlm.data.io import write_records
from coachlm.data.pairs import Pair, collate, with_reference
from coachlm.data.schema import Comparison, Message, Response
from coachlm.models.load import load_model, save_pretrained
from coachlm.models.lora import LoRAConfig
from coachlm.trainers.dpo import DPOConfig, dpo, pair_loss, read_pairs
from coachlm.trainers.dpo_logps import sequence_logps
from coachlm.engine.config import TrainConfig
from trainers_fixtures import WORDS, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def base_dir(tok, tmp_path_factory):
    return save_pretrained(tiny_model(tok, seed=0), tok, tmp_path_factory.mktemp("base"))


def toy_comparisons(n: int, seed: int = 0) -> list[Comparison]:
    """Prompts of random words; the chosen response ends "happy.", the rejected one "sad."."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        subject = rng.choice(["the cat", "the dog", "it"])
        good, bad = Response(f"{subject} was happy."), Response(f"{subject} was sad.")
        first = rng.random() < 0.5
        out.append(Comparison(prompt=(Message("user", f"Tell me about {words}."),),
                              a=good if first else bad, b=bad if first else good,
                              choice="a" if first else "b"))
    return out


def _cfg(base_dir, data, out, **kw) -> DPOConfig:
    train = dict(lr=3e-3, warmup_steps=0, max_steps=4, batch_size=8, log_every=1, bf16=False,
                 threads=1, seed=0, schedule="constant")
    train.update(kw.pop("train", {}))
    return DPOConfig(model=base_dir, data=(data,), out=out, train=TrainConfig(**train), **kw)


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_pair_loss_matches_hand_values(tok):
    """With reference logps offset from the policy's by known amounts, each loss is a number
    computed by hand: DPO -log sigmoid(beta h), cDPO, and IPO on per-token averages."""
    model = tiny_model(tok).eval()
    pairs = [Pair((5, 6, 7), (8, 9), (10, 11, 12)), Pair((13, 14), (15,), (16, 17))]
    batch = collate(pairs, "pack", tok.pad_token_id)
    with torch.no_grad():
        logps = sequence_logps(model, batch)  # (4,): chosen 0, chosen 1, rejected 0, rejected 1
    dc, dr = torch.tensor([0.5, -1.0]), torch.tensor([-0.25, 2.0])  # policy - reference
    ref = torch.stack([logps[:2] - dc, logps[2:] - dr], dim=1)  # (2, 2)
    batch = with_reference(batch, ref)
    beta = 0.5
    cfg = lambda **kw: DPOConfig(model="m", data=("d",), out="o", beta=beta, **kw)  # noqa: E731
    with torch.no_grad():
        out = pair_loss(model, batch, cfg())
        smooth = pair_loss(model, batch, cfg(label_smoothing=0.2))
        ipo = pair_loss(model, batch, cfg(loss="ipo"))
        rpo = pair_loss(model, batch, cfg(nll_weight=0.5))
    h = [0.5 + 0.25, -1.0 - 2.0]  # (log pi/ref)(chosen) - (log pi/ref)(rejected), per pair
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert float(out.loss_sum) == pytest.approx(sum(-math.log(sig(beta * x)) for x in h), rel=1e-5)
    assert float(smooth.loss_sum) == pytest.approx(
        sum(-0.8 * math.log(sig(beta * x)) - 0.2 * math.log(sig(-beta * x)) for x in h), rel=1e-5)
    # IPO: log-ratios averaged per response token (chosen 2 and 1 tokens, rejected 3 and 2)
    h_avg = [0.5 / 2 + 0.25 / 3, -1.0 / 1 - 2.0 / 2]
    assert float(ipo.loss_sum) == pytest.approx(sum((x - 1 / (2 * beta)) ** 2 for x in h_avg), rel=1e-5)
    # RPO: + 0.5 * per-token NLL of each chosen response (2 and 1 tokens)
    nll = [-float(logps[0]) / 2, -float(logps[1]) / 1]
    assert float(rpo.loss_sum) == pytest.approx(float(out.loss_sum) + 0.5 * sum(nll), rel=1e-5)
    assert rpo.metrics["nll_chosen"] == pytest.approx(sum(nll), rel=1e-5)
    assert out.count == 2 and out.tokens == batch.num_tokens
    m = out.metrics
    assert m["rewards_chosen"] == pytest.approx(beta * (0.5 - 1.0), abs=1e-5)
    assert m["rewards_rejected"] == pytest.approx(beta * (-0.25 + 2.0), abs=1e-5)
    assert m["rewards_margin"] == pytest.approx(beta * sum(h), abs=1e-5)
    assert m["rewards_accuracy"] == 1.0  # pair 0 only
    assert m["logps_chosen"] == pytest.approx(float(logps[:2].sum()), abs=1e-5)


def test_preference_accuracy_rises_on_a_toy_set(tok, base_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_records(data, toy_comparisons(96))
    cfg = _cfg(base_dir, data, tmp_path / "run", beta=0.5, val_fraction=0.2,
               train=dict(max_steps=24, batch_size=8, eval_every=12))
    result, final = dpo(cfg)
    rows = _metrics(tmp_path / "run")
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    assert train_rows[0]["rewards_accuracy"] == 0.0
    val = [r for r in rows if "val_accuracy" in r]
    assert val[-1]["val_accuracy"] >= 0.9 and val[-1]["val_margin"] > 0.5
    assert val[-1]["val_loss"] < 0.5 * math.log(2)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["layout"] in ("pack", "share") and summary["train_pairs"] + summary["val_pairs"] == 96
    assert summary["reference_cache_reused"] is False and summary["tokens_per_s"] > 0
    assert load_model(final) is not None
    saved = config.load(DPOConfig, tmp_path / "run" / "config.yaml")
    assert saved.layout == summary["layout"]  # "auto" is recorded as what it resolved to
    # Same data and reference: the cached reference logps are reused, not recomputed.
    again, _ = dpo(_cfg(base_dir, data, tmp_path / "run", val_fraction=0.2, train=dict(max_steps=1)))
    assert again.summary["reference_cache_reused"] is True


def test_cached_and_adapter_disabled_reference_give_the_same_training(base_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_records(data, toy_comparisons(32, seed=1))
    runs = {}
    for reference in ("cached", "adapter"):
        cfg = _cfg(base_dir, data, tmp_path / reference, reference=reference, val_fraction=0.0,
                   lora=LoRAConfig(r=4), layout="pack")
        dpo(cfg)
        runs[reference] = _metrics(tmp_path / reference)
    assert len(runs["cached"]) == 4
    for a, b in zip(runs["cached"], runs["adapter"]):
        for key in ("loss", "rewards_margin", "rewards_chosen", "logps_rejected", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
    assert runs["cached"][-1]["rewards_margin"] > 0  # it did learn something
    assert list((tmp_path / "cached").glob("ref_logps-*.pt"))
    assert not list((tmp_path / "adapter").glob("ref_logps-*.pt"))


def test_bf16_policy_and_reference_attend_in_fp32(base_dir, tmp_path, monkeypatch):
    """Under CPU bf16 autocast the reference pass and the training steps attend through
    "sdpa_fp32" (models.attention: fp32 SDPA is the faster kernel there), and the saved model
    names no coachlm-only attention."""
    from coachlm.models import attention

    seen = []
    sdpa = attention.sdpa_attention_forward

    def spy(module, query, key, value, mask, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    data = tmp_path / "prefs.jsonl"
    write_records(data, toy_comparisons(16, seed=2))
    result, final = dpo(_cfg(base_dir, data, tmp_path / "run", val_fraction=0.0,
                             train=dict(max_steps=2, bf16=True)))
    assert seen and set(seen) == {(torch.float32, torch.float32, torch.float32, False)}
    first = _metrics(tmp_path / "run")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-2)  # policy == cached reference
    assert "sdpa_fp32" not in (final / "config.json").read_text()


def test_reads_trl_and_hh_rlhf_preferences(tok, tmp_path):
    trl = tmp_path / "trl.jsonl"
    trl.write_text(json.dumps({"prompt": "Is it red?", "chosen": "Yes.", "rejected": "No."}) + "\n"
                   + json.dumps({"prompt": [{"role": "user", "content": "Hi"}],
                                 "chosen": [{"role": "assistant", "content": "Hello."}],
                                 "rejected": [{"role": "assistant", "content": "Go away."}]}) + "\n")
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.",
                              "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}) + "\n")
    cfg = DPOConfig(model="m", data=(trl,), out="o")
    pairs, counts = read_pairs([trl, hh], tok, cfg)
    assert counts["pairs"] == 3
    assert tok.decode(pairs[0].rejected_ids, skip_special_tokens=True) == "No."
    assert pairs[1].prompt_ids == pairs[2].prompt_ids  # same conversation, same tokens


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="reference: adapter needs LoRA"):
        config.load(DPOConfig, None, ["model=m", "data=[d]", "out=o", "reference=adapter"])
    with pytest.raises(ConfigError, match="label_smoothing applies to the sigmoid loss only"):
        config.load(DPOConfig, None, ["model=m", "data=[d]", "out=o", "loss=ipo", "label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'bta'"):
        config.load(DPOConfig, None, ["model=m", "data=[d]", "out=o", "bta=0.1"])
    with pytest.raises(ConfigError, match="loss: must be one of"):
        config.load(DPOConfig, None, ["model=m", "data=[d]", "out=o", "loss=hinge"])


def test_step_zero_loss_is_log2_and_gradient_follows_eq8(tok):
    """At step 0 (policy == reference) every pair's loss is log 2 and its gradient is
    -beta/2 * (grad log pi(chosen) - grad log pi(rejected)), per Rafailov et al. eq. 8."""
    model = tiny_model(tok)
    pairs = [Pair((5, 6, 7), (8, 9), (10, 11, 12))]
    batch = collate(pairs, "share", tok.pad_token_id)
    with torch.no_grad():
        logps = sequence_logps(model, batch)
    batch = with_reference(batch, logps.view(2, 1).T)
    beta = 0.3
    out = pair_loss(model, batch, DPOConfig(model="m", data=("d",), out="o", beta=beta))
    assert float(out.loss_sum.detach()) == pytest.approx(math.log(2), abs=1e-6)
    w = model.model.norm.weight
    (g_loss,) = torch.autograd.grad(out.loss_sum, w)
    lp = sequence_logps(model, batch)
    (g_diff,) = torch.autograd.grad(lp[0] - lp[1], w)
    torch.testing.assert_close(g_loss, -beta * F.sigmoid(torch.tensor(0.0)) * g_diff, atol=1e-6, rtol=1e-5)


def test_resumed_run_matches_an_uninterrupted_one(base_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_records(data, toy_comparisons(40, seed=2))
    straight = _cfg(base_dir, data, tmp_path / "straight", val_fraction=0.0, train=dict(max_steps=6))
    dpo(straight)
    first = _cfg(base_dir, data, tmp_path / "resumed", val_fraction=0.0,
                 train=dict(max_steps=3, checkpoint_every=3))
    dpo(first)
    _, final = dpo(dataclasses.replace(first, train=dataclasses.replace(first.train, max_steps=6)),
                   resume=True)
    a = load_model(tmp_path / "straight" / "final").state_dict()
    b = load_model(final).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [r["loss"] for r in _metrics(tmp_path / "resumed") if "loss" in r]
    assert losses == [r["loss"] for r in _metrics(tmp_path / "straight") if "loss" in r]


def test_min_margin_drops_near_even_comparisons(tok, tmp_path):
    prompt = (Message("user", "Hi"),)
    records = [Comparison(prompt=prompt, a=Response("Hello."), b=Response("Go."), choice="a", margin=m)
               for m in (1.0, 3.0, None)]
    path = tmp_path / "prefs.jsonl"
    write_records(path, records)
    pairs, counts = read_pairs([path], tok, DPOConfig(model="m", data=(path,), out="o", min_margin=2))
    assert counts["pairs"] == 2 and counts["skipped_low_margin"] == 1  # margin None is kept


def test_compiled_policy_trains_as_eager_and_the_reference_stays_eager(tok, tmp_path,
                                                                       monkeypatch):
    from functools import partial

    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    from coachlm.models import compiled
    from coachlm.models.presets import PRESETS, build_model

    # Three layers: the first, the middle one and the last (which `models.last_layer` runs
    # piecewise: its MLP at the predicting positions only).
    base_dir = save_pretrained(build_model({**PRESETS["world-tiny"], "num_hidden_layers": 3},
                                           tok, seed=0), tok, tmp_path / "base")

    torch._dynamo.reset()
    counters.clear()

    class Counter(CompileCounter):
        """Counts graphs (frame_count) and calls of them (calls); runs them as traced."""
        calls = 0

        def __call__(self, gm, example_inputs):
            super().__call__(gm, example_inputs)

            def run(*args):
                self.calls += 1
                return gm.forward(*args)
            return run

    counter = Counter()  # no C++ build in a test
    monkeypatch.setattr("coachlm.models.compiled.compile_layers",
                        partial(compiled.compile_layers, backend=counter))
    monkeypatch.setenv("COACHLM_COMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # compiling sets it: undone after
    data = tmp_path / "prefs.jsonl"
    write_records(data, toy_comparisons(16, seed=1))
    runs = {}
    for compile in (False, True):
        out = tmp_path / str(compile)
        dpo(_cfg(base_dir, data, out, reference="adapter", val_fraction=0.0, lora=LoRAConfig(r=4),
                 layout="pack", compile=compile, train={"max_steps": 2}))
        runs[compile] = _metrics(out)
        assert config.load(DPOConfig, out / "config.yaml").compile is compile
    # Two graphs: under LoRA the first layer's input (frozen embeddings) carries no gradient
    # and the middle layer's does; both ran at each of the 2 steps. The last layer runs eagerly,
    # piecewise, and dynamo traced nothing it gave up on (its input capture, an exception in a
    # pre-hook, was once traced in vain). The adapter-off reference's no-grad forwards compiled
    # nothing.
    assert counter.frame_count == 2 and counter.calls == 2 * 2
    assert counters["frames"]["total"] == counters["frames"]["ok"] == 2
    for a, b in zip(runs[False], runs[True]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert DPOConfig(model="m", data=("d",), out="o").compile == "auto"
