"""Sign-in and sign-out, with a login rate limit.

The sign-in form is protected against CSRF by a double-submit token: a random value set as an
HttpOnly cookie and repeated in the form (a cross-site page can make the browser send the
cookie but cannot read it to fill in the field). Failed sign-ins are limited per name and per
client address; the limit is kept in memory, per server process.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import defaultdict, deque
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from coachlm.feedback import accounts
from coachlm.web.deps import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, FormUser, render, set_cookie,
                              store)

router = APIRouter()


class LoginLimiter:
    """At most `failures` failed sign-ins per name, and `address_factor` times as many per client
    address (many labelers may share one office address), within a sliding `window_s`."""

    def __init__(self, failures: int = 5, window_s: float = 300.0, address_factor: int = 5):
        self.failures, self.window_s, self.address_factor = failures, window_s, address_factor
        self._seen: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._seen[key]
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def wait_s(self, *keys: str) -> float:
        """Seconds until a sign-in may be tried again (0 if it may be tried now)."""
        now = time.monotonic()
        with self._lock:
            waits = [q[-limit] + self.window_s - now for k in keys
                     if len(q := self._recent(k, now)) >= (limit := self._limit(k))]
        return max(waits, default=0.0)

    def _limit(self, key: str) -> int:
        return self.failures * (self.address_factor if key.startswith("addr:") else 1)

    def failed(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._seen[k].append(time.monotonic())

    def clear(self, key: str) -> None:
        with self._lock:
            self._seen.pop(key, None)


def _safe_next(target: str) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would be an open redirect.
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _login_page(request: Request, error: str = "", status: int = 200, target: str = "/") -> Response:
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", status=status, csrf=token, error=error,
                      next=_safe_next(target))
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002
    return _login_page(request, target=next)


@router.post("/login")
def login(request: Request, name: Annotated[str, Form()] = "",
          password: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "/") -> Response:  # noqa: A002
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf or not cookie or not secrets.compare_digest(csrf, cookie):
        return _login_page(request, "The form expired; please sign in again.", 403, next)
    limiter: LoginLimiter = request.app.state.limiter
    keys = (f"name:{name.strip().lower()}", f"addr:{request.client.host if request.client else ''}")
    wait = limiter.wait_s(*keys)
    if wait > 0:
        return _login_page(request, f"Too many failed sign-ins. Try again in {int(wait) + 1} s.",
                           429, next)
    cfg = request.app.state.config
    with store(request).write() as s:
        lab = accounts.authenticate(s, name.strip(), password)
        if lab is not None:
            token, _ = accounts.create_session(s, lab, cfg.session_hours)
    if lab is None:
        limiter.failed(*keys)
        return _login_page(request, "Wrong name or password.", 401, next)
    limiter.clear(keys[0])
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_cookie(request, response, SESSION_COOKIE, token, max_age=int(cfg.session_hours * 3600))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, user: FormUser) -> Response:
    with store(request).write() as s:
        accounts.end_session(s, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
