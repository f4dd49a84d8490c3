"""A request-body size limit, enforced before anything reads the body.

Without it, an anonymous client could make the server parse a body of any size before the
route's authentication says 401. This ASGI middleware answers 413 from the Content-Length
header alone when it is too large, and counts the bytes of bodies sent without one (chunked),
stopping at the limit. Import routes accept large bodies, but only from a caller who is
already authenticated (`allow_large` checks the credentials before one byte is read).
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable

from anyio import to_thread

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: Any, limit: int, large_limit: int, large_paths: str,
                 allow_large: Callable[[Scope], bool]):
        self.app, self.limit, self.large_limit = app, limit, large_limit
        self.large_paths = re.compile(large_paths)
        self.allow_large = allow_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if self.large_paths.fullmatch(scope["path"]) and await to_thread.run_sync(
                self.allow_large, scope):
            limit = self.large_limit
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _refuse(scope, send, limit)
            return
        received, too_large, refused = 0, False, False

        async def counted() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _TooLarge
            return message

        async def sending(message: Message) -> None:
            # A route that caught the error (FastAPI turns it into a 400) still answers 413.
            nonlocal refused
            if not too_large:
                await send(message)
            elif message["type"] == "http.response.start" and not refused:
                refused = True
                await _refuse(scope, send, limit)

        try:
            await self.app(scope, counted, sending)
        except _TooLarge:
            if not refused:
                await _refuse(scope, send, limit)


async def _refuse(scope: Scope, send: Send, limit: int) -> None:
    message = f"the request body is larger than the limit of {limit:,} bytes"
    if scope["path"].startswith("/api/"):
        body, kind = json.dumps({"error": message}).encode(), b"application/json"
    else:
        body, kind = message.encode(), b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
