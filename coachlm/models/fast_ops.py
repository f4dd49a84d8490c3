"""Fewer operators inside transformers' Llama blocks in eager mode (issue 15).

A Llama block's forward+backward at world-25m spends as much CPU on the small operators
around its matmuls as on the matmuls: transformers' RMSNorm is ~6 operators forward (and
autograd's backward of it ~12), its rotary embedding ~5 per query/key tensor (a `cat` of
negated halves, then slice-backwards that allocate zeros), and under bf16 autocast every
projection casts the fp32 norm output to bf16 again (q, k, v: three casts of one tensor; gate,
up: two), each cast with a cast of the gradient back. Here two `torch.autograd.Function`s with
hand-written backwards do the same math in fewer passes:

- RMSNorm (Zhang & Sennrich, 2019): y = w * x * r, r = (mean(x^2) + eps)^-1/2, backward
  dx = r * (g*w - xhat * mean(g*w*xhat)), dw = sum over rows of g * xhat (xhat = x*r). Inside
  a block, under autocast, the norm writes its output straight in the autocast dtype (the same
  values each projection would cast it to), so the projections cast nothing.
- Rotary embedding (Su et al., 2021, RoFormer): out = x*cos + rotate_half(x)*sin computed per
  half (out1 = x1*cos1 - x2*sin1, out2 = x2*cos2 + x1*sin2), no `cat`, the same in backward
  (autograd's backward of the `cat` allocates zeros and copies into them, twice per tensor).

The model stays a transformers `LlamaForCausalLM`: `use_fast_ops` swaps the classes of its
norm and attention modules for subclasses (same parameters, state dict, LoRA targets,
generation). The fused paths run only where they are exact in fp32 (fp32 weights and
activations, or fp32 weights under autocast); a model cast to bf16 (the rollout's decoding
copy) runs transformers' own forward, bit for bit. Under `torch.compile` the plain forwards run
too: inductor fuses those operators itself, better than these Functions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.llama import modeling_llama as llama

# ------------------------------------------------------------------------------------- RMSNorm


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm of fp32 `x` with fp32 `weight`, written in `out_dtype` (fp32 or autocast's)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float,
                out_dtype: torch.dtype) -> torch.Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # transformers' order: exact
        xhat = x * r
        # one pass multiplies by the weight and rounds to out_dtype (the projections' casts did)
        y = torch.mul(xhat, weight, out=torch.empty_like(xhat, dtype=out_dtype))
        ctx.save_for_backward(xhat, weight, r)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xhat, weight, r = ctx.saved_tensors
        dx = dw = None
        g = g.float()  # once: a bf16-by-fp32 operator on CPU copies its bf16 input each time
        gx = (g * xhat).flatten(0, -2)
        if ctx.needs_input_grad[1]:  # frozen under LoRA: skipped
            dw = gx.sum(0)
        if ctx.needs_input_grad[0]:
            # mean over features of g*w*xhat as a matrix-vector product (one pass, not two)
            m = torch.mv(gx, weight).div_(xhat.shape[-1]).view(*xhat.shape[:-1], 1)
            dx = torch.addcmul(g * weight, xhat, m, value=-1).mul_(r)
        return dx, dw, None, None


class FastRMSNorm(llama.LlamaRMSNorm):
    """LlamaRMSNorm through `_RMSNormFn` where that is exact; its output stays in the input's
    dtype (fp32), as transformers' does. The model's final norm is one of these."""

    def _out_dtype(self, x: torch.Tensor) -> torch.dtype:
        return x.dtype

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (torch.compiler.is_compiling() or hidden_states.dtype != torch.float32
                or self.weight.dtype != torch.float32):
            return super().forward(hidden_states)
        return _RMSNormFn.apply(hidden_states, self.weight, self.variance_epsilon,
                                self._out_dtype(hidden_states))


class FastProjectedRMSNorm(FastRMSNorm):
    """A block's input or post-attention norm: only linear projections read its output, and
    under autocast they cast it to the autocast dtype first, so it is written in that dtype
    once. Their bf16 input gradients then sum in bf16 before the norm's backward (within bf16
    rounding of the fp32 sum autocast's casts gave)."""

    def _out_dtype(self, x: torch.Tensor) -> torch.dtype:
        kind = x.device.type
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


# ------------------------------------------------------------------------- rotary embedding


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x*cos + rotate_half(x)*sin, rotate_half(x) = (-x2, x1), computed half by half (no `cat`,
    no negated copy) and bit for bit as transformers computes it. x is cast once: on CPU, an
    operator with a bf16 and an fp32 input makes an fp32 copy of the bf16 one each time anyway."""
    h = x.shape[-1] // 2
    x = x.to(torch.promote_types(x.dtype, cos.dtype))
    out = x * cos
    out[..., :h] -= x[..., h:] * sin[..., :h]
    out[..., h:] += x[..., :h] * sin[..., h:]
    return out


def _rotate_back(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    """The transpose of `_rotate` applied to g: (g1*cos1 + g2*sin2, g2*cos2 - g1*sin1), in dtype
    (fused multiply-adds here: a gradient need not match autograd's bit for bit)."""
    h = g.shape[-1] // 2
    out = g * cos
    out[..., :h].addcmul_(g[..., h:], sin[..., h:])
    out[..., h:].addcmul_(g[..., :h], sin[..., :h], value=-1)
    return out.to(dtype)


class _RotaryFn(torch.autograd.Function):
    """(q*cos + rotate_half(q)*sin, k*cos + rotate_half(k)*sin) in fp32, the dtype transformers'
    version promotes to (q, k in bf16 or fp32; cos, sin fp32 and constant)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(cos, sin)
        ctx.dtypes = (q.dtype, k.dtype)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    @staticmethod
    def backward(ctx: Any, gq: torch.Tensor, gk: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        return (_rotate_back(gq, cos, sin, ctx.dtypes[0]),
                _rotate_back(gk, cos, sin, ctx.dtypes[1]), None, None)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' `apply_rotary_pos_emb` (q, k: batch x heads x positions x head dim; cos, sin:
    batch x positions x head dim), through `_RotaryFn` where that is exact."""
    if (torch.compiler.is_compiling() or cos.dtype != torch.float32 or sin.dtype != torch.float32
            or cos.requires_grad or sin.requires_grad):
        return llama.apply_rotary_pos_emb(q, k, cos, sin)
    return _RotaryFn.apply(q, k, cos.unsqueeze(1), sin.unsqueeze(1))


class FastLlamaAttention(llama.LlamaAttention):
    """LlamaAttention with `apply_rotary`; otherwise transformers' forward line for line."""

    def forward(self, hidden_states: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, cache: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "past_key_values" in kwargs:  # transformers' deprecated name for `cache`
            cache = kwargs.pop("past_key_values")
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx,
                                                    kwargs=kwargs)
        attention_interface = llama.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, llama.eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


# ------------------------------------------------------------------------------ installing

# exact class -> its fast subclass (a subclass of these, e.g. another model's, is left alone)
_SWAPS: dict[type, type] = {llama.LlamaRMSNorm: FastRMSNorm,
                            llama.LlamaAttention: FastLlamaAttention}


def use_fast_ops(model: nn.Module) -> int:
    """Swap the Llama norm and attention modules of `model` (a Llama causal LM or body,
    optionally peft-wrapped) for their fast subclasses, in place; how many were swapped
    (0 for other architectures, which stay as they are)."""
    swapped = 0
    for module in model.modules():
        if isinstance(module, llama.LlamaDecoderLayer):
            for norm in (module.input_layernorm, module.post_attention_layernorm):
                if type(norm) in (llama.LlamaRMSNorm, FastRMSNorm):
                    norm.__class__ = FastProjectedRMSNorm
                    swapped += 1
        elif type(module) in _SWAPS:
            module.__class__ = _SWAPS[type(module)]
            swapped += 1
    return swapped


def use_plain_ops(model: nn.Module) -> int:
    """Undo `use_fast_ops`: transformers' own modules again (for a side-by-side with a library
    that runs them, e.g. TRL in the benchmarks); how many were swapped back."""
    plain = {FastRMSNorm: llama.LlamaRMSNorm, FastProjectedRMSNorm: llama.LlamaRMSNorm,
             FastLlamaAttention: llama.LlamaAttention}
    swapped = 0
    for module in model.modules():
        if type(module) in plain:
            module.__class__ = plain[type(module)]
            swapped += 1
    return swapped
