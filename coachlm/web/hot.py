"""The two hot API routes, claim the next item and submit a label, served below FastAPI.

Every label is one claim and one submit. Once the store's part was plain SQL, FastAPI's
routing (matching every route in turn), dependency injection and exception middleware cost
more CPU than the rest of the request (issue 12). This ASGI middleware sits just inside the
body-size limit and the security headers, matches those two paths itself, authenticates the
bearer token, validates the body with the route's own model (`api.LabelIn`) and calls the same
functions as the FastAPI routes (`api.claim_next`, `api.submit_label`), whose responses and
refusals (`deps.api_error`) it returns unchanged. Anything unusual, such as a body that is not
plain JSON or fails validation, an id out of range or another method, goes on to FastAPI
untouched (with the body it already read), so FastAPI's own answer stands there; the routes
stay in the OpenAPI schema.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from coachlm.errors import CoachError
from coachlm.feedback.db import Store
from coachlm.feedback.tables import MAX_ID
from coachlm.web import api
from coachlm.web.body import Message, Receive, Scope, Send
from coachlm.web.deps import Forbidden, LoginRequired, api_error, token_user

_CLAIM = re.compile(r"/api/projects/(.+)/next")
_SUBMIT = re.compile(r"/api/assignments/([1-9][0-9]{0,18})/label")
_JSON = ("application/json", "application/json; charset=utf-8")


class HotRoutes:
    def __init__(self, app: Any, store: Store):
        self.app, self.store = app, store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not path.startswith("/api/"):
            await self.app(scope, receive, send)
            return
        if (submit := _SUBMIT.fullmatch(path)) and int(submit[1]) <= MAX_ID:
            await self._submit(scope, receive, send, int(submit[1]))
        elif claim := _CLAIM.fullmatch(path):
            await self._answer(scope, receive, send, api.claim_next, claim[1])
        else:
            await self.app(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive, send: Send,
                      assignment_id: int) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            if _header(scope, b"content-type").lower() not in _JSON:
                raise ValueError("not plain JSON")
            label = api.LabelIn.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # FastAPI answers (JSONDecodeError is a ValueError)
            await self.app(scope, _replay(body, receive), send)
            return
        await self._answer(scope, receive, send, api.submit_label, assignment_id, label)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, operation: Any,
                      *args: Any) -> None:
        try:
            user = await token_user(self.store, _header(scope, b"authorization"))
            response = await operation(self.store, user, *args)
        except (LoginRequired, Forbidden, CoachError) as e:
            response = api_error(e)
        await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str:
    """The first value of a header (ASGI header names are lower case), as Starlette reads it."""
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), "")


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for an app that has not read the body yet: the body already read, then the
    client's own messages (a disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again

