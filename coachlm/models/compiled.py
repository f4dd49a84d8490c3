"""`torch.compile` of a causal LM's transformer body, in place (issue 15).

Inductor fuses the small elementwise operators around the matmuls (RMSNorm, rotary embeddings,
SwiGLU, residual adds; ~20% of an fp32 SFT step at world-25m on one CPU core) into generated
C++ loops. Measured on world-25m SFT (fp32, 1 thread, packed batches of 8, CPU seconds, loaded
2-core machine): 0.71 -> 0.58 s per step with identical losses, after ~70 CPU s of compiling
with a cold cache (~40 s in process, ~30 s in the C++ compiler), so it pays off only past ~500
such steps (a 40-step run took 2.2x the CPU of eager); hence off by default (`SFTConfig.compile`).

`nn.Module.compile` compiles the module's own call and keeps its parameters and state-dict keys
(a `torch.compile(module)` wrapper would prefix every key with `_orig_mod.`), so checkpoints,
LoRA merging and saving see the plain model. `dynamic=True`: batch widths vary from step to
step (packed rows are as wide as their longest example), and one shape-generic graph avoids a
recompile per width. The LM head stays outside: it is applied to loss positions only.
"""

from __future__ import annotations

import os
import shutil

from torch import nn
from torch._inductor import config as inductor_config

from coachlm.errors import CoachError


def compile_body(model: nn.Module) -> nn.Module:
    """Compile the transformer body of `model` (a causal LM, optionally PEFT-wrapped) in place;
    returns the body. A CoachError when no C++ compiler is found (inductor needs one on CPU)."""
    if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        raise CoachError("compile: torch.compile on CPU needs a C++ compiler (g++ or clang++, "
                         "or set CXX); install one or set compile: false")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder() if hasattr(base, "get_decoder") else None
    if not isinstance(body, nn.Module) or body is base:
        raise CoachError(f"compile: {type(base).__name__} has no separate transformer body "
                         "to compile; set compile: false")
    # Compile in this process: a pool of compile workers would compete with training on a small
    # shared machine, and its CPU time would be missing from this process's CPU seconds.
    inductor_config.compile_threads = 1
    body.compile(dynamic=True)
    return body
