"""Building the world: determinism, disjoint splits, valid records, corpus shape and vocabulary."""

import json
import re
import subprocess
import sys

import pytest

from coachlm import config
from coachlm.data.schema import Demonstration, PromptRecord, from_dict, to_dict
from coachlm.world import (DOC_SEPARATOR, FAMILIES, FILES, WorldConfig, build_world,
                           generate_corpus, make_splits, read_corpus, score)

SMALL = WorldConfig(seed=7, sft_demos=200, train_prompts=100, heldout_per_family=20,
                    corpus_chars=200_000, careless_demos=0.0)


def _records(path):
    return [from_dict(json.loads(line)) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), SMALL)


def test_same_seed_gives_byte_identical_files(small_world, tmp_path):
    again = build_world(tmp_path / "again", SMALL)
    for name in FILES:
        key = name.split(".")[0]
        assert again[key].read_bytes() == small_world[key].read_bytes(), name
    other = build_world(tmp_path / "other", config.replace(SMALL, seed=8))
    assert other["sft"].read_bytes() != small_world["sft"].read_bytes()


def test_heldout_tasks_and_prompts_never_appear_in_training_splits(small_world):
    sft, train = _records(small_world["sft"]), _records(small_world["prompts_train"])
    heldout = _records(small_world["prompts_heldout"])
    assert len(sft) == 200 and len(train) == 100 and len(heldout) == 20 * len(FAMILIES)
    held_ids = {r.meta["task_id"] for r in heldout}
    held_text = {r.prompt_text for r in heldout}
    assert len(held_ids) == len(heldout)  # no held-out task twice
    for r in sft + train:
        assert r.meta["task_id"] not in held_ids and r.prompt_text not in held_text


def test_records_are_valid_and_round_trip(small_world):
    sft = _records(small_world["sft"])
    assert all(isinstance(r, Demonstration) for r in sft)
    for r in sft[:50]:
        assert r.source == "simulated" and r.labeler == "world"
        assert r.response.model == "world-ideal" and r.response.model_version
        assert from_dict(to_dict(r)) == r
        assert score(r.prompt_text, r.response.text).follows  # demonstrations are ideal
        assert r.meta["family"] in FAMILIES and r.meta["task_id"].startswith(r.meta["family"])
    for r in _records(small_world["prompts_heldout"]):
        assert isinstance(r, PromptRecord) and from_dict(to_dict(r)) == r
    info = json.loads(small_world["world"].read_text())
    assert info["counts"] == {"sft": 200, "train": 100, "heldout": 100}
    assert info["config"]["seed"] == 7 and info["families"]["heldout"]["email"] == 20


def test_corpus_documents_are_separated_by_blank_lines(small_world):
    docs = read_corpus(small_world["corpus"])
    assert docs == generate_corpus(SMALL.corpus_chars, SMALL.seed, SMALL.tasks)
    assert all(DOC_SEPARATOR not in d and d.strip() for d in docs)
    text = small_world["corpus"].read_text()
    assert abs(len(text) - SMALL.corpus_chars) < 2_000
    assert "User:" not in text and "Assistant:" not in text  # never the chat layout


def test_corpus_covers_every_word_of_demonstrations_and_prompts(small_world):
    corpus_words = set(re.findall(r"[a-z']+", small_world["corpus"].read_text().lower()))
    used = set()
    for name in ("sft", "prompts_heldout"):
        for r in _records(small_world[name]):
            text = r.prompt_text + " " + (r.response.text if hasattr(r, "response") else "")
            used |= set(re.findall(r"[a-z']+", text.lower()))
    assert used - corpus_words == set()


def test_default_corpus_size():
    docs = generate_corpus(WorldConfig().corpus_chars, 0)
    assert 2_000_000 <= sum(len(d) + len(DOC_SEPARATOR) for d in docs) <= 4_000_000


def test_config_overrides_and_errors():
    cfg = config.load(WorldConfig, None, ["seed=3", "tasks.max_add=10", "families=email,list"])
    assert cfg.seed == 3 and cfg.tasks.max_add == 10 and cfg.families == ("email", "list")
    with pytest.raises(config.ConfigError, match="did you mean 'sft_demos'"):
        config.load(WorldConfig, None, ["sft_demo=3"])
    with pytest.raises(config.ConfigError, match="families"):
        config.load(WorldConfig, None, ["families=email,poetry"])
    with pytest.raises(config.ConfigError, match="too large"):
        make_splits(WorldConfig(families=("harmful",), heldout_per_family=1000))


def test_world_is_pure_python():
    code = ("import sys, coachlm.world; "
            "print(sorted(m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_careless_demonstrations_are_right_but_padded_and_change_nothing_else():
    clean = make_splits(config.replace(SMALL, careless_demos=0.0))
    mixed = make_splits(config.replace(SMALL, careless_demos=0.5))
    assert [to_dict(r) for r in mixed.train] == [to_dict(r) for r in clean.train]
    assert [to_dict(r) for r in mixed.heldout] == [to_dict(r) for r in clean.heldout]
    sloppy = [(c, m) for c, m in zip(clean.sft, mixed.sft) if m.labeler == "careless"]
    assert 0.4 < len(sloppy) / len(mixed.sft) < 0.6
    for c, m in zip(clean.sft, mixed.sft):
        assert m.prompt == c.prompt and m.meta == c.meta
        if m.labeler != "careless":
            assert m.response == c.response
        else:
            assert m.response.model == "world-careless"
    for c, m in sloppy:
        prompt = m.prompt[-1].content
        ideal, padded = score(prompt, c.response.text), score(prompt, m.response.text)
        # the content is still right; the padding costs conciseness (and form or content
        # where it breaks the request: "only yes or no", "one sentence", "the word four times")
        assert ideal.follows and (padded.parts["correct"] == 1.0 or m.meta["family"] == "style")
        assert padded.total < ideal.total or m.meta["family"] == "email"
    with pytest.raises(ValueError, match="careless_demos"):
        WorldConfig(careless_demos=1.5)
