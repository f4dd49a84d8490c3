"""Batched sampling with the KV cache: our own loop, so that every RLHF detail is explicit.

- Prompts are LEFT-padded, so that all rows' next tokens sit in the same (last) column, and
  position ids count only real tokens (cumsum of the attention mask - 1), so padding does not
  shift positions (Huang et al., 2023, "The N Implementation Details of RLHF with PPO").
- Each row stops at its first stop token (EOS by default); the stop token is kept in the
  response, nothing after it is generated: finished rows leave the batch and the KV cache, so
  later steps cost only the rows still running, and the loop ends when all rows have stopped.
- The KV cache is preallocated (transformers' StaticCache) rather than grown by concatenation;
  each forward says which cache columns it writes (`cache_position`, where the installed
  transformers takes it), never leaving it to be inferred from the cache's contents.
- The pad token is never sampled: a pad in a response could not be told from padding.
- Rows are sorted by prompt length before batching, so that a batch holds similar lengths and
  little padding; results come back in the original order.
- The n samples of a prompt share its prefill: each distinct prompt of a batch is run once and
  its KV-cache rows copied to its samples.
- `logprobs` are those of the sampled tokens under softmax(logits / temperature) without the pad
  token, before top-k / top-p filtering: exactly what `coachlm.models.logprobs.sequence_logprobs`
  (with `banned` = the pad id) and the RL forward passes recompute. RLHF
  samples with top_k=0 and top_p=1 so that the two distributions agree.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch

from coachlm.errors import CoachError
from coachlm.models.logprobs import (accepts_logits_to_keep, cache_arguments,
                                     position_ids_from_mask, returned_cache)
from coachlm.models.modes import eval_mode


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy decoding
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    n: int = 1  # responses per prompt
    batch_size: int = 32
    seed: int | None = 0  # None: the global torch RNG
    dtype: Literal["model", "bf16"] = "model"  # bf16: sample from a bf16 copy (`cast_copy`)
    stop_token_ids: tuple[int, ...] = ()  # in addition to the tokenizer's and model's EOS

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.n < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens, n and batch_size must be >= 1")
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")


@dataclass
class Generation:
    """Responses in prompt-major order: row i answers prompt `prompt_index[i]`."""

    prompt_index: list[int]
    response_ids: list[list[int]]  # without padding; ends with the stop token when finished
    finished: list[bool]  # emitted a stop token within max_new_tokens
    logprobs: list[list[float]] = field(default_factory=list)  # one per response token

    @property
    def num_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)


def stop_ids(model: Any, tokenizer: Any, extra: Sequence[int] = ()) -> list[int]:
    """EOS of the tokenizer and of the model's generation config, plus `extra`."""
    ids = {tokenizer.eos_token_id, *extra}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    return sorted(i for i in ids if i is not None)


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k, then nucleus (top-p; Holtzman et al., 2020) filtering. logits: (B, V)."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def row_uniforms(seed: int, rows: Sequence[int], steps: int) -> torch.Tensor:
    """(B, steps) float64 uniforms, row r's from its own stream seeded by (seed, r).

    A response then depends only on its prompt, the weights and its row number, not on which
    rows share its batch: a rollout sharded over processes samples what one process would."""
    out = torch.empty(len(rows), steps, dtype=torch.float64)
    g = torch.Generator()
    for i, r in enumerate(rows):
        g.manual_seed((seed * 1_000_003 + r) % 2**63)
        out[i] = torch.rand(steps, generator=g, dtype=torch.float64)
    return out


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """One draw per row of probs (B, V) -> (B,), by inverse-CDF sampling; `u` (B,) uniforms
    (None: from torch's global RNG).

    Equivalent to torch.multinomial(probs, 1) but needs one uniform number per row instead of
    one exponential per vocabulary entry (multinomial took 22% of sampling time on CPU).
    """
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    if u is None:
        u = torch.rand(probs.shape[0], dtype=torch.float64, device=probs.device)
    total = cdf[:, -1:]  # (B, 1)
    # u * total can round up to the total mass, past every token; cap it just below, so the
    # draw is always a token of positive probability (right=True: the first index whose cdf
    # exceeds u; a zero-probability token repeats its predecessor's cdf, so it never is).
    # One operator instead of a check and a host sync per token (issue 15).
    u = torch.minimum(u.unsqueeze(-1) * total, total.nextafter(total.new_zeros(())))  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


def _sample_next(logits: torch.Tensor, cfg: SamplingConfig, banned: torch.Tensor | None,
                 u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens (B,) and their logprobs (B,) from last-position logits (B, V) in fp32,
    never drawing (nor scoring) the `banned` token ids (the pad token). Overwrites `logits`."""
    if banned is not None:
        logits.index_fill_(-1, banned, float("-inf"))  # (B, V), in place: one operator
    scaled = logits / cfg.temperature if cfg.temperature not in (0.0, 1.0) else logits
    logprobs = scaled.log_softmax(dim=-1)  # (B, V)
    if cfg.temperature == 0:
        tokens = logits.argmax(dim=-1)  # (B,)
    else:
        tokens = _inverse_cdf(_filter(scaled, cfg.top_k, cfg.top_p).softmax(dim=-1), u)  # (B,)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)  # (B, P)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attention_mask[i, width - len(p):] = 1
    return input_ids, attention_mask


def _static_cache(model: Any, max_len: int) -> Any:
    """A KV cache preallocated for `max_len` positions, or None to let the model make its own.

    HF's DynamicCache concatenates every step, copying the whole cache per token: 70% of the CPU
    time in a profile of world-small sampling. A static cache writes each new position in place.
    Under autocast, keys (fp32 after RoPE) and values (bf16) differ in dtype, which a static
    cache cannot hold: the model's dynamic cache is used then.
    """
    from transformers import StaticCache

    if torch.is_autocast_enabled(next(model.parameters()).device.type):
        return None
    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except (TypeError, ValueError, KeyError, AttributeError, NotImplementedError):
        return None


def _prefill(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             position_ids: torch.Tensor, max_len: int) -> tuple[torch.Tensor, Any]:
    """(last-position logits (B, V), KV cache of B rows) of the left-padded prompts (B, P).

    Rows with the same prompt (the n samples of one prompt) share one prefill: the distinct
    prompts are run once and their cache rows copied to every row that asks for them (the
    prompt's cost divided by n; in RL with 4 samples per prompt, ~20% of sampling time).
    """
    first: dict[tuple[int, ...], int] = {}  # prompt -> its index among the distinct ones
    distinct: list[int] = []  # (G,) the first row of each distinct prompt
    owner: list[int] = []  # (B,) each row's distinct prompt
    for i, row in enumerate(input_ids.tolist()):
        if tuple(row) not in first:
            first[tuple(row)] = len(distinct)
            distinct.append(i)
        owner.append(first[tuple(row)])
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    rows = torch.tensor(distinct, dtype=torch.long, device=input_ids.device)  # (G,)
    cache = cache_arguments(model, _static_cache(model, max_len), 0, input_ids.shape[1],
                            input_ids.device)
    out = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                position_ids=position_ids[rows], use_cache=True, **cache, **keep)
    logits, cache = out.logits[:, -1], returned_cache(out)  # (G, V)
    if len(distinct) < len(owner):
        rows = torch.tensor(owner, dtype=torch.long, device=logits.device)  # (B,)
        cache.reorder_cache(rows)
        logits = logits[rows]  # (B, V)
    return logits, cache


def _generate_batch(model: Any, prompts: Sequence[Sequence[int]], cfg: SamplingConfig,
                    stops: torch.Tensor, pad_id: int,
                    uniforms: torch.Tensor | None) -> Generation:
    device = next(model.parameters()).device
    B, steps = len(prompts), cfg.max_new_tokens
    input_ids, prompt_mask = _left_pad(prompts, pad_id)  # (B, P), (B, P)
    P = input_ids.shape[1]
    attention_mask = torch.cat([prompt_mask, prompt_mask.new_zeros(B, steps)], 1).to(device)
    input_ids = input_ids.to(device)  # attention_mask: (A, P + N), filled in as tokens come
    position_ids = position_ids_from_mask(attention_mask[:, :P])  # (B, P)
    logits, cache = _prefill(model, input_ids, attention_mask[:, :P], position_ids, P + steps)
    # Per decode step (rows still running, their tokens, their logprobs), each (A,): written
    # into the (B, N) results once at the end, not with a scatter per step (issue 15).
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    active = torch.arange(B, device=device)  # (A,) batch rows still generating
    next_pos = position_ids[:, -1:] + 1  # (A, 1)
    banned = torch.tensor([pad_id], device=device)  # the pad token is never sampled
    if uniforms is not None:
        uniforms = uniforms.to(device)  # (A, N): rows leave with their batch rows
    for t in range(steps):
        u = None if uniforms is None else uniforms[:, t]  # (A,)
        tok, lp = _sample_next(logits.float(), cfg, banned, u)  # (A,), (A,)
        history.append((active, tok, lp))
        if t == steps - 1:
            break
        stopped = torch.isin(tok, stops)  # (A,)
        if bool(stopped.any()):  # the loop's one host sync per token
            if bool(stopped.all()):
                break
            # Drop finished rows from the batch and the KV cache: later steps cost only the
            # rows still generating.
            rows = (~stopped).nonzero().squeeze(-1)  # (A',)
            cache.reorder_cache(rows)
            active, tok = active[rows], tok[rows]
            attention_mask, next_pos = attention_mask[rows], next_pos[rows]
            uniforms = None if uniforms is None else uniforms[rows]
        attention_mask[:, P + t] = 1
        out = model(input_ids=tok.unsqueeze(-1), attention_mask=attention_mask[:, :P + t + 1],
                    position_ids=next_pos, use_cache=True,
                    **cache_arguments(model, cache, P + t, 1, device))
        logits, cache = out.logits[:, -1], returned_cache(out)  # (A, V)
        next_pos = next_pos + 1
    return _assemble(history, B, steps, pad_id, stops)


def _assemble(history: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], B: int,
              steps: int, pad_id: int, stops: torch.Tensor) -> Generation:
    """A batch's responses from its decode steps' (rows, tokens, logprobs): a row's length is
    the number of steps it ran, and it finished if its last token is a stop token (a row
    leaves the batch right after its first stop token, or runs to `steps`)."""
    rows = torch.cat([h[0] for h in history])  # (S,) one entry per generated token
    sizes = torch.tensor([len(h[0]) for h in history], device=rows.device)  # (T,)
    cols = torch.arange(len(history), device=rows.device).repeat_interleave(sizes)  # (S,)
    tokens = torch.full((B, steps), pad_id, dtype=torch.long, device=rows.device)  # (B, N)
    logprobs = torch.zeros(B, steps, dtype=torch.float32, device=rows.device)  # (B, N)
    tokens[rows, cols] = torch.cat([h[1] for h in history])
    logprobs[rows, cols] = torch.cat([h[2] for h in history]).float()
    n = torch.bincount(rows, minlength=B).tolist()
    stop_set = set(stops.tolist())
    ids = [row[:k] for row, k in zip(tokens.tolist(), n)]
    return Generation(prompt_index=list(range(B)), response_ids=ids,
                      finished=[row[-1] in stop_set for row in ids],
                      logprobs=[row[:k] for row, k in zip(logprobs.tolist(), n)])


def frozen_copy(root: torch.nn.Module, dtype: torch.dtype, cast: Sequence[torch.Tensor]) -> Any:
    """A deep copy of `root` with no parameter requiring grad, in which the tensors `cast` (its
    parameters or buffers) are cast straight into the copy, with no full-precision copy first;
    the rest are copied as they are."""
    memo: dict[int, Any] = {}
    for t in cast:
        memo[id(t)] = torch.nn.Parameter(t.detach().to(dtype), requires_grad=False) \
            if isinstance(t, torch.nn.Parameter) else t.detach().to(dtype)
    return copy.deepcopy(root, memo).requires_grad_(False)


def cast_copy(model: Any, dtype: torch.dtype) -> Any:
    """A frozen copy of `model` (a peft model's base model, in whatever `lora_view` is active)
    with its weights in `dtype`, to sample from without autocast.

    Under bf16 autocast every decode step would cast every frozen weight again (autocast caches
    only casts of weights that require grad), and transformers' static KV cache cannot hold
    autocast's fp32 keys (after the rotary embedding) beside its bf16 values, so each step
    would also concatenate the whole cache. A bf16 copy decodes with bf16 matmuls (AMX on a
    Xeon), one dtype in the cache, and no casts. The weights are cast straight into the copy
    (no fp32 copy first); buffers other than weights (the rotary frequencies) stay as they are.
    The copy attends with plain SDPA: at one query per step, fp32 attention ("sdpa_fp32", which
    training uses) would cast the whole cache up every step (world-25m, 32 rows x 32 tokens, 1
    thread, CPU s: 0.63 bf16 attention, 0.92 fp32 attention, 1.2 the fp32 model, 1.3 autocast).
    """
    from coachlm.models.attention import NAME as FP32_ATTENTION
    from coachlm.models.lora import PeftModel

    root = model.get_base_model() if isinstance(model, PeftModel) else model
    weights = [b for name, b in root.named_buffers()
               if name.rpartition(".")[2] == "weight" and b.is_floating_point()]
    out = frozen_copy(root, dtype, [*root.parameters(), *weights])
    if getattr(out.config, "_attn_implementation", None) == FP32_ATTENTION:
        out.set_attn_implementation("sdpa")  # the copy's own config (deep-copied)
    return out


def _check_prompts(model: Any, prompt_ids: Sequence[Sequence[int]], cfg: SamplingConfig) -> None:
    if any(len(p) == 0 for p in prompt_ids):
        raise CoachError("cannot sample from an empty prompt (no tokens)")
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max((len(p) for p in prompt_ids), default=0)
    if context is not None and longest + cfg.max_new_tokens > context:
        raise CoachError(f"a prompt of {longest} tokens plus max_new_tokens={cfg.max_new_tokens} "
                         f"exceeds the model's context of {context} tokens (cut prompts from "
                         f"the left with max_prompt_length)")


def fit_prompts(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]],
                max_new_tokens: int, max_prompt_length: int | None = None
                ) -> tuple[list[list[int]], int]:
    """Prompts cut from the left to `max_prompt_length` tokens (None: what the model's context
    leaves after `max_new_tokens`; no cut when the model states no context), keeping a leading
    BOS. The end of a prompt (the latest turn, the request) is what the response answers; a long
    transcript's oldest turns go first. Returns (prompts, how many were cut)."""
    limit = max_prompt_length
    if limit is None:
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if context is None:
            return [list(p) for p in prompt_ids], 0
        limit = context - max_new_tokens
    if limit < 2:
        raise CoachError(f"no room for a prompt: max_prompt_length {limit} (the model's context "
                         f"minus max_new_tokens={max_new_tokens}) must be >= 2")
    bos = getattr(tokenizer, "bos_token_id", None)
    out, cut = [], 0
    for p in prompt_ids:
        p = list(p)
        if len(p) > limit:
            head = p[:1] if bos is not None and p[0] == bos else []
            p, cut = head + p[len(p) - (limit - len(head)):], cut + 1
        out.append(p)
    return out, cut


def generate(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], cfg: SamplingConfig,
             on_batch: Callable[[int, int], None] | None = None, row_offset: int = 0) -> Generation:
    """Sample `cfg.n` responses to each prompt (token ids, without padding).

    `on_batch(rows, tokens)` is called after each batch (for progress bars). Row r (prompt
    r // n, sample r % n) draws from its own seeded stream, number `row_offset + r`
    (`row_uniforms`): a process sampling a shard of a rollout passes its first row's number.
    """
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise CoachError("sampling needs a pad token distinct from EOS (use models.load_tokenizer)")
    _check_prompts(model, prompt_ids, cfg)
    device = next(model.parameters()).device
    stops = torch.tensor(stop_ids(model, tokenizer, cfg.stop_token_ids), device=device)
    rows = [i for i in range(len(prompt_ids)) for _ in range(cfg.n)]
    order = sorted(range(len(rows)), key=lambda r: len(prompt_ids[rows[r]]))
    if cfg.dtype == "bf16" and any(p.dtype == torch.float32 for p in model.parameters()):
        with torch.no_grad():
            model = cast_copy(model, torch.bfloat16)
    result = Generation(prompt_index=rows, response_ids=[[]] * len(rows),
                        finished=[False] * len(rows), logprobs=[[]] * len(rows))
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            uniforms = None if cfg.seed is None or cfg.temperature == 0 else \
                row_uniforms(cfg.seed, [row_offset + r for r in idx], cfg.max_new_tokens)
            batch = _generate_batch(model, [prompt_ids[rows[r]] for r in idx], cfg, stops,
                                    tokenizer.pad_token_id, uniforms)
            for j, r in enumerate(idx):
                result.response_ids[r] = batch.response_ids[j]
                result.finished[r] = batch.finished[j]
                result.logprobs[r] = batch.logprobs[j]
            if on_batch is not None:
                on_batch(len(idx), batch.num_tokens)
    return result


def decode_responses(tokenizer: Any, gen: Generation) -> list[str]:
    """Response texts without their final stop token, but with any special token *inside* the
    response kept as its text (e.g. a BOS or a chat-turn marker mid-response).

    Rewards, labelers and judges read these texts: with special tokens stripped, a policy could
    emit them mid-response unseen by any reward. The texts are scored rather than the ids
    because every reward (rubric, rules, a reward model with its own tokenizer and chat
    template, an AI judge) reads text; a reward model's tokenizer maps a special token's text
    back to the token.
    """
    ids = [r[:-1] if done else r for r, done in zip(gen.response_ids, gen.finished)]
    return tokenizer.batch_decode(ids, skip_special_tokens=False)
