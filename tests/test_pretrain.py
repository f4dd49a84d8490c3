"""Pretraining: document packing and a tiny end-to-end run with validation perplexity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from coachlm import config
from coachlm.config import ConfigError
from coachlm.data.collate import PackedBatches, pack_documents
from coachlm.errors import DataError
from coachlm.models.load import load_model, load_tokenizer
from coachlm.engine.config import TrainConfig
from coachlm.trainers.pretrain import PretrainConfig, pretrain, read_corpus, run_pretrain
from trainers_fixtures import tiny_texts


def test_pack_documents_joins_with_separators_and_drops_the_tail():
    blocks = pack_documents([[5, 6], [7], [8, 9, 10]], seq_len=4, eos_id=2, bos_id=1)
    # stream: 1 5 6 2 | 1 7 2 1 | 8 9 10 2 -> 12 tokens, three blocks
    assert blocks.tolist() == [[1, 5, 6, 2], [1, 7, 2, 1], [8, 9, 10, 2]]
    assert pack_documents([[5, 6, 7]], seq_len=3, eos_id=2).tolist() == [[5, 6, 7]]  # tail dropped


def test_packed_batches_cover_blocks_and_resume():
    blocks = torch.arange(40).view(10, 4)  # (N, S)
    a = PackedBatches(blocks, batch_size=3, seed=1)
    assert len(a) == 3  # the partial last batch is dropped
    first = torch.cat([a.next_batch().input_ids for _ in range(3)])
    assert len(set(first[:, 0].tolist())) == 9
    b = PackedBatches(blocks, batch_size=3, seed=1)
    b.load_state_dict(a.state_dict())
    batch = a.next_batch()
    assert torch.equal(batch.input_ids, b.next_batch().input_ids) and a.epoch == 1
    assert torch.equal(batch.labels, batch.input_ids) and batch.num_tokens == 12


def test_read_corpus(tmp_path):
    (tmp_path / "c.txt").write_text("first doc\nline two\n\n\n second doc \n\n")
    assert read_corpus(tmp_path / "c.txt") == ["first doc\nline two", "second doc"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no documents"):
        read_corpus(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")


def test_config_validation():
    with pytest.raises(ConfigError, match="seq_len must be >= 2"):
        config.load(PretrainConfig, overrides=["corpus=c.txt", "out=o", "seq_len=1"])
    with pytest.raises(ConfigError, match="missing required config key 'corpus'"):
        config.load(PretrainConfig, overrides=["out=o"])


def test_pretrain_tiny_model(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n\n".join(tiny_texts(300)))
    cfg = PretrainConfig(corpus=tmp_path / "corpus.txt", out=tmp_path / "run", preset="world-tiny",
                         vocab_size=300, seq_len=32, val_fraction=0.1,
                         train=TrainConfig(lr=1e-2, max_steps=30, batch_size=8, warmup_steps=3,
                                           log_every=5, eval_every=15, checkpoint_every=10,
                                           bf16=False))
    result, final = pretrain(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 2 and val[-1] < val[0] < math.log(300) + 0.5  # learns; starts near uniform
    assert result.metrics["val_ppl"] == pytest.approx(math.exp(val[-1]))
    assert result.summary["seq_len"] == 32 and result.tokens == 30 * 8 * 32
    tok = load_tokenizer(final)
    assert len(tok) == 300 and load_model(final).config.vocab_size == 300
    assert (tmp_path / "run" / "tokenizer").is_dir()
    # Resuming a finished run trains no further and reuses the saved tokenizer.
    assert run_pretrain(cfg, resume=True) == final
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["tokens"] == result.tokens
    assert summary["final_metrics"]["val_loss"] == pytest.approx(val[-1])
