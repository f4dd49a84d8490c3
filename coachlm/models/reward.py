"""The reward model ("the coach"): a pretrained backbone whose LM head is replaced by a scalar head.

Architecture (Stiennon et al., 2020; Ouyang et al., 2022): the transformer body of any local
Hugging Face model (`AutoModel`: Llama, GPT-2, Qwen2, Mistral, and encoders such as BERT), and a
Linear(d, 1) head read at the last token of prompt + response, which is the response's EOS. The
head starts as N(0, 1/sqrt(d + 1)) with bias 0, as in OpenAI's lm-human-preferences
(Ziegler et al., 2019), so the initial scores are small and of unit-free scale. Dropout is off
(`load.disable_dropout`): scores must be deterministic. The bias receives no gradient from any
pairwise loss (they depend on differences of rewards only) and stays 0; the normalization bias
below plays its role.

Normalization (Ziegler et al., 2019, sec. 2.2; Huang et al., 2023): after training, a gain and a
bias are fitted so that scores have mean 0 and std 1 on responses of a reference policy
(`fit_normalization`). `forward` returns *raw* scores, the scale on which the Bradley-Terry
loss and its probabilities sigmoid(r_a - r_b) live; `score` applies gain * raw + bias, what
PPO and `coachlm rm score` use.

Saved layout (`save_reward_model`), a Hugging Face directory plus two small files:
  config.json, model.safetensors   the backbone (`AutoModel.from_pretrained(dir)` reads it)
  tokenizer files
  reward_head.safetensors          head.weight (1, d), head.bias (1,)
  reward.json                      format, gain, bias, pooling, the normalization's provenance
  adapter/                         the LoRA adapter alone, when trained with LoRA (merged above)
`load_reward_model(dir)` rebuilds it with identical scores, normalization included, and with
its own tokenizer as `model.tokenizer` (`rollout.rewards.RewardModelReward` scores with it).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from coachlm.data.layouts import PROBE, agrees_with_pad, resolve_layout
from coachlm.data.reward_batches import Group, GroupBatches, collate, scoring_groups
from coachlm.data.reward_batches import share_saving  # noqa: F401  (re-exported: callers import it here)
from coachlm.data.schema import Prompt
from coachlm.errors import CoachError
from coachlm.models.load import (ModelLoadError, _check_dir, disable_dropout, load_tokenizer,
                                  resolve_dtype, save_pretrained)
from coachlm.models import last_layer
from coachlm.models.attention import use_fp32_attention
from coachlm.models.fast_ops import use_fast_ops
from coachlm.models.lora import LoRAConfig

REWARD_FILE = "reward.json"
HEAD_FILE = "reward_head.safetensors"
FORMAT = "coachlm-reward-v1"


def hidden_size(backbone: nn.Module) -> int:
    cfg = backbone.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(getattr(cfg, name, None), int):
            return getattr(cfg, name)
    raise CoachError(f"cannot find the hidden size of {type(backbone).__name__}")


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def probe_causal(backbone: nn.Module) -> bool:
    """Whether the backbone is causal: its first position ignores what comes after it."""
    ids = torch.tensor([[5, 6, 7, 8], [5, 9, 10, 11]], device=next(backbone.parameters()).device)
    with _eval_mode(backbone), torch.no_grad():
        hidden = backbone(input_ids=ids).last_hidden_state  # (2, 4, d)
    return torch.allclose(hidden[0, 0], hidden[1, 0], atol=1e-5)


def _probe_tol(backbone: nn.Module) -> dict[str, float]:
    """Tolerances for `last_layer.agrees`: fp32 rounding, or bf16's for a bf16 backbone."""
    fp32 = next(backbone.parameters()).dtype == torch.float32
    return {"atol": 1e-4, "rtol": 1e-3} if fp32 else {"atol": 2e-2, "rtol": 2e-2}


class RewardModel(nn.Module):
    """backbone + scalar head. `forward` scores N sequences at given (row, column) positions."""

    def __init__(self, backbone: nn.Module, gain: float = 1.0, bias: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size(backbone), 1)
        self.gain, self.bias = float(gain), float(bias)
        self.tokenizer: Any = None  # its own tokenizer and chat template (set when built/loaded)
        self.causal = probe_causal(backbone)
        base = getattr(backbone, "get_base_model", lambda: backbone)()
        self._use_cache_arg = "use_cache" in inspect.signature(base.forward).parameters
        # Only the scored positions need the last layer's output (`models.last_layer`): where
        # that gives the full forward's hidden states, `forward` computes it there alone.
        self.last_layer_at_scores = (self.causal
                                     and last_layer.agrees(backbone, **_probe_tol(backbone)))

    def init_head(self, seed: int | None = None) -> None:
        """N(0, 1/sqrt(d + 1)) weights, zero bias (Ziegler et al., 2019), without touching the
        global RNG stream when `seed` is given."""
        d = self.head.in_features
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            self.head.weight.normal_(0.0, 1.0 / math.sqrt(d + 1))
            self.head.bias.zero_()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None,
                rows: Tensor, cols: Tensor) -> Tensor:
        """Raw scores (N,) in fp32 of the sequences whose last tokens sit at (rows, cols).

        input_ids: (R, T); attention_mask: (R, T) padding mask, (R, 1, T, T) bool, or None;
        position_ids: (R, T) or None. A causal backbone drops a 2-D mask: rows are right-padded,
        so no real token sees padding, and the unmasked causal kernel is the fast one. Where
        `last_layer_at_scores`, the last layer runs at (rows, cols) only (`models.last_layer`).
        """
        if attention_mask is not None and attention_mask.dim() == 2 and self.causal:
            attention_mask = None
        kwargs: dict[str, Any] = {"use_cache": False} if self._use_cache_arg else {}
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids, **kwargs)
        bool_or_none = attention_mask is None or attention_mask.dtype == torch.bool
        if self.last_layer_at_scores and bool_or_none and not last_layer.sharded(self.backbone):
            last = last_layer.hidden_at(self.backbone, rows, cols, **inputs)  # (N, d)
        else:
            last = self.backbone(**inputs).last_hidden_state[rows, cols]  # (N, d)
        return self.head(last).squeeze(-1).float()  # (N,)

    def rewards(self, batch: Any) -> Tensor:
        """Raw scores (N,) of a `data.reward_batches.RewardBatch` (moved to the model's device)."""
        dev = self.head.weight.device

        def on(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dev)

        return self(on(batch.input_ids), on(batch.attention_mask), on(batch.position_ids),
                    on(batch.rows), on(batch.cols))

    def normalize(self, raw: Tensor) -> Tensor:
        return raw * self.gain + self.bias


# -------------------------------------------------------------------------------- build / load


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence load-time notices ('weights not used': dropping the LM head is the point)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_backbone(path: str | Path, dtype: str | torch.dtype | None = None,
                  tokenizer: Any = None) -> nn.Module:
    """The transformer body of the model in `path` (its LM or classification head dropped)."""
    from transformers import AutoModel

    path = _check_dir(path, "model")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json); "
                             "for a LoRA run give its merged output directory")
    try:
        with _quiet_transformers():
            backbone = AutoModel.from_pretrained(str(path), dtype=resolve_dtype(dtype))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load a backbone from {path}: {e}") from None
    disable_dropout(backbone)
    if tokenizer is not None:
        if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
            backbone.resize_token_embeddings(len(tokenizer))
        backbone.config.pad_token_id = tokenizer.pad_token_id
    return backbone


def apply_lora_backbone(backbone: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """LoRA adapters on the backbone (Hu et al., 2021); the head stays fully trainable."""
    from coachlm.models.lora import peft_lora

    return peft_lora(backbone, cfg, "FEATURE_EXTRACTION")


def build_reward_model(path: str | Path, tokenizer: Any, lora: LoRAConfig | None = None,
                       seed: int = 0) -> RewardModel:
    """A fresh reward model on the backbone in `path`, in fp32 (autocast does bf16)."""
    backbone = load_backbone(path, torch.float32, tokenizer)
    use_fp32_attention(backbone)  # bf16 autocast on CPU: attention in fp32 is faster
    use_fast_ops(backbone)  # fewer operators per Llama block, exact in fp32 (models.fast_ops)
    if lora is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = apply_lora_backbone(backbone, lora)
    model = RewardModel(backbone)
    model.init_head(seed)
    if is_reward_model(path):  # continue training a reward model (a loop's next round): its head too
        model.head.load_state_dict(load_file(str(Path(path) / HEAD_FILE)))
    model.tokenizer = tokenizer
    return model


def save_reward_model(model: RewardModel, tokenizer: Any, out_dir: str | Path,
                      normalization: Mapping[str, Any] | None = None) -> Path:
    """Write the reward model in the layout of the module docstring; returns `out_dir`."""
    with _quiet_transformers():  # the backbone (LoRA merged) and tokenizer, as every trainer saves
        out = save_pretrained(model.backbone, tokenizer, out_dir)
    head = {k: v.detach().float().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, str(out / HEAD_FILE))
    info = {"format": FORMAT, "hidden_size": model.head.in_features, "gain": model.gain,
            "bias": model.bias, "pooling": "last_token", "causal": model.causal,
            "normalization": dict(normalization or {})}
    (out / REWARD_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def update_normalization(path: str | Path, gain: float, bias: float,
                         normalization: Mapping[str, Any]) -> None:
    """Rewrite the gain and bias (and their provenance) of the reward model saved in `path`."""
    file = Path(path) / REWARD_FILE
    info = json.loads(file.read_text())
    info.update(gain=gain, bias=bias, normalization=dict(normalization))
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(file)


def is_reward_model(path: str | Path) -> bool:
    return (Path(path) / REWARD_FILE).is_file()


def load_reward_model(path: str | Path, dtype: str | torch.dtype | None = None) -> RewardModel:
    """The reward model saved in `path`, in eval mode, with its normalization."""
    path = _check_dir(path, "reward model")
    if not is_reward_model(path):
        raise ModelLoadError(f"{path} is not a coachlm reward model (no {REWARD_FILE}); "
                             "train one with `coachlm rm`")
    info = json.loads((path / REWARD_FILE).read_text())
    if info.get("format") != FORMAT:
        raise ModelLoadError(f"{path / REWARD_FILE}: unknown format {info.get('format')!r}")
    model = RewardModel(load_backbone(path, dtype), info["gain"], info["bias"])
    head = load_file(str(path / HEAD_FILE))
    model.head.load_state_dict(head)
    model.head.to(next(model.backbone.parameters()).dtype)
    # The reward model carries the tokenizer (and chat template) it was trained with: whoever
    # scores with it (PPO, `rm score`) must encode with these, not with the policy's.
    model.tokenizer = load_tokenizer(path)
    return model.eval()


# ----------------------------------------------------------------------------- normalization


def fit_normalization(raw: Tensor) -> tuple[float, float]:
    """(gain, bias) with gain * raw + bias of mean 0 and (population) std 1 over `raw` (N,)."""
    if raw.numel() < 2:
        raise CoachError("normalization needs at least 2 reference responses")
    mean, std = raw.double().mean(), raw.double().std(unbiased=False)
    if std < 1e-8:
        raise CoachError("all reference responses get the same raw score; cannot normalize")
    return float(1.0 / std), float(-mean / std)


@torch.no_grad()
def score_sequences(model: RewardModel, batches: Iterable[tuple[Sequence[int], Any]],
                    n_sequences: int, bf16: bool = False) -> Tensor:
    """Raw scores (n_sequences,) in fp32 from (sequence indices, RewardBatch) pairs."""
    out = torch.full((n_sequences,), float("nan"))
    device_type = model.head.weight.device.type
    with _eval_mode(model), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        for index, batch in batches:
            out[torch.as_tensor(index, dtype=torch.long)] = model.rewards(batch).float().cpu()
    if torch.isnan(out).any():
        raise RuntimeError("some sequences were not scored")
    return out


def score_items(model: RewardModel, tok: Any, items: Sequence[tuple[Prompt, str]], *,
                batch_size: int = 64, max_length: int = 512, layout: str = "auto",
                bf16: bool = False) -> tuple[Tensor, int]:
    """Raw scores (len(items),) of (prompt, response) items, batched; and how many were cut.

    Items sharing a prompt are batched together (and identical ones scored once)."""
    groups, where, cut = scoring_groups(items, tok, max_length)
    layout = choose_layout(layout, model, tok.pad_token_id)
    batches = GroupBatches(groups, batch_size, tok.pad_token_id, layout, shuffle=False)
    raw = score_sequences(model, batches.epoch_batches(), batches.num_sequences, bf16)
    return raw[torch.tensor(where, dtype=torch.long)], cut


# ---------------------------------------------------------------------------------- layouts


def share_supported(model: RewardModel, pad_id: int) -> bool:
    """Whether shared-prefix packs score exactly like separate sequences on this model (needs a
    causal backbone whose attention takes a custom 4-D mask, e.g. SDPA or eager in transformers)."""
    if not model.causal:
        return False
    probe = [Group(list(prompt), [list(r) for r in responses]) for prompt, responses in PROBE]
    return agrees_with_pad(model, lambda lay: model.rewards(collate(probe, lay, pad_id)), "share",
                           atol=1e-4, rtol=1e-3)


def choose_layout(layout: str, model: RewardModel, pad_id: int) -> str:
    """Resolve "auto": prefix sharing ("share") when the model supports it exactly, else "pad".

    Measured (forward + backward of real batches of 16 prompts, benchmarks in the report):
    built-in-world comparisons on world-small, where prompts are short (sharing saves ~25% of
    the tokens) but responses of one prompt differ a lot in length (padded rows waste ~half
    their positions), share ran 14.2k tokens/s, pack 12.5k and pad 7.6-8.2k (2 threads); on
    HH-RLHF with stories260K (prompts ~75% of each sequence, sharing saves ~34%), share 11.3k,
    pack 7.6k, pad 7.0-7.5k (1 thread, CPU time). The dense 4-D mask computes attention over a
    whole packed row, but on these models the saved MLP and padding work far outweigh it.
    """
    # "pack" takes the same 4-D mask as "share" (block-diagonal), so one probe answers both.
    return resolve_layout(layout, ("share", "pad"), lambda _: share_supported(model, pad_id),
                          f"layout {layout!r} needs a causal backbone that takes a 4-D attention "
                          f"mask; {type(model.backbone).__name__} does not score packed sequences "
                          "exactly; use layout: pad")
