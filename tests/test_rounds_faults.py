"""Rounds under faults: a kill -9 while simulated labelers submit through the store loses and
duplicates no label, and running again ends with exactly the labels of an uninterrupted run;
people who miss the deadline: the loop goes on with the labels it has, says so, records it."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_cli import ENV
from test_rounds import _people_label, _tasks, _wait_for, loop_cmd

from coachlm.feedback.db import open_store

# 16 prompts x 3 pairs, two labels each: 96 labels, one transaction each (a wide window to kill)
MANY = ["loop.prompts_per_round=16", "feedback.simulated.kind=comparisons", "feedback.n_labels=2"]


def labels_of(db: Path) -> list[tuple]:
    from sqlalchemy import text

    with open_store(str(db)).read() as s:
        return [tuple(r) for r in s.execute(text(
            "select l.client_id, l.task_id, l.answer, lab.name from labels l "
            "join labelers lab on lab.id = l.labeler_id order by l.id"))]


def _count(db: Path) -> int:
    try:
        return len(labels_of(db))
    except Exception:  # the schema may not exist yet
        return 0


@pytest.mark.slow
def test_kill_9_during_simulated_submission_ends_with_the_uninterrupted_labels(tmp_path):
    out, db_a, db_b = tmp_path / "loop", tmp_path / "a.db", tmp_path / "b.db"
    done = subprocess.run(loop_cmd(out, 1, "--store", str(db_a), *MANY), capture_output=True,
                          text=True, env=ENV, timeout=900)
    assert done.returncode == 0, done.stderr
    uninterrupted = labels_of(db_a)
    assert len(uninterrupted) == 96
    # the same round into a second store (the other stages are reused), killed mid-submission
    run = subprocess.Popen(loop_cmd(out, 1, "--store", str(db_b), *MANY), env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        start = time.monotonic()
        while _count(db_b) == 0:
            assert run.poll() is None and time.monotonic() - start < 600
            time.sleep(0.02)
        os.killpg(run.pid, signal.SIGKILL)  # kill -9 while the simulated labelers submit
        run.wait(60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    before = labels_of(db_b)
    assert 0 < len(before) < 96, len(before)  # killed part-way through
    assert before == uninterrupted[:len(before)]  # every committed label as it would have been
    again = subprocess.run(loop_cmd(out, 1, "--store", str(db_b), *MANY), capture_output=True,
                           text=True, env=ENV, timeout=900)
    assert again.returncode == 0, again.stderr
    after = labels_of(db_b)
    assert len({x[0] for x in after}) == len(after) == 96  # none lost, none twice
    assert after == uninterrupted  # same labels, same labelers, same order
    assert "r1/rm: done" in again.stderr  # the reward model trains on the completed round


@pytest.mark.slow
def test_people_deadline_the_loop_goes_on_with_the_labels_it_has_and_records_it(tmp_path):
    out, db = tmp_path / "loop", tmp_path / "loop" / "feedback.db"
    run = subprocess.Popen(loop_cmd(out, 1, "feedback.workers=people", "feedback.poll_s=0.5",
                                    "feedback.deadline_s=45"), env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        _wait_for(lambda: db.is_file() and len(_tasks(db)) == 6, proc=run)
        acked = _people_label(db, "round-1", 2)  # two of six, then nobody comes
        stdout, stderr = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, stderr
    assert "deadline: 2 of 6 labels in round-1" in " ".join(stderr.split())  # says so
    feedback = json.loads((out / "r1" / "feedback" / "stage.json").read_text())
    assert feedback["metrics"]["deadline_passed"] is True  # records it
    assert (feedback["metrics"]["collected"], feedback["metrics"]["wanted"]) == (2, 6)
    trained = [json.loads(x) for x in
               (out / "r1" / "feedback" / "rankings.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in trained) == sorted(acked)  # goes on with what it has
    rm = json.loads((out / "r1" / "rm" / "stage.json").read_text())
    assert rm["metrics"]["records"]["rankings"] == 2
    summary = json.loads((out / "loop.json").read_text())
    assert summary["rounds"][0]["deadline_passed"] is True
    assert "deadline: quota not met" in stdout
