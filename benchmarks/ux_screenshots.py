"""Screenshots of the labeling app for docs/screenshots: the lead's dashboard over a store with
three labelers (one fast and position-biased, as in issue 14; each at their own pace, for the
per-labeler ETA), and the long-answer comparison at
desktop and phone widths (those come from tests/test_label_flow_browser.py with
COACHLM_SCREENSHOTS set).

    python benchmarks/ux_screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser_support import chromium, serve, sign_in  # noqa: E402

from coachlm.data import schema  # noqa: E402
from coachlm.feedback import accounts, assign, db, importer, items, labels  # noqa: E402
from coachlm.feedback.tables import Labeler, Project, utcnow  # noqa: E402


def make_store(path: str) -> None:
    rng = random.Random(0)
    st = db.open_store(path)
    with st.write() as s:
        p = items.create_project(s, "demo-round-1", guidelines="Prefer correct, polite answers.")
        importer.import_records(s, p, [schema.Sample(
            prompt=schema.as_prompt(f"Question {i}?"), response=schema.Response(
                f"answer {i} from {m}", m)) for i in range(20) for m in ("sft", "rlhf")])
        importer.import_records(s, p, [schema.Sample(
            prompt=schema.as_prompt(f"Rate {i}"), response=schema.Response(f"reply {i} {m}", m))
            for i in range(6) for m in ("sft", "rlhf")])
        items.create_tasks(s, p, items.TaskSpec("comparison", n_labels=3))
        items.create_tasks(s, p, items.TaskSpec("rating", n_labels=1))
        accounts.create_labeler(s, "lead", "lead-password", role="admin")
        for name in ("ann", "bob", "cai"):
            accounts.create_labeler(s, name, None)
    now = utcnow()
    # Paces for the per-labeler ETA: bob a label every 6 minutes, ann every minute, cai every 15.
    for name, n, fast, every in (("bob", 32, False, 6), ("ann", 16, True, 1),
                                 ("cai", 8, False, 15)):
        with st.write() as s:
            lab = s.query(Labeler).filter_by(name=name).one()
            p = s.get(Project, 1)
            for k in range(n):
                a = assign.next_assignment(s, lab, p)
                if a is None:
                    break
                if a.task.kind == "rating":
                    ans = {"score": rng.randint(3, 7), "flags": [], "critique": ""}
                elif fast:  # ann mostly picks the answer shown first, in a fraction of a second
                    ans = {"choice": "first" if rng.random() < 0.8 else "second", "margin": 2}
                else:
                    ans = {"choice": rng.choice(["first", "second", "tie"]), "margin": 2}
                label, _ = labels.submit_label(s, lab, a.id, f"{name}-{k:04d}-cid", ans,
                                               0.3 if fast else rng.uniform(8, 40))
                label.created_at = now - timedelta(minutes=(n - k) * every)
    st.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "shots.db")
        make_store(store)
        with serve(store) as url, chromium() as browser:
            page = browser.new_context(viewport={"width": 1100, "height": 900}).new_page()
            sign_in(page, url, "lead", "lead-password", "/admin/p/1/dashboard")
            page.screenshot(path=str(args.out / "dashboard.png"), full_page=True)
    print(f"wrote {args.out / 'dashboard.png'}")


if __name__ == "__main__":
    main()
