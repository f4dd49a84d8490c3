"""Evaluation you can trust: win/tie/loss with bootstrap intervals, the dev/test split, prompt-set
duplicates and diversity, the leaderboard's ratings, the rubric flag and the hacking alarms."""

import random

import pytest

from coachlm.data.schema import PromptRecord, as_prompt
from coachlm.eval.leaderboard import board, elo_intervals
from coachlm.eval.prompt_sets import diversity, duplicates, overlap
from coachlm.eval.report import alarms
from coachlm.eval.run_data import ReportConfig
from coachlm.eval.wins import outcome, split_dev_test, win_tie_loss
from coachlm.feedback.ratings import Match
from coachlm.pipeline.kinds import _eval_resolve


def prompt(i: int, text: str, family: str = "f") -> PromptRecord:
    return PromptRecord(prompt=as_prompt(text), id=f"p{i}", meta={"family": family})


def test_win_tie_loss_counts_and_interval():
    outs = [outcome(2, 1)] * 60 + [outcome(1, 1)] * 20 + [outcome(0, 1)] * 20
    w = win_tie_loss(outs, rounds=2000, seed=1)
    assert (w["n"], w["wins"], w["ties"], w["losses"]) == (100, 60, 20, 20)
    assert w["rate"] == pytest.approx(0.7)
    # the standard error of the mean of these outcomes is ~0.041: a 95% interval of ~ +-0.08
    assert 0.60 < w["lo"] < 0.64 and 0.76 < w["hi"] < 0.80
    assert win_tie_loss([])["rate"] == 0.0


def test_dev_test_split_is_stratified_disjoint_and_order_free():
    prompts = [prompt(i, f"q {i}", family="ab"[i % 2]) for i in range(40)]
    dev, test = split_dev_test(prompts)
    assert len(dev) == len(test) == 20 and not {p.id for p in dev} & {p.id for p in test}
    assert sum(p.meta["family"] == "a" for p in test) == 10
    shuffled = prompts[:]
    random.Random(0).shuffle(shuffled)
    assert {p.id for p in split_dev_test(shuffled)[1]} == {p.id for p in test}


def test_prompt_sets_find_exact_and_near_duplicates_and_overlap():
    base = "Write a short email to Mia wishing them a happy new year and asking about their dog"
    prompts = [prompt(0, base), prompt(1, base.upper() + "!"),  # exact after normalizing
               prompt(2, base + " please"),  # near
               prompt(3, "What is 3 plus 4?"), prompt(4, "Name two fruits.")]
    d = duplicates(prompts)
    assert (d["exact_duplicates"], d["near_duplicates"]) == (1, 1)
    assert overlap(prompts[:1], prompts[1:]) == {"n": 4, "exact": 1, "near": 1}
    div = diversity([prompt(0, "a b c", "x"), prompt(1, "a b c", "x"), prompt(2, "d e", "y")])
    assert div["x"]["unique"] == 0.5 and div["x"]["distinct_1"] == 0.5 and div["y"]["distinct_2"] == 1.0


def test_leaderboard_orders_by_strength_with_intervals():
    rng = random.Random(0)
    strength = {"sft": 0.0, "r1/ppo": 1.0, "r2/ppo": 2.0}
    matches = []
    for _ in range(600):
        a, b = rng.sample(sorted(strength), 2)
        p = 1 / (1 + 10 ** (-(strength[a] - strength[b]) / 2))
        matches.append(Match(a, b, 1.0 if rng.random() < p else 0.0))
    rows = board(matches, rounds=50)
    assert [r["name"] for r in rows] == ["r2/ppo", "r1/ppo", "sft"]
    for r in rows:
        assert r["bt_lo"] <= r["bt"] <= r["bt_hi"] and r["elo_lo"] <= r["elo_hi"]
    el = elo_intervals(matches, rounds=20)
    assert el["r2/ppo"][0] > el["sft"][0]


def test_eval_takes_the_policy_temperature_and_flags_a_rubric_trained_policy():
    rec = {"kind": "ppo", "config": {"reward": "rubric",
                                     "ppo": {"temperature": 0.7, "max_new_tokens": 48}}}
    data = _eval_resolve({"kl": ["ppo", "sft"]}, {"models.ppo": rec, "models.sft": {"kind": "sft"}})
    assert data["kl_temperature"] == data["sample_temperature"] == 0.7
    assert data["sample_max_new_tokens"] == 48 and data["trained_on_judge"] == ["ppo"]
    rec["config"]["reward"] = "runs/rm/final"
    assert _eval_resolve({}, {"models.ppo": rec})["trained_on_judge"] == []


def test_hacking_watch_alarms():
    train = {"curves": {"response_length": [30, 30, 31, 12, 10]},
             "watch": {"step": [1, 10, 20], "rm": [0.0, 0.5, 1.0], "rubric": [0.8, 0.7, 0.6]}}
    kl = {"kl": 2.5, "budget": 2.0, "within_budget": False}
    found = alarms([{"round": 1, "kl": kl, "train": train}], ReportConfig(run_dir="x"))
    assert len(found) == 3 and "over the 2 budget" in found[0]
    assert "length drifted" in found[1] and "possible reward hacking" in found[2]
    calm = {"curves": {"response_length": [30, 31]},
            "watch": {"step": [1, 2], "rm": [0.0, 0.5], "rubric": [0.6, 0.7]}}
    assert alarms([{"round": 1, "train": calm}], ReportConfig(run_dir="x")) == []


def test_versus_samples_pair_two_versions_on_shared_prompts_and_name_them():
    """Cross-version comparisons: one pair per prompt both versions answered differently, each
    response named after its version, so their labels become matches between the versions."""
    from coachlm.data.schema import Comparison, Response, Sample
    from coachlm.eval.leaderboard import version_matches, versus_samples
    from coachlm.labelers.base import group_samples

    def s(pid: str, text: str) -> Sample:
        return Sample(prompt=f"prompt {pid}", response=Response(text, model="ppo"),
                      meta={"prompt_id": pid})

    players = {"r2/ppo": [s("1", "x"), s("2", "same"), s("3", "y")],
               "r1/ppo": [s("1", "u"), s("2", "same"), s("4", "z")]}
    pairs = versus_samples(players, "r2/ppo", "r1/ppo")
    assert [(p.meta["prompt_id"], p.response.model) for p in pairs] == [
        ("1", "r2/ppo"), ("1", "r1/ppo")]  # prompt 2: the same text; 3 and 4: not shared
    (g,) = group_samples(pairs, min_size=2)
    rec = Comparison(prompt=g.prompt, a=g.samples[0].response, b=g.samples[1].response,
                     choice="b", labeler="x", source="simulated")
    (m,) = version_matches([rec])
    assert (m.a, m.b, m.score) == ("r2/ppo", "r1/ppo", 0.0)


def test_ai_judge_skips_and_counts_pairs_too_long_for_its_context(tmp_path):
    """A feedback model whose context (here 200 tokens) cannot hold the question and both
    responses: the leaderboard's AI judge skips those pairs and counts them (the AI labeler's
    own check), the stage's metrics and the report say how many, and the pairs that fit are
    judged as usual."""
    import torch
    from models_fixtures import model, tokenizer

    from coachlm.data.schema import Response, Sample
    from coachlm.eval.leaderboard import LeaderboardConfig, ai_judge_matches
    from coachlm.eval.report import _leaderboard
    from coachlm.models.load import save_pretrained

    torch.set_num_threads(1)
    judge = tmp_path / "judge"
    save_pretrained(model(seed=3, max_position_embeddings=200), tokenizer(), judge)

    def s(pid: str, text: str, name: str) -> Sample:
        return Sample(prompt=as_prompt(f"Say hi {pid}."), response=Response(text, model=name),
                      meta={"prompt_id": pid})

    long = "the cat sat on the mat. " * 12
    players = {"a": [s("1", "Hi.", "a"), s("2", long, "a"), s("3", "Hello.", "a")],
               "b": [s("1", "Hey.", "b"), s("2", "Hi there.", "b"), s("3", long, "b")]}
    cfg = LeaderboardConfig(evals=(), out=tmp_path / "lb", ai_judge=judge)
    matches, skipped = ai_judge_matches(players, cfg)
    assert skipped == 2 and len(matches) == 1 and {matches[0].a, matches[0].b} == {"a", "b"}
    result = {"boards": {"ai_judge": []}, "matches": {"ai_judge": 1},
              "skipped_too_long": {"ai_judge": 2}}
    assert "ai_judge: 2 pairs skipped, too long for the judge's context (1 judged)" in \
        _leaderboard({"r1/leaderboard": {"kind": "leaderboard", "result": result}})


def test_eval_command_takes_compares_config(tmp_path):
    """`coachlm eval` builds `coachlm compare`'s CompareConfig (one config for every rubric
    evaluation): --against gives the pair, decoding settings are its keys, a key only the old
    EvalConfig had is a clear error, and so is --against without --model."""
    import json

    import torch
    from models_fixtures import model, tokenizer
    from typer.testing import CliRunner

    from coachlm.cli.app import app
    from coachlm.data.io import write_records
    from coachlm.models.load import save_pretrained

    torch.set_num_threads(1)
    for name, seed in (("sft", 0), ("ppo", 1)):
        save_pretrained(model(seed=seed), tokenizer(), tmp_path / name)
    prompts = tmp_path / "p.jsonl"
    write_records(prompts, [prompt(i, f"What is {i} plus {i}?", "math") for i in range(4)])
    base = ["eval", "--prompts", str(prompts)]
    res = CliRunner().invoke(app, [*base, "--model", str(tmp_path / "ppo"), "--against",
                                   str(tmp_path / "sft"), "--out", str(tmp_path / "out"),
                                   "max_new_tokens=4", "test_fraction=null"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(report["models"]) == {"ppo", "sft"} and report["max_new_tokens"] == 4
    w = report["wins"]["ppo_over_sft"]
    assert w["wins"] + w["ties"] + w["losses"] == 4 and "win rate of ppo over sft" in res.output
    res = CliRunner().invoke(app, [*base, "--model", str(tmp_path / "ppo"), "against_name=x"])
    assert "unknown config key 'against_name'" in str(res.exception)  # (main: one line, exit 2)
    res = CliRunner().invoke(app, [*base, "--against", str(tmp_path / "sft")])
    assert "--against needs --model" in str(res.exception)
