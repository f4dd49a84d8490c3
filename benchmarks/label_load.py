"""Load test of the labeling server: 50 concurrent simulated labelers x 40 submissions each.

Starts `coachlm label serve` on loopback (SQLite by default; `--backend postgresql` starts a
throwaway PostgreSQL server with fsync on), makes 1,000 comparison tasks that each want 3
labels (3,000 slots, so that no labeler runs out of tasks it has not seen), then runs the labelers against the JSON API: each claims its next assignment and
submits a label with a client-generated id; 10% of submissions are sent twice (a client retry)
to exercise idempotency. Afterwards it checks that exactly 2,000 labels are stored, with no
duplicate client id, no labeler twice on a task and no task over its 3 labels, and prints
p50/p99 submit latency and labels/s as JSON, with the CPU seconds the server processes used
per label (a figure that depends less on what else the machine is running than labels/s).

    python benchmarks/label_load.py [--backend sqlite|postgresql|both] [--workers N]
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

import httpx
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


async def post(client: httpx.AsyncClient, url: str, stats: dict[str, int],
               **kw) -> httpx.Response:
    """POST, resent on a dropped connection (e.g. an idle keep-alive closed by the server just
    as we reused it): safe because every submission carries its client id."""
    for attempt in range(5):
        try:
            return await client.post(url, **kw)
        except httpx.TransportError:
            stats["transport_retries"] += 1
            if attempt == 4:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


async def labeler(client: httpx.AsyncClient, token: str, n: int, latencies: list[float],
                  rng: random.Random, stats: dict[str, int]) -> int:
    h = {"Authorization": f"Bearer {token}"}
    done = 0
    while done < n:
        r = await post(client, "/api/projects/bench/next", stats, headers=h)
        if r.status_code == 204:
            break
        r.raise_for_status()
        a = r.json()
        body = {"client_id": uuid.uuid4().hex, "time_spent_s": rng.uniform(2, 20),
                "answer": {"choice": rng.choice(["first", "second", "tie"]), "margin": 2}}
        for _ in range(2 if rng.random() < 0.1 else 1):  # 10%: the client retries
            t0 = time.perf_counter()
            r = await post(client, f"/api/assignments/{a['id']}/label", stats, headers=h,
                           json=body)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
        done += 1
    return done


async def run_load(base: str, tokens: list[str], per: int, stats: dict[str, int]
                   ) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=len(tokens) + 10)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(labeler(client, tok, per, latencies, random.Random(i),
                                                stats) for i, tok in enumerate(tokens)))
        wall = time.perf_counter() - t0
    return latencies, sum(counts), wall


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


def server_cpu_s(pid: int) -> float:
    """CPU seconds used so far by the server and its worker processes."""
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
        cpu0 = server_cpu_s(server.pid)
        try:
            latencies, submitted, wall = asyncio.run(run_load(base, tokens, per, stats))
            cpu = server_cpu_s(server.pid) - cpu0
        except httpx.HTTPError:
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
            "submits_sent": len(latencies), "labels_submitted": submitted, **stats, **checks,
            "ok": ok,
            "p50_submit_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_submit_ms": round(float(np.percentile(ms, 99)), 1),
            "labels_per_s": round(submitted / wall, 1), "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--submissions", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    args = ap.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = [bench(b, args.labelers, args.submissions, args.workers) for b in backends]
    print(json.dumps(results, indent=2))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
