"""A rollout batch as tensors (`Experience`) and the forward passes that fill it.

Layout, as in OpenRLHF's `Experience`: each row is the LEFT-padded prompt followed by the
RIGHT-padded response, `sequences` (B, P + N). Response-side tensors are (B, N) and aligned with
the response tokens: column t is response token t. `action_mask` is 1 on real response tokens,
up to and including the first stop token, and 0 after it: sampling stops a row at its first stop
token and nothing after it is ever scored, rewarded or trained on (Huang et al., 2023, "The N
Implementation Details of RLHF with PPO": truncate at the stop token, mask after EOS).

Values follow the usual convention: V_t is read from the hidden state that predicts response
token t (column P - 1 + t), the state before the action, from the same forward pass that yields
logprobs. Logits are divided by the sampling temperature before the softmax, so recomputed
logprobs are those of the sampling distribution (Huang et al., 2023, temperature detail).

Micro-batches are length-sorted and trimmed (`sorted_micro_batches`, `Experience.trimmed`): a
rollout's padded width is set by its longest prompt and its longest response, but a group of
rows of similar length needs only its own columns. Padding columns are masked out of attention,
carry action_mask 0 and shift no position id, so dropping them changes results only by float
rounding, and the forward passes skip most of the padding (~30% of the tokens of a rollout of
the SFT'd world-small model).

With several samples per prompt, a micro-batch can also share prompts (`share_prompts`: the
"share" layout of `coachlm.data.layouts`, used by DPO too): one row per prompt, the prompt once
and then each of its responses, a response attending to the prompt and to itself only, with
positions continuing from the prompt. Each response token gets the logits it gets in its own
padded row (up to float rounding; `shared_prompts_supported` checks a model does), and the
prompt is computed once instead of once per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from coachlm.data.layouts import PROBE, agrees_with_pad, lay_out
from coachlm.models.logprobs import (accepts_logits_to_keep, backbone_and_head, ban,
                                     logprobs_from_logits, position_ids_from_mask)
from coachlm.rl_math import entropy_from_logits


@dataclass
class Experience:
    """One rollout, B = episodes (prompt x sample), P = padded prompt width, N = response width."""

    sequences: Tensor  # (B, P + N) long: left-padded prompt, then right-padded response
    attention_mask: Tensor  # (B, P + N) long: 1 on real prompt and response tokens
    action_mask: Tensor  # (B, N) bool: 1 on response tokens up to and including the stop token
    finished: Tensor  # (B,) bool: the response ended with a stop token (EOS)
    prompt_index: Tensor  # (B,) long: which prompt of the rollout each row answers
    # (B, N) fp32: log pi_old(token), the policy that sampled; None until the update's forward
    # gives it (`ppo_steps.old_logprobs_from_update`)
    logprobs: Tensor | None
    ref_logprobs: Tensor  # (B, N) fp32: log pi_ref(token), the frozen starting policy
    values: Tensor | None = None  # (B, N) fp32: V_old(state before token); None without a critic
    scores: Tensor | None = None  # (B,) fp32: reward after normalization, clipping, EOS penalty
    kl: Tensor | None = None  # (B, N) fp32: per-token KL estimate, 0 after EOS
    rewards: Tensor | None = None  # (B, N) fp32: -beta * KL per token + score on the last token
    advantages: Tensor | None = None  # (B, N) fp32
    returns: Tensor | None = None  # (B, N) fp32: GAE targets for the critic
    # (B, N) fp32: truncated importance weights min(pi_old / mu, C) when another engine sampled
    # from mu (`coachlm.importance`); None: the learner sampled itself, no correction
    is_weights: Tensor | None = None
    pad_id: int = 0  # the id on padding in `sequences`

    @property
    def prompt_width(self) -> int:
        return self.sequences.shape[1] - self.action_mask.shape[1]

    @property
    def response_lengths(self) -> Tensor:
        return self.action_mask.sum(dim=1)  # (B,)

    def select(self, rows: Tensor) -> "Experience":
        """The rows `rows` (K,) of every tensor field (a mini- or micro-batch)."""
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: (v[rows] if isinstance(v, Tensor) else v)
                                for k, v in picked.items()})

    def trimmed(self) -> "Experience":
        """These rows cut to the columns they use (`used_columns`): (b, P' + n) sequences and
        (b, n) response-side tensors, n = the longest response among them."""
        start, n = used_columns(self.attention_mask, self.action_mask)
        stop = self.prompt_width + n
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _SEQUENCE_FIELDS:
                out[f.name] = v[:, start:stop]
            elif isinstance(v, Tensor) and v.dim() == 2:  # response-side (B, N)
                out[f.name] = v[:, :n]
        return replace(self, **out)

    def micro_batch(self, rows: Tensor, share: bool) -> tuple["Experience", "SharedPrompts | None"]:
        """The rows `rows` (b,) trimmed, and, with `share`, laid out with shared prompts."""
        e = self.select(rows).trimmed()
        if not share:
            return e, None
        return e, share_prompts(e.sequences, e.attention_mask, e.action_mask, e.prompt_index,
                                self.pad_id)


_SEQUENCE_FIELDS = ("sequences", "attention_mask")


def used_columns(attention_mask: Tensor, action_mask: Tensor) -> tuple[int, int]:
    """(start, n) for rows of a rollout: their columns start..P + n - 1 hold every real token.

    attention_mask: (b, P + N), prompts left-padded; action_mask: (b, N). `start` is the first
    column of the longest prompt, n (>= 1) the longest response length.
    """
    P = attention_mask.shape[1] - action_mask.shape[1]
    start = P - int(attention_mask[:, :P].sum(dim=1).max())
    n = max(1, int(action_mask.sum(dim=1).max()))
    return start, n


def pack_rollout(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                 prompt_index: Sequence[int], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(sequences (B, P + N), attention_mask (B, P + N), action_mask (B, N)) of a rollout.

    `prompt_ids[prompt_index[b]]` and `response_ids[b]` form row b. A row's response is kept up
    to and including its first stop token (the sampler already ends it there), so no token
    after EOS exists; the columns after a row's end are padding with action_mask 0.
    """
    B = len(response_ids)
    P = max(len(prompt_ids[i]) for i in prompt_index)
    N = max(1, max(len(r) for r in response_ids))
    sequences = torch.full((B, P + N), pad_id, dtype=torch.long)  # (B, P + N)
    attention_mask = torch.zeros(B, P + N, dtype=torch.long)  # (B, P + N)
    action_mask = torch.zeros(B, N, dtype=torch.bool)  # (B, N)
    for b, (i, resp) in enumerate(zip(prompt_index, response_ids)):
        p = prompt_ids[i]
        sequences[b, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attention_mask[b, P - len(p):P + len(resp)] = 1
        if resp:
            sequences[b, P:P + len(resp)] = torch.tensor(resp, dtype=torch.long)
            action_mask[b, :len(resp)] = True
    return sequences, attention_mask, action_mask


@dataclass(frozen=True)
class SharedPrompts:
    """Rows of a micro-batch in the "share" layout (`data.layouts`): one layout row per distinct
    prompt, holding the prompt once and then each of its responses; and where each of the M
    response tokens is predicted and where its result goes in the (b, n) outputs."""

    input_ids: Tensor  # (R, T) long
    position_ids: Tensor  # (R, T) long: a response's positions continue from its prompt
    attention_mask: Tensor  # (R, 1, T, T) bool: a response sees its prompt and itself only
    pred_rows: Tensor  # (M,) long: the layout position whose output predicts the token
    pred_cols: Tensor  # (M,) long
    targets: Tensor  # (M,) long: the token
    rows: Tensor  # (M,) long: its row in the micro-batch
    cols: Tensor  # (M,) long: its response column


def share_prompts(sequences: Tensor, attention_mask: Tensor, action_mask: Tensor,
                  prompt_index: Tensor, pad_id: int) -> SharedPrompts:
    """The rows (sequences, attention_mask: (b, P + n), prompts left-padded; action_mask
    (b, n); prompt_index (b,)) with the rows of one prompt sharing it."""
    P = sequences.shape[1] - action_mask.shape[1]
    prompt_lengths = attention_mask[:, :P].sum(dim=1).tolist()
    response_lengths = action_mask.sum(dim=1).tolist()
    tokens = sequences.tolist()
    groups: dict[int, list[int]] = {}  # prompt -> its rows, in row order
    for row, k in enumerate(prompt_index.tolist()):
        groups.setdefault(k, []).append(row)
    members = list(groups.values())
    prompts = [tokens[rows[0]][P - prompt_lengths[rows[0]]:P] for rows in members]
    responses = [[tokens[r][P:P + response_lengths[r]] for r in rows] for rows in members]
    packed = lay_out(prompts, responses, "share", pad_id, numbering=members)
    pred_rows, pred_cols, targets, seqs = packed.scored_tokens()  # (M,) each
    # A response's first token is predicted at its prompt's end, token t >= 1 at token t - 1.
    cols = (pred_cols - packed.seq_start[seqs] + 1).clamp(min=0)  # (M,)
    return SharedPrompts(input_ids=packed.input_ids, position_ids=packed.position_ids,
                         attention_mask=packed.attention_mask(), pred_rows=pred_rows,
                         pred_cols=pred_cols, targets=targets, rows=seqs, cols=cols)


def _shared_forward(model: Any, value_head: nn.Module | None, shared: SharedPrompts,
                    shape: tuple[int, int], temperature: float, with_entropy: bool,
                    pad_id: int | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """`policy_forward` on shared prompts: the backbone over the layout, the LM head (and value
    head) only at the M positions that predict response tokens."""
    backbone, head = backbone_and_head(model)
    hidden = backbone(input_ids=shared.input_ids, position_ids=shared.position_ids,
                      attention_mask=shared.attention_mask, use_cache=False).last_hidden_state
    hidden = hidden[shared.pred_rows, shared.pred_cols]  # (M, d)
    logits = head(hidden)  # (M, V)
    where = (shared.rows, shared.cols)

    def place(x: Tensor) -> Tensor:  # (M,) -> (b, n), 0 off the responses
        return x.new_zeros(shape).index_put(where, x)

    logprobs = place(logprobs_from_logits(logits, shared.targets, temperature, pad_id))  # (b, n)
    values = entropy = None
    if value_head is not None:
        values = place(value_head(hidden).squeeze(-1).float())  # (b, n)
    if with_entropy:
        with torch.no_grad():
            entropy = place(entropy_from_logits(ban(logits.float() / temperature, pad_id)))
    return logprobs, values, entropy


def policy_forward(model: Any, value_head: nn.Module | None, sequences: Tensor,
                   attention_mask: Tensor, action_mask: Tensor, temperature: float,
                   with_entropy: bool = False, shared: SharedPrompts | None = None,
                   pad_id: int | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(logprobs, values, entropy) of the response tokens from one forward pass.

    `pad_id`: the pad token, which the sampler never emits, is left out of the softmax, so that
    logprobs, KL and entropy are those of the distribution sampled from.

    sequences, attention_mask: (B, P + N); action_mask: (B, N). Returns (B, N) tensors, 0 where
    action_mask is 0; values is None without a value head, entropy None unless asked for.
    Only the N logit rows that predict response tokens reach the LM head (`logits_to_keep`).
    `shared`: the same rows with shared prompts (`share_prompts`), run instead.
    """
    if shared is not None:
        return _shared_forward(model, value_head, shared, tuple(action_mask.shape), temperature,
                               with_entropy, pad_id)
    N = action_mask.shape[1]
    keep = {"logits_to_keep": N + 1} if accepts_logits_to_keep(model) else {}
    out = model(input_ids=sequences, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False,
                output_hidden_states=value_head is not None, **keep)
    logits = out.logits[:, -(N + 1):-1]  # (B, N, V): position P - 1 + t predicts token t
    labels = sequences[:, -N:]  # (B, N)
    logprobs = logprobs_from_logits(logits, labels, temperature, pad_id)  # (B, N)
    zero = torch.zeros_like(logprobs)
    logprobs = torch.where(action_mask, logprobs, zero)
    values = entropy = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, -(N + 1):-1]  # (B, N, d)
        values = torch.where(action_mask, value_head(hidden).squeeze(-1).float(), zero)  # (B, N)
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(ban(logits.float() / temperature, pad_id))  # (B, N)
            entropy = torch.where(action_mask, entropy, zero)
    return logprobs, values, entropy


def shared_prompts_supported(model: Any, pad_id: int) -> bool:
    """Whether `model` gives shared-prompt rows the logprobs it gives padded rows (a model
    without 4-D mask support, or whose forward does more than backbone + LM head, does not)."""
    prompts = [list(p) for p, _ in PROBE]
    responses = [list(r) for _, rs in PROBE for r in rs]
    prompt_index = [k for k, (_, rs) in enumerate(PROBE) for _ in rs]
    # On the model's device: a probe left on the CPU fails on a GPU model, which then silently
    # never shares prompts (found on an H200).
    device = next(model.parameters()).device
    batch = tuple(t.to(device) for t in pack_rollout(prompts, responses, prompt_index, pad_id))
    index = torch.tensor(prompt_index, device=device)

    def score(layout: str) -> Tensor:
        shared = share_prompts(*batch, index, pad_id) if layout == "share" else None
        return policy_forward(model, None, *batch, 1.0, shared=shared)[0]

    return agrees_with_pad(model, score, "share", atol=1e-4, rtol=1e-4)


def sorted_micro_batches(rows: Tensor, exp: Experience, size: int,
                         by_prompt: bool = False) -> list[Tensor]:
    """The rows `rows` (K,) of `exp` regrouped into micro-batches of at most `size` rows of
    similar length, so that each, trimmed, is narrow.

    Rows are ordered by response length, then prompt length, then index; `by_prompt` (for
    shared prompts) keeps the rows of one prompt together, groups ordered by their shared
    length (prompt + all responses). The order depends only on the *set* of rows, so a
    mini-batch that is the whole rollout is forwarded in exactly the micro-batches of the
    rollout's own no-grad pass, and the first epoch's ratio is exactly 1.
    """
    rows = rows.sort().values  # (K,)
    P = exp.prompt_width
    prompt_lengths = exp.attention_mask[rows, :P].sum(dim=1)  # (K,)
    response_lengths = exp.action_mask[rows].sum(dim=1)  # (K,)
    if by_prompt:
        prompt = exp.prompt_index[rows]  # (K,)
        group_lengths = torch.zeros(int(prompt.max()) + 1, dtype=torch.long).index_add(
            0, prompt, response_lengths.long())  # (prompts,) summed response lengths
        keys = (prompt, prompt_lengths + group_lengths[prompt])  # least significant first
    else:
        keys = (prompt_lengths, response_lengths)
    order = torch.arange(len(rows))
    for key in keys:  # stable sorts, least significant key first
        order = order[key[order].sort(stable=True).indices]
    return list(rows[order].split(size))
