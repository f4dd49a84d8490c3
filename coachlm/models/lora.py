"""LoRA adapters via peft (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

With LoRA only ~1% of the weights train, and the reference policy of RLHF is the same network
with the adapter switched off (`adapter_disabled`, or `lora_view(model, "base")`): no second copy
of the model in memory. `lora_view` also gives faster plain modules for the length of a step
(merged weights to sample, a fused update to train).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from coachlm.errors import CoachError
from coachlm.models.lora_config import LoRAConfig

# All attention and MLP projections: adapting every linear layer works best (Dettmers et al.,
# 2023, QLoRA). Qwen2 and Mistral use the Llama names.
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")


@contextmanager
def peft_without_deprecation_noise() -> Iterator[None]:
    """peft (0.17+) reads `model.is_gradient_checkpointing` when it wraps a model, which
    transformers 5.x deprecated for `is_activation_checkpointing`: a FutureWarning on every run
    that no call of ours can avoid. Silenced here, for that message only, around peft's calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        yield


def default_targets(model: torch.nn.Module) -> tuple[str, ...]:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    return GPT2_TARGETS if model_type == "gpt2" else LLAMA_TARGETS


def peft_lora(model: torch.nn.Module, cfg: LoRAConfig, task_type: str) -> PeftModel:
    """Wrap `model` with fresh LoRA adapters (B = 0, so the output is unchanged at first) on the
    target modules that exist in it; `task_type` is peft's (CAUSAL_LM for a policy,
    FEATURE_EXTRACTION for a reward model's backbone)."""
    targets = cfg.target_modules or default_targets(model)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if not names & set(targets):
        raise CoachError(f"none of the LoRA target modules {list(targets)} exist in this "
                         f"{type(model).__name__}; set lora.target_modules")
    peft_cfg = PeftLoraConfig(
        task_type=task_type,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=[t for t in targets if t in names],
        # GPT-2 stores its projections as Conv1D, with the weight transposed.
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    with peft_without_deprecation_noise():
        return get_peft_model(model, peft_cfg)


def apply_lora(model: torch.nn.Module, cfg: LoRAConfig) -> PeftModel:
    """A causal LM with fresh LoRA adapters (Hu et al., 2021)."""
    return peft_lora(model, cfg, "CAUSAL_LM")


def continue_lora(model: torch.nn.Module, adapter: str | Path) -> PeftModel:
    """`model` with the LoRA adapter saved in `adapter` (by `save_pretrained`), trainable: an
    earlier run's training continues, and the adapter switched off is still `model`."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise CoachError(f"{adapter}: no LoRA adapter there (adapter_config.json missing)")
    with peft_without_deprecation_noise():
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)


def trainable_fraction(model: torch.nn.Module) -> float:
    """Trainable parameters / all parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable / max(total, 1)


@contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """Run the base model (the RLHF reference policy) by switching the LoRA adapter off."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"adapter_disabled needs a peft LoRA model, got {type(model).__name__}; "
                        "without LoRA the reference policy must be a separate frozen copy")
    with model.disable_adapter():
        yield model


def merge_lora(model: PeftModel) -> torch.nn.Module:
    """Fold the adapter into the base weights and return the plain model (in place)."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"merge_lora needs a peft LoRA model, got {type(model).__name__}")
    return model.merge_and_unload()


# id of a frozen base weight -> (the weight, its version when cast, the cast), dropped with
# the weight (tensors compare elementwise, so they cannot key a WeakKeyDictionary).
_CASTS: dict[int, tuple[weakref.ref, int, Tensor]] = {}


def _cast_frozen(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """`weight` in `dtype`, cast once while the weight is unchanged (its version counter)."""
    hit = _CASTS.get(id(weight))
    if hit is not None and hit[0]() is weight and hit[1] == weight._version \
            and hit[2].dtype == dtype:
        return hit[2]
    if hit is None:
        weakref.finalize(weight, _CASTS.pop, id(weight), None)
    with torch.no_grad():
        _CASTS[id(weight)] = (weakref.ref(weight), weight._version, weight.to(dtype))
    return _CASTS[id(weight)][2]


class _BaseLinear(nn.Module):
    """A frozen base Linear, its weight in `dtype`, cast once for as long as it is unchanged.

    Under bf16 autocast a frozen weight is cast again by every forward: autocast caches only
    casts of leaf tensors that require grad, and LoRA's base weights do not. At world-25m those
    casts (`aten::copy_`) took about as long as the matmuls of the no-grad logprob passes. LoRA
    never changes the base weights, so the policy's and the reference's passes and the update
    share one cast (~40 ms of CPU at world-25m, three times a rollout otherwise): 50 MB of bf16
    for 25M weights, kept while the weight lives."""

    def __init__(self, base: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", _cast_frozen(base.weight, dtype), persistent=False)
        self.bias = base.bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class _FusedLoRA(nn.Module):
    """y = x W^T + b + s (dropout(x) A^T) B^T, peft's LoRA Linear (Hu et al., 2021) in two
    matmuls: the low-rank update joins the base output in one `addmm` (scale and add fused),
    where peft runs a matmul, a scale and an add over a fresh (tokens, out) tensor each, together
    half the cost of the base matmul on world-small. Shares the LoRA layer's parameters."""

    def __init__(self, layer: nn.Module, adapter: str, dtype: torch.dtype | None = None):
        super().__init__()
        base = layer.get_base_layer()
        self.base = base if dtype is None else _BaseLinear(base, dtype)
        self.lora_A, self.lora_B = layer.lora_A[adapter], layer.lora_B[adapter]
        self.dropout, self.scaling = layer.lora_dropout[adapter], layer.scaling[adapter]

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (M, in)
        y = self.base(flat)  # (M, out)
        low = F.linear(self.dropout(flat), self.lora_A.weight)  # (M, r)
        y = torch.addmm(y, low, self.lora_B.weight.t(), alpha=self.scaling)  # (M, out)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class _MergedLinear(nn.Module):
    """A LoRA Linear with its update merged: W + s B A, a new tensor (the layer is untouched),
    in one `addmm` (peft's `get_delta_weight` and an add took twice as long: ~2 ms a layer at
    world-25m, once per rollout)."""

    def __init__(self, layer: nn.Module, adapter: str, dtype: torch.dtype | None = None):
        super().__init__()
        base = layer.get_base_layer()
        with torch.no_grad():
            weight = torch.addmm(base.weight, layer.lora_B[adapter].weight,
                                 layer.lora_A[adapter].weight, alpha=layer.scaling[adapter])
            self.register_buffer("weight", weight if dtype is None else weight.to(dtype))
        self.bias = base.bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def _plain_adapter(layer: nn.Module) -> str | None:
    """The one active adapter of a peft LoRA Linear over an nn.Linear, if it is plain LoRA (no
    DoRA or other variant, no LoRA bias) and not merged; else None."""
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    ok = (type(layer) is LoraLinear and type(layer.get_base_layer()) is nn.Linear
          and len(active) == 1 and not layer.merged and not layer.disable_adapters
          and active[0] not in layer.lora_variant and layer.lora_B[active[0]].bias is None)
    return active[0] if ok else None


@contextlib.contextmanager
def lora_view(model: nn.Module, view: Literal["merged", "fused", "base"],
              dtype: torch.dtype | None = None) -> Iterator[None]:
    """Within the block, each LoRA layer of a peft model is swapped for a plain module:

      "merged": the base weights plus the update (sampling: one matmul per projection; the
                adapter path cost ~20% of a decode step),
      "fused":  `_FusedLoRA`, the same parameters (the policy's no-grad pass and the update),
      "base":   the base layer alone (the reference policy, as with the adapter disabled).

    `dtype` (bf16 under autocast): the frozen base weights are used as copies in `dtype`, cast
    once and kept while they are unchanged, rather than cast by every forward (`_BaseLinear`);
    merged weights are made in `dtype`; the trainable LoRA weights are never cast here.

    The peft modules are put back afterwards, untouched: the trained and the base weights stay
    bit-identical. A layer that is not plain LoRA keeps its peft module (the same function,
    slower); any other model is left as it is.
    """
    swaps = []  # (parent, attribute, peft layer, plain module)
    if isinstance(model, PeftModel):
        for name, layer in model.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            if layer.merged and view == "base":
                raise ValueError("a LoRA layer is merged into its base weights: unmerge it to "
                                 "compute the reference policy")
            adapter = _plain_adapter(layer)
            if view == "base":
                base = layer.get_base_layer()
                plain = base if dtype is None or type(base) is not nn.Linear \
                    else _BaseLinear(base, dtype)
            elif adapter is None:
                continue
            else:
                plain = (_MergedLinear if view == "merged" else _FusedLoRA)(layer, adapter, dtype)
            parent, _, attr = name.rpartition(".")
            swaps.append((model.get_submodule(parent), attr, layer, plain))
    for parent, attr, _, plain in swaps:
        setattr(parent, attr, plain)
    try:
        yield
    finally:
        for parent, attr, layer, _ in swaps:
            setattr(parent, attr, layer)


def save_merged(model: PeftModel, out: str) -> None:
    """Save `model` with its adapter merged, in Hugging Face format, leaving `model` as it was.

    Plain LoRA layers are saved through the "merged" `lora_view` (the same W + s B A that
    peft's merge computes, as a new tensor per layer), not by merging a deep copy: no second
    copy of the model, and FSDP-managed modules refuse `deepcopy`. Other adapters (DoRA, LoRA
    bias) are merged into a copy by peft."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if layers and all(_plain_adapter(m) is not None for m in layers):
        with lora_view(model, "merged"):
            model.get_base_model().save_pretrained(out, safe_serialization=True)
        return
    copy.deepcopy(model).merge_and_unload().save_pretrained(out, safe_serialization=True)
