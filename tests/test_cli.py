"""The command line as a user meets it: clear errors without tracebacks, and the cached demo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_fixtures import TINY

ENV = {**os.environ, "COACHLM_NO_PROGRESS": "1", "COLUMNS": "200"}


def coachlm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coachlm.cli", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_config_typo_names_the_key(tmp_path):
    proc = coachlm("world", "--out", str(tmp_path / "w"), "sft_demo=10")
    assert_user_error(proc, "unknown config key 'sft_demo'", "did you mean 'sft_demos'")


def test_yaml_config_typo_names_the_nested_key(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("stages:\n  world:\n    config: {seed: 0}\n  pretrain:\n"
                   "    inputs: {corpus: world.corpus}\n    config: {train: {max_stepz: 3}}\n")
    proc = coachlm("run", str(cfg), "--out", str(tmp_path / "d"))
    assert_user_error(proc, f"{cfg}: unknown config key 'stages.pretrain.config.train.max_stepz'",
                      "max_steps")


def test_malformed_record_names_file_line_and_field(tmp_path):
    bad = tmp_path / "demos.jsonl"
    good = {"kind": "demonstration", "prompt": "Say hi.", "response": {"text": "Hi."}}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "response": {"txt": "x"}}) + "\n")
    proc = coachlm("data", "validate", str(bad))
    assert_user_error(proc, f"{bad}:2: response.txt: unknown field")
    proc = coachlm("sft", "--model", str(tmp_path), "--data", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


def test_missing_model_directory_is_a_clear_error(tmp_path):
    proc = coachlm("eval", "--model", str(tmp_path / "nope"), "--prompts", str(tmp_path / "p.jsonl"))
    assert_user_error(proc)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_caches(tmp_path):
    out = tmp_path / "demo"
    overrides = TINY
    stages = ("world", "pretrain", "sft", "sample", "feedback", "rm", "ppo", "eval", "report")
    proc = coachlm("demo", "--out", str(out), *overrides)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["if_rate"]) == {"base", "sft", "ppo"}
    assert all(0.0 <= v <= 1.0 for v in summary["if_rate"].values())
    assert set(summary["win_rate"]) == {"ppo_over_sft", "sft_over_base"}
    assert summary["kl_ppo_sft"]["kl_samples"] == 4
    assert set(summary["stage_seconds"]) == set(stages)
    for stage in stages:
        record = json.loads((out / stage / "stage.json").read_text())
        assert record["stage"] == stage and record["key"]
    # lineage: each model names the data and models it came from
    assert set(json.loads((out / "sft" / "stage.json").read_text())["inputs"]) == {"world", "pretrain"}
    # (the reward model normalizes on the sampled responses: an input too, so a key input)
    assert set(json.loads((out / "rm" / "stage.json").read_text())["inputs"]) == {
        "feedback", "sft", "sample"}
    assert set(json.loads((out / "ppo" / "stage.json").read_text())["inputs"]) == {"world", "sft", "rm"}
    assert (out / "feedback" / "rankings.jsonl").is_file()
    ppo_manifest = json.loads((out / "ppo" / "stage.json").read_text())
    assert ppo_manifest["kind"] == "ppo" and ppo_manifest["config"]["ppo"]["steps"] == 2
    assert ppo_manifest["input_refs"]["reward"] == "rm.model"
    assert ppo_manifest["code_version"]["coachlm"] and ppo_manifest["metrics"]["final_metrics"]
    wins = summary["wins"]["ppo_over_sft"]
    assert wins["wins"] + wins["ties"] + wins["losses"] == wins["n"] == 10
    assert wins["lo"] <= wins["rate"] <= wins["hi"]
    assert summary["test"]["n"] == 5 and summary["sampled"]["max_new_tokens"] == 12
    assert json.loads((out / "ppo" / "summary.json").read_text())["steps"] == 2
    # the pipeline ends with its report stage, which covers every stage before it
    report = (out / "report" / "report.html").read_text()
    assert "Leaderboard" in report and ">eval<" in report
    # a second run with the same settings re-runs nothing
    again = coachlm("demo", "--out", str(out), *overrides)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("cached") == len(stages)
    # changing a reward-model setting re-runs the reward model, PPO and eval only
    changed = coachlm("demo", "--out", str(out), *overrides, "rm.train.lr=1e-4")
    assert changed.returncode == 0, changed.stderr
    for stage in ("world", "pretrain", "sft", "sample", "feedback"):
        assert f"{stage}: cached" in changed.stderr
    for stage in ("rm", "ppo", "eval", "report"):
        assert f"{stage}: cached" not in changed.stderr


def test_interrupted_stage_resumes_and_changed_stage_starts_clean(tmp_path):
    from coachlm.pipeline import run_stage

    calls = []

    def fn(d):
        calls.append(sorted(p.name for p in d.iterdir()))
        (d / "checkpoint").write_text("x")
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed mid-stage: no stage.json
        return {"ok": True}

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, "s", {"a": 1}, {}, fn)
    run_stage(tmp_path, "s", {"a": 1}, {}, fn)  # same settings: the checkpoint is still there
    assert calls[1] == ["checkpoint", "running.json"]
    run_stage(tmp_path, "s", {"a": 2}, {}, fn)  # new settings: starts from an empty directory
    assert calls[2] == ["running.json"]
