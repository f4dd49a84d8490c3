"""Declared pipelines: bad files are one clear line naming the file and the key; a stage's key
is its whole config (any key, not a hand-picked list); --from re-runs downstream; lineage."""

import json

import pytest
from test_cli import assert_user_error, coachlm

from coachlm.demo import quickstart_path
from coachlm.pipeline import PipelineError, load_pipeline, run_pipeline

WORLD = "  world:\n    config: {sft_demos: 8, train_prompts: 8, heldout_per_family: 2, corpus_chars: 2000}\n"


def write(tmp_path, body: str):
    path = tmp_path / "p.yaml"
    path.write_text("stages:\n" + body)
    return path


BAD = {
    "unknown kind": (WORLD + "  trian:\n    inputs: {corpus: world.corpus}\n",
                     "stages.trian.kind: unknown stage kind 'trian'"),
    "cycle": ("  sft:\n    inputs: {model: ppo.model, data: [world.sft]}\n"
              "  ppo:\n    inputs: {model: sft.model, prompts: world.prompts_train}\n" + WORLD,
              "stages form a cycle: sft -> ppo -> sft"),
    "missing stage": (WORLD + "  sft:\n    inputs: {model: pretrian.model, data: [world.sft]}\n",
                      "stages.sft.inputs.model: missing input: no stage named 'pretrian'"),
    "missing output": (WORLD + "  sft:\n    inputs: {model: world.model, data: [world.sft]}\n",
                       "stages.sft.inputs.model: missing input: stage 'world' has no output 'model'"),
    "config typo": (WORLD.replace("corpus_chars", "corpus_char"),
                    "unknown config key 'stages.world.config.corpus_char'"),
    "stage key typo": (WORLD.replace("config:", "confg:"), "unknown key 'stages.world.confg'"),
    "input field typo": (WORLD + "  sft:\n    inputs: {modle: world.corpus, data: [world.sft]}\n",
                         "stages.sft.inputs.modle: sft has no config field 'modle'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_pipeline_file_is_one_line_naming_file_and_key(tmp_path, case):
    body, fragment = BAD[case]
    path = write(tmp_path, body)
    with pytest.raises(PipelineError) as err:
        load_pipeline(path)
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_bad_pipeline_file_exits_2_without_traceback(tmp_path):
    path = write(tmp_path, BAD["cycle"][0])
    assert_user_error(coachlm("run", str(path)), f"{path}: stages form a cycle")
    path = write(tmp_path, WORLD)
    assert_user_error(coachlm("run", str(path), "wrold.seed=1"), "STAGE must be one of world")
    assert_user_error(coachlm("run", str(path), "--from", "wrld"), "no stage named 'wrld'")


def test_shipped_quickstart_pipeline_loads_and_orders_stages():
    pipe = load_pipeline(quickstart_path())
    assert [s.name for s in pipe.stages] == ["world", "pretrain", "sft", "sample", "feedback",
                                             "rm", "ppo", "eval", "report"]
    assert pipe.downstream("rm") == {"rm", "ppo", "eval", "report"}


def test_key_is_the_whole_config_and_from_reruns_downstream(tmp_path):
    path = write(tmp_path, WORLD + "  again:\n    kind: world\n    config: {sft_demos: 4, "
                 "train_prompts: 4, heldout_per_family: 2, corpus_chars: 1000}\n")
    out = tmp_path / "run"
    first = run_pipeline(load_pipeline(path), out)
    assert set(first["world"]["result"]) >= {"corpus", "prompts_dev", "prompts_test"}
    assert first["world"]["metrics"]["prompt_sets"]["prompts_test"]["n"] == 5
    # any key changes the key, even one no hand-picked list would name
    changed = run_pipeline(load_pipeline(path, ['world.created_at="2026-01-01T00:00:00+00:00"']), out)
    assert changed["world"]["key"] != first["world"]["key"]
    assert changed["again"]["key"] == first["again"]["key"]
    # the same config in another directory has the same key (paths are keyed as references)
    moved = run_pipeline(load_pipeline(path), tmp_path / "elsewhere")
    assert moved["world"]["key"] == first["world"]["key"]
    # --from re-runs that stage (and what reads it) even though nothing changed
    before = (out / "again" / "stage.json").stat().st_mtime_ns
    run_pipeline(load_pipeline(path), out, from_stage="again")
    assert (out / "again" / "stage.json").stat().st_mtime_ns != before
    manifest = json.loads((out / "again" / "stage.json").read_text())
    assert manifest["kind"] == "world" and manifest["config"]["sft_demos"] == 4
    assert manifest["code_version"]["coachlm"] and manifest["seconds"] >= 0
    assert json.loads((out / "run.json").read_text())["stages"].keys() == {"world", "again"}


def test_key_hashes_the_contents_of_files_named_directly_by_path(tmp_path):
    """A stage reading a data file by path (not through an input) re-runs when the file's
    contents change, and is reused while they do not; the digests are in the manifest."""
    from coachlm.data.io import read_prompts, write_records
    from coachlm.data.schema import Response, Sample

    world = run_pipeline(load_pipeline(write(tmp_path, WORLD)), tmp_path / "w")["world"]
    prompts = read_prompts(world["result"]["prompts_train"])[:4]
    samples = tmp_path / "samples.jsonl"

    def write_samples(second: str) -> None:
        write_records(samples, [Sample(prompt=p.prompt, response=Response(t, model="m"),
                                       meta=dict(p.meta)) for p in prompts for t in ("ok", second)])

    write_samples("a second answer")
    path = tmp_path / "label.yaml"
    path.write_text(f"stages:\n  feedback:\n    kind: label\n    config: {{samples: {samples}, "
                    "simulated: {kind: comparisons, n_labelers: 1}}\n")
    out = tmp_path / "run"
    first = run_pipeline(load_pipeline(path), out)["feedback"]
    assert run_pipeline(load_pipeline(path), out)["feedback"]["key"] == first["key"]  # reused
    write_samples("another second answer")  # the same path, new contents
    changed = run_pipeline(load_pipeline(path), out)["feedback"]
    assert changed["key"] != first["key"]
    assert set(first["files"]) == {"samples"} and changed["files"] != first["files"]
    labels = (out / "feedback" / "comparisons.jsonl").read_text()
    assert "another second answer" in labels
