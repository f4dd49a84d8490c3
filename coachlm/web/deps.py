"""Shared pieces of the web app: who is signed in, CSRF checks, rendering, errors.

Browsers authenticate with a session cookie (HttpOnly, SameSite=Lax, Secure over https) and
every form carries the session's CSRF token; the JSON API authenticates with a bearer token and
uses no cookies, so it needs no CSRF token. Handlers are plain `def`s: FastAPI runs them in its
thread pool, so database calls never block the event loop. The two hot API routes (claim,
submit) are coroutines instead, usually served by `hot.py` below FastAPI: they await the store's
group commit (`Store.run_async`), and the token read that precedes them needs no thread
(see `token_user`).
"""

from __future__ import annotations

import secrets
from http.cookies import CookieError, SimpleCookie
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse

from coachlm.errors import CoachError
from coachlm.feedback import accounts
from coachlm.feedback.db import Conflict, NotFound, Store
from coachlm.feedback.text import scrub
from coachlm.web import diff, markdown

SESSION_COOKIE = "coachlm_session"
LOGIN_CSRF_COOKIE = "coachlm_login_csrf"
HERE = Path(__file__).parent
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                          autoescape=True,  # all model and user text is untrusted
                          trim_blocks=True, lstrip_blocks=True)
# Text stored before the input checks existed may hold lone surrogates (in JSON columns):
# every page scrubs them (U+FFFD) on the way out, in what the filters are given and in the
# page itself, rather than answer 500 (nh3 and the UTF-8 encoder both refuse them).
_env.filters.update(md=lambda t: markdown.render(scrub(t)),  # allow-listed markdown
                    words=lambda t: markdown.words(scrub(t)))
_env.globals.update(word_diff=lambda a, b: diff.word_diff(scrub(a), scrub(b)))


class LoginRequired(Exception):
    """No valid session or token: browsers are sent to the sign-in page, the API gets 401."""


class Forbidden(Exception):
    """Signed in, but this needs another role (or the CSRF token is missing or wrong)."""


@dataclass(frozen=True)
class User:
    """The signed-in labeler, detached from any database session."""

    id: int
    name: str
    role: str
    csrf: str = ""
    cost_per_label: float = 0.0  # what each label costs (read with the token, for submits)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_reviewer(self) -> bool:
        """Reviewers see the quality and ratings dashboards; only admins change anything."""
        return self.role in ("reviewer", "admin")


def store(request: Request) -> Store:
    return request.app.state.store


def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    user = getattr(request.state, "user", None)
    html = _env.get_template(template).render(request=request, user=user, **ctx)
    return HTMLResponse(scrub(html), status_code=status)


def secure_cookies(request: Request) -> bool:
    setting = request.app.state.config.secure_cookies
    return request.url.scheme == "https" if setting is None else setting


def set_cookie(request: Request, response: Any, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=secure_cookies(request), path="/")


def session_user(request: Request) -> User:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise LoginRequired()
    with store(request).read() as s:
        found = accounts.session_for(s, token)
        if found is None:
            raise LoginRequired()
        row, lab = found
        user = User(lab.id, lab.name, lab.role, row.csrf)
    request.state.user = user
    return user


def admin_user(user: Annotated[User, Depends(session_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("this page needs the admin role")
    return user


def reviewer_user(user: Annotated[User, Depends(session_user)]) -> User:
    if not user.is_reviewer:
        raise Forbidden("this page needs the reviewer or admin role")
    return user


def check_csrf(user: User, token: str) -> None:
    if not token or not secrets.compare_digest(token, user.csrf):
        raise Forbidden("the form's security token is missing or wrong; reload the page")


def form_user(user: Annotated[User, Depends(session_user)],
              csrf: Annotated[str, Form()] = "") -> User:
    """The signed-in user of a form post whose CSRF token matches the session's."""
    check_csrf(user, csrf)
    return user


def form_admin(user: Annotated[User, Depends(form_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("this needs the admin role")
    return user


async def api_user(request: Request) -> User:
    return await token_user(store(request), request.headers.get("authorization", ""))


async def token_user(st: Store, authorization: str) -> User:
    """The bearer token's labeler, read once per request, outside any write transaction and
    without a worker thread (`Store.one_async`: inline on SQLite, where a local indexed read
    costs less than the trip to a thread; on PostgreSQL over an asynchronous connection)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise LoginRequired()
    row = await accounts.caller_by_token_async(st, token.strip())
    if row is None:
        raise LoginRequired()
    labeler_id, name, role, cost = row
    return User(labeler_id, name, role, cost_per_label=cost)


def refusal_status(exc: CoachError | Forbidden) -> int:
    """The HTTP status of a refused request: bad input or a refused store operation."""
    if isinstance(exc, Forbidden):
        return 403
    return 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400


def refusal_message(exc: Exception) -> str:
    return str(exc) or ("forbidden" if isinstance(exc, Forbidden) else "")


def api_error(exc: LoginRequired | Forbidden | CoachError) -> JSONResponse:
    """The JSON API's answer to a refused request."""
    if isinstance(exc, LoginRequired):
        return JSONResponse({"error": "a valid API token is required"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    return JSONResponse({"error": refusal_message(exc)}, status_code=refusal_status(exc))


def admin_from_headers(st: Store, scope: dict[str, Any]) -> bool:
    """Whether an ASGI request carries an admin's credentials (bearer token or session
    cookie); used to admit a large body before it is read. The route still checks everything
    (CSRF included) as usual."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    scheme, _, token = headers.get("authorization", "").partition(" ")
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except CookieError:
        return False
    if scheme.lower() == "bearer" and token.strip():
        row = accounts.caller_by_token(st, token.strip())
        return row is not None and row[2] == "admin"
    with st.read() as s:
        if SESSION_COOKIE in cookie:
            found = accounts.session_for(s, cookie[SESSION_COOKIE].value)
            return found is not None and found[1].role == "admin"
    return False


def api_admin(user: Annotated[User, Depends(api_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("this needs the admin role")
    return user


SessionUser = Annotated[User, Depends(session_user)]
AdminUser = Annotated[User, Depends(admin_user)]
ReviewerUser = Annotated[User, Depends(reviewer_user)]
FormUser = Annotated[User, Depends(form_user)]
FormAdmin = Annotated[User, Depends(form_admin)]
ApiUser = Annotated[User, Depends(api_user)]
ApiAdmin = Annotated[User, Depends(api_admin)]
