"""Where the feedback model runs: in this process, or behind any OpenAI-compatible endpoint.

`LocalModel(path)`: a Hugging Face causal LM loaded here (`serving.lm.LocalLM`).

`OpenAIModel(base_url, model)`: vLLM, llama.cpp's server, a hosted API or `coachlm serve`,
through the `openai` client, in one of two modes:
  - "completions" (default): `/v1/completions` with `echo=True, max_tokens=0, logprobs=0`
    scores `context + option` for every option in one request, exactly (the log-likelihood request of lm-evaluation-harness);
    the option's logprob is read with the same rule as in process
    (`serving.lm.continuation_logprob`), so both paths give the same numbers;
  - "chat": `/v1/chat/completions` with `logprobs=True, top_logprobs=k` and one output token;
    an option's logprob is that of the first-token alternative that reads as its letter ("A",
    " A", "(A"), -inf when absent from the top k (renormalized over the options, absent means
    "less likely than the k-th"). Use it for endpoints that only chat.
Timeouts and retries: the client retries connection errors, 408, 409, 429 and 5xx responses
`max_retries` times with exponential backoff and jitter (the `openai` client's policy), each
attempt limited to `timeout_s`; at most `concurrency` requests are in flight. Every failure
(endpoint down, timeout, no logprobs, a malformed answer) is a `FeedbackModelError`: one line.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

from coachlm.errors import CoachError

T = TypeVar("T")


class FeedbackModelError(CoachError):
    """The feedback model cannot be reached or answered something unusable."""


class LocalModel:
    """A causal LM in this process (greedy chain-of-thought with the project's sampler)."""

    def __init__(self, path: str | Path | None = None, *, lm: Any = None, name: str | None = None):
        from coachlm.serving.lm import LocalLM

        self.lm = lm if lm is not None else LocalLM.load(path, name)
        self.name = name or self.lm.name
        self.tokens_used = 0

    def option_logprobs(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        return self.lm.option_logprobs(contexts, options)

    def generate(self, contexts: Sequence[str], max_tokens: int) -> list[str]:
        return [c.text for c in self.lm.complete(contexts, max_tokens, temperature=0.0)]

    def fits(self, texts: Sequence[str], extra_tokens: int = 0) -> list[bool]:
        """Whether each text (with its BOS) plus `extra_tokens` fits the model's context."""
        context = getattr(self.lm.model.config, "max_position_embeddings", None)
        if context is None:
            return [True] * len(texts)
        return [len(self.lm.encode(t)[0]) + extra_tokens <= context for t in texts]


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str = ""  # empty: the first model the endpoint lists
    api_key: str = "none"  # most local servers ignore it; hosted APIs need one
    mode: Literal["completions", "chat"] = "completions"
    timeout_s: float = 60.0
    max_retries: int = 3
    concurrency: int = 4
    top_logprobs: int = 20  # chat mode: alternatives read for the option letter

    def __post_init__(self) -> None:
        if self.mode not in ("completions", "chat"):
            raise ValueError(f"mode must be completions or chat, got {self.mode!r}")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.concurrency < 1:
            raise ValueError("need timeout_s > 0, max_retries >= 0 and concurrency >= 1")


class OpenAIModel:
    """A feedback model behind an OpenAI-compatible endpoint (module docstring)."""

    def __init__(self, cfg: EndpointConfig):
        import openai

        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=cfg.api_key,
                                    timeout=cfg.timeout_s, max_retries=cfg.max_retries)
        self.tokens_used = 0
        self.name = cfg.model or self.first_model()

    def first_model(self) -> str:
        """The first model the endpoint lists (`GET /models`)."""
        out = self._call(self.client.models.list)
        data = getattr(out, "data", None)
        if not data or not isinstance(getattr(data[0], "id", None), str):
            raise FeedbackModelError(f"feedback endpoint {self.cfg.base_url} lists no models")
        return data[0].id

    # ----------------------------------------------------------------------------- calls

    def _call(self, fn: Callable[..., T], **kwargs: Any) -> T:
        import openai

        where = f"feedback endpoint {self.cfg.base_url}"
        try:
            return fn(**({"model": self.name} if kwargs else {}), **kwargs)
        except openai.APITimeoutError:
            raise FeedbackModelError(f"{where} timed out after {self.cfg.timeout_s:g} s "
                                     f"({self.cfg.max_retries} retries)") from None
        except openai.APIConnectionError as e:
            raise FeedbackModelError(f"{where} is unreachable: {e.__cause__ or e}") from None
        except openai.APIStatusError as e:
            raise FeedbackModelError(f"{where} answered HTTP {e.status_code}: "
                                     f"{_short(e.message)}") from None
        except openai.APIError as e:  # e.g. a body that is not JSON
            raise FeedbackModelError(f"{where} gave an unusable answer: {_short(str(e))}") from None

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        if len(items) <= 1 or self.cfg.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(fn, items))

    # ------------------------------------------------------------------------ completions

    def _score(self, context: str, options: Sequence[str]) -> list[float]:
        """log P(option | context) for each option: one request scoring every context + option."""
        texts = [context + o for o in options]
        out = self._call(self.client.completions.create, prompt=texts, max_tokens=0, echo=True,
                         logprobs=0, temperature=0.0)
        choices = sorted(getattr(out, "choices", None) or [], key=lambda c: c.index)
        if isinstance(out, (str, bytes)) or len(choices) != len(texts):
            _choice(out, self.cfg.base_url)  # a body that is not a completion: say so
            raise FeedbackModelError(f"feedback endpoint {self.cfg.base_url} returned "
                                     f"{len(choices)} choices for {len(texts)} prompts")
        self.tokens_used += getattr(getattr(out, "usage", None), "total_tokens", 0) or 0
        return [self._continuation(c, len(context), len(t)) for c, t in zip(choices, texts)]

    def _continuation(self, choice: Any, context_len: int, text_len: int) -> float:
        from coachlm.serving.lm import Token, continuation_logprob

        lp = getattr(choice, "logprobs", None)
        if lp is None:
            raise FeedbackModelError(f"feedback endpoint {self.cfg.base_url} returned no "
                                     "logprobs (does it support logprobs with echo?)")
        lp = _fields(lp, self.cfg.base_url, "tokens", "token_logprobs", "text_offset")
        toks, lps, offs = lp["tokens"], lp["token_logprobs"], lp["text_offset"]
        if not (len(toks) == len(lps) == len(offs)) or not toks:
            raise FeedbackModelError(f"feedback endpoint {self.cfg.base_url} returned "
                                     "mismatched logprobs (tokens, token_logprobs, text_offset)")
        try:
            tokens = [Token(str(t), int(o), None if v is None else float(v))
                      for t, v, o in zip(toks, lps, offs)]
            return continuation_logprob(tokens, context_len, text_len)
        except (TypeError, ValueError) as e:
            raise FeedbackModelError(f"feedback endpoint {self.cfg.base_url} returned "
                                     f"malformed logprobs: {e}") from None

    def _chat_options(self, context: str, options: Sequence[str]) -> list[float]:
        out = self._call(self.client.chat.completions.create,
                         messages=[{"role": "user", "content": context}], max_tokens=1,
                         temperature=0.0, logprobs=True, top_logprobs=self.cfg.top_logprobs)
        content = _fields(_logprobs(out, self.cfg.base_url, "in chat"), self.cfg.base_url,
                          "content")["content"]
        if not content:
            raise FeedbackModelError(f"feedback endpoint {self.cfg.base_url} returned no "
                                     "token logprobs for the chat answer")
        self.tokens_used += getattr(getattr(out, "usage", None), "total_tokens", 0) or 0
        seen: dict[str, float] = {}
        for alt in getattr(content[0], "top_logprobs", None) or []:
            letter = str(alt.token).strip().lstrip("(").rstrip(")").strip()
            seen[letter] = max(seen.get(letter, -math.inf), float(alt.logprob))
        if not any(o in seen for o in options):
            raise FeedbackModelError(f"feedback endpoint {self.cfg.base_url}: none of the options "
                                     f"{list(options)} among the top {self.cfg.top_logprobs} "
                                     "first tokens")
        return [seen.get(o, -math.inf) for o in options]

    def option_logprobs(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        if self.cfg.mode == "chat":
            return self._map(lambda c: self._chat_options(c, options), contexts)
        return self._map(lambda c: self._score(c, options), contexts)

    def generate(self, contexts: Sequence[str], max_tokens: int) -> list[str]:
        def one(context: str) -> str:
            if self.cfg.mode == "chat":
                out = self._call(self.client.chat.completions.create, max_tokens=max_tokens,
                                 messages=[{"role": "user", "content": context}], temperature=0.0)
                text = getattr(getattr(_choice(out, self.cfg.base_url), "message", None),
                               "content", None)
            else:
                out = self._call(self.client.completions.create, prompt=context,
                                 max_tokens=max_tokens, temperature=0.0)
                text = getattr(_choice(out, self.cfg.base_url), "text", None)
            if not isinstance(text, str):
                raise FeedbackModelError(f"feedback endpoint {self.cfg.base_url} returned no text")
            return text

        return self._map(one, contexts)


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


def _choice(out: Any, where: str) -> Any:
    if isinstance(out, (str, bytes)):  # the client hands back a body that is not JSON as is
        raise FeedbackModelError(f"feedback endpoint {where} gave an unusable answer (not JSON): "
                                 f"{_short(str(out), 80)}")
    choices = getattr(out, "choices", None)
    if not choices:
        raise FeedbackModelError(f"feedback endpoint {where} returned no choices")
    return choices[0]


def _logprobs(out: Any, where: str, how: str) -> Any:
    lp = getattr(_choice(out, where), "logprobs", None)
    if lp is None:
        raise FeedbackModelError(f"feedback endpoint {where} returned no logprobs (does it "
                                 f"support logprobs {how}?)")
    return lp


def _fields(obj: Any, where: str, *names: str) -> dict[str, Any]:
    missing = [n for n in names if getattr(obj, n, None) is None]
    if missing:
        raise FeedbackModelError(f"feedback endpoint {where} returned logprobs without "
                                 f"{', '.join(missing)}")
    return {n: getattr(obj, n) for n in names}
