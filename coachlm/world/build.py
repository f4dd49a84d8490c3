"""Write the built-in world to a directory: corpus, SFT demonstrations, RL and held-out prompts.

Held-out prompts ask for tasks (task_ids) that no SFT demonstration or training prompt asks for:
unseen combinations of slots, such as a sum or an email (recipient, occasion, topic) never
demonstrated. At most a quarter of any task kind is held out, so training covers every kind.
Same config, same bytes: every random choice comes from the seed, and generated records carry
a fixed `created_at` instead of the clock.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from coachlm import config
from coachlm.data.schema import Demonstration, PromptRecord, Response, as_prompt, to_dict
from coachlm.world.corpus import DOC_SEPARATOR, generate_corpus, write_corpus
from coachlm.world.degrade import CARELESS_MODEL, careless
from coachlm.world.tasks import (FAMILIES, IDEAL_MODEL, KINDS, WORLD_VERSION, Task, TaskSpace,
                                 heldout_cap, ideal_response, prompt_text, sample_task)

FILES = ("corpus.txt", "sft.jsonl", "prompts_train.jsonl", "prompts_heldout.jsonl", "world.json")
_MAX_TRIES = 200_000


@dataclass(frozen=True)
class WorldConfig:
    """What `build_world` generates."""

    seed: int = 0
    sft_demos: int = 3000
    train_prompts: int = 1000
    heldout_per_family: int = 50
    corpus_chars: int = 3_000_000
    families: tuple[str, ...] = FAMILIES
    tasks: TaskSpace = field(default_factory=TaskSpace)
    created_at: str = "2025-01-01T00:00:00+00:00"  # stamped on records: builds are byte-identical
    # Fraction of demonstrations written by careless demonstrators: right, but padded with a
    # stock pleasantry past the family's word limit (`degrade.careless`), as real demonstrations
    # are uneven. SFT imitates them; comparisons let RLHF do better than its demonstrators
    # (Stiennon et al., 2020). 0: every demonstration is ideal.
    careless_demos: float = 0.5

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"families must be a non-empty subset of {list(FAMILIES)}")
        if min(self.sft_demos, self.train_prompts, self.heldout_per_family,
               self.corpus_chars) < 0:
            raise ValueError("counts and corpus_chars must be >= 0")
        if not 0.0 <= self.careless_demos <= 1.0:
            raise ValueError(f"careless_demos must be in [0, 1], got {self.careless_demos}")


@dataclass(frozen=True)
class WorldSplits:
    sft: list[Demonstration]
    train: list[PromptRecord]
    heldout: list[PromptRecord]


def _heldout_tasks(cfg: WorldConfig, rng: random.Random) -> list[Task]:
    tasks: list[Task] = []
    for family in cfg.families:
        capacity = sum(heldout_cap(family, kind, cfg.tasks) for kind, _ in KINDS[family])
        if cfg.heldout_per_family > capacity:
            raise config.ConfigError(f"heldout_per_family={cfg.heldout_per_family} is too large "
                                     f"for the {family} family (at most {capacity})")
        ids: set[str] = set()
        per_kind: Counter[str] = Counter()
        for _ in range(_MAX_TRIES):
            if len(ids) == cfg.heldout_per_family:
                break
            task = sample_task(family, rng, cfg.tasks)
            if task.task_id in ids or per_kind[task.kind] >= heldout_cap(family, task.kind,
                                                                         cfg.tasks):
                continue
            ids.add(task.task_id)
            per_kind[task.kind] += 1
            tasks.append(task)
        else:
            raise config.ConfigError(f"heldout_per_family={cfg.heldout_per_family} is too large "
                                     f"for the {family} family's task space")
    return tasks


def _training_task(family: str, reserved: set[str], cfg: WorldConfig,
                   rng: random.Random) -> Task:
    for _ in range(_MAX_TRIES):
        task = sample_task(family, rng, cfg.tasks)
        if task.task_id not in reserved:
            return task
    raise config.ConfigError(f"no {family} task is left outside the held-out set")


def _record_kw(task: Task, text: str, rng: random.Random, cfg: WorldConfig) -> dict:
    return {"id": uuid.UUID(int=rng.getrandbits(128)).hex, "prompt": as_prompt(text),
            "source": "simulated", "created_at": cfg.created_at,
            "meta": {"family": task.family, "kind": task.kind, "task_id": task.task_id}}


def make_splits(cfg: WorldConfig) -> WorldSplits:
    """SFT demonstrations, RL training prompts and held-out prompts (disjoint task_ids)."""
    rng = random.Random(f"{cfg.seed}:splits")
    held = _heldout_tasks(cfg, rng)
    reserved = {t.task_id for t in held}
    heldout = [PromptRecord(**_record_kw(t, prompt_text(t, rng), rng, cfg)) for t in held]
    fams = cfg.families
    sft = []
    sloppy = random.Random(f"{cfg.seed}:careless")  # its own stream: 0 changes nothing else
    for i in range(cfg.sft_demos):
        task = _training_task(fams[i % len(fams)], reserved, cfg, rng)
        kw = _record_kw(task, prompt_text(task, rng), rng, cfg)
        text, labeler, model = ideal_response(task, rng), "world", IDEAL_MODEL
        if sloppy.random() < cfg.careless_demos:
            text, labeler, model = careless(task, text), "careless", CARELESS_MODEL
        sft.append(Demonstration(**kw, response=Response(text, model, WORLD_VERSION),
                                 labeler=labeler))
    train = []
    for i in range(cfg.train_prompts):
        task = _training_task(fams[i % len(fams)], reserved, cfg, rng)
        train.append(PromptRecord(**_record_kw(task, prompt_text(task, rng), rng, cfg)))
    rng.shuffle(sft)
    rng.shuffle(train)
    return WorldSplits(sft, train, heldout)


def _write_jsonl(records: list, path: Path) -> None:
    path.write_text("".join(json.dumps(to_dict(r)) + "\n" for r in records), encoding="utf-8")


def build_world(out_dir: Path, cfg: WorldConfig = WorldConfig()) -> dict[str, Path]:
    """Write corpus.txt (documents separated by a blank line), sft.jsonl, prompts_train.jsonl,
    prompts_heldout.jsonl and world.json (config and counts) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name.split(".")[0]: out_dir / name for name in FILES}
    docs = generate_corpus(cfg.corpus_chars, cfg.seed, cfg.tasks)
    write_corpus(docs, paths["corpus"])
    splits = make_splits(cfg)
    _write_jsonl(splits.sft, paths["sft"])
    _write_jsonl(splits.train, paths["prompts_train"])
    _write_jsonl(splits.heldout, paths["prompts_heldout"])
    info = {
        "world_version": WORLD_VERSION,
        "config": config.to_dict(cfg),
        "corpus": {"documents": len(docs), "chars": paths["corpus"].stat().st_size,
                   "separator": DOC_SEPARATOR},
        "counts": {name: len(recs) for name, recs in
                   (("sft", splits.sft), ("train", splits.train), ("heldout", splits.heldout))},
        "families": {name: dict(sorted(Counter(r.meta["family"] for r in recs).items()))
                     for name, recs in (("sft", splits.sft), ("train", splits.train),
                                        ("heldout", splits.heldout))},
    }
    paths["world"].write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return paths
