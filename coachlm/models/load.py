"""Load and save Hugging Face causal LMs and tokenizers from local directories.

Any local causal LM that transformers can build works (Llama, GPT-2, Qwen2, Mistral, ...).
Two repairs are made on load. Batching needs a pad token distinct from EOS (a pad equal to EOS
would mask out the EOS the policy must learn to emit; Huang et al., 2023), so a tokenizer
without one gains `<pad>`, and `load_model` grows the embeddings to match. And dropout is
switched off (GPT-2 has 0.1): the logprobs of the policy, its reference and its old self must
come from identical, deterministic forward passes (Huang et al., 2023; Ziegler et al., 2019).

Saving a LoRA model (decided here, used by every trainer): the adapter is written in peft format
to `out_dir/adapter/`, and, unless `merged=False`, the merged full model is written to `out_dir`
itself, so that any tool (and `load_model`) reads `out_dir` as a plain model. A directory that
holds only an adapter (`adapter_config.json`, no `config.json`) also loads: its base model is
read from the path recorded in the adapter config.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from coachlm.errors import CoachError
from coachlm.models.fast_ops import use_fast_ops

log = logging.getLogger(__name__)
# Our runs show their own Rich progress; transformers' per-load tqdm bars are noise in logs.
transformers_logging.disable_progress_bar()

PAD_TOKEN = "<pad>"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class ModelLoadError(CoachError):
    """A model or tokenizer directory is missing or unreadable."""


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """"bf16"/"fp32"/"fp16", a torch dtype, or None (the checkpoint's own) as a torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CoachError(f"unknown dtype '{dtype}' (valid: {', '.join(DTYPES)})")
    return DTYPES[dtype]


def _check_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{what} directory {path} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"{what} path {path} is not a directory")
    return path


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in `path`, with a pad token distinct from EOS.

    When the tokenizer has no pad token (or its pad is EOS), `<pad>` is added as a special token:
    the tokenizer then has one more entry than the model's embeddings, which `load_model(path,
    tokenizer=tok)` resizes. Callers set `padding_side` themselves.
    """
    path = _check_dir(path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {e}") from None
    if tok.eos_token_id is None:
        raise ModelLoadError(f"the tokenizer in {path} has no EOS token; the policy could not stop")
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
        log.info("added %s (id %d) to the tokenizer from %s: the model's embeddings need resizing",
                 PAD_TOKEN, tok.pad_token_id, path)
    return tok


def _load_plain(path: Path, dtype: torch.dtype | None) -> PreTrainedModel:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load a causal LM from {path}: {e}") from None


def load_model(path: str | Path, dtype: str | torch.dtype | None = None,
               tokenizer: Any = None) -> PreTrainedModel:
    """The causal LM saved in `path` (a full model, or a peft adapter directory, loaded frozen).

    With `tokenizer`, the embeddings grow to `len(tokenizer)` when the tokenizer gained a pad
    token, and `config.pad_token_id` is set to the tokenizer's pad id.
    """
    path = _check_dir(path, "model")
    dt = resolve_dtype(dtype)
    if not (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
        from peft import PeftModel

        adapter = json.loads((path / "adapter_config.json").read_text())
        base_path = adapter.get("base_model_name_or_path")
        if not base_path or not Path(base_path).is_dir():
            raise ModelLoadError(f"{path} holds a LoRA adapter whose base model {base_path!r} "
                                 "is not a local directory; load the merged model instead")
        from coachlm.models.lora import peft_without_deprecation_noise

        base = load_model(base_path, dtype=dt, tokenizer=tokenizer)
        with peft_without_deprecation_noise():
            return PeftModel.from_pretrained(base, str(path))
    model = _load_plain(path, dt)
    disable_dropout(model)
    use_fast_ops(model)  # fewer operators per Llama block, exact in fp32 (models.fast_ops)
    if tokenizer is not None:
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            grow_embeddings(model, len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def grow_embeddings(model: PreTrainedModel, size: int) -> None:
    """Resize the vocabulary to `size`, new rows set to the mean of the old ones.

    The mean (Hewitt, 2021, "Initializing new word embeddings for pretrained language models")
    gives an added pad token an ordinary, never-trained logit, which is harmless: pad is masked
    out of every loss and the sampler never emits it. Unlike transformers' own mean_resizing,
    which samples around the mean, it is deterministic.
    """
    old = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(size, mean_resizing=False)
    out = model.get_output_embeddings()
    weights = {id(w): w for w in (model.get_input_embeddings().weight,
                                  None if out is None else out.weight) if w is not None}
    with torch.no_grad():
        for w in weights.values():
            w[old:] = w[:old].mean(dim=0)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0, in the modules and in the config they save."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):  # e.g. Llama's float attention_dropout
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    for name, value in list(vars(model.config).items()):
        if ("dropout" in name or name.endswith("_pdrop")) and isinstance(value, float):
            setattr(model.config, name, 0.0)


def save_pretrained(model: Any, tokenizer: Any, out_dir: str | Path, merged: bool = True) -> Path:
    """Save `model` and `tokenizer` to `out_dir` as safetensors; see the module doc for LoRA."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if not _is_peft(model):
        model.save_pretrained(str(out), safe_serialization=True)
        return out
    model.save_pretrained(str(out / "adapter"), safe_serialization=True)
    if merged:
        from coachlm.models.lora import save_merged  # the caller's model keeps its adapter

        save_merged(model, str(out))
    return out


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def weights_hash(path: str | Path, length: int = 12) -> str:
    """A short sha256 of a model directory's weight files (or its config when it has none).

    Samples record it as `model_version`, so that feedback names the exact weights it judged.
    """
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    files = files or sorted(path.glob("adapter/*.safetensors")) or [path / "config.json"]
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:length]
