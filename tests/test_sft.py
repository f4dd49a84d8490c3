"""SFT: length-bucketed batches, response-only loss, and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coachlm import config
from coachlm.config import ConfigError
from coachlm.data.chat import IGNORE_INDEX, encode_example
from coachlm.data.collate import (ExampleBatches, first_fit_decreasing, pack_examples, pack_geometry,
                                  pad_examples, round_up)
from coachlm.data.io import write_records
from coachlm.models.load import load_model, save_pretrained
from coachlm.models.lora import LoRAConfig
from coachlm.engine.config import TrainConfig
from coachlm.trainers.lm_loss import HEAD_ROWS_MULTIPLE, causal_lm_loss, labelled_lm_loss
from coachlm.trainers.sft import SFTConfig, packing_supported, run_sft, sft
from trainers_fixtures import tiny_demos, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _examples(tok, n=40):
    return [encode_example(tok, d.prompt, d.response.text + " so" * (i % 7))
            for i, d in enumerate(tiny_demos(n))]


def test_padding_and_labels():
    batch = pad_examples([(torch.tensor([5, 6, 7]), torch.tensor([-100, 6, 7])),
                          (torch.tensor([8]), torch.tensor([-100]))], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.labels.tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.num_tokens == 4


def test_packing_layout():
    examples = [(torch.tensor([5, 6, 7, 8]), torch.tensor([-100, -100, 7, 8])),
                (torch.tensor([9, 10]), torch.tensor([9, 10])),
                (torch.tensor([11, 12, 13]), torch.tensor([-100, 12, 13]))]
    batch = pack_examples(examples, pad_id=0)
    # Lengths 4, 3, 2: rows of 4 would need 3 rows (12 positions, 3 of them padding); one row of
    # 9 costs 9 x (1 + 9/1600) < 12 x (1 + 4/1600), so all three share it, longest first.
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 11, 12, 13, 9, 10]]
    assert batch.labels.tolist() == [[-100, -100, 7, 8, -100, 12, 13, -100, 10]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]
    assert batch.num_tokens == 9
    # Where more rows are cheaper (attention weighted heavily here: a toy model), the padding
    # tail of a row gets its own restarting positions.
    batch = pack_examples(examples, pad_id=0, attention_width=0.5)
    # Rows of 4: [ex0], [ex2 + pad], [ex1 + pad]: 12 x (1 + 8) = 108 beats rows of 5 (4 | 3 2:
    # 10 x 11 = 110) and wider ones (at least 9 x (1 + 12) = 117).
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [11, 12, 13, 0], [9, 10, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, 7, 8], [-100, 12, 13, -100], [-100, 10, -100, -100]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]
    two = pack_examples([(torch.tensor([1, 2]), torch.tensor([1, 2])),
                         (torch.tensor([3, 4, 5, 6]), torch.tensor([3, 4, 5, 6])),
                         (torch.tensor([7, 8]), torch.tensor([-100, 8]))], pad_id=0)
    assert two.input_ids.tolist() == [[3, 4, 5, 6], [1, 2, 7, 8]]  # two short ones share a row
    assert two.labels.tolist() == [[-100, 4, 5, 6], [-100, 2, -100, 8]]
    assert two.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]


def test_pack_geometry_picks_the_cheapest_width():
    lengths = [50, 40, 30, 20]
    # Widths 64, 80, ... 144 (one row): 3 x 64 x 1.04 = 199.7, 2 x 80 x 1.05 = 168, 2 x 96 x 1.06
    # = 203.5, ..., 1 x 144 x 1.09 = 157.0, the least: everything shares one row.
    assert pack_geometry(lengths, 16) == (144, [[0, 1, 2, 3]])
    # Attention 16x heavier: 3 x 64 x 1.64 = 314.9, 2 x 80 x 1.8 = 288 (50+30 | 40+20), 2 x 96 x
    # 1.96 = 376.3; wider costs at least 140 x (1 + 112/100) = 296.8 > 288, so the search stops.
    assert pack_geometry(lengths, 16, attention_width=100) == (80, [[0, 2], [1, 3]])
    # Rows rounded up to 4 count in the cost: 4 x 64 x 1.64 = 419.8 beats 4 x 80 x 1.8 = 576.
    assert pack_geometry(lengths, 16, rows_multiple=4, attention_width=100) == (64, [[0], [1, 3], [2]])
    assert pack_geometry([7], 16) == (16, [[0]])


@pytest.mark.parametrize("attention_width", [50.0, 400.0, 1600.0])
def test_pack_geometry_stops_only_where_no_wider_width_can_win(attention_width):
    """The early stop (a lower bound on any wider packing's cost) never skips the best width:
    the same cost as trying every width up to the total length."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        lengths = [int(x) for x in rng.integers(5, 120, size=int(rng.integers(1, 20)))]
        width, rows = pack_geometry(lengths, 16, 2, attention_width)
        cost = lambda w: round_up(len(first_fit_decreasing(lengths, w)), 2) * w * (1 + w / attention_width)
        widths = range(round_up(max(lengths), 16), round_up(sum(lengths), 16) + 1, 16)
        assert cost(width) == min(cost(w) for w in widths)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= width for r in rows)


def test_packed_loss_equals_padded_loss(tok):
    model = tiny_model(tok)
    assert packing_supported(model)
    demos = tiny_demos(12, seed=2)  # lengths spread widely, so that short examples share rows
    examples = [encode_example(tok, d.prompt, d.response.text + " so" * (4 * k)) for k, d in enumerate(demos)]
    examples = [(torch.tensor(i), torch.tensor(l)) for i, l in examples]
    packed, padded = pack_examples(examples, tok.pad_token_id), pad_examples(examples, tok.pad_token_id)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]
    a, b = causal_lm_loss(model, packed), causal_lm_loss(model, padded)
    assert a.count == b.count and a.tokens == b.tokens
    assert float(a.loss_sum) == pytest.approx(float(b.loss_sum), rel=1e-5)


def test_packed_rows_are_rounded_to_the_configured_multiples():
    examples = [(torch.tensor([5, 6, 7, 8, 9]), torch.tensor([-100, -100, 7, 8, 9])),
                (torch.tensor([9, 10]), torch.tensor([9, 10])),
                (torch.tensor([11, 12, 13]), torch.tensor([-100, 12, 13]))]
    batch = pack_examples(examples, pad_id=0, width_multiple=8, rows_multiple=3)
    # Rows of 8 (5 rounded up): ex0 (5) opens row 0; ex2 (3) fits beside it; ex1 (2) opens row 1;
    # row 2 is all padding, so the batch has 3 rows.
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 11, 12, 13], [9, 10, 0, 0, 0, 0, 0, 0],
                                         [0] * 8]
    assert batch.labels.tolist() == [[-100, -100, 7, 8, 9, -100, 12, 13], [-100, 10] + [-100] * 6,
                                     [-100] * 8]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5],
                                           list(range(8))]
    assert batch.num_tokens == 10
    src = ExampleBatches([(list(i), list(l)) for i, l in examples] * 4, 5, pad_id=0, seed=0,
                         width_multiple=16, rows_multiple=2)
    for _ in range(6):
        rows, width = src.next_batch().input_ids.shape
        assert width == 16 and rows % 2 == 0


def test_rounded_packing_is_inert(tok):
    """Padding to the rounded width and whole padding rows change no loss: they carry no labels
    and form their own position-id blocks, which no real token attends to."""
    model = tiny_model(tok)
    demos = tiny_demos(12, seed=2)
    examples = [encode_example(tok, d.prompt, d.response.text + " so" * (4 * k)) for k, d in enumerate(demos)]
    examples = [(torch.tensor(i), torch.tensor(l)) for i, l in examples]
    tight = pack_examples(examples, tok.pad_token_id)
    rows, width = tight.input_ids.shape
    rounded = pack_examples(examples, tok.pad_token_id, width_multiple=width + 5,
                            rows_multiple=rows + 2)
    assert rounded.input_ids.shape == (rows + 2, width + 5)  # wider rows fit no more examples here
    assert (rounded.input_ids[-2:] == tok.pad_token_id).all()  # two all-padding rows
    losses, grads = [], []
    for batch in (rounded, pad_examples(examples, tok.pad_token_id)):
        model.zero_grad()
        out = causal_lm_loss(model, batch)
        out.loss_sum.backward()
        losses.append(out)
        grads.append([p.grad.clone() for p in model.parameters()])
    a, b = losses
    assert a.count == b.count and a.tokens == b.tokens
    assert float(a.loss_sum) == pytest.approx(float(b.loss_sum), rel=1e-5)
    for ga, gb in zip(*grads):  # the same gradients: padding neither adds nor leaks signal
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_lm_head_sees_a_span_of_a_multiple_of_16_positions(tok):
    """With widths rounded to 16 the head's input takes few shapes (oneDNN compiles one kernel
    set per shape): it starts at the first labelled position rounded down to a multiple of 16."""
    model = tiny_model(tok)
    examples = [(torch.tensor(i), torch.tensor(l)) for i, l in _examples(tok, 6)]
    assert min(int((l != IGNORE_INDEX).nonzero()[0]) for _, l in examples) >= 16  # prompts skip
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _, x: seen.append(x[0].shape))
    batch = pack_examples(examples, tok.pad_token_id, width_multiple=16)
    out = causal_lm_loss(model, batch)
    rows, width = batch.input_ids.shape
    assert seen == [(rows, width - 16, model.config.hidden_size)]
    tight = causal_lm_loss(model, pad_examples(examples, tok.pad_token_id))  # the same loss
    assert out.count == tight.count
    assert float(out.loss_sum) == pytest.approx(float(tight.loss_sum), rel=1e-5)


def _loss_and_grads(model, loss_fn, batch):
    model.zero_grad()
    out = loss_fn(model, batch)
    out.loss_sum.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_labelled_loss_equals_the_full_forward_loss(tok, layout):
    """SFT's loss with the last MLP and the LM head at labelled positions only: the same loss,
    count and gradients as the model's own forward, on packed and padded batches."""
    model = tiny_model(tok)
    demos = tiny_demos(12, seed=2)
    examples = [encode_example(tok, d.prompt, d.response.text + " so" * (4 * k)) for k, d in enumerate(demos)]
    examples = [(torch.tensor(i), torch.tensor(l)) for i, l in examples]
    batch = (pack_examples if layout == "packed" else pad_examples)(examples, tok.pad_token_id)
    labelled = int((batch.labels != IGNORE_INDEX).sum())
    assert labelled % HEAD_ROWS_MULTIPLE  # filler positions are added, and must not count
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _, x: seen.append(x[0].shape))
    a, grads_a = _loss_and_grads(model, labelled_lm_loss, batch)
    hook.remove()
    assert seen == [(labelled + -labelled % HEAD_ROWS_MULTIPLE, model.config.hidden_size)]
    b, grads_b = _loss_and_grads(model, causal_lm_loss, batch)
    assert a.count == b.count == labelled and a.tokens == b.tokens
    assert float(a.loss_sum) == pytest.approx(float(b.loss_sum), rel=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_labelled_loss_of_a_batch_with_no_label_is_zero_with_zero_gradients(tok):
    """A batch whose every label is ignored (prompts only) gives loss 0, count 0 and zero
    gradients, as the model's own forward does, instead of failing in the last layer."""
    model = tiny_model(tok)
    examples = [(torch.tensor(i), torch.full((len(i),), IGNORE_INDEX)) for i, _ in _examples(tok, 4)]
    for collate in (pack_examples, pad_examples):
        batch = collate(examples, tok.pad_token_id)
        a, grads_a = _loss_and_grads(model, labelled_lm_loss, batch)
        b, _ = _loss_and_grads(model, causal_lm_loss, batch)
        assert a.count == b.count == 0 and a.tokens == b.tokens
        assert float(a.loss_sum) == float(b.loss_sum) == 0.0
        assert all(float(g.abs().max()) == 0.0 for g in grads_a.values())


def test_labelled_loss_on_a_model_whose_last_layer_it_does_not_compute(tok):
    """A backbone `models.last_layer` does not support (GPT-2 here) runs whole; the head still
    sees the labelled positions only, and the loss is the model's own."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from coachlm.models import last_layer
    from coachlm.models.logprobs import backbone_and_head

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2,
                                       n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0))
    assert not last_layer.supported(backbone_and_head(model)[0])
    examples = [(torch.tensor(i), torch.tensor(l)) for i, l in _examples(tok, 6)]
    batch = pad_examples(examples, tok.pad_token_id)
    a, grads_a = _loss_and_grads(model, labelled_lm_loss, batch)
    b, grads_b = _loss_and_grads(model, causal_lm_loss, batch)
    assert a.count == b.count
    assert float(a.loss_sum) == pytest.approx(float(b.loss_sum), rel=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_sft_trains_with_the_labelled_loss_only_where_the_head_is_the_logits(base_and_data,
                                                                             tmp_path, monkeypatch):
    """`sft` picks the labelled loss when backbone + head give the model's logits, else the
    model's own forward (a model that scales its logits, say)."""
    import coachlm.trainers.sft as sft_module

    class Picked(Exception):
        pass

    def train(model, batches, loss_fn, *args, **kwargs):
        used.append(loss_fn)
        raise Picked

    used = []
    monkeypatch.setattr(sft_module, "train", train)
    for matches in (True, False):
        monkeypatch.setattr(sft_module, "head_matches", lambda m, v=matches: v)
        cfg = SFTConfig(model=base_and_data / "base", data=(base_and_data / "demos.jsonl",),
                        out=tmp_path, val_fraction=0.0, train=TrainConfig(max_steps=1))
        with pytest.raises(Picked):
            sft(cfg)
    assert used == [labelled_lm_loss, causal_lm_loss]


def test_labelled_loss_with_lora(tok):
    from coachlm.models.lora import apply_lora

    torch.manual_seed(0)
    model = apply_lora(tiny_model(tok), LoRAConfig(r=2))
    for p in model.parameters():  # a trained adapter: B away from its zero init
        if p.requires_grad:
            p.data.normal_(0, 0.1)
    examples = [(torch.tensor(i), torch.tensor(l)) for i, l in _examples(tok, 8)]
    batch = pack_examples(examples, tok.pad_token_id)
    a, grads_a = _loss_and_grads(model, labelled_lm_loss, batch)
    b, grads_b = _loss_and_grads(model, causal_lm_loss, batch)
    assert float(a.loss_sum) == pytest.approx(float(b.loss_sum), rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_bucketing_covers_each_example_once_per_epoch_with_little_padding(tok):
    examples = _examples(tok, 40)
    src = ExampleBatches(examples, 4, tok.pad_token_id, seed=0, bucket_batches=5)
    assert len(src) == 10
    seen = []
    for _ in range(len(src)):
        b = src.next_batch()
        for row, mask, pos in zip(b.input_ids, b.attention_mask, b.position_ids):
            starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]  # packed examples
            seen += [tuple(row[i:j].tolist()) for i, j in zip(starts, starts[1:]) if mask[i]]
    assert sorted(seen) == sorted(tuple(ids) for ids, _ in examples)
    assert src.state_dict() == {"seed": 0, "epoch": 0, "position": 10}
    # Right-padded (packing by cost leaves too little padding to compare): sorting within
    # chunks of 5 batches pads less than random batches.
    bucketed, unbucketed = (ExampleBatches(examples, 4, tok.pad_token_id, bucket_batches=k, pack=False)
                            for k in (5, 1))
    assert (sum(bucketed.next_batch().input_ids.numel() for _ in range(10))
            < sum(unbucketed.next_batch().input_ids.numel() for _ in range(10)))
    assert src.next_batch().input_ids.shape and src.epoch == 1  # epoch 2 begins


def test_batch_order_is_resumable(tok):
    examples = _examples(tok, 24)
    a = ExampleBatches(examples, 4, tok.pad_token_id, seed=3)
    for _ in range(8):  # into the second epoch
        a.next_batch()
    b = ExampleBatches(examples, 4, tok.pad_token_id, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(7):
        assert torch.equal(a.next_batch().input_ids, b.next_batch().input_ids)


def test_loss_is_the_mean_over_response_tokens_only(tok):
    model = tiny_model(tok)
    demos = tiny_demos(3, seed=5)
    examples = [encode_example(tok, d.prompt, d.response.text) for d in demos]
    n_prompt = [sum(1 for l in labels if l == IGNORE_INDEX) for _, labels in examples]
    assert all(0 < n < len(ids) for n, (ids, _) in zip(n_prompt, examples))
    for (ids, labels), n in zip(examples, n_prompt):
        assert labels[n:] == ids[n:] and labels[-1] == tok.eos_token_id
    batch = pad_examples([(torch.tensor(i), torch.tensor(l)) for i, l in examples], tok.pad_token_id)
    out = causal_lm_loss(model, batch)

    total, count = 0.0, 0  # by hand: each row alone, unpadded, scored on its response tokens
    for (ids, _), n in zip(examples, n_prompt):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]  # (T, V)
        for t in range(n, len(ids)):  # token t is predicted from position t - 1
            total += float(F.cross_entropy(logits[t - 1], torch.tensor(ids[t])))
            count += 1
    assert out.count == count == sum(len(i) - n for (i, _), n in zip(examples, n_prompt))
    assert float(out.loss_sum) / out.count == pytest.approx(total / count, rel=1e-5)
    assert out.tokens == sum(len(i) for i, _ in examples)


def test_width_multiple_by_precision_and_device():
    """64 where oneDNN compiles bf16 matmul kernels per shape (bf16 on a CPU), else 16; a set
    value wins."""
    from types import SimpleNamespace

    from coachlm.trainers.sft import width_multiple

    cfg = SFTConfig(model="m", data=("d.jsonl",), out="o")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert width_multiple(cfg, SimpleNamespace(bf16=True, device=cpu)) == 64
    assert width_multiple(cfg, SimpleNamespace(bf16=False, device=cpu)) == 16
    assert width_multiple(cfg, SimpleNamespace(bf16=True, device=cuda)) == 16
    set_ = SFTConfig(model="m", data=("d.jsonl",), out="o", pack_width_multiple=8)
    assert width_multiple(set_, SimpleNamespace(bf16=True, device=cpu)) == 8


def test_sft_config_from_yaml(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model: m\ndata: [a.jsonl, b.jsonl]\nout: o\nlora: {r: 4}\n"
                    "train: {lr: 1e-3, batch_size: 2}\n")
    cfg = config.load(SFTConfig, path, overrides=["epochs=2", "train.grad_accum=2"])
    assert cfg.data == (tmp_path.__class__("a.jsonl"), tmp_path.__class__("b.jsonl"))
    assert cfg.lora == LoRAConfig(r=4) and cfg.train.batch_size == 2 and cfg.train.grad_accum == 2
    # the shipped defaults: the width multiple resolves per precision and device (sft.width_multiple)
    assert cfg.pack_width_multiple is None and cfg.pack_rows_multiple == 1
    cfg = config.load(SFTConfig, path, overrides=["pack_width_multiple=32", "pack_rows_multiple=2"])
    assert (cfg.pack_width_multiple, cfg.pack_rows_multiple) == (32, 2)
    with pytest.raises(ConfigError, match="pack_width_multiple must be >= 1, got 0"):
        config.load(SFTConfig, path, overrides=["pack_width_multiple=0"])
    with pytest.raises(ConfigError, match="epochs must be > 0"):
        config.load(SFTConfig, path, overrides=["epochs=0"])
    with pytest.raises(ConfigError, match="unknown config key 'train.batchsize'"):
        config.load(SFTConfig, path, overrides=["train.batchsize=3"])


@pytest.fixture(scope="module")
def base_and_data(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    save_pretrained(tiny_model(tok), tok, root / "base")
    write_records(root / "demos.jsonl", tiny_demos(80))
    return root


def test_sft_learns_and_saves_a_loadable_model(base_and_data, tok, tmp_path):
    root = base_and_data
    cfg = SFTConfig(model=root / "base", data=(root / "demos.jsonl",), out=tmp_path, val_fraction=0.1,
                    train=TrainConfig(lr=5e-3, max_steps=40, batch_size=8, log_every=1, eval_every=20,
                                      warmup_steps=2, bf16=False, threads=1))
    result, final = sft(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 40 and losses[-1] < 0.7 * losses[0]  # training loss falls
    assert val[-1] < val[0]  # and so does held-out response loss
    assert result.summary["train_examples"] == 72 and result.summary["val_examples"] == 8
    model = load_model(final)
    assert model.config.vocab_size == len(tok)


def test_sft_with_lora_and_epochs(base_and_data, tmp_path):
    root = base_and_data
    cfg = SFTConfig(model=root / "base", data=(root / "demos.jsonl",), out=tmp_path, epochs=0.5,
                    lora=LoRAConfig(r=2), val_fraction=0.0,
                    train=TrainConfig(lr=1e-2, batch_size=8, grad_accum=2))
    final = run_sft(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3  # ceil(0.5 * 10 batches / 2)
    assert summary["trainable_params"] < summary["total_params"] // 4
    assert (final / "adapter").is_dir() and (final / "model.safetensors").is_file()
    assert config.load(SFTConfig, tmp_path / "config.yaml").train.max_steps == 3


def test_packing_check_detects_models_that_leak_across_examples():
    from types import SimpleNamespace

    from transformers import GPT2Config, GPT2LMHeadModel

    class Leaky(torch.nn.Module):
        """A 'model' whose token t sees every earlier token in the row, position ids or not."""

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(32, 8)

        def forward(self, input_ids, position_ids=None, use_cache=False):
            return SimpleNamespace(logits=self.emb(input_ids).cumsum(dim=1))

    assert not packing_supported(Leaky())
    assert packing_supported(GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32)))


@pytest.mark.slow
def test_compiled_sft_has_the_eager_losses_and_saves_plain_keys(base_and_data, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("COACHLM_COMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # compiling sets it: undone after
    root = base_and_data
    losses = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        cfg = SFTConfig(model=root / "base", data=(root / "demos.jsonl",), out=out, val_fraction=0.0,
                        compile=compiled, train=TrainConfig(lr=5e-3, max_steps=2, batch_size=8,
                                                            log_every=1, bf16=False, threads=1))
        final = sft(cfg)[1]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = [r["loss"] for r in rows if "loss" in r]
        load_model(final)  # state-dict keys unprefixed: the saved model loads as any other
        assert config.load(SFTConfig, out / "config.yaml").compile is compiled  # as resolved
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
