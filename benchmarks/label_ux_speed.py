"""Time a scripted labeler needs per comparison in the browser, and the page round trips it costs.

Starts `coachlm label serve` over a fresh SQLite store with N comparison tasks (two-paragraph
answers), signs in with headless Chromium and labels every item from the keyboard (right is
better, strength 2, Enter) as fast as the pages allow. It reports the median and p90 wall time
per comparison, the HTTP requests per comparison, and the round trips to the app (requests that
are not static files: the submit and the next page), as JSON. Timings on a loaded machine vary.

    python benchmarks/label_ux_speed.py [--n 30] [--code /path/to/checkout]

`--code` runs the server from another checkout (e.g. the code before a change) for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_store(path: str, n: int) -> None:
    from coachlm.data import schema
    from coachlm.feedback import accounts, db, importer, items

    st = db.open_store(path)
    with st.write() as s:
        p = items.create_project(s, "speed", guidelines="Prefer correct answers.")
        body = "A paragraph of a plausible answer with some detail. " * 12
        recs = [schema.Sample(prompt=schema.as_prompt(f"Question {i}: explain step {i}."),
                              response=schema.Response(f"## Answer {j}\n\n{body}\n\n{body}", f"m{j}"))
                for i in range(n) for j in range(2)]
        importer.import_records(s, p, recs)
        items.create_tasks(s, p, items.TaskSpec("comparison"))
        accounts.create_labeler(s, "fast", "fast-password")
    st.close()


def run(n: int, code: Path) -> dict:
    sys.path[:0] = [str(code), str(ROOT / "tests")]
    from browser_support import chromium, serve, sign_in

    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "speed.db")
        make_store(store, n)
        with serve(store, code) as url, chromium() as browser:  # the code under test serves
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            requests = []
            page.on("request", lambda r: requests.append(
                (r.method, r.resource_type, r.url.split("?")[0].replace(url, ""))))
            sign_in(page, url, "fast", "fast-password")
            with page.expect_navigation():
                page.click("button.start")
            requests.clear()
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                page.keyboard.press("ArrowRight")
                page.keyboard.press("2")
                with page.expect_navigation():
                    page.keyboard.press("Enter")
                page.wait_for_load_state("load")
                times.append(time.perf_counter() - t0)
    pages = [r for r in requests if not r[2].startswith("/static/") and "favicon" not in r[2]]
    return {"n": n, "code": str(code), "median_s": round(statistics.median(times), 3),
            "p90_s": round(sorted(times)[int(0.9 * (n - 1))], 3),
            "requests_per_item": round(len(requests) / n, 2),
            "round_trips_per_item": round(len(pages) / n, 2),
            "one_item": sorted({f"{m} {t} {u.rsplit('/', 1)[0]}/N" for m, t, u in pages[:4]})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--code", type=Path, default=ROOT)
    args = ap.parse_args()
    print(json.dumps(run(args.n, args.code.resolve())))


if __name__ == "__main__":
    main()
