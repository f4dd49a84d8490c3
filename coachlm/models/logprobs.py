"""Per-token log-probabilities of given tokens under a causal LM.

Logits are divided by the sampling temperature before the softmax, so that the logprobs a
trainer recomputes are those of the distribution the responses were sampled from (Huang et al.,
2023, "The N Implementation Details of RLHF with PPO", detail on temperature).

Memory: a (B, T, V) log_softmax is never built. log p(y) = logit_y - logsumexp(logits), computed
in fp32 a few rows at a time, and the model is asked only for the logits from the first response
position on (`logits_to_keep`), which for a long prompt and a short response saves most of it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from coachlm.models.modes import eval_mode

CHUNK_TOKENS = 8192  # rows of fp32 logits converted at once (8192 x 50k vocab = 1.6 GB at most)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor,
                         temperature: float = 1.0, banned: int | None = None) -> torch.Tensor:
    """log softmax(logits / temperature)[labels], in fp32.

    `banned`: a token id the sampler never emits (the pad token), left out of the softmax so
    that these are the logprobs of the distribution actually sampled from.
    logits: (..., V), labels: (...) -> (...). Labels < 0 (IGNORE_INDEX) give 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to define logprobs, got {temperature}")
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_labels = labels.reshape(-1)  # (N,)
    valid = flat_labels >= 0
    safe = flat_labels.clamp(min=0)
    out = torch.empty(flat_labels.shape, dtype=torch.float32, device=logits.device)  # (N,)
    for start in range(0, flat_logits.shape[0], CHUNK_TOKENS):
        rows = slice(start, start + CHUNK_TOKENS)
        chunk = ban(flat_logits[rows].float() / temperature, banned)  # (n, V)
        picked = chunk.gather(-1, safe[rows].unsqueeze(-1)).squeeze(-1)  # (n,)
        out[rows] = picked - torch.logsumexp(chunk, dim=-1)
    return torch.where(valid, out, torch.zeros_like(out)).reshape(labels.shape)


def ban(logits: torch.Tensor, token: int | None) -> torch.Tensor:
    """`logits` (..., V) with the logit of `token` set to -inf (out of place); as is if None."""
    if token is None:
        return logits
    return logits.index_fill(-1, torch.tensor([token], device=logits.device), float("-inf"))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left padding does not shift them. (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def backbone_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone, LM head) of a causal LM, through a peft wrapper (LoRA layers live inside), so
    that the head can run on the few positions that predict response tokens."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.base_model, base.get_output_embeddings()


def head_matches(model: Any) -> bool:
    """Whether backbone + LM head reproduce the model's own logits (false for models that
    scale or soft-cap logits in their forward, which a loss computing the head itself on a few
    positions, DPO's `sequence_logps` or SFT's `labelled_lm_loss`, would miss)."""
    ids = torch.arange(3, 9)[None].to(next(model.parameters()).device)  # (1, 6)
    backbone, head = backbone_and_head(model)
    with eval_mode(model), torch.no_grad():
        ours = head(backbone(input_ids=ids, use_cache=False).last_hidden_state)  # (1, 6, V)
        theirs = model(input_ids=ids, use_cache=False).logits
    return torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)


def _forward_parameters(model: Any) -> Any:
    base = getattr(model, "get_base_model", lambda: model)()
    return inspect.signature(base.forward).parameters


def accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in _forward_parameters(model)


def cache_arguments(model: Any, cache: Any, start: int, length: int,
                    device: torch.device) -> dict[str, Any]:
    """The KV-cache keyword arguments of a forward that writes `length` positions from column
    `start` of `cache`, in the installed transformers' terms.

    The cache goes under the name the model's forward takes: `cache` in transformers >= 5.x
    (where `past_key_values` is a deprecated alias that warns), `past_key_values` before.
    `cache_position` is passed where the forward takes it (transformers 4.x): without it a
    static cache infers the write column from the non-zero key slots of batch row 0, the most
    left-padded row, and a zero pad-embedding row (`padding_idx`, an untied head) makes that
    count wrong. Newer caches keep their own write counter and take no position.
    """
    params = _forward_parameters(model)
    args: dict[str, Any] = {"cache" if "cache" in params else "past_key_values": cache}
    if "cache_position" in params:
        args["cache_position"] = torch.arange(start, start + length, device=device)
    return args


def returned_cache(out: Any) -> Any:
    """The KV cache a forward returned (`cache` in transformers >= 5.x, else `past_key_values`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def sequence_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor, temperature: float = 1.0,
                      banned: int | None = None) -> torch.Tensor:
    """Logprobs of the response tokens, aligned with the input.

    out[b, t] = log p(x[b, t] | x[b, :t]) at temperature `temperature`, without the token
    `banned` (the pad token the sampler never emits; see `logprobs_from_logits`).

    input_ids, attention_mask, response_mask: (B, T); returns (B, T) fp32, zero where
    response_mask is 0 (prompt, padding, and the first position, which nothing predicts).
    Prompts may be left-padded: position ids are derived from the attention mask.
    """
    B, T = input_ids.shape
    response_mask = response_mask.bool().clone()
    response_mask[:, 0] = False
    out = torch.zeros(B, T, dtype=torch.float32, device=input_ids.device)  # (B, T)
    cols = response_mask.any(dim=0).nonzero()
    if cols.numel() == 0:
        return out
    first = int(cols[0])  # first column holding a response token in any row
    kwargs: dict[str, Any] = {}
    if accepts_logits_to_keep(model):
        # Logits at positions first-1 .. T-2 predict tokens first .. T-1.
        kwargs["logits_to_keep"] = T - first + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False,
                   **kwargs).logits  # (B, K, V)
    logits = logits[:, -(T - first + 1):-1]  # (B, T - first, V)
    labels = input_ids[:, first:]  # (B, T - first)
    lp = logprobs_from_logits(logits, labels, temperature, banned)  # (B, T - first)
    out[:, first:] = torch.where(response_mask[:, first:], lp, torch.zeros_like(lp))
    return out
