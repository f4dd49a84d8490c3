"""Load test of the labeling server: 50 concurrent simulated labelers x 40 submissions each.

Starts `coachlm label serve` on loopback (SQLite by default; `--backend postgresql` starts a
throwaway PostgreSQL server with fsync on), makes 1,000 comparison tasks that each want 3
labels (3,000 slots, so that no labeler runs out of tasks it has not seen), then runs the labelers against the JSON API: each claims its next assignment and
submits a label with a client-generated id; 10% of submissions are sent twice (a client retry)
to exercise idempotency. Afterwards it checks that exactly 2,000 labels are stored, with no
duplicate client id, no labeler twice on a task and no task over its 3 labels, and prints
p50/p99 submit latency and labels/s as JSON, with the CPU seconds the server processes used
per label (a figure that depends less on what else the machine is running than labels/s) and
the CPU the load generator itself used per label (a minimal keep-alive HTTP/1.1 client: real
labelers sit on other machines, this one shares the server's CPUs).

`--direct` measures the store path alone: the same labelers call the API's claim and submit
functions in this process, through one event loop, without HTTP; its group-commit batches then
hold about one write per labeler whatever else the machine runs, so its CPU per label compares
code, not machine load.

    python benchmarks/label_load.py [--backend sqlite|postgresql|both] [--workers N] [--direct]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from feedback_support import free_port, new_database, postgres_server  # noqa: E402

from coachlm.data import schema  # noqa: E402
from coachlm.feedback import accounts, db, importer, items  # noqa: E402
from coachlm.feedback.tables import Label  # noqa: E402


def prepare(url: str, labelers: int, tasks: int) -> list[str]:
    """A project with `tasks` comparison tasks (3 labels each) and token-only labelers."""
    st = db.open_store(url)
    with st.write() as s:
        p = items.create_project(s, "bench")
        recs = [schema.Sample(prompt=schema.as_prompt(f"Question {i}: what is {i} + {i}?"),
                              response=schema.Response(f"{i + i}" if j else f"{i}", f"m{j}"))
                for i in range(tasks) for j in range(2)]
        importer.import_records(s, p, recs)
        items.create_tasks(s, p, items.TaskSpec("comparison", n_labels=3))
        tokens = []
        for k in range(labelers):
            accounts.create_labeler(s, f"sim{k}")
            tokens.append(accounts.issue_token(s, f"sim{k}"))
    st.close()
    return tokens


class Conn:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams, one connection per labeler.
    Real labelers sit on other machines; here the load generator shares the server's CPUs,
    and httpx spent several times the CPU of this per request."""

    def __init__(self, host: str, port: int, stats: dict[str, int]):
        self.host, self.port, self.stats = host, port, stats
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
        """POST, resent on a dropped connection (e.g. an idle keep-alive closed by the server
        just as we reused it): safe because every submission carries its client id."""
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}"
                f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        for attempt in range(5):
            try:
                if self.streams is None:
                    self.streams = await asyncio.open_connection(self.host, self.port)
                reader, writer = self.streams
                writer.write(head.encode() + body)
                status = int((await reader.readline()).split()[1])
                length, close = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    name = name.strip().lower()
                    length = int(value) if name == "content-length" else length
                    close = close or (name == "connection" and "close" in value.lower())
                data = await reader.readexactly(length)
                if close:
                    self.close()
                return status, data
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                self.close()
                self.stats["transport_retries"] += 1
                if attempt == 4:
                    raise
                await asyncio.sleep(0.05)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def labeler(conn: Conn, token: str, n: int, latencies: list[float],
                  rng: random.Random) -> int:
    done = 0
    while done < n:
        status, data = await conn.post("/api/projects/bench/next", token)
        if status == 204:
            break
        if status != 200:
            raise RuntimeError(f"claim: HTTP {status}: {data[:300]!r}")
        a = json.loads(data)
        body = json.dumps({"client_id": uuid.uuid4().hex, "time_spent_s": rng.uniform(2, 20),
                           "answer": {"choice": rng.choice(["first", "second", "tie"]),
                                      "margin": 2}}).encode()
        for _ in range(2 if rng.random() < 0.1 else 1):  # 10%: the client retries
            t0 = time.perf_counter()
            status, data = await conn.post(f"/api/assignments/{a['id']}/label", token, body)
            latencies.append(time.perf_counter() - t0)
            if status not in (200, 201):
                raise RuntimeError(f"submit: HTTP {status}: {data[:300]!r}")
        done += 1
    conn.close()
    return done


async def run_load(port: int, tokens: list[str], per: int, stats: dict[str, int]
                   ) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(labeler(Conn("127.0.0.1", port, stats), tok, per,
                                            latencies, random.Random(i))
                                    for i, tok in enumerate(tokens)))
    return latencies, sum(counts), time.perf_counter() - t0


def verify(url: str) -> dict[str, int]:
    st = db.open_store(url)
    with st.read() as s:
        n = s.scalar(select(func.count()).select_from(Label))
        distinct = s.scalar(select(func.count(func.distinct(Label.client_id))))
        pairs = s.execute(select(Label.task_id, Label.labeler_id).group_by(
            Label.task_id, Label.labeler_id).having(func.count() > 1)).all()
        over = s.execute(select(Label.task_id).group_by(Label.task_id)
                         .having(func.count() > 3)).all()
    st.close()
    return {"labels_stored": n, "duplicate_client_ids": n - distinct,
            "labeler_twice_on_a_task": len(pairs), "tasks_over_3_labels": len(over)}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and its children (server workers, or PostgreSQL's
    backends)."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def postmaster(url: str) -> int | None:
    """The PostgreSQL server process listening on the URL's port."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if p.info["name"] == "postgres" and "-p" in cmd and port in cmd and "-D" in cmd:
            return p.pid
    return None


def bench(backend: str, labelers: int, per: int, workers: int = 1) -> dict:
    with ExitStack() as stack:
        if backend == "postgresql":
            url = new_database(stack.enter_context(postgres_server(fsync=True)))
        else:
            url = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "bench.db")
        tokens = prepare(url, labelers, labelers * per // 2)
        port = free_port()
        log = stack.enter_context(tempfile.TemporaryFile())
        server = subprocess.Popen(
            [sys.executable, "-m", "coachlm.cli", "label", "serve", "--store", url,
             "--port", str(port), "--workers", str(workers)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log, stderr=subprocess.STDOUT)
        stack.callback(server.wait, 30)
        stack.callback(server.terminate)
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/login", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(log.read().decode()[-4000:]) from None
                time.sleep(0.1)
        stats = {"transport_retries": 0}
        pg = postmaster(url) if backend == "postgresql" else None
        cpu0, client0 = tree_cpu_s(server.pid), time.process_time()
        db0 = tree_cpu_s(pg) if pg else 0.0
        try:
            latencies, submitted, wall = asyncio.run(run_load(port, tokens, per, stats))
            cpu, client = tree_cpu_s(server.pid) - cpu0, time.process_time() - client0
            db_cpu = tree_cpu_s(pg) - db0 if pg else None
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            log.seek(0)
            print(log.read().decode()[-6000:], file=sys.stderr)  # the server's traceback
            raise
        checks = verify(url)
    ms = np.array(latencies) * 1000
    ok = (checks["labels_stored"] == labelers * per == submitted
          and not any(v for k, v in checks.items() if k != "labels_stored"))
    return {"backend": backend, "workers": workers, "labelers": labelers,
            "submissions_each": per, "machine_load_1min": round(os.getloadavg()[0], 2),
            "server_cpu_ms_per_label": round(cpu / max(submitted, 1) * 1000, 2),
            "client_cpu_ms_per_label": round(client / max(submitted, 1) * 1000, 2),
            "postgresql_cpu_ms_per_label": None if db_cpu is None else
            round(db_cpu / max(submitted, 1) * 1000, 2),
            "submits_sent": len(latencies), "labels_submitted": submitted, **stats, **checks,
            "ok": ok,
            "p50_submit_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_submit_ms": round(float(np.percentile(ms, 99)), 1),
            "labels_per_s": round(submitted / wall, 1), "wall_s": round(wall, 2)}


async def direct_load(st: db.Store, users: list, per: int) -> None:
    """Every labeler claims and submits `per` times through the API's own functions."""
    from coachlm.web import api

    async def one(user: Any) -> None:
        for _ in range(per):
            claimed = await api.claim_next(st, user, "bench")
            body = api.LabelIn(client_id=uuid.uuid4().hex, time_spent_s=3.0,
                               answer={"choice": "first", "margin": 2})
            saved = await api.submit_label(st, user, json.loads(claimed.body)["id"], body)
            if saved.status_code != 201:
                raise RuntimeError(f"submit: HTTP {saved.status_code}: {saved.body[:300]!r}")

    await asyncio.gather(*(one(u) for u in users))


def bench_direct(backend: str, labelers: int, per: int) -> dict:
    from coachlm.web.deps import User

    with ExitStack() as stack:
        if backend == "postgresql":
            url = new_database(stack.enter_context(postgres_server(fsync=True)))
        else:
            url = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "bench.db")
        prepare(url, labelers, labelers * per // 2)
        st = db.open_store(url)
        with st.read() as s:
            users = [User(lab.id, lab.name, lab.role) for lab in
                     (accounts.get_labeler(s, f"sim{k}") for k in range(labelers))]
        pg = postmaster(url) if backend == "postgresql" else None
        cpu0, db0, t0 = time.process_time(), tree_cpu_s(pg) if pg else 0.0, time.perf_counter()
        asyncio.run(direct_load(st, users, per))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        db_cpu = tree_cpu_s(pg) - db0 if pg else None
        st.close()
        checks = verify(url)
    n = labelers * per
    return {"backend": backend, "direct": True, "labelers": labelers, "submissions_each": per,
            "machine_load_1min": round(os.getloadavg()[0], 2),
            "server_cpu_ms_per_label": round(cpu / n * 1000, 2),
            "postgresql_cpu_ms_per_label": None if db_cpu is None else round(db_cpu / n * 1000, 2),
            **checks, "ok": checks["labels_stored"] == n and not any(
                v for k, v in checks.items() if k != "labels_stored"),
            "labels_per_s": round(n / wall, 1), "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--submissions", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("--direct", action="store_true",
                    help="the store path alone, in this process, without HTTP")
    args = ap.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = [bench_direct(b, args.labelers, args.submissions) if args.direct else
               bench(b, args.labelers, args.submissions, args.workers) for b in backends]
    print(json.dumps(results, indent=2))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
