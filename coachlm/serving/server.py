"""`coachlm serve MODEL`: an OpenAI-compatible server over one local model.

Routes (the subset of the OpenAI API that feedback models and chat clients use):
  GET  /v1/models            the one model, under its name
  POST /v1/completions       prompt (a string or a list), max_tokens, temperature, top_p, seed,
                             echo, logprobs (k alternatives per token; 0 = only the sampled
                             token's logprob), stop; `max_tokens=0, echo=True` scores a text
  POST /v1/chat/completions  messages rendered with the model's chat template, max_tokens
                             (or max_completion_tokens), temperature, top_p, seed, logprobs,
                             top_logprobs
Generation is the project's KV-cached sampler (`rollout.sampling`), scoring one forward pass
(`serving.lm.LocalLM`). Requests are served one at a time (the model is not shared across
threads). Errors use OpenAI's shape `{"error": {"message", "type"}}` with status 400.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from coachlm.data.schema import SchemaError, as_prompt
from coachlm.errors import CoachError
from coachlm.serving.lm import Completion, LocalLM, Token

MAX_TOKENS = 4096


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (user, ...)
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Optional[int] = None
    n: int = Field(1, ge=1, le=1)
    stop: Union[str, list[str], None] = None


class CompletionRequest(_Request):
    prompt: Union[str, list[str]]
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=100_000)


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(_Request):
    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=100_000)  # OpenAI: 20; ours: any


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status)


def _cut(c: Completion, stop: Union[str, list[str], None]) -> tuple[str, str]:
    """(text, finish_reason): the text up to the first stop string."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cuts = [c.text.find(s) for s in stops if s and s in c.text]
    if cuts:
        return c.text[:min(cuts)], "stop"
    return c.text, "stop" if c.finished else "length"


def _completion_logprobs(tokens: list[Token], want_top: bool) -> dict[str, Any]:
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "text_offset": [t.offset for t in tokens],
            "top_logprobs": [t.top or None for t in tokens] if want_top else None}


def _chat_logprobs(tokens: list[Token]) -> dict[str, Any]:
    def entry(text: str, lp: float) -> dict[str, Any]:
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return {"content": [{**entry(t.text, t.logprob), "top_logprobs": [
        entry(k, v) for k, v in t.top.items()]} for t in tokens]}


def _usage(cs: list[Completion]) -> dict[str, int]:
    p, c = sum(x.prompt_tokens for x in cs), sum(x.completion_tokens for x in cs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def create_app(lm: LocalLM) -> FastAPI:
    app = FastAPI(title=f"coachlm serve: {lm.name}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:])
        return _error(f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(CoachError)
    async def _coach(_: Request, exc: CoachError) -> JSONResponse:
        return _error(str(exc))

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": lm.name, "object": "model", "created": 0,
                                            "owned_by": "coachlm"}]}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> Any:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts or any(not p for p in prompts):
            return _error("prompt must be a non-empty string or list of strings")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        top = req.logprobs or 0
        outs = lm.complete(prompts, max_tokens, req.temperature, req.top_p, req.seed,
                           echo=req.echo, top_k_logprobs=top)
        choices = []
        for i, (p, c) in enumerate(zip(prompts, outs)):
            text, reason = _cut(c, req.stop)
            choices.append({"index": i, "text": (p if req.echo else "") + text,
                            "finish_reason": reason,
                            "logprobs": None if req.logprobs is None else
                            _completion_logprobs(c.tokens, top > 0)})
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": lm.name, "choices": choices,
                "usage": _usage(outs)}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> Any:
        from coachlm.data.chat import render_prompt

        try:
            prompt = as_prompt([m.model_dump() for m in req.messages])
        except SchemaError as e:
            return _error(f"messages: {e}")
        if prompt[-1].role != "user":
            return _error("messages must end with a user turn")
        max_tokens = req.max_completion_tokens or req.max_tokens or 256
        c = lm.complete([render_prompt(lm.tokenizer, prompt)], max_tokens, req.temperature,
                        req.top_p, req.seed, top_k_logprobs=req.top_logprobs or 0)[0]
        text, reason = _cut(c, req.stop)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": lm.name, "usage": _usage([c]),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": reason,
                             "logprobs": _chat_logprobs(c.tokens) if req.logprobs else None}]}

    return app
