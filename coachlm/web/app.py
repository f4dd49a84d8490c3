"""The labeling web app: FastAPI with server-rendered Jinja2 pages and one small local script.

`create_app(WebConfig(...))` builds it; `serve(cfg)` runs it with uvicorn. Nothing is loaded
from other sites (no CDN): the pages work offline, and the Content-Security-Policy allows only
this origin's own scripts and styles, so even a rendering bug could not run injected script.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from coachlm.errors import CoachError
from coachlm.feedback.db import Conflict, NotFound, Store, StoreConfig, open_store
from coachlm.web import admin, api, auth, dashboard, labeler, review
from coachlm.web.deps import HERE, Forbidden, LoginRequired, render

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


@dataclass(frozen=True)
class WebConfig:
    store: str = "feedback.db"  # SQLite file or a SQLAlchemy/PostgreSQL URL
    host: str = "127.0.0.1"
    port: int = 8000
    secure_cookies: bool | None = None  # None: Secure cookies when the request came over https
    session_hours: float = 12.0
    login_failures: int = 5  # failed sign-ins allowed per name and per address...
    login_window_s: float = 300.0  # ...within this many seconds
    access_log: bool = False


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, message: str) -> Response:
    if _is_api(request):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", status=status, status_code=status, message=message)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    def _login(request: Request, _exc: LoginRequired) -> Response:
        if _is_api(request):
            return JSONResponse({"error": "a valid API token is required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(Forbidden)
    def _forbidden(request: Request, exc: Forbidden) -> Response:
        return _error(request, 403, str(exc) or "forbidden")

    @app.exception_handler(CoachError)  # bad input or a refused store operation
    def _store(request: Request, exc: CoachError) -> Response:
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
        return _error(request, status, str(exc))

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query"))
        return _error(request, 422, f"{where}: {first.get('msg', 'invalid input')}")


def create_app(cfg: WebConfig = WebConfig(), store: Store | None = None) -> FastAPI:
    app = FastAPI(title="coachlm label", docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.config = cfg
    app.state.store = store or open_store(StoreConfig(url=cfg.store))
    app.state.limiter = auth.LoginLimiter(cfg.login_failures, cfg.login_window_s)

    @app.middleware("http")
    async def _headers(request: Request, call_next):  # noqa: ANN001, ANN202
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    _handlers(app)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (auth, labeler, admin, dashboard, review, api):
        app.include_router(module.router)
    return app


def serve(cfg: WebConfig = WebConfig()) -> None:
    """Run the app with uvicorn until interrupted (the store is migrated on start)."""
    import uvicorn

    app = create_app(cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, access_log=cfg.access_log,
                log_level="info", proxy_headers=True)
