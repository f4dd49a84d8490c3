"""Supervised fine-tuning on demonstrations, with loss only on response tokens.

Each demonstration becomes (input_ids, labels) through the model's own chat template
(`coachlm.data.chat.encode_example`): labels are IGNORE_INDEX on the prompt, so the loss is the
token-level mean of the response tokens and their closing EOS, which teaches the model to answer
and to stop (Ouyang et al., 2022, InstructGPT, section 3.5). A micro-batch's examples are
packed into rows with restarting position ids, each example attending only to itself, or
right-padded (`coachlm.data.collate`); the engine (`coachlm.engine`) trains, optionally through LoRA adapters
(Hu et al., 2021).

Inputs: Demonstration records, or anything `coachlm.data.io.read_records` maps to them (TRL
prompt/completion and messages datasets). Outputs under `out`: `config.yaml`, `metrics.jsonl`,
`summary.json`, `checkpoints/` and the final model in `final/` (HF format; with LoRA, merged,
and the adapter alone in `final/adapter`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from coachlm import config
from coachlm.data.chat import encode_example
from coachlm.data.collate import ExampleBatches
from coachlm.data.invalid import InvalidRecords
from coachlm.data.io import read_records
from coachlm.errors import CoachError, DataError
from coachlm.memory import release_free_memory
from coachlm.models.attention import use_fp32_attention
from coachlm.models.compiled import compile_for_run, mark_compiled
from coachlm.models.load import load_model, load_tokenizer
from coachlm.models.lora import apply_lora
from coachlm.models.modes import eval_mode
from coachlm.trainers.epochs import steps_for_epochs
from coachlm.engine.accel import Engine, to_device
from coachlm.engine.loop import TrainResult, train
from coachlm.trainers.final import save_final
from coachlm.models.logprobs import head_matches
from coachlm.trainers.lm_loss import causal_lm_loss, labelled_lm_loss
from coachlm.trainers.configs import SFTConfig

Example = tuple[list[int], list[int]]  # (input_ids, labels)


def load_examples(paths: Sequence[Path], tokenizer: Any, max_length: int,
                  skip_invalid: bool = False) -> list[Example]:
    """Encode every demonstration in `paths` (other record kinds are an error, or with
    `skip_invalid` are skipped with a warning)."""
    examples = []
    invalid = InvalidRecords(skip_invalid)
    with invalid.strict_hint():
        for path in paths:
            for record in read_records(path, kinds=["demonstration"], on_error=invalid.on_error):
                examples.append(encode_example(tokenizer, record.prompt, record.response.text,
                                               max_length))
    invalid.warn()
    if not examples:
        raise DataError(", ".join(map(str, paths)), None, None, "no demonstrations to train on")
    return examples


def split_examples(examples: list[Example], val_fraction: float,
                   seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded random held-out set; validation is sorted by length (less padding)."""
    order = np.random.default_rng(seed).permutation(len(examples))
    n_val = math.ceil(len(examples) * val_fraction) if val_fraction > 0 else 0
    if n_val >= len(examples):
        raise CoachError(f"val_fraction {val_fraction} leaves no training examples "
                         f"out of {len(examples)}")
    val = sorted((examples[i] for i in order[:n_val]), key=lambda e: len(e[0]))
    return [examples[i] for i in order[n_val:]], val


def response_loss(model: torch.nn.Module, batches: ExampleBatches,
                  loss_fn: Callable[..., Any] = causal_lm_loss) -> Mapping[str, float]:
    """Token-level mean loss over the response tokens of every batch in `batches`."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in batches.epoch_batches():
        out = loss_fn(model, to_device(batch, device))
        total, count = total + float(out.loss_sum), count + out.count
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


def width_multiple(cfg: SFTConfig, engine: Engine) -> int:
    """`cfg.pack_width_multiple`, or where None 64 under bf16 on a CPU (oneDNN's per-shape
    kernel cache wants few shapes) and 16 otherwise (see SFTConfig)."""
    if cfg.pack_width_multiple is not None:
        return cfg.pack_width_multiple
    return 64 if engine.bf16 and engine.device.type == "cpu" else 16


def packing_supported(model: torch.nn.Module) -> bool:
    """Whether two sequences packed in one row with restarting position ids get exactly the
    logits they get alone, i.e. the model builds a block-diagonal mask from position ids."""
    a, b = torch.arange(3, 8), torch.arange(9, 13)  # (5,), (4,)
    input_ids = torch.cat([a, b])[None]  # (1, 9)
    position_ids = torch.cat([torch.arange(5), torch.arange(4)])[None]  # (1, 9)
    with eval_mode(model), torch.no_grad():  # no dropout noise in the comparison
        out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits  # (1, 9, V)
        alone = [model(input_ids=x[None], use_cache=False).logits[0] for x in (a, b)]
    return torch.allclose(out[0], torch.cat(alone), atol=1e-4, rtol=1e-3)


def _model(cfg: SFTConfig, tok: Any) -> torch.nn.Module:
    model = load_model(cfg.model, dtype=torch.float32, tokenizer=tok)
    use_fp32_attention(model)  # bf16 autocast on CPU: attention in fp32 is faster (models.attention)
    if cfg.lora is not None:
        with torch.random.fork_rng():  # LoRA init must not shift the run's seeded RNG streams
            torch.manual_seed(cfg.train.seed)
            model = apply_lora(model, cfg.lora)
    return model


def sft(cfg: SFTConfig, resume: bool = False) -> tuple[TrainResult, Path]:
    """`run_sft`, also returning the loop's TrainResult (metrics, tokens/s)."""
    engine = Engine.from_config(cfg.train)
    tok = load_tokenizer(cfg.model)
    examples = load_examples(cfg.data, tok, cfg.max_length, cfg.skip_invalid)
    train_ex, val_ex = split_examples(examples, cfg.val_fraction, cfg.train.seed)
    model = _model(cfg, tok)
    supported = packing_supported(model)
    pack = supported if cfg.pack is None else cfg.pack
    if pack and not supported:
        raise CoachError(f"{type(model).__name__} does not isolate packed examples by position "
                         "ids (their logits change when packed); set pack: false")
    tcfg = cfg.train
    cfg = dataclasses.replace(cfg, pack_width_multiple=width_multiple(cfg, engine))
    rounding = {"width_multiple": cfg.pack_width_multiple, "rows_multiple": cfg.pack_rows_multiple}
    batches = ExampleBatches(train_ex, tcfg.batch_size, tok.pad_token_id, seed=tcfg.seed,
                             bucket_batches=cfg.bucket_batches, pack=pack, **rounding)
    tcfg = steps_for_epochs(tcfg, cfg.epochs, len(batches), engine.world_size)
    compiled = compile_for_run(cfg.compile, model, tcfg.max_steps, tcfg.batch_size,
                               engine.bf16, engine.device.type)
    cfg = dataclasses.replace(cfg, train=tcfg, pack=pack, epochs=None,  # resolved length
                              compile=compiled)
    if engine.is_main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        config.save(cfg, cfg.out / "config.yaml")
    val = ExampleBatches(val_ex, tcfg.batch_size, tok.pad_token_id, shuffle=False,
                         pack=pack, **rounding) if val_ex else None
    # The LM head (and the last layer but its keys and values) only where a label is read, when
    # the model's logits are its head on the backbone's output (`lm_loss.labelled_lm_loss`)
    loss_fn = labelled_lm_loss if head_matches(model) else causal_lm_loss
    result = train(model, batches, loss_fn, tcfg, cfg.out,
                   eval_fn=(lambda m: response_loss(m, val, loss_fn)) if val else None,
                   resume=resume, description="sft",
                   extra_summary={"train_examples": len(train_ex), "val_examples": len(val_ex),
                                  "batches_per_epoch": len(batches), "packed": pack},
                   engine=engine)
    if compiled:
        mark_compiled(model, engine.bf16)
    return result, save_final(engine, model, tok, cfg.out / "final")


def run_sft(cfg: SFTConfig, resume: bool = False) -> Path:
    """Fine-tune per `cfg`; returns the final model directory (`cfg.out / "final"`)."""
    final = sft(cfg, resume)[1]
    release_free_memory()  # the stage's freed buffers leave with it (coachlm.memory)
    return final
