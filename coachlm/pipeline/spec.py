"""A pipeline file: named stages, each with a kind, the typed config its command takes, and
its inputs (outputs of other stages). `coachlm run FILE` runs it; `coachlm demo` runs the
shipped `pipelines/quickstart.yaml`. A shipped pipeline can be named instead of a file
(`coachlm run rlaif`): quickstart, loop, rlaif.

```yaml
stages:
  world: {config: {seed: 0}}
  pretrain:
    inputs: {corpus: world.corpus}          # config field <- stage.output
    config: {preset: world-small, train: {max_steps: 400}}
  eval_dev:
    kind: eval                              # the kind is the stage's name unless given
    inputs: {models.sft: sft.model, prompts: world.prompts_dev}
```

Everything is checked when the file is loaded, before anything runs: an unknown stage kind, an
input naming a stage or output that does not exist, a cycle, a misspelled config key. Each error
is one line naming the file and the key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from coachlm import config as cfglib
from coachlm.errors import CoachError

STAGE_KEYS = ("kind", "inputs", "config")
TOP_KEYS = ("description", "stages", "loop")


class PipelineError(CoachError):
    """A pipeline file is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class Ref:
    """An input: output `output` of stage `stage` (written `stage.output`)."""

    stage: str
    output: str

    def __str__(self) -> str:
        return f"{self.stage}.{self.output}"


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: str
    config: Mapping[str, Any]  # as written, with overrides merged in
    inputs: Mapping[str, Ref | tuple[Ref, ...]]  # dotted config field -> upstream output(s)

    def refs(self) -> list[Ref]:
        return [r for v in self.inputs.values() for r in (v if isinstance(v, tuple) else (v,))]


@dataclass(frozen=True)
class Pipeline:
    path: Path
    stages: tuple[StageSpec, ...]  # in an order that runs every input first
    loop: Mapping[str, Any] = field(default_factory=dict)  # `coachlm loop` settings (rounds.py)

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise PipelineError(f"{self.path}: no stage named '{name}'"
                            f"{hint(name, [s.name for s in self.stages])}")

    def downstream(self, name: str) -> set[str]:
        """`name` and every stage that reads from it, directly or not."""
        out = {self.stage(name).name}
        for s in self.stages:  # topological order: upstream stages are already in `out`
            if any(r.stage in out for r in s.refs()):
                out.add(s.name)
        return out


def hint(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"


def _ref(path: Path, where: str, value: Any) -> Ref:
    if not isinstance(value, str) or value.count(".") != 1:
        raise PipelineError(f"{path}: {where}: an input must look like stage.output, got {value!r}")
    stage, output = value.split(".")
    return Ref(stage, output)


def _parse_stage(path: Path, name: str, body: Any) -> StageSpec:
    where = f"stages.{name}"
    body = {} if body is None else body
    if not isinstance(body, Mapping):
        raise PipelineError(f"{path}: {where}: expected a mapping of {', '.join(STAGE_KEYS)}")
    for key in body:
        if key not in STAGE_KEYS:
            raise PipelineError(f"{path}: unknown key '{where}.{key}'{hint(key, STAGE_KEYS)}")
    inputs_raw = body.get("inputs") or {}
    config = body.get("config") or {}
    if not isinstance(inputs_raw, Mapping) or not isinstance(config, Mapping):
        raise PipelineError(f"{path}: {where}: inputs and config must be mappings")
    inputs: dict[str, Ref | tuple[Ref, ...]] = {}
    for field, value in inputs_raw.items():
        w = f"{where}.inputs.{field}"
        inputs[str(field)] = (tuple(_ref(path, w, v) for v in value) if isinstance(value, list)
                              else _ref(path, w, value))
    return StageSpec(str(name), str(body.get("kind", name)), dict(config), inputs)


def order(path: Path, stages: dict[str, StageSpec]) -> tuple[StageSpec, ...]:
    """Depth-first topological order (file order among independent stages); names a cycle."""
    done: dict[str, StageSpec] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            raise PipelineError(f"{path}: stages form a cycle: {' -> '.join(cycle)}")
        visiting.append(name)
        for field, refs in stages[name].inputs.items():
            for ref in refs if isinstance(refs, tuple) else (refs,):
                if ref.stage not in stages:
                    raise PipelineError(
                        f"{path}: stages.{name}.inputs.{field}: missing input: no stage named "
                        f"'{ref.stage}'{hint(ref.stage, list(stages))}")
                visit(ref.stage)
        visiting.pop()
        done[name] = stages[name]

    for name in stages:
        visit(name)
    return tuple(done.values())


def parse_pipeline(path: Path, data: Any, overrides: Sequence[str] = ()) -> Pipeline:
    if not isinstance(data, Mapping) or not isinstance(data.get("stages"), Mapping):
        raise PipelineError(f"{path}: the top level must be a mapping with a 'stages' mapping")
    for key in data:
        if key not in TOP_KEYS:
            raise PipelineError(f"{path}: unknown key '{key}'{hint(key, TOP_KEYS)}")
    stages = {str(n): _parse_stage(path, n, b) for n, b in data["stages"].items()}
    loop = dict(data.get("loop") or {})
    for stage, changes in cfglib.parse_overrides(overrides).items():
        if stage == "loop" and "loop" not in stages and isinstance(changes, Mapping):
            loop = cfglib.merge(loop, changes)
            continue
        if stage not in stages or not isinstance(changes, Mapping):
            raise PipelineError(f"{path}: override '{stage}': overrides look like "
                                f"STAGE.key=value, and STAGE must be one of {', '.join(stages)}")
        s = stages[stage]
        stages[stage] = StageSpec(s.name, s.kind, cfglib.merge(dict(s.config), changes), s.inputs)
    return checked(Pipeline(path, order(path, stages), loop))


def checked(pipe: Pipeline) -> Pipeline:
    from coachlm.pipeline.kinds import check_stage

    for s in pipe.stages:
        check_stage(pipe, s)
    return pipe


def shipped_pipelines() -> dict[str, Path]:
    """The pipeline files that ship with the package, by name (`coachlm/pipelines/NAME.yaml`)."""
    from importlib import resources

    root = Path(str(resources.files("coachlm") / "pipelines"))
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def resolve_pipeline(path: str | Path) -> Path:
    """A pipeline file's path: the file itself, or the shipped pipeline of that name."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = shipped_pipelines()
    if path.name == str(path) and path.stem in shipped and path.suffix in ("", ".yaml"):
        return shipped[path.stem]
    raise PipelineError(f"pipeline file {path} does not exist (shipped pipelines: "
                        f"{', '.join(shipped)})")


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> Pipeline:
    """Read and check a pipeline file, or a shipped pipeline named by its name (`overrides`:
    `stage.key=value`, YAML values)."""
    path = resolve_pipeline(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return parse_pipeline(path, data, overrides)
