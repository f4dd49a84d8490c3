"""Reward-model training, evaluation, scoring and the `coachlm rm` commands, on tiny models."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from coachlm import config
from coachlm.config import ConfigError
from coachlm.data.io import read_records, write_records
from coachlm.data.reward_batches import Group, GroupBatches, build_groups, collate
from coachlm.data.schema import Comparison, Message, Ranking, Response, Sample, as_prompt
from coachlm.errors import CoachError
from coachlm.eval.reward_eval import (RMEvalConfig, RMScoreConfig, ece, eval_pairs, run_rm_eval,
                                      run_rm_score)
from coachlm.models.load import save_pretrained
from coachlm.models.reward import load_reward_model, score_sequences
from coachlm.engine.config import TrainConfig
from coachlm.trainers.reward import (NormalizeConfig, RMConfig, read_groups, rm, rm_loss,
                                     run_normalize, split_groups)
from models_fixtures import SHARED_DATA
from models_fixtures import model as tiny_lm
from models_fixtures import tokenizer
from test_losses import trl_reward_loss

HH = SHARED_DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


class FixedRewards:
    """A stand-in model whose scores are given: rm_loss is then a pure function to check."""

    def __init__(self, rewards):
        self.r = torch.tensor(rewards, requires_grad=True)

    def rewards(self, batch):
        assert batch.num_sequences == len(self.r)
        return self.r


def _toy_groups():
    return [Group([1, 7], [[8, 2], [9, 2], [10, 2]], [(0, 1, 0.0, False)], [[1, 2, 3]]),
            Group([1, 11], [[12, 2], [13, 2]], [(1, 0, 0.5, False)], [])]


def test_rm_loss_by_hand(tok):
    batch = collate(_toy_groups(), "pad", tok.pad_token_id)
    out = rm_loss(FixedRewards([1.0, 0.0, 2.0, -1.0, 0.5]), batch)
    comparisons = softplus(-1.0) + softplus(-(0.5 - (-1.0) - 0.5))  # r0 > r1; r4 > r3, margin .5
    ranking = (softplus(-1.0) + softplus(1.0) + softplus(2.0)) / 3  # (0>1), (0>2), (1>2)
    assert out.loss_sum.item() == pytest.approx(comparisons + ranking, rel=1e-6)
    assert out.count == 3 and out.tokens == 3 * 2 + 6 + 2 * 2 + 4
    assert out.metrics["accuracy"] == pytest.approx(1 + 1 + 1 / 3)  # ranking: only (0>1) right
    assert out.metrics["margin"] == pytest.approx(1.0 + 1.5)


def test_davidson_ties_by_hand(tok):
    batch = collate([Group([1, 7], [[8, 2], [9, 2]], [(0, 1, 0.0, True)], [])], "pad", 0)
    out = rm_loss(FixedRewards([0.3, 0.3]), batch, ties="davidson", tie_log_nu=0.0)
    assert out.loss_sum.item() == pytest.approx(math.log(3.0))  # P(tie) = nu / (1 + 1 + nu)
    with pytest.raises(ConfigError, match="Davidson"):
        config.load(RMConfig, None, ["model=m", "data=d", "out=o", "ties=davidson",
                                     "margin_scale=1"])


def test_ranking_of_two_equals_the_comparison(tok):
    p, a, b = (Message("user", "Say hi."),), Response("Hi."), Response("Go away.")
    r = [0.7, -0.2]
    via_cmp, _ = build_groups([Comparison(prompt=p, a=a, b=b, choice="a")], tok)
    via_rank, _ = build_groups([Ranking(prompt=p, responses=(a, b), ranks=(1, 2))], tok)
    loss_c = rm_loss(FixedRewards(r), collate(via_cmp, "pad", 0)).loss_sum
    loss_r = rm_loss(FixedRewards(r), collate(via_rank, "pad", 0)).loss_sum
    assert loss_c.item() == pytest.approx(loss_r.item()) == pytest.approx(softplus(-0.9))


def test_rm_loss_equals_trl_reward_loss(tok):
    g = torch.Generator().manual_seed(0)
    chosen, rejected, margin = torch.randn(6, generator=g), torch.randn(6, generator=g), torch.rand(6, generator=g)
    groups = [Group([1, 7 + i], [[8, 2], [9, 2]], [(0, 1, float(margin[i]), False)], []) for i in range(6)]
    rewards = torch.stack([chosen, rejected], 1).flatten()  # group order: chosen_i, rejected_i
    out = rm_loss(FixedRewards(rewards.tolist()), collate(groups, "share", 0))
    expected = trl_reward_loss(chosen, rejected, margin)
    assert (out.loss_sum / out.count).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ece_by_hand():
    deltas = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])  # p = 0.5, 0.75, 0.25
    # Bin [0.5, 0.55): one pair, accuracy 0.5 (a tie counts half), confidence 0.5 -> 0.
    # Bin [0.75, 0.8): two pairs, confidence 0.75, accuracy 1/2 -> |0.5 - 0.75| * 2/3.
    assert ece(deltas, bins=10) == pytest.approx(0.25 * 2 / 3)


def _toy_records(n: int, seed: int) -> list[Comparison]:
    """Separable, but only through the prompt: it asks for a happy or a sad story, and the
    answer ending in the mood asked for is chosen. A score that ignores the prompt gets 50%."""
    rng = random.Random(seed)
    words = "the cat dog sat ran on a mat hat big small red blue".split()
    out = []
    for i in range(n):
        mood, other = ("happy", "sad") if i % 2 else ("sad", "happy")
        body = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        good, bad = Response(f"{body} and it was {mood}."), Response(f"{body} and it was {other}.")
        first = rng.random() < 0.5
        out.append(Comparison(prompt=as_prompt(f"Tell me a {mood} story about the {rng.choice(words)}."),
                              a=good if first else bad, b=bad if first else good,
                              choice="a" if first else "b",
                              source="simulated" if i % 3 else "human",
                              meta={"family": mood}))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("rm")
    save_pretrained(tiny_lm(seed=0), tok, root / "base")
    write_records(root / "train.jsonl", _toy_records(160, seed=0))
    write_records(root / "heldout.jsonl", _toy_records(60, seed=1))
    cfg = RMConfig(model=root / "base", data=(root / "train.jsonl",), out=root / "run",
                   epochs=None, val_fraction=0.1,
                   train=TrainConfig(lr=1e-2, warmup_steps=2, max_steps=60, batch_size=16,
                                     log_every=5, threads=1, bf16=False))
    result, final = rm(cfg)
    return SimpleNamespace(root=root, result=result, final=final, cfg=cfg)


def test_accuracy_rises_on_a_separable_set(trained, tok):
    untrained = RMConfig(model=trained.root / "base", data=(trained.root / "train.jsonl",),
                         out=trained.root / "untrained", epochs=None,
                         train=TrainConfig(lr=1e-9, max_steps=1, batch_size=16, threads=1, bf16=False))
    _, before_dir = rm(untrained)
    heldout = (trained.root / "heldout.jsonl",)
    before = run_rm_eval(RMEvalConfig(model=before_dir, data=heldout))
    after = run_rm_eval(RMEvalConfig(model=trained.final, data=heldout, out=trained.root / "eval.json"))
    assert before["accuracy"] < 0.7 and after["accuracy"] >= 0.9, (before, after)
    assert set(after["per_family"]) == {"happy", "sad"} and set(after["per_source"]) == {"human", "simulated"}
    assert after["per_family"]["sad"]["n"] == 30 and after["mean_margin"] > 0
    assert json.loads((trained.root / "eval.json").read_text())["accuracy"] == after["accuracy"]


def test_run_writes_metrics_summary_and_normalized_model(trained, tok):
    run = trained.cfg.out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r for r in rows) and all("loss" in r for r in rows if "lr" in r)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tokens_per_s"] > 0 and summary["peak_rss_mb"] > 0
    assert summary["records"]["comparisons"] == 160 and summary["layout"] in ("pad", "share")
    info = json.loads((trained.final / "reward.json").read_text())
    assert info["normalization"]["source"] == "training responses"
    # The normalization holds on the responses it was fitted on (the training split): mean 0, std 1.
    model = load_reward_model(trained.final)
    groups, _, _ = read_groups(trained.cfg.data, tok, trained.cfg)
    train_groups, val_groups, _ = split_groups(groups, trained.cfg.val_fraction,
                                               trained.cfg.train.seed)
    assert (len(train_groups), len(val_groups)) == (summary["train_prompts"], summary["val_prompts"])
    batches = GroupBatches(train_groups, 8, tok.pad_token_id, "pad", shuffle=False)
    rewards = model.normalize(score_sequences(model, batches.epoch_batches(), batches.num_sequences))
    assert rewards.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert rewards.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert info["normalization"]["n"] == len(rewards)


def test_score_and_normalize_commands(trained, tok, tmp_path):
    samples = [Sample(prompt=as_prompt("Tell me a happy story about the cat."), response=Response(t))
               for t in ("the cat sat and it was happy.", "the cat sat and it was sad.",
                         "the dog ran and it was happy.", "red.")]
    write_records(tmp_path / "samples.jsonl", samples)
    stats = run_normalize(NormalizeConfig(model=trained.final, data=tmp_path / "samples.jsonl"))
    assert stats["n"] == 4 and stats["source"] == "samples"
    out = run_rm_score(RMScoreConfig(model=trained.final, data=tmp_path / "samples.jsonl",
                                     out=tmp_path / "scored.jsonl"))
    scored = list(read_records(tmp_path / "scored.jsonl"))
    rewards = torch.tensor([r.meta["reward"] for r in scored])
    assert out["scored"] == 4 and rewards.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert rewards.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert scored[0].meta["reward"] > scored[1].meta["reward"]  # happy beats sad


def test_eval_against_rubric_skips_noise_free_ties():
    from coachlm.world import make_comparisons

    records = make_comparisons(40, seed=0)
    by_rubric, counts = eval_pairs(records, "rubric")
    by_labels, _ = eval_pairs(records, "labels")
    decisive = [r for r in records if r.choice in ("a", "b")]
    assert len(by_rubric) == len(by_labels) == len(decisive)  # these labels are the rubric's
    assert counts["rubric_ties"] == len(records) - len(decisive)


def test_cli_trains_by_default_and_has_eval(trained, tmp_path):
    import typer

    from coachlm.cli.rm import rm_app

    app = typer.Typer()
    app.add_typer(rm_app, name="rm")
    app.command("noop")(lambda: None)
    runner = CliRunner()
    res = runner.invoke(app, ["rm", "--model", str(trained.root / "base"), "--data",
                              str(trained.root / "train.jsonl"), "--out", str(tmp_path / "cli"),
                              "epochs=null", "train.max_steps=2", "train.threads=1", "layout=share"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "final" / "reward.json").is_file()
    assert config.load(RMConfig, tmp_path / "cli" / "config.yaml").layout == "share"
    res = runner.invoke(app, ["rm", "eval", "--model", str(tmp_path / "cli" / "final"), "--data",
                              str(trained.root / "heldout.jsonl"), "batch_size=7"])
    assert res.exit_code == 0 and "accuracy" in res.output, res.output
    res = runner.invoke(app, ["rm", "--model", "m", "--data", "d", "--out", "o", "epoch=2"])
    assert isinstance(res.exception, ConfigError) and "epochs" in str(res.exception)


def test_bf16_autocast_and_rankings_train(tmp_path, tok):
    p = (Message("user", "Rank these."),)
    recs = [Ranking(prompt=(Message("user", f"Rank these {i}."),),
                    responses=tuple(Response(t) for t in ("good.", "ok then.", "bad bad.")),
                    ranks=(1, 2, 3)) for i in range(12)] + [Comparison(prompt=p, a=Response("x."),
                                                                       b=Response("y."), choice="tie")]
    write_records(tmp_path / "rank.jsonl", recs)
    save_pretrained(tiny_lm(seed=1), tok, tmp_path / "base")
    cfg = RMConfig(model=tmp_path / "base", data=(tmp_path / "rank.jsonl",), out=tmp_path / "run",
                   ties="davidson", val_fraction=0.0, epochs=2.0,
                   train=TrainConfig(lr=1e-3, max_steps=1, batch_size=4, threads=1, bf16=True))
    result, final = rm(cfg)
    assert result.steps == 8 and result.summary["bf16"] is True  # 13 prompts: 4 batches x 2 epochs
    assert result.summary["records"]["rankings"] == 12 and result.summary["records"]["ties"] == 1


@pytest.mark.skipif(not HH.is_file(), reason="../shared/data (HH-RLHF) is absent")
def test_hh_rlhf_pairs_read_with_the_five_mismatched_prompts_skipped(tok, tmp_path):
    cfg = RMConfig(model=tmp_path, data=(HH,), out=tmp_path, skip_invalid=True, max_length=256)
    groups, counts, skipped = read_groups(cfg.data, tok, cfg)
    assert counts["comparisons"] == 2307 and len(skipped) == 5
    assert all("differs from chosen's" in s for s in skipped)
    assert sum(g.records() for g in groups) == 2307
    assert max(len(g.prompt_ids) + max(map(len, g.response_ids)) for g in groups) <= 256


def test_world_simulated_feedback_and_trl_files_train_out_of_the_box(tmp_path, tok):
    from coachlm.world import make_pairs, simulate_comparisons, simulate_rankings

    samples = [Sample(prompt=as_prompt(p), response=r, meta={"family": "world"})
               for p, a, b in make_pairs(6, seed=0) for r in (a, b)]
    write_records(tmp_path / "cmp.jsonl", simulate_comparisons(samples, n_labelers=2, per_item=2))
    write_records(tmp_path / "rank.jsonl", simulate_rankings(samples, n_labelers=2))
    trl = tmp_path / "trl.jsonl"
    trl.write_text("".join(json.dumps({"prompt": f"Say hi {i}.", "chosen": "Hi.", "rejected": "No."}) + "\n"
                           for i in range(4)))
    save_pretrained(tiny_lm(seed=2), tok, tmp_path / "base")
    cfg = RMConfig(model=tmp_path / "base", data=(tmp_path / "cmp.jsonl", tmp_path / "rank.jsonl", trl),
                   out=tmp_path / "run", val_fraction=0.0, epochs=None,
                   train=TrainConfig(lr=1e-3, max_steps=2, batch_size=4, threads=1, bf16=False))
    result, _ = rm(cfg)
    records = result.summary["records"]
    # Two labelers judged each of the 6 pairs (ties skipped), one ranking per prompt, 4 TRL pairs.
    assert records["comparisons"] + records.get("skipped_tie", 0) == 12 + 4
    assert records["rankings"] == 6 and result.summary["train_prompts"] == 6 + 4


def test_split_keeps_every_group_of_a_prompt_on_one_side():
    # a prompt with more responses than max_group_responses spans several groups
    groups = [Group(prompt_ids=[1, p], response_ids=[[5], [6]], comparisons=[(0, 1, 0.0, False)])
              for p in range(10) for _ in range(3)]
    train, val, note = split_groups(groups, 0.3, seed=0)
    assert note is None
    assert len(val) == 9 and len(train) == 21  # 3 of 10 prompts held out, with all their groups
    assert not {tuple(g.prompt_ids) for g in train} & {tuple(g.prompt_ids) for g in val}
    with pytest.raises(CoachError, match="leaves no training prompts of 10"):
        split_groups(groups, 0.95, seed=0)


def test_split_is_by_the_full_prompt_not_its_truncated_ids():
    # Truncation fits a prompt to its group's longest response, so one prompt (key) can be
    # cut two ways; its groups must still land on one side.
    groups = []
    for p in range(10):
        for cut in range(3):
            full = [1, 100 + p] + [50] * 10
            groups.append(Group(prompt_ids=full[cut:], response_ids=[[5], [6]],
                                comparisons=[(0, 1, 0.0, False)], prompt_key=tuple(full)))
    for seed in range(5):
        train, val, _ = split_groups(groups, 0.3, seed=seed)
        assert len(val) == 9 and not {g.key for g in train} & {g.key for g in val}


def test_one_prompt_trains_without_a_validation_split():
    groups = [Group([1, 7], [[8, 2], [9, 2]], [(0, 1, 0.0, False)], []) for _ in range(3)]
    train, val, note = split_groups(groups, 0.05, seed=0)
    assert (len(train), len(val)) == (3, 0) and "no validation split" in note


def test_identical_responses_form_no_comparison(tok):
    prompt = (Message("user", "Say hi."),)
    same = Comparison(prompt=prompt, a=Response("hi"), b=Response("hi"), choice="a")
    real = Comparison(prompt=prompt, a=Response("hi there"), b=Response("go away"), choice="a")
    groups, counts = build_groups([same, real], tok)
    assert counts["skipped_identical"] == 1 and counts["comparisons"] == 1
    assert [c[:2] for g in groups for c in g.comparisons] == [(0, 1)]
    # Two responses that only differ after max_length become identical: dropped too.
    from coachlm.data.reward_batches import truncate_group

    g = Group([1, 7], [[8, 9, 2], [8, 9, 3]], [(0, 1, 0.0, False)], [])
    assert truncate_group(g, 4)[0].comparisons == []


def test_eval_pairs_leave_out_identical_responses():
    prompt = (Message("user", "Say hi."),)
    records = [Comparison(prompt=prompt, a=Response("hi"), b=Response("hi"), choice="a"),
               Comparison(prompt=prompt, a=Response("hi there"), b=Response("go"), choice="a")]
    pairs, counts = eval_pairs(records, "labels")
    assert len(pairs) == 1 and counts["skipped_identical"] == 1
