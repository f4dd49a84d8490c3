"""`coachlm cai label`: AI comparisons of every pair of a Sample file's groups, resumable.

The output is rewritten atomically (`data.io.write_records`: a temporary file renamed into
place) after every `chunk` pairs, so a crash leaves the last complete file and never half a
record; a rerun reads it, skips the pairs it already holds (by `meta.pair_key`, which names
the prompt and both responses), and labels the rest: no record is written twice.

Principles: a constitution file (`coachlm.constitution`'s YAML format, through its
`load_constitution(path)` / `default_constitution()`, when that module provides them; else a YAML file with `principles: [{id, comparison_question}, ...]`), optionally
restricted to some ids; without one, the default constitution (or, before it exists, the single
`ai.DEFAULT_PRINCIPLES` question).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from coachlm.data.io import read_records, write_records
from coachlm.errors import CoachError
from coachlm.labelers.ai import DEFAULT_PRINCIPLES, AIConfig, AILabeler, Principle, SimplePrinciple
from coachlm.labelers.base import group_samples
from coachlm.runlog import progress


@dataclass(frozen=True)
class AILabelConfig:
    samples: Path
    out: Path
    model: Path | None = None  # a local Hugging Face model directory (in process)
    endpoint: str | None = None  # or an OpenAI-compatible base URL, e.g. http://host:8000/v1
    endpoint_model: str | None = None  # the model's name at the endpoint (default: its first)
    mode: Literal["completions", "chat"] = "completions"
    api_key_env: str = "OPENAI_API_KEY"  # read the key from this variable (never a config file)
    timeout_s: float = 60.0
    max_retries: int = 3
    concurrency: int = 4
    constitution: Path | None = None
    principles: tuple[str, ...] = ()  # only these principle ids (empty: all)
    limit: int | None = None  # label at most this many new pairs
    chunk: int = 64  # pairs between atomic rewrites of `out`
    ai: AIConfig = field(default_factory=AIConfig)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("give exactly one of model (a local model) and endpoint (a URL)")
        if self.chunk < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("chunk and limit must be >= 1")


def load_principles(path: Path | None, only: Sequence[str] = ()) -> list[Principle]:
    """The principles to draw from (module docstring); an unknown id in `only` is an error."""
    principles = _from_constitution(path)
    if only:
        known = {p.id: p for p in principles}
        unknown = [i for i in only if i not in known]
        if unknown:
            raise CoachError(f"unknown principle id {unknown[0]!r}; known: {', '.join(known)}")
        principles = [known[i] for i in only]
    return principles


def _from_constitution(path: Path | None) -> list[Principle]:
    try:
        from coachlm import constitution  # the `cai` part of issue 16, when present
    except ImportError:
        constitution = None
    load = getattr(constitution, "load_constitution", None)
    default = getattr(constitution, "default_constitution", None)
    if load is not None and default is not None:
        loaded = load(path) if path is not None else default()
        return list(getattr(loaded, "principles", loaded))
    if path is None:
        return list(DEFAULT_PRINCIPLES)
    return _principles_yaml(path)


def _principles_yaml(path: Path) -> list[Principle]:
    import yaml

    if not path.is_file():
        raise CoachError(f"{path}: no such constitution file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CoachError(f"{path}: not valid YAML: {e}") from None
    items = data.get("principles") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise CoachError(f"{path}: expected a non-empty list under 'principles'")
    out = []
    for i, p in enumerate(items):
        pid = p.get("id") if isinstance(p, dict) else None
        q = p.get("comparison_question") if isinstance(p, dict) else None
        if not isinstance(pid, str) or not pid.strip():
            raise CoachError(f"{path}: principles[{i}].id: missing or empty")
        if not isinstance(q, str) or not q.strip():
            raise CoachError(f"{path}: principles[{i}].comparison_question: missing or empty")
        out.append(SimplePrinciple(pid, q))
    return out


def feedback_model(cfg: AILabelConfig) -> Any:
    """The feedback model per `cfg`: in process, or an endpoint (its first model by default)."""
    from coachlm.labelers.backends import EndpointConfig, LocalModel, OpenAIModel

    if cfg.model is not None:
        return LocalModel(cfg.model)
    ecfg = EndpointConfig(base_url=cfg.endpoint, model=cfg.endpoint_model or "", mode=cfg.mode,
                          api_key=os.environ.get(cfg.api_key_env) or "none",
                          timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                          concurrency=cfg.concurrency)
    return OpenAIModel(ecfg)


def _existing(out: Path) -> list[Any]:
    if not out.exists():
        return []
    return list(read_records(out, kinds=["comparison"]))


def run_ai_label(cfg: AILabelConfig) -> dict[str, Any]:
    """Label per `cfg` (module docstring); returns counts and seconds per label."""
    principles = load_principles(cfg.constitution, cfg.principles)
    samples = list(read_records(cfg.samples, kinds=["sample"]))
    groups = group_samples(samples, min_size=2)
    if not groups:
        raise CoachError(f"{cfg.samples}: no prompt has two samples to compare")
    done = _existing(cfg.out)
    have = {r.meta.get("pair_key") for r in done}
    labeler = AILabeler(feedback_model(cfg), principles, cfg.ai)
    todo = [it for it in labeler.items(groups) if it.key not in have][: cfg.limit]
    start = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("AI labels", total=len(todo), rate="")
        for i in range(0, len(todo), cfg.chunk):
            for j in range(i, min(i + cfg.chunk, len(todo)), cfg.ai.batch_size):
                done += labeler.label_items(todo[j:min(j + cfg.ai.batch_size, i + cfg.chunk,
                                                       len(todo))])
            write_records(cfg.out, done)
            bar.update(task, advance=min(cfg.chunk, len(todo) - i))
    seconds = time.perf_counter() - start
    return {"out": str(cfg.out), "labeled": len(todo), "skipped_existing": len(have & {
        it.key for it in labeler.items(groups)}), "total": len(done),
        "seconds_per_label": seconds / len(todo) if todo else None,
        "feedback_model": labeler.model.name, "principles": [p.id for p in principles]}
