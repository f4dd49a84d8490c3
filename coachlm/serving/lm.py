"""A causal LM in process, with the two operations a feedback model and a server need.

- `score(texts, top_k)`: every token of each text with its character offset, its logprob given
  the tokens before it, and the `top_k` likeliest alternatives there: what an OpenAI-style
  completion returns with `echo=True, logprobs=k`.
- `complete(prompts, max_tokens, temperature)`: continuations from the project's KV-cached
  sampler (`rollout.sampling.generate`; temperature 0 is greedy), then scored the same way.

`continuation_logprob(tokens, context_len)` reads the logprob of a continuation from a scored
`context + continuation`: the sum over the tokens that end after the context. A token that
straddles the boundary (a BPE merge across it) counts with the continuation. The same rule runs
in process and on the client of `coachlm serve`, so both give the same numbers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from coachlm.errors import CoachError


@dataclass(frozen=True)
class Token:
    text: str
    offset: int  # character offset of the token in its text
    logprob: float | None  # None for a first token that nothing predicts
    top: dict[str, float] = field(default_factory=dict)  # the top_k alternatives


@dataclass(frozen=True)
class Completion:
    text: str  # the generated continuation
    finished: bool  # stopped at EOS within max_tokens
    tokens: list[Token]  # the prompt's (when echoed) and the continuation's tokens
    prompt_tokens: int
    completion_tokens: int


def continuation_logprob(tokens: Sequence[Token], context_len: int, text_len: int) -> float:
    """Sum of the logprobs of the tokens ending after `context_len` characters."""
    total, found = 0.0, False
    for i, tok in enumerate(tokens):
        end = tokens[i + 1].offset if i + 1 < len(tokens) else text_len
        if end > context_len:
            if tok.logprob is None:
                raise CoachError("the continuation starts at the first token: no logprob for it")
            total, found = total + tok.logprob, True
    if not found:
        raise CoachError("the continuation has no tokens")
    return total


class LocalLM:
    """A Hugging Face causal LM and its tokenizer, loaded once; calls are serialized (a lock),
    so one instance can back a threaded server."""

    def __init__(self, model: Any, tokenizer: Any, name: str, batch_size: int = 16):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.batch_size = batch_size
        self.lock = threading.Lock()
        if not getattr(tokenizer, "is_fast", False):
            raise CoachError("the feedback model needs a fast tokenizer (character offsets)")

    @classmethod
    def load(cls, path: str | Path, name: str | None = None, dtype: str = "fp32") -> "LocalLM":
        from coachlm.models.load import _check_dir, load_model, load_tokenizer

        tok = load_tokenizer(_check_dir(path, "model"))
        model = load_model(path, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
                           tokenizer=tok)
        return cls(model, tok, name or Path(path).resolve().name)

    # ---------------------------------------------------------------------------- encoding

    def encode(self, text: str) -> tuple[list[int], list[int], int]:
        """(ids, character offsets, how many leading ids are a BOS added before the text)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [a for a, _ in enc["offset_mapping"]]
        bos = self.tokenizer.bos_token_id
        if bos is not None and ids[:1] != [bos]:  # a BOS gives the first token a logprob too
            return [bos] + ids, [0] + offsets, 1
        return ids, offsets, 0

    def _token_text(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    # ---------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def _logprobs(self, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """log p(. | prefix) at every position of each row: [(T_i, V)] in fp32."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        longest = max((len(r) for r in rows), default=0)
        if context is not None and longest > context:
            raise CoachError(f"a text of {longest} tokens exceeds the model's context of "
                             f"{context} tokens")
        pad = self.tokenizer.pad_token_id
        out: list[torch.Tensor] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            width = max(len(r) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T) right-padded
            mask = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T)
            for i, r in enumerate(batch):
                ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                use_cache=False).logits  # (B, T, V)
            out += [logits[i, :len(r)].float().log_softmax(-1).cpu() for i, r in enumerate(batch)]
        return out

    def _tokens(self, ids: list[int], offsets: list[int], lp: torch.Tensor, skip: int,
                top_k: int) -> list[Token]:
        """Tokens ids[skip:] with logprobs from the (T, V) table `lp` (row t predicts t + 1)."""
        texts = self._token_text(ids)
        out = []
        for t in range(skip, len(ids)):
            if t == 0:
                out.append(Token(texts[t], offsets[t], None))
                continue
            row = lp[t - 1]  # (V,)
            top = {}
            if top_k > 0:
                values, index = row.topk(min(top_k, row.numel()))
                top = {s: float(v) for s, v in zip(self._token_text(index.tolist()),
                                                   values.tolist())}
            out.append(Token(texts[t], offsets[t], float(row[ids[t]]), top))
        return out

    def score(self, texts: Sequence[str], top_k: int = 0) -> list[list[Token]]:
        """Every token of every text with its logprob (module docstring)."""
        encoded = [self.encode(t) for t in texts]
        with self.lock:
            tables = self._logprobs([ids for ids, _, _ in encoded])
        return [self._tokens(ids, offs, lp, skip, top_k)
                for (ids, offs, skip), lp in zip(encoded, tables)]

    def option_logprobs(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """log P(option | context) for each context (rows) and option (columns)."""
        texts = [c + o for c in contexts for o in options]
        scored = self.score(texts)
        flat = [continuation_logprob(tok, len(c), len(c + o))
                for tok, (c, o) in zip(scored, ((c, o) for c in contexts for o in options))]
        k = len(options)
        return [flat[i:i + k] for i in range(0, len(flat), k)]

    # ---------------------------------------------------------------------------- generation

    def complete(self, prompts: Sequence[str], max_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = 0, echo: bool = False,
                 top_k_logprobs: int = 0) -> list[Completion]:
        """Continuations of raw-text prompts, with their tokens scored (module docstring)."""
        from coachlm.rollout.sampling import SamplingConfig, generate

        encoded = [self.encode(p) for p in prompts]
        with self.lock:
            if max_tokens > 0:
                gen = generate(self.model, self.tokenizer, [ids for ids, _, _ in encoded],
                               SamplingConfig(max_new_tokens=max_tokens, temperature=temperature,
                                              top_p=top_p, seed=seed, batch_size=self.batch_size))
                new, finished = gen.response_ids, gen.finished
            else:
                new, finished = [[] for _ in prompts], [False] * len(prompts)
            stops = set(_stops(self.model, self.tokenizer))
            new = [[i for i in r if i not in stops] for r in new]  # the EOS is not text
            tables = self._logprobs([ids + r for (ids, _, _), r in zip(encoded, new)])
        out = []
        for p, (ids, offs, skip), r, done, lp in zip(prompts, encoded, new, finished, tables):
            text = self.tokenizer.decode(r)
            pieces = [len(self.tokenizer.decode(r[:i])) for i in range(len(r))]
            all_offsets = offs + [len(p) + o for o in pieces]
            first = skip if echo else len(ids)
            tokens = self._tokens(ids + r, all_offsets, lp, first, top_k_logprobs)
            out.append(Completion(text, bool(done), tokens, len(ids) - skip, len(r)))
        return out


def _stops(model: Any, tokenizer: Any) -> list[int]:
    from coachlm.rollout.sampling import stop_ids

    return stop_ids(model, tokenizer)
