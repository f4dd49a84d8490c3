"""The world's Constitutional AI extras: helpful-only demos, red-team and look-alike prompts.

The defaults must leave today's world byte for byte as it was (so the quickstart numbers do not
move): the hashes below were taken from the world before the extras existed.
"""

import hashlib
import json
import random

import pytest

from coachlm.config import ConfigError, from_dict
from coachlm.data.io import read_records
from coachlm.world import WorldConfig, build_world, ideal_response, parse_prompt, score
from coachlm.world.degrade import degrade
from coachlm.world.tasks import KINDS, LOOKALIKE, prompt_text, sample_task
from coachlm.world.templates import TEMPLATES, render

SMALL = dict(sft_demos=200, train_prompts=100, heldout_per_family=10, corpus_chars=30000)
GOLDEN = {  # sha256[:16] of each file of the world before the CAI extras existed
    0: {"corpus": "1c928ce48a6f8dfc", "sft": "3b6868aa23bc8708", "prompts_train": "dde395c73552afb5",
        "prompts_heldout": "b032fbacf4cb8069", "world": "f3bf798487f8adc9"},
    3: {"corpus": "1d8dedce5959f18e", "sft": "f5cbac74e0c12c28", "prompts_train": "d19db2dce0f8bc7d",
        "prompts_heldout": "f7f5edd443ed9b8f", "world": "7e683e43f1b77ee8"},
}
CAI = dict(harmful_demos="comply", red_team_prompts=40, lookalike_demos=30, lookalike_prompts=20,
           lookalike_heldout=24)


def _hashes(paths):
    return {k: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for k, p in paths.items()}


@pytest.mark.parametrize("seed", [0, 3])
def test_default_world_is_byte_identical_to_before(tmp_path, seed):
    assert _hashes(build_world(tmp_path, WorldConfig(seed=seed, **SMALL))) == GOLDEN[seed]


@pytest.fixture(scope="module")
def cai_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("cai")
    return build_world(out, WorldConfig(seed=0, **SMALL, **CAI))


def _records(path):
    return list(read_records(path))


def test_cai_extras_leave_the_rest_of_the_world_alone(cai_world):
    h = _hashes(cai_world)
    for name in ("corpus", "prompts_train", "prompts_heldout"):
        assert h[name] == GOLDEN[0][name]
    info = json.loads(cai_world["world"].read_text())
    assert info["config"]["harmful_demos"] == "comply"
    assert info["counts"]["redteam"] == 40 and info["counts"]["lookalike_heldout"] == 24


def test_helpful_only_demos_comply_with_harmful_requests_and_nothing_else_changes(cai_world,
                                                                                  tmp_path):
    default = _records(build_world(tmp_path, WorldConfig(seed=0, **SMALL))["sft"])
    comply = _records(cai_world["sft"])
    assert [r.id for r in default] == [r.id for r in comply]
    for d, c in zip(default, comply):
        if d.meta["family"] != "harmful":
            assert d == c
            continue
        assert score(c.prompt_text, c.response.text).parts["harmless"] == 0.0
        assert score(d.prompt_text, d.response.text).parts["harmless"] == 1.0


def test_red_team_splits_are_disjoint_and_held_out_is_the_harmful_family(cai_world):
    train = _records(cai_world["prompts_redteam"])
    held = _records(cai_world["prompts_redteam_heldout"])
    heldout = [r for r in _records(cai_world["prompts_heldout"]) if r.meta["family"] == "harmful"]
    assert held == heldout and len(train) == 40
    assert all(r.meta["family"] == "harmful" for r in train)
    assert not {r.meta["task_id"] for r in train} & {r.meta["task_id"] for r in held}


def test_lookalike_held_out_task_ids_are_unseen(cai_world):
    held = {r.meta["task_id"] for r in _records(cai_world["prompts_lookalike_heldout"])}
    seen = {r.meta["task_id"] for name in ("sft_lookalike", "prompts_lookalike")
            for r in _records(cai_world[name])}
    assert len(held) == 24 and not held & seen
    assert {r.meta["family"] for r in _records(cai_world["sft_lookalike"])} == {LOOKALIKE}


def test_every_lookalike_template_parses_and_a_refusal_fails():
    rng = random.Random(0)
    for kind, _ in KINDS[LOOKALIKE]:
        for template in TEMPLATES[(LOOKALIKE, kind)]:
            task = sample_task(LOOKALIKE, rng)
            while task.kind != kind:
                task = sample_task(LOOKALIKE, rng)
            prompt = render(task, template)
            assert parse_prompt(prompt) == task, prompt
            good = score(prompt, ideal_response(task, rng))
            assert good.follows and good.total == 1.0, good.explanation
            refusal = score(prompt, degrade(prompt, "x", "refuse", rng))
            assert not refusal.follows and "refuses a harmless request" in refusal.explanation


def test_lookalike_prompts_never_parse_as_harmful_and_vice_versa():
    rng = random.Random(1)
    for _ in range(300):
        for family in ("harmful", LOOKALIKE):
            task = sample_task(family, rng)
            assert parse_prompt(prompt_text(task, rng)).family == family


def test_cai_settings_are_checked():
    with pytest.raises(ConfigError, match="harmful_demos"):
        from_dict(WorldConfig, {"harmful_demos": "maybe"})
    with pytest.raises(ConfigError, match=">= 0"):
        from_dict(WorldConfig, {"red_team_prompts": -1})
    with pytest.raises(ConfigError, match="lookalike_heldout=500 is too large"):
        from coachlm.world.build import make_cai_splits
        make_cai_splits(WorldConfig(lookalike_heldout=500), [])
