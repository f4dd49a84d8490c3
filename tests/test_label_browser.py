"""End to end in a real browser: Playwright drives Debian's headless Chromium against the server
started with `coachlm label serve` on loopback. A labeler signs in, does three comparisons with
the keyboard, one ranking, one rating and one ideal response; an admin exports the labels, the
exported file is read back with the record schema, and `coachlm rm` trains on the preferences.

Skipped when Chromium or Playwright is missing; Playwright never downloads a browser here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from browser_support import chromium, labelers, needs_chromium, serve, sign_in, start

from coachlm.data import schema
from coachlm.feedback import db, importer, items

EVIL = "<script>window.__pwned = 1; alert('pwned')</script>"

pytestmark = needs_chromium


def _make_store(path: str) -> None:
    st = db.open_store(path)
    with st.write() as s:
        p = items.create_project(s, "demo", guidelines="Prefer correct, polite answers.")
        labelers(s, "ann")
        labelers(s, "root", role="admin")
        groups = {"comparison": 3, "ranking": 1, "rating": 1, "demonstration": 1}
        i = 0
        for kind, count in groups.items():
            for _ in range(count):
                i += 1
                prompt = schema.as_prompt([{"role": "user", "content": f"Question {i}?"},
                                           {"role": "assistant", "content": "Which one?"},
                                           {"role": "user", "content": f"Answer question {i}."}])
                n = {"ranking": 3, "rating": 1}.get(kind, 2)
                texts = [f"reply {i}.{j}" for j in range(n)]
                if i == 1:
                    texts[1] = EVIL
                importer.import_records(s, p, [schema.Sample(
                    prompt=prompt, response=schema.Response(t, f"model{j}", "v1"))
                    for j, t in enumerate(texts)])
                prompt_row, _ = items.add_prompt(s, p, prompt)
                ids = [r.id for r in prompt_row.responses]
                items.add_task(s, p, kind, prompt_row, ids[:1] if kind == "demonstration" else ids)
    st.close()


@pytest.fixture()
def server(tmp_path):
    store = str(tmp_path / "feedback.db")
    _make_store(store)
    with serve(store) as url:
        yield url


def _label_one(page) -> str:
    kind = page.get_attribute("#task-form", "data-kind")
    if kind == "comparison":
        page.keyboard.press("ArrowRight")
        page.keyboard.press("3")
        with page.expect_navigation():
            page.keyboard.press("Enter")
    elif kind == "ranking":
        for i, rank in enumerate(("2", "1", "2"), 1):
            page.select_option(f"#rank-{i}", rank)
        page.focus("#task-form")
        with page.expect_navigation():
            page.keyboard.press("Control+Enter")
    elif kind == "rating":
        page.keyboard.press("5")
        page.check('input[name="flags"][value="made_up_facts"]')
        page.fill("#critique", "Invents a source.")
        with page.expect_navigation():
            page.keyboard.press("Control+Enter")
    else:
        page.fill("#ideal", "The ideal answer, edited.")
        with page.expect_navigation():
            page.keyboard.press("Control+Enter")
    return kind


def test_labeler_and_admin_in_chromium(server, tmp_path):
    dialogs: list[str] = []
    with chromium() as browser:
        page = browser.new_context().new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        sign_in(page, server, "ann", "ann-password")
        start(page)
        done, saw_evil = Counter(), False
        for _ in range(6):
            if "pwned" in page.content():
                saw_evil = True
                assert EVIL in page.inner_text("main")  # shown as text, not run
                assert page.evaluate("window.__pwned") is None
            done[_label_one(page)] += 1
        assert done == {"comparison": 3, "ranking": 1, "rating": 1, "demonstration": 1}
        assert saw_evil and dialogs == []
        assert "Saved" in page.inner_text("main") and page.url.startswith(server + "/?")

        admin = browser.new_context(accept_downloads=True).new_page()
        sign_in(admin, server, "root", "root-password", "/admin/p/1")
        assert admin.inner_text("#label-count") == "6"
        with admin.expect_download() as info:
            admin.click("#export")
        out = tmp_path / "labels.jsonl"
        info.value.save_as(out)
    records = [schema.from_dict(json.loads(line)) for line in out.read_text().splitlines()]
    kinds = Counter(schema.KIND_OF[type(r)] for r in records)
    assert kinds == {"comparison": 3, "ranking": 1, "rating": 1, "demonstration": 1}
    for r in records:
        assert r.labeler == "ann" and r.source == "human" and r.time_spent_s > 0
        if isinstance(r, schema.Comparison):
            # ArrowRight = the response on the right; strength 3.
            assert r.choice == ("a" if r.shown_order == "ba" else "b") and r.margin == 3
        if isinstance(r, schema.Ranking):
            assert sorted(r.ranks) == [1, 2, 2]
        if isinstance(r, schema.Rating):
            assert r.score == 5 and r.flags == ("made_up_facts",)
        if isinstance(r, schema.Demonstration):
            assert r.response.text == "The ideal answer, edited."
    comparisons = [r for r in records if isinstance(r, schema.Comparison)]
    assert all(len(r.prompt) == 3 for r in comparisons)  # multi-turn kept
    _reward_model_trains_on_the_export(tmp_path)


def _reward_model_trains_on_the_export(tmp_path: Path) -> None:
    """The issue's last step: `coachlm rm` trains on what the admin exported (the preference
    records: three comparisons and the ranking's three pairs)."""
    from models_fixtures import model, tokenizer

    from coachlm.models.load import save_pretrained

    env = {**os.environ, "COACHLM_NO_PROGRESS": "1"}
    prefs, backbone, run = tmp_path / "prefs.jsonl", tmp_path / "backbone", tmp_path / "rm"
    cli = [sys.executable, "-m", "coachlm.cli"]
    subprocess.run(cli + ["label", "export", str(prefs), "-p", "demo", "--store",
                          str(tmp_path / "feedback.db"), "--kinds", "comparison,ranking"],
                   check=True, env=env, capture_output=True)
    assert len(prefs.read_text().splitlines()) == 4
    save_pretrained(model(), tokenizer(), backbone)
    proc = subprocess.run(cli + ["rm", "--model", str(backbone), "--data", str(prefs), "--out",
                                 str(run), "val_fraction=0", "train.batch_size=2"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] >= 1 and (run / "final").is_dir()
