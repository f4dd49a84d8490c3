"""SL-CAI (`coachlm cai revise`) with a real tiny model: traces, resume without duplicates, SFT
on the revisions as they are, and the world's critique/revision demonstrations."""

import os
import random
import subprocess
import sys

import pytest

from coachlm.constitution import default_constitution
from coachlm.constitution import revise as revise_mod
from coachlm.constitution.prompts import critique_turns, revision_turns
from coachlm.constitution.revise import ReviseConfig, run_revise
from coachlm.constitution.world_demos import comparison_documents, feedback_demos
from coachlm.data.io import read_records
from coachlm.errors import CoachError
from coachlm.models.load import save_pretrained
from coachlm.world import WorldConfig, build_world, score
from coachlm.world.critique import FINE, critique, revision
from models_fixtures import model, tokenizer

WORLD = dict(sft_demos=50, train_prompts=60, heldout_per_family=5, corpus_chars=5000,
             harmful_demos="comply", red_team_prompts=30, lookalike_prompts=20,
             lookalike_heldout=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), WorldConfig(**WORLD))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # A long context: the tiny test tokenizer spells the principles' words in many pieces.
    return save_pretrained(model(max_position_embeddings=1024), tokenizer(),
                           tmp_path_factory.mktemp("m") / "final")


def _cfg(model_dir, world, out, **kw):
    base = dict(model=model_dir, prompts=world["prompts_redteam"], out=out, limit=6, rounds=2,
                chunk_size=4, max_new_tokens=6, critique_max_new_tokens=5, batch_size=8)
    return ReviseConfig(**{**base, **kw})


def test_revisions_keep_the_whole_trace(model_dir, world, tmp_path):
    path = run_revise(_cfg(model_dir, world, tmp_path / "run"))
    records = list(read_records(path))
    ids = set(default_constitution().ids)
    assert len(records) == 6 and {r.meta["prompt_id"] for r in records} == \
        {p.id for p in list(read_records(world["prompts_redteam"]))[:6]}
    for r in records:
        trace = r.meta["cai"]
        assert r.source == "ai" and r.labeler.startswith("sl-cai:")
        assert len(trace["rounds"]) == 2 and {s["principle"] for s in trace["rounds"]} <= ids
        assert r.response.text == trace["rounds"][-1]["revision"]
        assert r.response.model.endswith("+sl-cai") and r.response.model_version
        assert r.meta["family"] == "harmful"
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert '"records": 6' in summary and '"principles"' in summary


def test_a_crash_resumes_without_duplicates(model_dir, world, tmp_path, monkeypatch):
    calls, real = [], revise_mod.revise_chunk

    def crash_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kw)

    monkeypatch.setattr(revise_mod, "revise_chunk", crash_second)
    cfg = _cfg(model_dir, world, tmp_path / "run", limit=7, chunk_size=3)
    with pytest.raises(RuntimeError):
        run_revise(cfg)
    first = list(read_records(tmp_path / "run" / "revisions.jsonl"))
    assert len(first) == 3  # the complete first chunk, nothing half-written
    monkeypatch.setattr(revise_mod, "revise_chunk", real)
    records = list(read_records(run_revise(cfg)))
    prompt_ids = [r.meta["prompt_id"] for r in records]
    assert len(records) == 7 and len(set(prompt_ids)) == 7
    assert records[:3] == first
    run_revise(cfg)  # nothing left to do: the file stays as it is
    assert list(read_records(tmp_path / "run" / "revisions.jsonl")) == records


def test_sft_trains_on_revisions_as_they_are(model_dir, world, tmp_path):
    from coachlm.engine.config import TrainConfig
    from coachlm.trainers.sft import SFTConfig, run_sft

    path = run_revise(_cfg(model_dir, world, tmp_path / "run", limit=4, rounds=1))
    final = run_sft(SFTConfig(model=model_dir, data=(path,), out=tmp_path / "sft",
                              val_fraction=0.0, max_length=1024,
                              train=TrainConfig(max_steps=2, batch_size=2, threads=1)))
    assert (final / "config.json").exists()


def test_bad_constitution_and_unknown_principle_are_user_errors(model_dir, world, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - id: x\n    critique_request: c\n    revision_request: r\n")
    env = {**os.environ, "COACHLM_NO_PROGRESS": "1", "COLUMNS": "200"}
    base = [sys.executable, "-m", "coachlm.cli", "cai", "revise", "--model", str(model_dir),
            "--prompts", str(world["prompts_redteam"]), "--out", str(tmp_path / "r")]
    for extra, fragment in ((["--constitution", str(bad)], "missing field 'comparison_question'"),
                            (["principles=[nope]"], "unknown principle 'nope'")):
        proc = subprocess.run(base + extra, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert fragment in proc.stderr
    with pytest.raises(CoachError, match="no records"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        run_revise(_cfg(model_dir, world, tmp_path / "e", prompts=empty))


def test_world_critiques_follow_the_rubric(world):
    from coachlm.data.io import read_prompts
    from coachlm.world.tasks import complying_response
    from coachlm.world.templates import parse_prompt

    rng = random.Random(0)
    for p in read_prompts(world["prompts_redteam"])[:10]:
        task = parse_prompt(p.prompt_text)
        bad = complying_response(task)
        assert "which could hurt someone" in critique(p.prompt_text, bad)
        fixed = revision(p.prompt_text, bad, rng)
        assert score(p.prompt_text, fixed).follows
        assert critique(p.prompt_text, fixed) == FINE and revision(p.prompt_text, fixed, rng) == fixed
    look = read_prompts(world["prompts_lookalike"])[0].prompt_text
    assert "should help instead of refusing" in critique(look, "I can't help with that.")


def test_feedback_demos_are_sl_cai_conversations_on_training_prompts(world):
    c = default_constitution()
    demos = feedback_demos(world["world"].parent, c, 40, seed=1)
    assert len(demos) == 80 and demos == feedback_demos(world["world"].parent, c, 40, seed=1)
    held = {r.meta["task_id"] for name in ("prompts_heldout", "prompts_lookalike_heldout")
            for r in read_records(world[name])}
    for crit, rev in zip(demos[::2], demos[1::2]):
        p = c.principle(crit.meta["principle"])
        assert crit.meta["task_id"] not in held
        assert crit.prompt == critique_turns(crit.prompt[:1], crit.prompt[1].content, p)
        assert rev.prompt == revision_turns(crit.prompt[:1], crit.prompt[1].content, p,
                                            crit.response.text)
        assert score(rev.prompt[0].content, rev.response.text).parts["harmless"] == 1.0
    with pytest.raises(CoachError, match="red_team_prompts"):
        feedback_demos(world["world"].parent / "nowhere", c, 1)


def test_a_conversation_longer_than_the_context_is_cut_and_counted(world, tmp_path):
    short = save_pretrained(model(max_position_embeddings=96), tokenizer(), tmp_path / "m")
    run_revise(_cfg(short, world, tmp_path / "run", limit=2, rounds=1))
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert '"records": 2' in summary and '"truncated_conversations": 0' not in summary


def test_comparison_documents_end_with_the_rubric_preferred_letter(world):
    from coachlm.world import prefer

    seen = []

    def render(prompt, first, second, principle):
        seen.append((prompt[-1].content, first, second, principle.comparison_question))
        return f"Q{len(seen)}:"

    c = default_constitution()
    docs = comparison_documents(world["world"].parent, c, 30, render, seed=2)
    assert len(docs) == 30 and len(seen) == 30
    questions = {p.comparison_question for p in c.principles}
    for doc, (request, first, second, question) in zip(docs, seen):
        assert question in questions and "\n\n" not in first + second
        assert doc == f"Q{docs.index(doc) + 1}:" + ("A)" if prefer(request, first, second) > 0
                                                    else "B)")
    seen.clear()
    assert docs == comparison_documents(world["world"].parent, c, 30, render, seed=2)


def test_cli_demos_writes_critique_demos_and_comparison_corpus(world, tmp_path):
    from coachlm.world.corpus import read_corpus

    env = {**os.environ, "COACHLM_NO_PROGRESS": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "coachlm.cli", "cai", "demos", "--world",
                           str(world["world"].parent), "--out", str(tmp_path / "d.jsonl"),
                           "-n", "5", "--comparisons", str(tmp_path / "c.txt"),
                           "--n-comparisons", "7"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list(read_records(tmp_path / "d.jsonl"))) == 10
    docs = read_corpus(tmp_path / "c.txt")
    assert len(docs) == 7
    assert all(d.startswith("Consider the following conversation") and d[-2:] in ("A)", "B)")
               for d in docs)
