"""The labeler interface: simulated labelers (the demo's records, unchanged), the store labeler
(tasks in a feedback-store project, labels from programmatic labelers through the store API,
quota and deadline), and judges (rubric, reward model with its own tokenizer)."""

from __future__ import annotations

import threading
import uuid

import pytest
import torch

from coachlm.data.schema import Comparison, Ranking, Rating, Response, Sample, as_prompt, to_dict
from coachlm.errors import CoachError
from sqlalchemy import select

from coachlm.feedback import accounts, assign, db, labels
from coachlm.feedback.tables import Project
from coachlm.labelers import (Labeler, RewardModelJudge, RubricJudge, SimulatedConfig,
                              SimulatedLabelers, StoreLabeler, StoreLabelerConfig, group_samples,
                              label_samples)
from coachlm.world import simulate_comparisons, simulate_rankings

PROMPTS = ["What is 17 plus 25?", "What is 3 plus 4?", "What is 10 plus 12?"]
ANSWERS = {0: ("17 plus 25 is 42.", "17 plus 25 is 41.", "- Buy milk.", "42"),
           1: ("3 plus 4 is 7.", "3 plus 4 is 8."),
           2: ("10 plus 12 is 22.",)}


def _samples() -> list[Sample]:
    """Interleaved prompts (grouping must keep first-seen order); prompt 2 has one sample."""
    out = []
    for j in range(4):
        for i, texts in ANSWERS.items():
            if j < len(texts):
                out.append(Sample(prompt=as_prompt(PROMPTS[i]), meta={"family": "arithmetic"},
                                  response=Response(texts[j], model="sft", model_version=f"v{j}")))
    return out


def _same(records, expected) -> None:
    strip = lambda r: {k: v for k, v in to_dict(r).items() if k != "created_at"}  # noqa: E731
    assert [strip(r) for r in records] == [strip(r) for r in expected]


def test_groups_keep_first_seen_order_and_drop_singletons():
    groups = group_samples(_samples(), min_size=2)
    assert [g.prompt[-1].content for g in groups] == PROMPTS[:2]
    assert [len(g.samples) for g in groups] == [4, 2]
    assert len(groups[0].pairs()) == 6 and groups[0].responses[1].model_version == "v1"


@pytest.mark.parametrize("kind,simulate", [("rankings", simulate_rankings),
                                           ("comparisons", simulate_comparisons)])
def test_simulated_labelers_make_the_demos_records(kind, simulate):
    samples = _samples()
    lab = SimulatedLabelers(SimulatedConfig(kind=kind, n_labelers=3, per_item=2, seed=4))
    assert isinstance(lab, Labeler) and lab.source == "simulated"
    records = label_samples(lab, samples)
    _same(records, simulate(samples, n_labelers=3, per_item=2, seed=4))
    assert records and all(r.source == "simulated" and r.labeler.startswith("sim-4-")
                           and r.time_spent_s > 0 for r in records)
    assert {type(r) for r in records} == {Ranking if kind == "rankings" else Comparison}


def test_simulated_ratings_rate_every_sample():
    samples = _samples()
    records = SimulatedLabelers(SimulatedConfig(kind="ratings")).label(group_samples(samples))
    assert len(records) == len(samples) and all(isinstance(r, Rating) for r in records)
    assert [r.meta["sample_ids"] for r in records] == [[s.id] for s in
                                                       (x for g in group_samples(samples)
                                                        for x in g.samples)]
    with pytest.raises(CoachError, match="feedback kind"):
        SimulatedConfig(kind="votes")


# ---------------------------------------------------------------------------- the store labeler


def _people(store: db.Store, project: str, names: list[str], stop: threading.Event,
            errors: list) -> None:
    """Programmatic labelers: each claims its next assignment and prefers the shorter answer."""
    def step(s, name):
        lab = accounts.get_labeler(s, name)
        p = s.scalar(select(Project).where(Project.name == project))
        a = assign.next_assignment(s, lab, p) if p is not None else None
        if a is None:
            return False
        shown = [a.task.response_ids[i] for i in a.shown_order]
        by_id = {r.id: r.text for r in a.task.prompt.responses}
        first_shorter = len(by_id[shown[0]]) <= len(by_id[shown[1]])
        labels.submit_label(s, lab, a.id, uuid.uuid4().hex,
                            {"choice": "first" if first_shorter else "second"}, 3.0)
        return True

    try:
        while not stop.is_set():
            if not any([store.run(lambda s, n=n: step(s, n), retries=20) for n in names]):
                stop.wait(0.05)
    except Exception as e:  # surfaced by the test
        errors.append(e)


def test_store_labeler_collects_what_people_submit(tmp_path):
    store = db.open_store(str(tmp_path / "feedback.db"))
    with store.write() as s:
        for i in range(2):
            accounts.create_labeler(s, f"person{i}", None, cost_per_label=0.5)
    cfg = StoreLabelerConfig(project="round-1", kind="comparisons", n_labels=2, poll_s=0.05,
                             deadline_s=60)
    lab = StoreLabeler(store, cfg)
    stop, errors = threading.Event(), []
    worker = threading.Thread(target=_people, args=(store, "round-1", ["person0", "person1"],
                                                    stop, errors))
    worker.start()
    samples = _samples()
    try:
        records = label_samples(lab, samples)
    finally:
        stop.set()
        worker.join()
    assert errors == []
    assert lab.last.tasks == 7 and lab.last.wanted == 14 and not lab.last.timed_out
    assert len(records) == 14 and all(isinstance(r, Comparison) for r in records)
    assert {r.labeler for r in records} == {"person0", "person1"}
    for r in records:
        assert r.source == "human" and r.meta["cost"] == 0.5 and r.time_spent_s == 3.0
        assert r.a.model == "sft" and r.a.model_version.startswith("v")
        chosen, rejected = r.chosen_rejected()
        assert len(chosen.text) <= len(rejected.text)
        by_id = {s.id: s.response for s in samples}
        assert [by_id[i] for i in r.meta["sample_ids"]] == [r.a, r.b]
    # Posting the same groups again reuses the tasks: their labels come back, nothing new asked.
    again = StoreLabeler(store, cfg).label(group_samples(_samples(), min_size=2))
    assert sorted(r.id for r in again) == sorted(r.id for r in records)
    store.close()


def test_store_labeler_returns_what_it_has_at_the_deadline(tmp_path):
    store = db.open_store(str(tmp_path / "feedback.db"))
    now = [0.0]
    lab = StoreLabeler(store, StoreLabelerConfig(project="p", kind="rankings", deadline_s=10,
                                                 poll_s=4),
                       clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert lab.label(group_samples(_samples(), min_size=2)) == []
    assert lab.last.timed_out and lab.last.tasks == 2 and lab.last.collected == 0
    assert now[0] == pytest.approx(10.0)
    store.close()


# ---------------------------------------------------------------------------------- judges


def test_rubric_judge():
    j = RubricJudge()
    good, bad = ANSWERS[0][0], ANSWERS[0][1]
    assert j.prefer(as_prompt(PROMPTS[0]), good, bad) == 1.0
    assert j.prefer(as_prompt(PROMPTS[0]), bad, good) == 0.0
    assert j.prefer(as_prompt(PROMPTS[0]), good, good) == 0.5


def _other_tokenizer():
    from coachlm.models.tokenizer import train_tokenizer

    words = "what is plus the answer cat dog sat mat".split()
    return train_tokenizer([" ".join(words[i:] + words[:i]) + f" {i}." for i in range(50)],
                           vocab_size=280)


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory):
    """A policy (the shared test tokenizer) and a reward model trained with another tokenizer."""
    from coachlm.models.load import save_pretrained
    from coachlm.models.presets import build_model
    from coachlm.models.reward import build_reward_model, save_reward_model
    from models_fixtures import model, tokenizer

    root = tmp_path_factory.mktemp("judges")
    save_pretrained(model(seed=0), tokenizer(), root / "policy")
    other = _other_tokenizer()
    save_pretrained(build_model({"preset": "world-tiny"}, other, seed=1), other, root / "rm_base")
    rm = build_reward_model(root / "rm_base", other, seed=2)
    save_reward_model(rm, other, root / "rm")
    return root


def test_reward_model_scores_with_its_own_tokenizer(rm_dirs):
    from coachlm.models.load import load_tokenizer
    from coachlm.models.reward import load_reward_model, score_items
    from coachlm.trainers.critic import build_critic
    from coachlm.trainers.ppo import build_reward

    prompts, texts = [as_prompt(PROMPTS[0])] * 2, ["the answer is 42.", "cat sat"]
    rm_tok = load_tokenizer(rm_dirs / "rm")
    policy_tok = load_tokenizer(rm_dirs / "policy")
    assert len(rm_tok) != len(policy_tok)
    expected = load_reward_model(rm_dirs / "rm")
    raw, _ = score_items(expected, rm_tok, list(zip(prompts, texts)))
    reward = build_reward(str(rm_dirs / "rm"))  # PPO's reward: the RM's tokenizer, not the policy's
    assert torch.allclose(reward(prompts, texts, [[], []]), expected.normalize(raw))
    judge = RewardModelJudge(rm_dirs / "rm")
    assert judge.score(prompts, texts) == pytest.approx(expected.normalize(raw).tolist())
    p = judge.prefer(prompts[0], *texts)
    assert p == pytest.approx(float(torch.sigmoid(raw[0] - raw[1])), abs=1e-6)
    with pytest.raises(CoachError, match="differs from the reward model's own"):
        build_reward(str(rm_dirs / "rm"), policy_tok)
    with pytest.raises(CoachError, match="another tokenizer or chat template"):
        build_critic("reward_model", str(rm_dirs / "rm"), None, 0, tokenizer=policy_tok)
