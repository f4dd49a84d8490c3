"""Test support for the feedback store: a throwaway PostgreSQL server on loopback.

`postgres_server()` (also used by benchmarks/label_load.py) runs Debian's `initdb` + `pg_ctl` into a temporary directory (as the
`postgres` user when the tests run as root, since PostgreSQL refuses to run as root), listens on
127.0.0.1 at a free port with its socket in the temporary directory, and is stopped and deleted
at the end. When the binaries are missing the tests that need it are skipped, with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started here (the message says why)."""


@contextmanager
def postgres_server(fsync: bool = False) -> Iterator[str]:
    """Yield an admin URL (postgresql://coach@127.0.0.1:PORT/postgres) of a fresh server.
    Tests run it without fsync (faster); a benchmark wants fsync on, as in production."""
    bindir = pg_bin()
    if bindir is None:
        raise Unavailable("PostgreSQL binaries not found (Debian: apt-get install postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0 and (shutil.which("runuser") is None or subprocess.run(
            ["id", "postgres"], capture_output=True).returncode):
        raise Unavailable("running as root needs a 'postgres' user and runuser to start it")
    root = tempfile.mkdtemp(prefix="coachlm-pg-")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), free_port()
    try:
        subprocess.run(as_user + [str(bindir / "initdb"), "-D", data, "-U", "coach", "-A", "trust",
                                  "-E", "UTF8", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True)
        opts = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200" + ("" if fsync else " -F")
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", data, "-o", opts, "-w", "-t", "60",
                                  "-l", os.path.join(root, "log"), "start"],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        log = Path(root, "log").read_text() if Path(root, "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {e.stderr.decode()[-2000:]} "
                           f"{log[-2000:]}") from None
    try:
        yield f"postgresql://coach@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_database(admin_url: str) -> str:
    """Create an empty database on the server and return its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    try:
        server = postgres_server()
        url = server.__enter__()
    except Unavailable as e:
        pytest.skip(str(e))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.db")
    return new_database(request.getfixturevalue("pg_admin_url"))


@contextmanager
def label_server(store: str, *args: str, code: Path | None = None
                 ) -> Iterator[tuple[subprocess.Popen, str]]:
    """`coachlm label serve` on a free loopback port, run from the checkout at `code` (default
    this one): (process, base URL), stopped at the end."""
    import sys
    import time
    import urllib.request

    port = free_port()
    code = code or Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.Popen([sys.executable, "-m", "coachlm.cli", "label", "serve", "--store",
                             store, "--port", str(port), *args], env=env, cwd=code,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/login", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stdout.read().decode()[-4000:]) from None
                time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)
