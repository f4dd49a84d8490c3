"""The command line as a user meets it: clear errors without tracebacks, and the cached demo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("pretrain:\n  max_stepz: 3\n")
    proc = coachlm("demo", "--out", str(tmp_path / "d"), "--config", str(cfg))
    assert_user_error(proc, "unknown config key 'pretrain.max_stepz'", "max_steps")


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
    overrides = ["world.sft_demos=64", "world.train_prompts=16", "world.heldout_per_family=2",
                 "world.corpus_chars=60000", "preset=world-tiny", "seq_len=64", "vocab_size=512",
                 "pretrain.max_steps=4", "pretrain.batch_size=4", "sft.max_steps=4",
                 "sft.batch_size=4", "sft_max_length=96", "eval_max_new_tokens=16"]
    proc = coachlm("demo", "--out", str(out), *overrides)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "demo.json").read_text())
    assert 0.0 <= summary["base_if_rate"] <= 1.0 and 0.0 <= summary["sft_if_rate"] <= 1.0
    for stage in ("world", "pretrain", "sft", "eval"):
        record = json.loads((out / stage / "stage.json").read_text())
        assert record["stage"] == stage and record["key"]
    # lineage: SFT names the world and the pretrained model it came from
    sft = json.loads((out / "sft" / "stage.json").read_text())
    assert set(sft["inputs"]) == {"world", "pretrain"}
    assert (out / "pretrain" / "metrics.jsonl").is_file() and (out / "sft" / "summary.json").is_file()
    # a second run with the same settings re-runs nothing
    again = coachlm("demo", "--out", str(out), *overrides)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("cached") == 4
    # changing an SFT setting re-runs SFT and eval only
    changed = coachlm("demo", "--out", str(out), *overrides, "sft.max_steps=5")
    assert changed.returncode == 0, changed.stderr
    assert "world: cached" in changed.stderr and "pretrain: cached" in changed.stderr
    assert "sft: cached" not in changed.stderr and "eval: cached" not in changed.stderr
    assert json.loads((out / "sft" / "summary.json").read_text())["steps"] == 5


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
