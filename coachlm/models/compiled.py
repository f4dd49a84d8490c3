"""`torch.compile` of a causal LM's decoder layers, in place (issue 15).

Inductor fuses the small elementwise operators around the matmuls (RMSNorm, rotary embeddings,
SwiGLU, residual adds) into generated C++ loops: 18% less CPU per world-25m SFT step in bf16,
7% in fp32 (where `fast_ops` already fuses part of it); figures below.

Regional compile: each decoder layer's call is compiled, not the whole body. The
layers are identical modules, so dynamo traces one layer and every other layer reuses that
graph (its guards check the module's type and attributes, not which layer it is; one compile
under TORCH_LOGS=recompiles, `tests/test_compiled.py`; two under LoRA, where the first layer's
input, from frozen embeddings, carries no gradient), and dynamo and inductor work on one layer
instead of six: a cold compile took 31.5 CPU s instead of the whole body's 68.3 (bf16), not 6x
less, as ~2/3 of it was g++ building the kernels, one small library each, plus a fixed cost
(`cpp_wrapper` now builds one library per graph: ~21 s, below). The
embedding, rotary tables, mask and final norm stay eager: one small operator each per step.

Only gradient-recording calls run compiled: a call under `torch.no_grad` (validation loss,
the packing probe, sampling, a frozen reference model) runs the eager layer: a no-grad call
would compile a second (inference) graph, at a compile cost like the first, for far fewer calls
than training makes (not measured faster compiled).

Compiled code is cached on disk (`cache_dir`), so a later run with the same model shape loads
it instead of compiling again.

`nn.Module`'s own `_compiled_call_impl` hook holds the compiled call, so parameters and state-
dict keys stay as they were (a `torch.compile(module)` wrapper would prefix every key with
`_orig_mod.`): checkpoints, LoRA merging and saving see the plain model. `dynamic=True`: batch
widths vary from step to step (packed rows are as wide as their longest example), and one
shape-generic graph avoids a recompile per width.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch._inductor import config as inductor_config

from coachlm.errors import CoachError

CACHE_ENV = "COACHLM_COMPILE_CACHE"
_set_by_us: list[str] = []  # the TORCHINDUCTOR_CACHE_DIR values use_cache_dir set


def cache_dir() -> Path:
    """Where compiled code is kept between runs: $COACHLM_COMPILE_CACHE, else
    $XDG_CACHE_HOME/coachlm/inductor (~/.cache/coachlm/inductor without XDG_CACHE_HOME)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "coachlm" / "inductor"


def _user_cache_dir() -> Path | None:
    """The TORCHINDUCTOR_CACHE_DIR a user set (torch sets it to its default on first use)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and chosen not in _set_by_us and \
            os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return Path(chosen)
    return None


def use_cache_dir() -> Path:
    """Point inductor's on-disk caches (FX graphs, AOTAutograd, generated C++ and its builds)
    at `cache_dir()`, unless the user chose a directory with TORCHINDUCTOR_CACHE_DIR; returns
    the directory in use. Torch's default is under /tmp, which does not outlive a reboot."""
    chosen = _user_cache_dir()
    if chosen is not None:
        return chosen
    path = cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    _set_by_us.append(str(path))
    return path


def has_cxx_compiler() -> bool:
    """Whether inductor can build its C++ kernels here (it needs a compiler on CPU)."""
    return bool(os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++"))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a model: the first non-empty `layers` list among its modules (a
    causal LM's `model.layers`, a reward model's `backbone.layers`, under PEFT's wrappers too);
    a CoachError without one."""
    for name, module in model.named_modules():
        if name.rpartition(".")[2] == "layers" and isinstance(module, nn.ModuleList) and len(module):
            return module
    raise CoachError(f"compile: {type(model).__name__} has no list of decoder layers to "
                     "compile; set compile: false")


class _GradOnly:
    """A layer's call: `compiled(layer, ...)` while autograd records, eager under no_grad.
    Holds the layer, not a bound method, so a deep copy of the model calls its own copy."""

    def __init__(self, layer: nn.Module, compiled: Callable[..., Any]) -> None:
        self.layer, self.compiled = layer, compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # A layer with hooks attached runs eagerly: `models.last_layer` stops the last layer's
        # call in a pre-hook (it computes that layer at some positions itself), an exception
        # that dynamo otherwise traces into and gives up on (a wasted trace, an
        # "unimplemented" graph break).
        if torch.is_grad_enabled() and not (self.layer._forward_pre_hooks
                                            or self.layer._forward_hooks):
            return self.compiled(self.layer, *args, **kwargs)
        return self.layer._call_impl(*args, **kwargs)


def compile_layers(model: nn.Module, backend: Any = "inductor") -> nn.ModuleList:
    """Compile each decoder layer of `model` (a causal LM, optionally PEFT-wrapped) in place, for
    gradient-recording calls; returns the layers. A CoachError without a C++ compiler.
    `backend`: torch.compile's (tests count graphs with a counting one)."""
    if backend == "inductor" and not has_cxx_compiler():
        raise CoachError("compile: torch.compile on CPU needs a C++ compiler (g++ or clang++, "
                         "or set CXX); install one or set compile: false")
    layers = decoder_layers(model)
    use_cache_dir()
    # Compile in this process: a pool of compile workers would compete with training on a small
    # shared machine, and its CPU time would be missing from this process's CPU seconds.
    inductor_config.compile_threads = 1
    # cpp_wrapper: the graph's kernels and its wrapper built as one C++ library instead of one
    # per kernel; MEASURED (compile_sft.py --modes layers, bf16 world-25m, two runs each way):
    # cold compile 29.2, 27.6 -> 22.1, 20.6 CPU s; warm (~6 s), step CPU and losses the same.
    options = {"cpp_wrapper": True} if backend == "inductor" else None
    # One compiled function, the layer an argument: every layer runs the same graph.
    call = torch.compile(nn.Module._call_impl, backend=backend, dynamic=True, options=options)
    for layer in layers:
        layer._compiled_call_impl = _GradOnly(layer, call)
    return layers


# `compile: auto`: compile when the run's steps save more CPU than compiling costs. MEASURED
# (`benchmarks/compile_sft.py --preset world-25m --precision bf16|fp32 --steps 20 --threads 1`,
# SFT, packed batches of 8, process + C++ compiler CPU seconds, loaded 2-core AMX machine):
#   bf16: eager 0.324 s/step, compiled 0.278 (cold) / 0.285 (warm); compile 22.2 s cold, 5.9 s
#         warm -> break-even 478 steps cold, 151 warm. Before cpp_wrapper: 31.5 s / 7.0 s,
#         491 / 119 (eager 0.356 in that run); whole-body compile: 68.3 / 24.9 s, 1,079 / 306
#   fp32: eager 0.708 s/step, compiled 0.647 / 0.620; compile 19.6 s cold, 3.3 s warm -> 320 / 38
#         (before cpp_wrapper 25.8 / 3.6 s, 494 / 56; whole body 50.8 / 11.7 s, 1,142 / 432)
# The compile cost hardly depends on the model's size (world-small, 1.8M parameters in its
# layers, bf16: 30.4 s cold, 6.9 warm, before cpp_wrapper) while the saving per step grows with
# the work per step (world-small: 0.047 -> 0.040 s/step; break-even 4,763 / 938): the break-even
# steps below are world-25m's (the larger of bf16 and fp32, rounded up), scaled by its layers'
# parameters over the model's and by batch 8 over the run's batch (world-small: 7,107 / 2,133
# by this rule, above the measured 4,763 / 938: auto errs towards eager).
COLD_BREAK_EVEN_STEPS = 500
WARM_BREAK_EVEN_STEPS = 150
REFERENCE_LAYER_PARAMETERS = 25_171_968  # world-25m's 6 decoder layers
REFERENCE_BATCH = 8


def break_even_steps(model: nn.Module, batch_size: int, warm: bool) -> int:
    """The steps a run of `model` at `batch_size` needs before compiling pays (see above)."""
    params = sum(p.numel() for p in decoder_layers(model).parameters())
    steps = WARM_BREAK_EVEN_STEPS if warm else COLD_BREAK_EVEN_STEPS
    return math.ceil(steps * REFERENCE_LAYER_PARAMETERS / params * REFERENCE_BATCH / batch_size)


def compile_key(model: nn.Module, bf16: bool) -> str:
    """What makes compiled code reusable: torch's version, the model's class (PEFT-wrapped or
    not) and its transformers config, precision. Names the marker a compiled run leaves in
    `cache_dir()`."""
    configs = [m.config.to_dict() for m in model.modules()
               if hasattr(getattr(m, "config", None), "to_dict")][:1]
    for c in configs:  # where the weights came from does not change the code
        c.pop("_name_or_path", None)
    text = "|".join([torch.__version__, type(model).__name__, *map(str, configs), str(bf16)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _marker(model: nn.Module, bf16: bool) -> Path:
    return (_user_cache_dir() or cache_dir()) / "coachlm-compiled" / compile_key(model, bf16)


def resolve_compile(setting: bool | str, model: nn.Module, steps: int, batch_size: int,
                    bf16: bool, device: str = "cpu") -> bool:
    """`compile: auto | true | false` for a run of `steps` optimizer steps of `batch_size`
    sequences: auto compiles where it pays, i.e. a C++ compiler is found and the run has at
    least `break_even_steps` (fewer when this model shape was compiled before, so that its code
    is in the on-disk cache). The figures are CPU figures: on another `device` auto stays eager."""
    if setting != "auto":
        return bool(setting)
    if device != "cpu" or not has_cxx_compiler():
        return False
    try:
        needed = break_even_steps(model, batch_size, warm=_marker(model, bf16).exists())
    except CoachError:  # no decoder layers to compile
        return False
    return steps >= needed


def compile_for_run(setting: bool | str, model: nn.Module, steps: int, batch_size: int,
                    bf16: bool, device: str = "cpu") -> bool:
    """`resolve_compile`, then `compile_layers` where it says so; whether the layers are
    compiled (a trainer records it in config.yaml and calls `mark_compiled` after training)."""
    compiled = resolve_compile(setting, model, steps, batch_size, bf16, device)
    if compiled:
        compile_layers(model)
    return compiled


def mark_compiled(model: nn.Module, bf16: bool) -> None:
    """Record that this model shape's code is now in the cache (after the first compiled step)."""
    marker = _marker(model, bf16)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
