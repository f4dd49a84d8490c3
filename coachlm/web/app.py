"""The labeling web app: FastAPI with server-rendered Jinja2 pages and one small local script.

`create_app(WebConfig(...))` builds it; `serve(cfg)` runs it with uvicorn, in `workers`
processes (they share nothing but the database: sessions, sign-in throttling and assignments
all live there). Nothing is loaded from other sites (no CDN): the pages work offline, and the
Content-Security-Policy allows only this origin's own scripts and styles, so even a rendering
bug could not run injected script. Request bodies are size-limited before they are read
(`body.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from coachlm.errors import CoachError
from coachlm.feedback.db import Store, StoreConfig, open_store
from coachlm.feedback.throttle import ThrottleConfig
from coachlm.web import admin, api, auth, dashboard, labeler, review
from coachlm.web.body import BodyLimit
from coachlm.web.hot import HotRoutes
from coachlm.web.deps import (HERE, Forbidden, LoginRequired, admin_from_headers, api_error,
                              refusal_message, refusal_status, render)

IMPORT_PATHS = r"/admin/p/\d+/import|/api/projects/.+/import"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


@dataclass(frozen=True)
class WebConfig:
    store: str = "feedback.db"  # SQLite file or a SQLAlchemy/PostgreSQL URL
    host: str = "127.0.0.1"
    port: int = 8000
    secure_cookies: bool | None = None  # None: Secure cookies when the request came over https
    session_hours: float = 12.0
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)  # failed sign-ins
    max_body_mb: float = 2.0  # any request body
    max_upload_mb: float = 200.0  # an import, from an authenticated admin
    workers: int = 1  # server processes (uvicorn workers)
    access_log: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_body_mb <= 0 or self.max_upload_mb <= 0:
            raise ValueError("workers must be >= 1 and body limits positive")


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, message: str) -> Response:
    if _is_api(request):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", status=status, status_code=status, message=message)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    def _login(request: Request, exc: LoginRequired) -> Response:
        if _is_api(request):
            return api_error(exc)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(Forbidden)
    @app.exception_handler(CoachError)  # bad input or a refused store operation
    def _refused(request: Request, exc: CoachError | Forbidden) -> Response:
        if _is_api(request):
            return api_error(exc)
        return _error(request, refusal_status(exc), refusal_message(exc))

    @app.exception_handler(StarletteHTTPException)  # no such route, method not allowed
    def _http(request: Request, exc: StarletteHTTPException) -> Response:
        response = _error(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query"))
        return _error(request, 422, f"{where}: {first.get('msg', 'invalid input')}")


SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin")]


class SecurityHeaders:
    """Adds the security headers (and no-store, except on static files) to every response.
    A plain ASGI middleware: Starlette's `BaseHTTPMiddleware` (`@app.middleware("http")`)
    runs each request through an extra task and memory stream, which cost more CPU than the
    rest of a label submit once the store was fast."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = SECURITY_HEADERS if scope["path"].startswith("/static/") else [
            *SECURITY_HEADERS, (b"cache-control", b"no-store")]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in extra}
                message["headers"] = [(k, v) for k, v in message.get("headers", [])
                                      if k.lower() not in names] + extra
            await send(message)

        await self.app(scope, receive, sending)


def create_app(cfg: WebConfig = WebConfig(), store: Store | None = None) -> FastAPI:
    app = FastAPI(title="coachlm label", docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.config = cfg
    app.state.store = store or open_store(StoreConfig(url=cfg.store))
    app.add_middleware(HotRoutes, store=app.state.store)  # innermost: inside the body limit
    app.add_middleware(BodyLimit, limit=int(cfg.max_body_mb * 2**20),
                       large_limit=int(cfg.max_upload_mb * 2**20), large_paths=IMPORT_PATHS,
                       allow_large=lambda scope: admin_from_headers(app.state.store, scope))

    app.add_middleware(SecurityHeaders)
    _handlers(app)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (api, auth, labeler, admin, dashboard, review):  # the busiest routes first
        app.include_router(module.router)
    return app


ENV_CONFIG = "COACHLM_WEB_CONFIG"


def app_from_env() -> FastAPI:
    """The app of one worker process: its config comes from the parent, in the environment;
    the parent has already migrated the store."""
    d = json.loads(os.environ[ENV_CONFIG])
    cfg = WebConfig(**{**d, "throttle": ThrottleConfig(**d["throttle"])})
    return create_app(cfg, open_store(StoreConfig(url=cfg.store, migrate=False)))


def serve(cfg: WebConfig = WebConfig()) -> None:
    """Run the app with uvicorn until interrupted (the store is migrated on start).
    Several workers are separate processes, each with its own connection pool."""
    import uvicorn

    run = dict(host=cfg.host, port=cfg.port, access_log=cfg.access_log, log_level="info",
               proxy_headers=True)
    if cfg.workers == 1:
        uvicorn.run(create_app(cfg), **run)
        return
    open_store(StoreConfig(url=cfg.store)).close()  # migrate once, before the workers start
    os.environ[ENV_CONFIG] = json.dumps(dataclasses.asdict(cfg))
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=cfg.workers, **run)
