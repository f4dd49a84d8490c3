"""What a new user meets in the training commands: `--skip-invalid` (warn with the count and
the first file:line, and an error that names it), a given `train.max_steps` winning over the
default `epochs`, and a tiny preference file training without a validation split."""

from __future__ import annotations

import json

import pytest

from coachlm import config
from coachlm.config import ConfigError
from coachlm.data.io import write_records
from coachlm.data.schema import Comparison, Message, PromptRecord, Response
from coachlm.models.load import save_pretrained
from coachlm.trainers.reward import RMConfig
from coachlm.errors import CoachError
from models_fixtures import model as tiny_model
from models_fixtures import tokenizer


def coachlm(*args: str):
    """The command in-process (a subprocess per call costs ~10 s of imports here): `main`'s
    contract is that a CoachError becomes one line and exit status 2."""
    from typer.testing import CliRunner

    from coachlm.cli import app as cli

    if not getattr(cli, "_mounted_for_tests", False):
        cli._mount_subapps()
        cli._mounted_for_tests = True
    return CliRunner().invoke(cli.app, list(args))


def assert_user_error(res, *fragments: str) -> None:
    assert isinstance(res.exception, CoachError), res.output
    for fragment in fragments:
        assert fragment in str(res.exception), str(res.exception)


def _comparisons(n_prompts: int) -> list[dict]:
    out = []
    for i in range(n_prompts):
        prompt = (Message("user", f"What is {i} plus {i}?"),)
        for wrong in range(2):
            c = Comparison(prompt=prompt, a=Response(f"{i} plus {i} is {2 * i}."),
                           b=Response(f"the cat sat {wrong}."), choice="a")
            out.append(c)
    return out


def _with_bad_line(path, good: list[dict]) -> None:
    """`good` records, with a malformed one as line 2."""
    write_records(path, good)
    lines = path.read_text().splitlines()
    bad = {**json.loads(lines[0]), "choice": "maybe"} if "choice" in lines[0] \
        else {**json.loads(lines[0]), "response": {"txt": "x"}}
    path.write_text("\n".join([lines[0], json.dumps(bad), *lines[1:]]) + "\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_training")
    save_pretrained(tiny_model(seed=0), tokenizer(), root / "base")
    _with_bad_line(root / "prefs.jsonl", _comparisons(4))
    write_records(root / "one_prompt.jsonl", _comparisons(1))
    from trainers_fixtures import tiny_demos

    _with_bad_line(root / "demos.jsonl", tiny_demos(8))
    prompts = [PromptRecord(prompt=(Message("user", f"What is {i} plus {i}?"),)) for i in range(4)]
    write_records(root / "prompts.jsonl", prompts)
    lines = (root / "prompts.jsonl").read_text().splitlines()
    (root / "prompts.jsonl").write_text("\n".join([lines[0], '{"kind": "prompt"}', *lines[1:]]) + "\n")
    return root


COMMANDS = {
    "rm": (["rm", "--data", "{root}/prefs.jsonl"], "prefs.jsonl",
           ["train.max_steps=1", "train.batch_size=2", "val_fraction=0"]),
    "dpo": (["dpo", "--data", "{root}/prefs.jsonl"], "prefs.jsonl",
            ["train.max_steps=1", "train.batch_size=2", "val_fraction=0"]),
    "sft": (["sft", "--data", "{root}/demos.jsonl"], "demos.jsonl",
            ["train.max_steps=1", "train.batch_size=2", "val_fraction=0"]),
    "ppo": (["ppo", "--prompts", "{root}/prompts.jsonl"], "prompts.jsonl",
            ["ppo.steps=1", "ppo.rollout_batch_size=2", "ppo.mini_batch_size=2",
             "ppo.micro_batch_size=2", "ppo.max_new_tokens=4", "ppo.ppo_epochs=1"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_skip_invalid_on_every_training_command(files, tmp_path, command):
    args, name, small = COMMANDS[command]
    args = [a.format(root=files) for a in args] + ["--model", str(files / "base")]
    strict = coachlm(*args, "--out", str(tmp_path / "strict"), *small)
    assert_user_error(strict, f"{files / name}:2", "--skip-invalid")
    lenient = coachlm(*args, "--out", str(tmp_path / "lenient"), "--skip-invalid", *small)
    assert lenient.exit_code == 0, lenient.output
    assert "skipped 1 malformed record(s)" in lenient.output
    assert f"{files / name}:2" in lenient.output


def test_given_max_steps_wins_over_the_default_epochs(files, tmp_path):
    base = {"model": "m", "data": ["d.jsonl"], "out": "o"}
    assert config.from_dict(RMConfig, base).epochs == 1.0
    assert config.from_dict(RMConfig, {**base, "train": {"max_steps": 2}}).epochs is None
    with pytest.raises(ConfigError, match="both 'epochs' and 'train.max_steps' are set"):
        config.from_dict(RMConfig, {**base, "epochs": 2, "train": {"max_steps": 2}})
    out = tmp_path / "rm"
    proc = coachlm("rm", "--model", str(files / "base"), "--data", str(files / "prefs.jsonl"),
                   "--out", str(out), "--skip-invalid", "train.max_steps=2",
                   "train.batch_size=1", "val_fraction=0")
    assert proc.exit_code == 0, proc.output
    assert json.loads((out / "summary.json").read_text())["steps"] == 2  # not one epoch (4)


def test_one_prompt_preference_file_trains_without_validation(files, tmp_path):
    for command in ("rm", "dpo"):
        out = tmp_path / command
        proc = coachlm(command, "--model", str(files / "base"), "--data",
                       str(files / "one_prompt.jsonl"), "--out", str(out), "train.max_steps=1",
                       "train.batch_size=1")
        assert proc.exit_code == 0, proc.output
        assert "no validation split" in proc.output
        assert "no validation split" in json.loads((out / "summary.json").read_text())["validation"]
