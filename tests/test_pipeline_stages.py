"""The eval stage and `coachlm compare` take one config (CompareConfig): a stage's resolved
config, saved as YAML, runs as the command and gives the same numbers; a pipeline ends with its
`report` stage, which covers every stage before it."""

import json

import pytest
import yaml
from pipeline_fixtures import TINY
from test_cli import assert_user_error, coachlm

from coachlm.demo import quickstart_path
from coachlm.pipeline import load_pipeline, run_pipeline


@pytest.mark.slow
def test_eval_stage_config_runs_as_the_compare_command_and_the_report_stage_ends_the_run(tmp_path):
    out = tmp_path / "run"
    records = run_pipeline(load_pipeline(quickstart_path(), TINY), out)
    assert list(records)[-1] == "report"
    html = (out / "report" / "report.html").read_text()
    assert records["report"]["result"]["report"] == str(out / "report" / "report.html")
    for stage in ("world", "sft", "ppo", "eval"):
        assert f"<td>{stage}</td>" in html
    stage_cfg = dict(records["eval"]["config"], out=str(tmp_path / "cmd"))
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text(yaml.safe_dump(stage_cfg))
    proc = coachlm("compare", "--config", str(cfg_file))
    assert proc.returncode == 0, proc.stderr
    again = json.loads((tmp_path / "cmd" / "eval.json").read_text())
    stage = json.loads((out / "eval" / "eval.json").read_text())
    assert again["wins"] == stage["wins"] and again["kl"]["kl"] == stage["kl"]["kl"]
    assert again["sampled"]["wins"] == stage["sampled"]["wins"]


def test_compare_command_bad_options_are_one_line(tmp_path):
    assert_user_error(coachlm("compare", "--model", "sft", "--prompts", "p.jsonl"),
                      "--model takes NAME=DIR")
    assert_user_error(coachlm("compare", "--model", "a=x", "--model", "b=y", "--prompts", "p",
                              "--pair", "a"), "--pair takes A,B")
    assert_user_error(coachlm("compare", "--model", "a=x", "--prompts", "p", "--pair", "a,c"),
                      "pairs and kl must name two of the models")
