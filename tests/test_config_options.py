"""`config.load_options`: a command's named options between the YAML file and the dotted
overrides, the one loader the CLI and `coachlm rm` share; and `trainers.epochs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from coachlm.config import ConfigError, load_options
from coachlm.errors import CoachError
from coachlm.trainers.epochs import steps_for_epochs
from coachlm.engine.config import TrainConfig


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    algo: str = "ppo"


@dataclass(frozen=True)
class Cfg:
    model: Path
    data: tuple[Path, ...] = ()
    n: int = 4
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_named_options_sit_between_yaml_and_overrides(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model: from_yaml\nn: 7\nname: yaml\n")
    cfg = load_options(Cfg, yaml_file, ["n=9"], model=Path("m dir"), n=8, name=None,
                       data=[Path("a.jsonl"), Path("b.jsonl")], **{"inner.algo": "grpo"})
    assert cfg.model == Path("m dir")  # a named option beats the YAML file
    assert cfg.n == 9  # a dotted override beats a named option
    assert cfg.name == "yaml"  # an unset option (None) leaves the YAML value
    assert cfg.data == (Path("a.jsonl"), Path("b.jsonl"))  # a list of paths
    assert cfg.inner == Inner(algo="grpo")  # a dotted option name reaches into a section


def test_unset_lists_are_skipped_and_values_keep_their_type():
    cfg = load_options(Cfg, None, None, model=Path("m"), data=[], n=0, name="1e-4")
    assert cfg.data == () and cfg.n == 0  # an empty list is unset; 0 is a value
    assert cfg.name == "1e-4"  # a string stays a string, not a YAML number
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_options(Cfg, None, None, modle=Path("m"))


def test_steps_for_epochs():
    train = TrainConfig(max_steps=100, grad_accum=2, warmup_ratio=0.1)
    assert steps_for_epochs(train, None, 10) is train
    assert steps_for_epochs(train, 1.5, 10).max_steps == 8  # ceil(1.5 * 10 / 2)
    assert steps_for_epochs(train, 0.01, 10).max_steps == 1  # at least one step
    with pytest.raises(CoachError, match="epochs=0.2 gives 1 steps"):
        steps_for_epochs(TrainConfig(max_steps=100, warmup_steps=5), 0.2, 5)
