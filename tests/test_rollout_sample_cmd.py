"""`coachlm sample` as a library call: Sample records with provenance, and a summary."""

from __future__ import annotations

import json

import pytest

from coachlm.config import ConfigError, from_dict
from coachlm.data.io import read_records, write_records
from coachlm.data.schema import Demonstration, Message, PromptRecord, Response, Sample
from coachlm.errors import CoachError
from coachlm.models.load import save_pretrained, weights_hash
from coachlm.rollout.samples import SampleConfig, model_name_for, run_sample
from models_fixtures import model as tiny_model
from models_fixtures import tokenizer


def _setup(tmp_path):
    model_dir = save_pretrained(tiny_model(), tokenizer(), tmp_path / "sft" / "final")
    prompts = [
        PromptRecord(prompt=(Message("user", "What is 2 plus 2?"),), id="p1", meta={"family": "math"}),
        Demonstration(prompt=(Message("user", "the cat"),), id="d1", response=Response("sat.")),
        PromptRecord(prompt=(Message("user", "unused"),), id="p3"),
    ]
    write_records(tmp_path / "prompts.jsonl", prompts)
    return model_dir


def test_run_sample_writes_samples_with_provenance(tmp_path):
    model_dir = _setup(tmp_path)
    cfg = SampleConfig(model=model_dir, prompts=tmp_path / "prompts.jsonl",
                       out=tmp_path / "round1" / "samples.jsonl", n=3, max_new_tokens=8, limit=2)
    out = run_sample(cfg)
    records = list(read_records(out))
    assert len(records) == 6 and all(isinstance(r, Sample) for r in records)
    assert [r.meta["prompt_id"] for r in records] == ["p1"] * 3 + ["d1"] * 3
    assert records[0].meta["family"] == "math"
    assert records[0].prompt_text == "What is 2 plus 2?"
    assert all(r.source == "model" and isinstance(r.meta["finished"], bool) for r in records)
    assert {r.response.model for r in records} == {"sft/final"}
    assert {r.response.model_version for r in records} == {weights_hash(model_dir)}
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["responses"] == 6 and summary["tokens"] > 0 and summary["tokens_per_s"] > 0
    assert summary["peak_rss_mb"] > 0


def test_names_versions_and_seeds(tmp_path):
    model_dir = _setup(tmp_path)
    base = dict(model=model_dir, prompts=tmp_path / "prompts.jsonl", max_new_tokens=6,
                model_name="policy", model_version="v7")
    a = list(read_records(run_sample(SampleConfig(out=tmp_path / "a.jsonl", **base))))
    b = list(read_records(run_sample(SampleConfig(out=tmp_path / "b.jsonl", **base))))
    assert [r.response for r in a] == [r.response for r in b]  # same seed, same samples
    assert a[0].response.model == "policy" and a[0].response.model_version == "v7"
    assert len(a) == 3


def test_model_name_of_a_plain_directory(tmp_path):
    assert model_name_for(tmp_path / "my-model") == "my-model"


def test_config_and_input_errors(tmp_path):
    with pytest.raises(ConfigError, match="temprature"):
        from_dict(SampleConfig, {"model": "m", "prompts": "p", "out": "o", "temprature": 1})
    with pytest.raises(CoachError):
        run_sample(SampleConfig(model=tmp_path / "none", prompts=tmp_path / "none.jsonl",
                                out=tmp_path / "o.jsonl"))
    write_records(tmp_path / "p.jsonl", [PromptRecord(prompt=(Message("user", "hi"),))])
    with pytest.raises(CoachError, match="does not exist"):
        run_sample(SampleConfig(model=tmp_path / "none", prompts=tmp_path / "p.jsonl",
                                out=tmp_path / "o.jsonl"))


def test_long_prompts_are_cut_from_the_left_and_counted(tmp_path):
    model_dir = _setup(tmp_path)
    long = PromptRecord(prompt=(Message("user", " ".join(["the cat sat on a mat"] * 200)),))
    write_records(tmp_path / "long.jsonl", [long])
    out = run_sample(SampleConfig(model=model_dir, prompts=tmp_path / "long.jsonl",
                                  out=tmp_path / "s" / "samples.jsonl", max_new_tokens=4))
    assert json.loads((out.parent / "summary.json").read_text())["truncated_prompts"] == 1
    out = run_sample(SampleConfig(model=model_dir, prompts=tmp_path / "prompts.jsonl",
                                  out=tmp_path / "t" / "samples.jsonl", max_new_tokens=4,
                                  max_prompt_length=6))
    assert json.loads((out.parent / "summary.json").read_text())["truncated_prompts"] == 3
