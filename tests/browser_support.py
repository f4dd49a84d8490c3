"""Shared pieces of the browser tests: Debian's Chromium driven by Playwright (never a
downloaded browser), and `coachlm label serve` started on loopback over a given store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
from feedback_support import free_port
from sqlalchemy.orm import Session

from coachlm.feedback import db
from coachlm.feedback.db import Store

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"{CHROMIUM} not installed")


@contextmanager
def serve(store: str, code: Path | None = None) -> Iterator[str]:
    """Run the labeling app over `store` in a child process (from the checkout at `code`,
    default this one); yield its base URL."""
    port = free_port()
    code = code or Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.Popen([sys.executable, "-m", "coachlm.cli", "label", "serve", "--store",
                             str(Path(store).resolve()), "--port", str(port)], env=env,
                            cwd=code, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/login", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(proc.stdout.read().decode())
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


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
