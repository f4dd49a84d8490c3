"""The shipped RLAIF pipeline (coachlm/pipelines/rlaif.yaml) end to end on tiny settings, through
`coachlm run`: world -> pretrain -> CAI data -> helpful-only SFT -> SL-CAI -> feedback model ->
AI + simulated helpfulness labels -> RM on the mix -> PPO -> eval; a rerun is fully cached."""

import json
from pathlib import Path

import pytest
from test_cli import coachlm

from coachlm.data.io import read_records
from coachlm.pipeline import load_pipeline

RLAIF = Path(__file__).resolve().parents[1] / "coachlm" / "pipelines" / "rlaif.yaml"
TRAIN = {"max_steps": 4, "batch_size": 4}
TINY = ["world.sft_demos=64", "world.train_prompts=16", "world.heldout_per_family=2",
        "world.corpus_chars=60000", "world.red_team_prompts=6", "world.lookalike_demos=8",
        "world.lookalike_prompts=6", "world.lookalike_heldout=4", "pretrain.preset=world-tiny",
        "pretrain.seq_len=64", "pretrain.vocab_size=512", "cai.feedback_demos=8",
        "cai.comparisons=12", "helpful_sft.max_length=96", "sl_cai.max_length=96",
        "revise.max_new_tokens=12", "revise.critique_max_new_tokens=12",
        "feedback_model.seq_len=64", "sample_redteam.max_new_tokens=12",
        "sample_helpful.max_new_tokens=12", "sample_helpful.limit=6", "rm.train.batch_size=4",
        "ppo.ppo.steps=2", "ppo.ppo.rollout_batch_size=4", "ppo.ppo.mini_batch_size=4",
        "ppo.ppo.micro_batch_size=4", "ppo.ppo.max_new_tokens=12", "eval.max_new_tokens=16",
        "eval.bootstrap=50"]
TINY += [f"{stage}.train.{k}={v}" for stage in ("pretrain", "helpful_sft", "sl_cai",
                                                  "feedback_model") for k, v in TRAIN.items()]
STAGES = ("world", "pretrain", "cai", "helpful_sft", "revise", "sl_cai", "feedback_model",
          "sample_redteam", "sample_helpful", "ai_labels", "helpful_labels", "rm", "ppo", "eval")


def test_shipped_rlaif_pipeline_loads():
    pipe = load_pipeline(RLAIF)
    assert tuple(s.name for s in pipe.stages) == STAGES
    assert {s.kind for s in pipe.stages} >= {"cai_data", "cai_revise", "ai_label"}


@pytest.mark.slow
def test_rlaif_pipeline_runs_end_to_end_and_caches(tmp_path):
    out = tmp_path / "rlaif"
    proc = coachlm("run", str(RLAIF), "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert set(run["stages"]) == set(STAGES)
    ai = list(read_records(out / "ai_labels" / "comparisons.jsonl"))
    assert ai and all(r.source == "ai" and 0.0 <= r.meta["probability"] <= 1.0 for r in ai)
    assert all(r.meta["family"] == "harmful" for r in ai)  # AI labels: red-team pairs only
    helpful = list(read_records(out / "helpful_labels" / "comparisons.jsonl"))
    assert helpful and all(r.source == "simulated" and r.meta["family"] != "harmful"
                           for r in helpful)  # no simulated harmlessness label
    labels = json.loads((out / "ai_labels" / "stage.json").read_text())["metrics"]
    assert labels["labeled"] == len(ai) and "skipped_too_long" in labels
    rm = json.loads((out / "rm" / "stage.json").read_text())
    assert rm["config"]["ai_share"] == 0.5 and rm["config"]["model"].endswith("sl_cai/final")
    fb = json.loads((out / "feedback_model" / "stage.json").read_text())["config"]
    assert fb["init_model"].endswith("pretrain/final") and fb["corpus"].endswith("comparisons.txt")
    report = json.loads((out / "eval" / "eval.json").read_text())
    assert set(report["models"]) == {"sft", "sl_cai", "rl_cai"}
    assert set(report["win_rate"]) == {"rl_cai_over_sft", "sl_cai_over_sft"}
    again = coachlm("run", str(RLAIF), "--out", str(out), *TINY)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("cached") + again.stderr.count("cached") >= len(STAGES)
