"""Reviewer role, lead dashboard, guidance and label revision through the web app's test client
and the library (issue 14, items 3-6), on a real SQLite store."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from sqlalchemy import select

from coachlm.data import schema
from coachlm.feedback import accounts, db, flow, guidance, importer, items, labels
from coachlm.feedback.db import Conflict, StoreError
from coachlm.feedback.export import export_records
from coachlm.feedback.tables import Assignment, Label, LabelRevision, Labeler, Project, Task
from coachlm.web.app import WebConfig, create_app
from test_web import login


@pytest.fixture()
def app(tmp_path):
    st = db.open_store(str(tmp_path / "review.db"))
    with st.write() as s:
        p = items.create_project(s, "demo", guidelines="Be **right**.")
        a, b = schema.Response("four", "sft"), schema.Response("five", "base")
        prompt = schema.as_prompt("What is 2+2?")
        importer.import_records(s, p, [schema.Comparison(
            prompt=prompt, a=a, b=b, choice=c, labeler=f"judge-{i}", source="ai",
            time_spent_s=0.5) for i, c in enumerate("aba")])
        importer.import_records(s, p, [schema.Sample(prompt=schema.as_prompt("Say hi"),
                                                     response=schema.Response(t, m))
                                       for t, m in (("hi", "sft"), ("hey", "base"))])
        items.create_tasks(s, p, items.TaskSpec("comparison", n_labels=2))
        accounts.create_labeler(s, "ann", "ann-password")
        accounts.create_labeler(s, "rev", "rev-password", role="reviewer")
    application = create_app(WebConfig(store="unused"), st)
    yield application
    st.close()


def _ann_labels_task_2(app) -> tuple[int, int]:
    """ann answers the 'Say hi' comparison (task 2), shown as (b, a), with "first" (= b) and
    strength 2: (assignment id, label id)."""
    with app.state.store.write() as s:
        ann = s.scalar(select(Labeler).where(Labeler.name == "ann"))
        a = Assignment(task_id=2, labeler_id=ann.id, slot=0, shown_order=[1, 0])
        s.add(a)
        s.flush()
        label, _ = labels.submit_label(s, ann, a.id, "ann-cid-0001", {"choice": "first",
                                                                      "margin": 2})
        return a.id, label.id


def test_reject_with_a_note_is_shown_to_the_labeler_and_ends_revision(app):
    aid, label_id = _ann_labels_task_2(app)
    rev, csrf = login(app, "rev", "rev-password")
    r = rev.post(f"/review/l/{label_id}", data={"csrf": csrf, "verdict": "reject", "note": ""})
    assert r.status_code == 400 and "needs a note" in r.text
    r = rev.post(f"/review/l/{label_id}", data={"csrf": csrf, "verdict": "reject",
                                                "note": "The greeting was fine; read again."})
    assert r.status_code == 200 and "Saved: reject" in r.text
    ann, _ = login(app, "ann", "ann-password")
    page = ann.get(f"/a/{aid}").text
    assert "read again" in page and "change your answer" not in page
    with app.state.store.write() as s, pytest.raises(Conflict):
        ann = s.scalar(select(Labeler).where(Labeler.name == "ann"))
        flow.revise(s, ann, aid, "ann-cid-0002", {"choice": "tie"})
    assert not any(r.meta["task"] == 2 for r in _export(app))  # a rejected label is not exported


def _export(app) -> list:
    with app.state.store.read() as s:
        return export_records(s, s.get(Project, 1))


def test_adjudicated_label_wins_in_export_with_an_audit_trail(app):
    rev, csrf = login(app, "rev", "rev-password")
    with app.state.store.read() as s:
        first = s.scalar(select(Label).where(Label.task_id == 1).order_by(Label.id))
        ids = [lb.client_id for lb in s.scalars(select(Label).where(Label.task_id == 1))]
    assert len(ids) == 3
    r = rev.post(f"/review/l/{first.id}", data={"csrf": csrf, "verdict": "adjudicate",
                                                "choice": "b", "margin": "3", "note": "b is right"})
    assert r.status_code == 200
    (rec,) = [x for x in _export(app) if x.meta["task"] == 1]
    assert rec.choice == "b" and rec.margin == 3 and rec.labeler == "rev"
    assert rec.meta["review"]["verdict"] == "adjudicate"
    assert sorted(rec.meta["review"]["replaces"]) == sorted(ids)


def test_correct_and_promote_to_gold_then_unmark(app):
    _, label_id = _ann_labels_task_2(app)
    rev, csrf = login(app, "rev", "rev-password")
    rev.post(f"/review/l/{label_id}", data={"csrf": csrf, "verdict": "correct", "choice": "tie"})
    (rec,) = [x for x in _export(app) if x.meta["task"] == 2]
    assert rec.choice == "tie" and rec.meta["review"]["original"]["choice"] == "b"
    r = rev.post("/review/t/2/gold", data={"csrf": csrf, "choice": "b"})
    assert r.status_code == 200 and "Gold item" in r.text
    with app.state.store.read() as s:
        assert s.get(Task, 2).gold == {"choice": "b", "margin": None}
    rev.post("/review/t/2/gold", data={"csrf": csrf, "unmark": "1"})
    with app.state.store.read() as s:
        assert s.get(Task, 2).gold is None
    ann, ann_csrf = login(app, "ann", "ann-password")
    assert ann.post("/review/t/2/gold", data={"csrf": ann_csrf, "choice": "a"}).status_code == 403


def test_review_queue_puts_disagreements_first_and_filters(app):
    _ann_labels_task_2(app)
    rev, _ = login(app, "rev", "rev-password")
    page = rev.get("/review/p/1").text
    rows = re.findall(r'href="/review/t/(\d+)">', page)
    assert rows[0] == "1" and "disagreement" in page  # judges split 2:1 on task 1
    assert re.findall(r'href="/review/t/(\d+)">', rev.get("/review/p/1?labeler=ann").text) == ["2"]
    assert "five" in rev.get("/review/t/1").text and "judge-1" in rev.get("/review/t/1").text


def test_dashboard_flags_metrics_and_filters_by_source(app):
    _ann_labels_task_2(app)
    rev, _ = login(app, "rev", "rev-password")
    page = rev.get("/admin/p/1/dashboard").text
    assert "<svg" in page and "<script" not in page.split("</header>")[1]
    assert "median time per item" in page and "⚠ check" in page  # judges took 0.5 s
    ai = rev.get("/admin/p/1/dashboard?source=ai").text
    assert "3 labels" in ai and "ann" not in ai.split("<main>")[1]
    assert rev.get("/admin/p/1/dashboard?source=robots").status_code == 400
    with app.state.store.write() as s:
        accounts.create_labeler(s, "root", "root-password", role="admin")
    root, _ = login(app, "root", "root-password")
    human = root.get("/admin/p/1/ratings?source=human").text
    assert 'id="leaderboard"' in human


def test_revise_keeps_the_old_answer_and_a_retry_counts_once(app):
    aid, label_id = _ann_labels_task_2(app)
    with app.state.store.write() as s:
        ann = s.scalar(select(Labeler).where(Labeler.name == "ann"))
        _, changed = flow.revise(s, ann, aid, "ann-cid-0002", {"choice": "tie"})
        assert changed
        _, again = flow.revise(s, ann, aid, "ann-cid-0002", {"choice": "tie"})  # a retry
        assert not again
    with app.state.store.read() as s:
        assert s.get(Label, label_id).answer == {"choice": "tie", "margin": None}
        (old,) = s.scalars(select(LabelRevision))
        assert old.client_id == "ann-cid-0001" and old.answer["margin"] == 2.0


def test_guidance_anchors_flags_and_guidelines_read_state(app):
    with app.state.store.write() as s:
        p = s.get(Project, 1)
        with pytest.raises(StoreError):
            guidance.update(p, {"anchors": {"9": "too high"}})
        with pytest.raises(StoreError):
            guidance.update(p, {"colour": "red"})
        g = guidance.update(p, {"anchors": {"1": "useless", "7": "perfect"}, "quota": 5})
        assert g.anchors["7"] == "perfect" and g.quota == 5
        ann = s.scalar(select(Labeler).where(Labeler.name == "ann"))
        assert guidance.changed_since_read(s, ann.id, p)[1] == "new"
        guidance.mark_read(s, ann.id, p)
        assert guidance.changed_since_read(s, ann.id, p)[1] == ""
        items.add_guidelines(s, p, "Be **right**, and brief.")
        assert guidance.changed_since_read(s, ann.id, p)[1] == "changed"


def test_admin_sets_guidance_in_the_page(app):
    with app.state.store.write() as s:
        accounts.create_labeler(s, "root", "root-password", role="admin")
    c, csrf = login(app, "root", "root-password")
    r = c.post("/admin/p/1/guidance", data={"csrf": csrf, "anchors": "1 = awful\n7 = superb",
                                            "flags": "harmful = could hurt", "quota": "3",
                                            "skip_reasons": "Too long\nOther"})
    assert r.status_code == 200 and "superb" in r.text
    bad = c.post("/admin/p/1/guidance", data={"csrf": csrf, "anchors": "no equals sign"})
    assert bad.status_code == 400


def test_cli_label_guidelines(tmp_path):
    store = str(tmp_path / "cli.db")
    st = db.open_store(store)
    with st.write() as s:
        items.create_project(s, "demo")
    st.close()
    md = tmp_path / "g.md"
    md.write_text("## Rules\n\nPrefer correct answers.\n")
    cli = [sys.executable, "-m", "coachlm.cli", "label", "guidelines", "-p", "demo", "--store",
           store]
    out = subprocess.run(cli + ["--set", str(md), "--anchor", "1=awful", "--quota", "10"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "version 1" in out.stdout, out.stderr
    shown = subprocess.run(cli, capture_output=True, text=True)
    assert "Prefer correct answers." in shown.stdout
    assert json.loads(shown.stdout[shown.stdout.index("{"):])["quota"] == 10
    bad = subprocess.run(cli + ["--anchor", "99=nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "anchor" in bad.stderr


def test_position_bias_is_flagged_only_beyond_chance():
    from coachlm.feedback.dashboard import biased

    assert biased(14, 16)  # ann in docs/screenshots/dashboard.png
    assert not biased(3, 3) and not biased(6, 10) and not biased(8, 16)


def test_admin_upload_takes_parquet_and_trl_jsonl(app, tmp_path):
    from coachlm.data.io import write_records

    with app.state.store.write() as s:
        accounts.create_labeler(s, "root", "root-password", role="admin")
    c, csrf = login(app, "root", "root-password")
    gold = schema.Comparison(prompt=schema.as_prompt("gold?"), a=schema.Response("right"),
                             b=schema.Response("wrong"), choice="a")
    write_records(tmp_path / "gold.parquet", [gold])
    r = c.post("/admin/p/1/import", data={"csrf": csrf, "gold": "true"},
               files={"file": ("gold.parquet", (tmp_path / "gold.parquet").read_bytes())})
    assert r.status_code == 200 and "imported-1" in str(r.url)
    trl = json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}) + "\n"
    r = c.post("/admin/p/1/import", data={"csrf": csrf},
               files={"file": ("prefs.jsonl", trl.encode())})
    assert r.status_code == 200 and "imported-1" in str(r.url)
    bad = c.post("/admin/p/1/import", data={"csrf": csrf},
                 files={"file": ("broken.jsonl", b'{"kind": "comparison"}\n')})
    assert bad.status_code == 400 and "broken.jsonl" in bad.text and "/tmp" not in bad.text
    with app.state.store.read() as s:
        assert s.scalar(select(Task).where(Task.gold.is_not(None))) is not None


def test_browser_filters_flagged_ratings_and_skipped_items(app):
    with app.state.store.write() as s:
        p = s.get(Project, 1)
        importer.import_records(s, p, [schema.Rating(
            prompt=schema.as_prompt("Say hi"), response=schema.Response("hey", "base"), score=2,
            scale=7, flags=("unhelpful",), labeler="judge-r", source="ai")])
        bob = accounts.create_labeler(s, "bob", "bob-password")
        a = flow.next_with_work(s, bob, p).assignment
        flow.skip(s, bob, a.id, "I cannot judge this topic")
        skipped_task = a.task_id
    rev, _ = login(app, "rev", "rev-password")
    flagged = re.findall(r'href="/review/t/(\d+)">', rev.get("/review/p/1?flagged=1").text)
    assert len(flagged) == 1
    with app.state.store.read() as s:
        assert s.get(Task, int(flagged[0])).kind == "rating"
    shown = re.findall(r'href="/review/t/(\d+)">', rev.get("/review/p/1?skipped=1").text)
    assert shown == [str(skipped_task)]
