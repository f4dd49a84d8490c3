"""The hot API routes (claim, submit) served below FastAPI (`web/hot.py`), on SQLite and
PostgreSQL: the usual requests never reach FastAPI's routing, and every refusal or unusual
request gets exactly the answer (status, JSON, headers) that the FastAPI routes give."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from label_fixtures import Api, make_api

from coachlm.web.hot import HotRoutes


@pytest.fixture()
def api(store_url) -> Api:
    a = make_api(store_url)
    yield a
    a.store.close()


def _above_hot(app: Any) -> Any:
    """The middleware layer just outside HotRoutes (the stack is built on first use)."""
    layer = app.middleware_stack = app.middleware_stack or app.build_middleware_stack()
    while not isinstance(layer.app, HotRoutes):
        layer = layer.app
    return layer


def _hot(app: Any) -> HotRoutes:
    return _above_hot(app).app


def _without_hot(api: Api) -> TestClient:
    """The same app (same store, same outer middleware) with HotRoutes taken out, so that
    requests go straight to FastAPI's routes."""
    above = _above_hot(api.client.app)
    hot = above.app

    async def plain(scope: dict, receive: Any, send: Any) -> None:
        above.app = hot.app
        try:
            await api.client.app(scope, receive, send)
        finally:
            above.app = hot

    return TestClient(plain, raise_server_exceptions=False)


class _Seen:
    """Records which requests reach FastAPI's routing from HotRoutes."""

    def __init__(self, app: Any):
        self.app, self.paths = app, []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def test_claim_and_submit_do_not_reach_fastapi(api):
    hot = _hot(api.client.app)
    seen = hot.app = _Seen(hot.app)
    a = api.next()
    r = api.client.post(f"/api/assignments/{a['id']}/label", headers=api.labeler,
                        json={"client_id": "hot-path-0001", "answer": {"choice": "first"}})
    assert r.status_code == 201 and r.json()["created"] is True
    assert r.headers["x-frame-options"] == "DENY"  # the outer middleware still applies
    again = api.client.post(f"/api/assignments/{a['id']}/label", headers=api.labeler,
                            json={"client_id": "hot-path-0001", "answer": {"choice": "first"}})
    assert again.json() == {"label_id": r.json()["label_id"], "created": False,
                            "already_saved": True}
    assert seen.paths == []
    odd = api.client.post(f"/api/assignments/{a['id']}/label", headers=api.labeler,
                          content=b"{}")  # no content type: FastAPI decides
    assert odd.status_code == 422 and seen.paths == [f"/api/assignments/{a['id']}/label"]


def _requests(api: Api, aid: int, done: int) -> list[tuple[str, dict, dict]]:
    """(path, headers, request keywords) of refused or unusual requests, none of which
    writes anything."""
    ok = {"client_id": "refused-0001", "answer": {"choice": "first"}}
    label = f"/api/assignments/{aid}/label"
    js = {"Content-Type": "application/json"}
    return [
        ("/api/projects/demo/next", {}, {}),
        ("/api/projects/demo/next", {"Authorization": "Bearer nope"}, {}),
        ("/api/projects/demo/next", {"Authorization": "Basic abc"}, {}),
        ("/api/projects/nope/next", api.labeler, {}),
        ("/api/projects/a/b/next", api.labeler, {}),
        (label, {}, {"json": ok}),
        (label, {"Authorization": "Bearer nope"}, {"json": ok}),
        (label, api.admin, {"json": ok}),  # not the admin's assignment
        ("/api/assignments/0/label", api.labeler, {"json": ok}),
        (f"/api/assignments/{2**63}/label", api.labeler, {"json": ok}),
        ("/api/assignments/abc/label", api.labeler, {"json": ok}),
        (label, api.labeler, {"content": json.dumps(ok), "headers": {"Content-Type":
                                                                     "text/plain"}}),
        (label, api.labeler, {"content": b"{not json", "headers": js}),
        (label, api.labeler, {"content": b"", "headers": js}),
        (label, api.labeler, {"content": b"[1, 2]", "headers": js}),
        (label, {}, {"content": b"{not json", "headers": js}),
        (label, api.labeler, {"json": {"answer": {"choice": "first"}}}),
        (label, api.labeler, {"json": {**ok, "client_id": "short"}}),
        (label, api.labeler, {"json": {**ok, "answer": ["first"]}}),
        (label, api.labeler, {"json": {**ok, "answer": {"choice": "maybe"}}}),
        (label, api.labeler, {"json": {**ok, "time_spent_s": "long"}}),
        (label, api.labeler, {"content": b'{"client_id": "lone-0001", "answer": {"choice": '
                                         b'"first", "note": "\\ud800"}}', "headers": js}),
        (f"/api/assignments/{done}/label", api.labeler,  # answered: another answer is a 409
         {"json": {"client_id": "refused-0002", "answer": {"choice": "tie"}}}),
        (label, api.labeler,  # a client id used for another item
         {"json": {"client_id": "answered-0001", "answer": {"choice": "first"}}}),
    ]


def test_refusals_are_answered_as_by_the_fastapi_routes(api):
    aid = api.next()["id"]
    done = api.next_of_kind("comparison")["id"]
    saved = api.client.post(f"/api/assignments/{done}/label", headers=api.labeler,
                            json={"client_id": "answered-0001", "answer": {"choice": "first"}})
    assert saved.status_code == 201
    aid = aid if aid != done else api.next()["id"]
    plain = _without_hot(api)
    for path, headers, kw in _requests(api, aid, done):
        kw = {**kw, "headers": {**headers, **kw.get("headers", {})}}
        hot, fastapi = api.client.post(path, **kw), plain.post(path, **kw)
        assert (hot.status_code, hot.content) == (fastapi.status_code, fastapi.content), path
        assert 400 <= hot.status_code < 500, (path, hot.text)
        assert hot.headers.get("www-authenticate") == fastapi.headers.get("www-authenticate")


def test_a_dropped_database_connection_costs_no_request(api):
    """PostgreSQL: the token is read on a kept-open asynchronous connection and the writes on
    pooled ones; when the server drops them all, the next requests open new ones."""
    if api.store.is_sqlite:
        pytest.skip("PostgreSQL's connections")
    import psycopg

    url = api.store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with api.client:  # one event loop for every request, as in a server process
        first = api.next()
        with psycopg.connect(url, autocommit=True) as conn:
            killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = current_database() AND pid <> "
                                  "pg_backend_pid()").fetchall()
        assert len(killed) >= 2  # the token reader's connection and the writer's
        assert api.next()["id"] == first["id"]  # still pending: the same assignment
        r = api.client.post(f"/api/assignments/{first['id']}/label", headers=api.labeler,
                            json={"client_id": "after-drop-0001", "answer": {"choice": "tie"}})
        assert r.status_code == 201, r.text
