"""`coachlm cai label`: AI comparisons of every pair of a Sample file's groups, resumable.

The output is rewritten atomically (`data.io.write_records`: a temporary file renamed into
place) after every `chunk` pairs, so a crash leaves the last complete file and never half a
record; a rerun reads it, skips the pairs it already holds (by `meta.pair_key`, which names
the prompt and both responses), and labels the rest: no record is written twice.

Principles and few-shot examples: a constitution file (`coachlm.constitution`; default: the
built-in one), optionally restricted to some principle ids (an unknown id is one line, exit 2).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coachlm.data.io import read_records, write_records
from coachlm.errors import CoachError
from coachlm.labelers.ai import AIConfig, AILabeler
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
    from coachlm.constitution import load_constitution

    constitution = load_constitution(cfg.constitution).select(cfg.principles)
    samples = list(read_records(cfg.samples, kinds=["sample"]))
    groups = group_samples(samples, min_size=2)
    if not groups:
        raise CoachError(f"{cfg.samples}: no prompt has two samples to compare")
    done = _existing(cfg.out)
    have = {r.meta.get("pair_key") for r in done}
    labeler = AILabeler(feedback_model(cfg), constitution.principles, cfg.ai,
                        constitution.comparison_examples)
    items = labeler.items(groups)
    todo = [it for it in items if it.key not in have][: cfg.limit]
    start = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("AI labels", total=len(todo), rate="")
        for i in range(0, len(todo), cfg.chunk):
            chunk = todo[i:i + cfg.chunk]
            for j in range(0, len(chunk), cfg.ai.batch_size):
                done += labeler.label_items(chunk[j:j + cfg.ai.batch_size])
            write_records(cfg.out, done)
            bar.update(task, advance=len(chunk))
    seconds = time.perf_counter() - start
    labeled = len(todo) - labeler.skipped_too_long
    return {"out": str(cfg.out), "labeled": labeled,
            "skipped_existing": sum(it.key in have for it in items),
            "skipped_too_long": labeler.skipped_too_long, "total": len(done),
            "seconds_per_label": seconds / labeled if labeled else None,
            "feedback_model": labeler.model.name, "principles": list(constitution.ids)}
