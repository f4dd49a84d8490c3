"""Shared pieces of the browser tests: Debian's Chromium driven by Playwright (never a
downloaded browser), `coachlm label serve` started on loopback over a given store, and the
store and page builders every browser test uses (a project of samples with tasks, labelers, a
signed-in page, "start labeling", a labeler's stored labels)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
from feedback_support import label_server
from sqlalchemy import select
from sqlalchemy.orm import Session

from coachlm.data import schema
from coachlm.feedback import accounts, db, importer, items
from coachlm.feedback.db import Store
from coachlm.feedback.tables import Assignment, Label, Labeler

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"{CHROMIUM} not installed")


@contextmanager
def serve(store: str, code: Path | None = None) -> Iterator[str]:
    """Run the labeling app over `store` in a child process (from the checkout at `code`,
    default this one); yield its base URL."""
    with label_server(str(Path(store).resolve()), code=code) as (_, url):
        yield url


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium browser (Playwright's sync API)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page, url: str, name: str, password: str, path: str = "/") -> None:
    page.goto(url + path)
    page.fill('input[name="name"]', name)
    page.fill('input[name="password"]', password)
    with page.expect_navigation():
        page.click("#sign-in")


def press(page, *keys: str, navigates: bool = False) -> None:
    """Press `keys` in order; with `navigates`, wait for the page the last one leads to."""
    for key in keys[:-1]:
        page.keyboard.press(key)
    if navigates:
        with page.expect_navigation():
            page.keyboard.press(keys[-1])
    else:
        page.keyboard.press(keys[-1])


def site_fixture(build: Callable[[Session], None]):
    """A module-scoped `site` fixture: (url, store, browser) over a store filled by `build`."""
    @pytest.fixture(scope="module")
    def site_(tmp_path_factory):
        with site(str(tmp_path_factory.mktemp("site") / "feedback.db"), build) as found:
            yield found
    return site_


@contextmanager
def site(path: str, build: Callable[[Session], None]) -> Iterator[tuple[str, Store, object]]:
    """A store at `path` filled by `build`, served, with a browser: (url, store, browser)."""
    st = db.open_store(path)
    with st.write() as s:
        build(s)
    try:
        with serve(path) as url, chromium() as browser:
            yield url, st, browser
    finally:
        st.close()


def project(s: Session, name: str, prompts: list[str], texts: Callable[[int, int], str],
            kinds: tuple[str, ...] = ("comparison",), n_responses: int = 2, n_labels: int = 1,
            guidelines: str = "", max_per_prompt: int = 0, models: str = "m{j}"):
    """A project with `n_responses` samples (text `texts(i, j)`, model `models` formatted with
    j) for each prompt, and tasks of each kind wanting `n_labels` labels."""
    p = items.create_project(s, name, guidelines=guidelines)
    importer.import_records(s, p, [schema.Sample(
        prompt=schema.as_prompt(q), response=schema.Response(texts(i, j), models.format(j=j)))
        for i, q in enumerate(prompts) for j in range(n_responses)])
    for kind in kinds:
        items.create_tasks(s, p, items.TaskSpec(kind, n_labels=n_labels,
                                                max_per_prompt=max_per_prompt))
    return p


def labelers(s: Session, *names: str, role: str = "labeler") -> None:
    """Accounts whose password is "<name>-password"."""
    for name in names:
        accounts.create_labeler(s, name, f"{name}-password", role=role)


def new_page(site: tuple, name: str | None = None, viewport: dict = DESKTOP, context=None,
             js: bool = True, timeout_ms: int = 8000):
    """A page in a fresh context signed in as `name` (when given), or a page in `context`
    (which shares that context's session)."""
    url, browser = site[0], site[-1]
    ctx = context or browser.new_context(viewport=viewport, java_script_enabled=js)
    page = ctx.new_page()
    page.set_default_timeout(timeout_ms)
    if name is not None and context is None:
        sign_in(page, url, name, f"{name}-password")
    return page


def start(page, project_name: str | None = None) -> None:
    """Press "Start labeling" (for `project_name`, or the first project) on the queue."""
    target = f'button[aria-label="Start labeling {project_name}"]' if project_name \
        else "button.start"
    with page.expect_navigation():
        page.click(target)


def labels_of(st: Store, name: str) -> list[Label]:
    with st.read() as s:
        lab = s.scalar(select(Labeler).where(Labeler.name == name))
        return list(s.scalars(select(Label).where(Label.labeler_id == lab.id).order_by(Label.id)))


def statuses_of(st: Store, name: str) -> list[str]:
    with st.read() as s:
        return [a.status for a in s.scalars(select(Assignment).where(
            Assignment.labeler.has(name=name)).order_by(Assignment.id))]
