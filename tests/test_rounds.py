"""Rounds through the feedback store (`coachlm loop`), on tiny settings: every label of every
round is in the store with its project and source; the round r policy samples round r+1; the
reward model reads every label so far; a kill -9 while the loop waits for people loses and
duplicates no label, and the resumed loop trains on exactly the stored labels."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_fixtures import TINY
from test_cli import ENV

from coachlm.feedback.db import open_store
from coachlm.pipeline.rounds import expand

LOOP = Path(__file__).parents[1] / "coachlm" / "pipelines" / "loop.yaml"
SMALL = [*TINY, "loop.prompts_per_round=6", "eval.kl_samples=4"]


def loop_cmd(out: Path, rounds: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "coachlm.cli", "loop", str(LOOP), "--rounds", str(rounds),
            "--out", str(out), *SMALL, *extra]


def store_labels(db: Path) -> list[tuple]:
    from sqlalchemy import text

    with open_store(str(db)).read() as s:
        return list(s.execute(text(
            "select p.name, l.client_id, l.task_id, lab.name, lab.source from labels l "
            "join tasks t on t.id = l.task_id join projects p on p.id = t.project_id "
            "join labelers lab on lab.id = l.labeler_id order by l.id")))


def test_expanded_rounds_chain_policies_and_labels():
    from coachlm.pipeline import load_pipeline

    pipe = expand(load_pipeline(LOOP, ["loop.rm_init=continue", "loop.policy_init=previous"]), 3)
    r3 = {s.name: s for s in pipe.stages}
    assert str(r3["r3/sample"].inputs["model"]) == "r2/ppo.model"
    assert str(r3["r3/ppo"].inputs["model"]) == "sft.model"  # the KL reference stays SFT
    assert str(r3["r3/ppo"].inputs["adapter"]) == "r2/ppo.adapter"  # the policy continues
    assert str(r3["r3/rm"].inputs["model"]) == "r2/rm.model"
    assert [str(x) for x in r3["r3/rm"].inputs["data"]] == [
        "r1/feedback.data", "r2/feedback.data", "r3/feedback.data"]
    assert r3["r3/sample"].config["offset"] == 500 and r3["r3/feedback"].config["project"] == "round-3"
    retrain = {s.name: s for s in expand(load_pipeline(
        LOOP, ["loop.rm_init=retrain", "loop.policy_init=sft"]), 2).stages}
    assert str(retrain["r2/rm"].inputs["model"]) == "sft.model"
    assert str(retrain["r2/ppo"].inputs["model"]) == "sft.model"
    assert "adapter" not in retrain["r2/ppo"].inputs
    previous = {s.name: s for s in expand(load_pipeline(
        LOOP, ["loop.policy_init=previous", "loop.kl_reference=previous"]), 2).stages}
    assert str(previous["r2/ppo"].inputs["model"]) == "r1/ppo.model"
    assert "adapter" not in previous["r2/ppo"].inputs


def test_kl_reference_sft_needs_a_lora_policy_to_continue():
    from coachlm.pipeline import PipelineError, load_pipeline

    with pytest.raises(PipelineError, match="loop.kl_reference: 'sft'.*LoRA adapter"):
        expand(load_pipeline(LOOP, ["ppo.ppo.lora=null", "loop.policy_init=previous"]), 2)
    expand(load_pipeline(LOOP, ["ppo.ppo.lora=null", "loop.policy_init=previous",
                                "loop.kl_reference=previous"]), 2)
    expand(load_pipeline(LOOP, ["ppo.ppo.lora=null"]), 2)  # from SFT: nothing to continue


VERSUS = ["loop.version_prompts=3", "loop.ai_judge=sft.model"]


@pytest.mark.slow
def test_two_rounds_through_the_store_then_all_cached(tmp_path):
    """... and each round's new policy and previous version go to the labelers as comparisons
    through the store; those labels, and an AI judge, rate the versions on the leaderboard."""
    out = tmp_path / "loop"
    proc = subprocess.run(loop_cmd(out, 2, *VERSUS), capture_output=True, text=True, env=ENV,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "loop.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    labels = store_labels(out / "feedback.db")
    for r in (1, 2):
        mine = [x for x in labels if x[0] == f"round-{r}"]
        assert len(mine) == summary["rounds"][r - 1]["labels"] == 6  # one ranking per prompt
        assert {x[4] for x in mine} == {"simulated"}
        w = summary["rounds"][r - 1]["wins"]["ppo_over_sft"]
        assert w["wins"] + w["ties"] + w["losses"] == w["n"] and w["lo"] <= w["rate"] <= w["hi"]
    assert len({x[1] for x in labels}) == len(labels)  # no label twice
    rm2 = json.loads((out / "r2" / "rm" / "stage.json").read_text())
    assert rm2["input_refs"]["data"] == ["r1/feedback.data", "r2/feedback.data"]
    assert rm2["input_refs"]["model"] == "sft.model"  # the shipped loop retrains its RM
    sample2 = json.loads((out / "r2" / "sample" / "stage.json").read_text())
    assert sample2["input_refs"]["model"] == "r1/ppo.model" and sample2["config"]["offset"] == 6
    board = summary["leaderboard"]
    assert set(board["players"]) == {"sft", "r1/ppo", "r2/ppo"}
    assert {row["name"] for row in board["boards"]["rubric"]} == {"sft", "r1/ppo", "r2/ppo"}
    check_version_matches(out, summary, labels)
    again = subprocess.run(loop_cmd(out, 2, *VERSUS), capture_output=True, text=True, env=ENV,
                           timeout=900)
    assert again.returncode == 0 and again.stderr.count("cached") == 19, again.stderr
    check_report_in_chromium(out / "report.html", tmp_path / "report.png")


def check_version_matches(out: Path, summary: dict, labels: list[tuple]) -> None:
    """Round r's comparisons pit r/ppo against the previous version; they are in the store
    (project round-r-versions), and the leaderboard counts them, and the AI judge's, as matches."""
    from coachlm.data.io import read_records

    for r, (new, old) in ((1, ("r1/ppo", "sft")), (2, ("r2/ppo", "r1/ppo"))):
        versus = summary["rounds"][r - 1]["versions"]
        assert versus["players"] == [new, old] and versus["project"] == f"round-{r}-versions"
        stored = [x for x in labels if x[0] == f"round-{r}-versions"]
        assert len(stored) == versus["labels"] and {x[4] for x in stored} <= {"simulated"}
        path = out / f"r{r}" / "versions_label" / "comparisons.jsonl"
        recs = list(read_records(path)) if path.stat().st_size else []  # all alike: none
        assert len(recs) == len(stored) and {(c.a.model, c.b.model) for c in recs} <= {
            (new, old), (old, new)}
    boards = summary["leaderboard"]["boards"]
    matches = summary["leaderboard"]["matches"]
    assert matches["feedback"] == sum(r["versions"]["labels"] for r in summary["rounds"]) > 0
    assert boards["feedback"] and {row["name"] for row in boards["feedback"]} <= {
        "sft", "r1/ppo", "r2/ppo"}
    assert matches["ai_judge"] > 0 and {row["name"] for row in boards["ai_judge"]} == {
        "sft", "r1/ppo", "r2/ppo"}


CHROMIUM = "/usr/bin/chromium"


def check_report_in_chromium(report: Path, screenshot: Path) -> None:
    """The report opens in headless Chromium without console errors, plots and tables shown."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        assert page.locator("h2", has_text="Reward-hacking watch").count() == 1
        assert page.locator("h2", has_text="Round 2").count() == 1
        assert page.locator("img").count() >= 9  # win rates + 4 plots per round
        assert all(page.evaluate("[...document.images].map(i => i.naturalWidth > 0)"))
        assert page.locator("td", has_text="r2/ppo").count() >= 1  # the leaderboard
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert errors == [] and screenshot.stat().st_size > 10_000


def _wait_for(pred, timeout: float = 600.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until pred() holds; fail at once, with its stderr, if `proc` exits first."""
    start = time.monotonic()
    while not pred():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the process exited ({proc.returncode}) first:\n{err[-3000:]}")
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(1.0)


def _people_label(db: Path, project: str, n: int) -> list[str]:
    """People (here: a script through the store API, as the web app calls it) label n tasks."""
    from coachlm.feedback.accounts import create_labeler
    from coachlm.feedback.assign import next_assignment
    from coachlm.feedback.items import get_project
    from coachlm.feedback.labels import submit_label

    store, acked = open_store(str(db)), []
    for i in range(n):
        def one(s, i=i):
            lab = create_labeler(s, f"person-{i}")
            a = next_assignment(s, lab, get_project(s, project))
            ranks = list(range(1, len(a.task.response_ids) + 1))
            return submit_label(s, lab, a.id, f"person-label-{i:04d}", {"ranks": ranks}, 9.0)[0]
        acked.append(store.run(one).client_id)
    return acked


@pytest.mark.slow
def test_kill_9_while_waiting_for_people_loses_and_duplicates_no_label(tmp_path):
    out, db = tmp_path / "loop", tmp_path / "loop" / "feedback.db"
    waiting = subprocess.Popen(loop_cmd(out, 1, "feedback.workers=people", "feedback.poll_s=0.5"),
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _wait_for(lambda: (out / "r1" / "feedback" / "running.json").is_file()
                  and db.is_file() and len(_tasks(db)) == 6, proc=waiting)
        acked = _people_label(db, "round-1", 2)
        os.killpg(waiting.pid, signal.SIGKILL)  # kill -9 the loop while it waits for the rest
        waiting.wait(timeout=60)
    finally:
        if waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
    before = store_labels(db)
    assert [x[1] for x in before] == acked  # every acknowledged label is stored, once
    # the same command, now with simulated workers for the rest: no task posted twice, the
    # people's labels kept, and the reward model trains on exactly the stored labels
    proc = subprocess.run(loop_cmd(out, 1), capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert len(_tasks(db)) == 6
    after = store_labels(db)
    assert len(after) == 6 and len({x[1] for x in after}) == 6
    assert {x[3] for x in after if x[1] in acked} == {"person-0", "person-1"}
    trained = [json.loads(line) for line in
               (out / "r1" / "feedback" / "rankings.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in trained) == sorted(x[1] for x in after)
    assert {r["source"] for r in trained} == {"human", "simulated"}


def _tasks(db: Path) -> list:
    from sqlalchemy import text

    try:
        with open_store(str(db)).read() as s:
            return list(s.execute(text("select id from tasks")))
    except Exception:  # the loop may still be creating the schema
        return []


@pytest.mark.slow
def test_a_person_labels_a_round_in_chromium_and_the_loop_trains_on_those_labels(tmp_path):
    """The loop posts round 1 and waits; a person signs in to the web app in Chromium and
    ranks every task; the loop goes on, and the reward model's data is exactly those labels."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    from feedback_support import free_port

    from coachlm.feedback.accounts import create_labeler

    db, out = tmp_path / "feedback.db", tmp_path / "loop"
    open_store(str(db)).run(lambda s: create_labeler(s, "pat", password="pat-password"))
    loop = subprocess.Popen(loop_cmd(out, 1, "--store", str(db), "feedback.workers=people",
                                     "feedback.poll_s=0.5"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "coachlm.cli", "label", "serve", "--store",
                            str(db), "--port", str(port)], env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: len(_tasks(db)) == 6, proc=loop)
        _wait_for(lambda: _up(url + "/login"), timeout=300)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
            page = browser.new_page()
            page.goto(url + "/")
            page.fill('input[name="name"]', "pat")
            page.fill('input[name="password"]', "pat-password")
            with page.expect_navigation():
                page.click("#sign-in")
            with page.expect_navigation():
                page.click("button.start")
            for _ in range(6):
                for i, rank in enumerate(("2", "1", "3"), 1):
                    page.select_option(f"#rank-{i}", rank)
                page.focus("#task-form")
                with page.expect_navigation():
                    page.keyboard.press("Control+Enter")
            browser.close()
        assert loop.wait(timeout=900) == 0, loop.stderr.read()
    finally:
        for proc in (loop, web):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stored = store_labels(db)
    assert len(stored) == 6 and {x[3] for x in stored} == {"pat"}
    trained = [json.loads(line) for line in
               (out / "r1" / "feedback" / "rankings.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in trained) == sorted(x[1] for x in stored)
    assert {(r["labeler"], r["source"]) for r in trained} == {("pat", "human")}
    rm = json.loads((out / "r1" / "rm" / "stage.json").read_text())
    assert rm["config"]["data"] == [str(out / "r1" / "feedback" / "rankings.jsonl")]
    assert rm["metrics"]["records"]["rankings"] == 6


def _up(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=1)
        return True
    except OSError:
        return False


def test_round_2_continues_the_adapter_so_its_kl_reference_stays_sft(tmp_path):
    """policy_init previous, kl_reference sft (its default): round 2's PPO starts from round 1's
    policy (its LoRA adapter, continued on SFT) while the reference its KL penalty uses (the
    adapter off) is SFT, not round 1's policy: its first rollout already measures the KL that
    round 1 added. Before, round 2 put a fresh adapter on round 1's merged policy, so the
    reference was round 1 and the KL to SFT grew each round."""
    import torch

    from coachlm.models.load import load_model, load_tokenizer
    from coachlm.models.logprobs import sequence_logprobs
    from coachlm.models.lora import adapter_disabled, continue_lora

    out = tmp_path / "loop"
    proc = subprocess.run(loop_cmd(out, 2, "loop.policy_init=previous", "ppo.ppo.lr=0.05"), capture_output=True, text=True,
                          env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr
    stage = json.loads((out / "r2" / "ppo" / "stage.json").read_text())
    sft = json.loads((out / "sft" / "stage.json").read_text())["result"]["model"]
    r1 = json.loads((out / "r1" / "ppo" / "stage.json").read_text())["result"]
    assert stage["input_refs"]["model"] == "sft.model"
    assert stage["input_refs"]["adapter"] == "r1/ppo.adapter"
    assert stage["config"]["adapter"] == r1["adapter"]
    # The policy round 2 starts from, built as run_ppo builds it: the adapter on is round 1's
    # policy, the adapter off (the trainer's reference) is SFT.
    tok = load_tokenizer(sft)
    policy = continue_lora(load_model(stage["config"]["model"], tokenizer=tok),
                           stage["config"]["adapter"])
    ids = torch.tensor([tok.encode("Write a short email to Ann about the garden.")])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        with adapter_disabled(policy):
            ref = sequence_logprobs(policy, ids, mask, mask)
        start = sequence_logprobs(policy, ids, mask, mask)
        want_ref = sequence_logprobs(load_model(sft, tokenizer=tok), ids, mask, mask)
        want_start = sequence_logprobs(load_model(r1["model"], tokenizer=tok), ids, mask, mask)
    torch.testing.assert_close(ref, want_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(start, want_start, atol=1e-4, rtol=0)
    assert (want_start - want_ref).abs().max() > 1e-3  # round 1 moved away from SFT
    # The trainer's first rollout of round 2 sees the KL to SFT that round 1 left (a fresh
    # adapter, as before, measured 0 there).
    first = json.loads((out / "r2" / "ppo" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["kl"]) > 1e-3  # a k1 estimate: nonzero, of either sign on few samples
