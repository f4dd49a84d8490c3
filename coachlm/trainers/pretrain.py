"""Pretraining a causal LM from scratch (or continuing one) on a plain-text corpus.

The corpus is a text file of documents separated by blank lines (what the built-in world's
`corpus.txt` holds). A world tokenizer is trained on it unless one is given, documents are packed
into blocks of `seq_len` tokens (`coachlm.data.collate.pack_documents`), a held-out fraction of
documents measures validation loss and perplexity, and the engine (`coachlm.engine`) trains.

Outputs under `out`: `config.yaml`, `tokenizer/` (the tokenizer used, so a resumed run reuses it),
`metrics.jsonl`, `summary.json`, `checkpoints/`, and the final model in `final/` (HF format).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from coachlm import config
from coachlm.data.collate import PackedBatches, TokenBatch, pack_documents
from coachlm.errors import CoachError, DataError
from coachlm.memory import release_free_memory
from coachlm.models.load import load_model, load_tokenizer
from coachlm.models.presets import build_model
from coachlm.models.tokenizer import train_tokenizer
from coachlm.engine.accel import Engine
from coachlm.engine.loop import TrainResult, train
from coachlm.trainers.final import save_final
from coachlm.trainers.lm_loss import causal_lm_loss
from coachlm.trainers.configs import PretrainConfig


def read_corpus(path: Path) -> list[str]:
    """Documents of a text file, separated by blank lines."""
    if not path.is_file():
        raise DataError(path, None, None, "corpus file does not exist")
    text = path.read_text(encoding="utf-8")
    docs = [d.strip() for d in text.replace("\r\n", "\n").split("\n\n")]
    docs = [d for d in docs if d]
    if not docs:
        raise DataError(path, None, None, "corpus holds no documents")
    return docs


def _tokenizer(cfg: PretrainConfig, docs: list[str]) -> Any:
    saved = cfg.out / "tokenizer"
    if saved.is_dir():  # a resumed (or repeated) run keeps the tokenizer it started with
        return load_tokenizer(saved)
    if cfg.tokenizer is not None:
        tok = load_tokenizer(cfg.tokenizer)
    elif cfg.init_model is not None:
        tok = load_tokenizer(cfg.init_model)
    else:
        tok = train_tokenizer(docs, vocab_size=cfg.vocab_size)
    tok.save_pretrained(str(saved))
    return tok


def _model(cfg: PretrainConfig, tok: Any) -> torch.nn.Module:
    if cfg.init_model is not None:
        model = load_model(cfg.init_model, dtype=torch.float32, tokenizer=tok)
    else:
        model = build_model(cfg.preset, tok, seed=cfg.train.seed)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.seq_len > max_pos:
        raise CoachError(f"seq_len {cfg.seq_len} exceeds the model's max_position_embeddings {max_pos}")
    return model


def _blocks(cfg: PretrainConfig, tok: Any, docs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation blocks (N, seq_len); validation documents are a seeded random subset."""
    order = np.random.default_rng(cfg.train.seed).permutation(len(docs))
    n_val = math.ceil(len(docs) * cfg.val_fraction) if cfg.val_fraction > 0 else 0
    ids = tok([docs[i] for i in order], add_special_tokens=False)["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    val = pack_documents(ids[:n_val], cfg.seq_len, eos, bos)[: cfg.max_val_blocks]  # (Nv, S)
    train_blocks = pack_documents(ids[n_val:], cfg.seq_len, eos, bos)  # (N, S)
    if len(train_blocks) < cfg.train.batch_size:
        raise CoachError(f"the corpus gives {len(train_blocks)} blocks of {cfg.seq_len} tokens, "
                         f"fewer than one batch of {cfg.train.batch_size}; lower seq_len or batch_size")
    return train_blocks, val


def block_loss(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int) -> Mapping[str, float]:
    """Mean next-token loss and perplexity over `blocks` (N, S), every token counted once."""
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i:i + batch_size].to(next(model.parameters()).device)  # (B, S)
        out = causal_lm_loss(model, TokenBatch(ids, ids, torch.ones_like(ids), ids.numel()))
        total, count = total + float(out.loss_sum), count + out.count
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


def run_pretrain(cfg: PretrainConfig, resume: bool = False) -> Path:
    """Pretrain per `cfg`; returns the final model directory (`cfg.out / "final"`)."""
    final = pretrain(cfg, resume)[1]
    release_free_memory()  # the stage's freed buffers leave with it (coachlm.memory)
    return final


def pretrain(cfg: PretrainConfig, resume: bool = False) -> tuple[TrainResult, Path]:
    """`run_pretrain`, also returning the loop's TrainResult (metrics, tokens/s)."""
    engine = Engine.from_config(cfg.train)
    docs = read_corpus(cfg.corpus)
    with engine.main_first():  # the main process trains and saves the tokenizer, the others load it
        if engine.is_main:
            cfg.out.mkdir(parents=True, exist_ok=True)
            config.save(cfg, cfg.out / "config.yaml")
        tok = _tokenizer(cfg, docs)
    train_blocks, val_blocks = _blocks(cfg, tok, docs)
    model = _model(cfg, tok)
    batches = PackedBatches(train_blocks, cfg.train.batch_size, seed=cfg.train.seed)
    eval_fn = (lambda m: block_loss(m, val_blocks, cfg.train.batch_size)) if len(val_blocks) else None
    result = train(model, batches, causal_lm_loss, cfg.train, cfg.out, eval_fn=eval_fn,
                   resume=resume, description="pretrain",
                   extra_summary={"train_blocks": len(train_blocks), "val_blocks": len(val_blocks),
                                  "seq_len": cfg.seq_len, "documents": len(docs)},
                   engine=engine)
    return result, save_final(engine, model, tok, cfg.out / "final")
