"""Sign-in and sign-out, with sign-in throttling.

The sign-in form is protected against CSRF by a double-submit token: a random value set as an
HttpOnly cookie and repeated in the form (a cross-site page can make the browser send the
cookie but cannot read it to fill in the field). Failed sign-ins back off per (name, address)
and per address, with the counts in the database so that every server process shares them
(`coachlm.feedback.throttle`). The password is verified outside any write transaction
(`accounts.sign_in`).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from coachlm.feedback import accounts, throttle
from coachlm.web.deps import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, FormUser, render, set_cookie,
                              store)

router = APIRouter()


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
    cfg = request.app.state.config
    limits: throttle.ThrottleConfig = cfg.throttle
    address = request.client.host if request.client else ""
    st = store(request)
    with st.read() as s:
        wait = throttle.wait_s(s, limits, name, address)
    if wait > 0:
        return _login_page(request, f"Too many failed sign-ins. Try again in {int(wait) + 1} s.",
                           429, next)
    found = accounts.sign_in(st, name, password, cfg.session_hours)
    if found is None:
        st.run(lambda s: throttle.failed(s, limits, name, address), durable=False)
        return _login_page(request, "Wrong name or password.", 401, next)
    token, _ = found
    st.run(lambda s: throttle.succeeded(s, name, address), durable=False)
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
