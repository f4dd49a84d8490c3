"""Typed configs: YAML + dotted overrides, and errors that name the wrong key."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from coachlm import config
from coachlm.config import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.95)
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass(frozen=True)
class Job:
    out: Path
    steps: int = 10
    bf16: bool = True
    note: str | None = None
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError("steps must be positive")


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("out: runs/x\nsteps: 5\noptim:\n  lr: 1e-4\n")
    cfg = config.load(Job, f, ["optim.schedule=constant", "steps=7", "optim.betas=[0.8, 0.9]"])
    assert cfg == Job(out=Path("runs/x"), steps=7, optim=Optim(lr=1e-4, betas=(0.8, 0.9), schedule="constant"))
    # frozen: configs cannot be changed by accident after loading
    with pytest.raises(Exception):
        cfg.steps = 3  # type: ignore[misc]


def test_round_trip(tmp_path):
    cfg = Job(out=Path("o"), note="hi")
    config.save(cfg, tmp_path / "c.yaml")
    assert config.load(Job, tmp_path / "c.yaml") == cfg


def test_typo_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*did you mean 'lr'"):
        config.load(Job, None, ["out=o", "optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'stepz'.*did you mean 'steps'"):
        config.from_dict(Job, {"out": "o", "stepz": 3})


@pytest.mark.parametrize("override, message", [
    ("steps=many", r"steps: expected an integer"),
    ("bf16=maybe", r"bf16: expected true or false"),
    ("optim.schedule=linear", r"optim.schedule: must be one of \['cosine', 'constant'\]"),
    ("optim.lr=fast", r"optim.lr: expected a number"),
    ("optim=3", r"optim: expected a mapping"),
    ("steps=0", r"steps must be positive"),
    ("steps", r"must look like key=value"),
])
def test_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load(Job, None, ["out=o", override])


def test_missing_required_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="missing required config key 'out'"):
        config.load(Job)
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(Job, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config.load(Job, bad)
    bad.write_text("out: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(Job, bad)


def test_yaml_scientific_notation_string_is_a_float():
    # PyYAML reads "1e-4" (no dot) as a string; a float field must still accept it.
    assert config.load(Job, None, ["out=o", "optim.lr=1e-4"]).optim.lr == pytest.approx(1e-4)


@dataclass(frozen=True)
class Pipeline:
    # a field whose default differs from the nested class's own defaults
    optim: Optim = field(default_factory=lambda: Optim(lr=0.5, schedule="constant"))


def test_partial_nested_override_keeps_the_fields_own_default():
    cfg = config.load(Pipeline, None, ["optim.betas=[0.1, 0.2]"])
    assert cfg.optim == Optim(lr=0.5, betas=(0.1, 0.2), schedule="constant")
