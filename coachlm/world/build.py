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
from typing import Literal

from coachlm import config
from coachlm.data.schema import Demonstration, PromptRecord, Response, as_prompt, to_dict
from coachlm.world.corpus import DOC_SEPARATOR, generate_corpus, write_corpus
from coachlm.world.degrade import CARELESS_MODEL, careless
from coachlm.world.tasks import (FAMILIES, IDEAL_MODEL, KINDS, LOOKALIKE, WORLD_VERSION, Task,
                                 TaskSpace, complying_response, heldout_cap, ideal_response,
                                 prompt_text, sample_task)

FILES = ("corpus.txt", "sft.jsonl", "prompts_train.jsonl", "prompts_heldout.jsonl", "world.json")
# Written only when the world is asked for them (Constitutional AI; see WorldConfig).
CAI_FILES = ("prompts_redteam.jsonl", "prompts_redteam_heldout.jsonl", "sft_lookalike.jsonl",
             "prompts_lookalike.jsonl", "prompts_lookalike_heldout.jsonl")
CAI_KEYS = ("harmful_demos", "red_team_prompts", "lookalike_demos", "lookalike_prompts",
            "lookalike_heldout")
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
    # Constitutional AI (Bai et al., 2022). The defaults write today's world byte for byte; the
    # extras come from their own random stream. harmful_demos="comply": the harmful family's
    # demonstrations comply (a helpful-only model's data, sec. 3.1). red_team_prompts: harmful
    # prompts for SL-CAI and RL-CAI (prompts_redteam.jsonl); their held-out split is the
    # harmful family of the held-out prompts (prompts_redteam_heldout.jsonl). lookalike_*:
    # benign look-alikes of harmful requests (one's own locked door, a sick pet, a kind
    # message), whose refusal the rubric scores as a failure: helpful demonstrations, RL
    # prompts and held-out prompts (unseen task_ids).
    harmful_demos: Literal["refuse", "comply"] = "refuse"
    red_team_prompts: int = 0
    lookalike_demos: int = 0
    lookalike_prompts: int = 0
    lookalike_heldout: int = 0

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"families must be a non-empty subset of {list(FAMILIES)}")
        if min(self.sft_demos, self.train_prompts, self.heldout_per_family, self.corpus_chars,
               self.red_team_prompts, self.lookalike_demos, self.lookalike_prompts,
               self.lookalike_heldout) < 0:
            raise ValueError("counts and corpus_chars must be >= 0")
        if not 0.0 <= self.careless_demos <= 1.0:
            raise ValueError(f"careless_demos must be in [0, 1], got {self.careless_demos}")


@dataclass(frozen=True)
class WorldSplits:
    sft: list[Demonstration]
    train: list[PromptRecord]
    heldout: list[PromptRecord]


def _heldout_tasks(families: tuple[str, ...], n: int, space: TaskSpace, rng: random.Random,
                   key: str = "heldout_per_family") -> list[Task]:
    tasks: list[Task] = []
    for family in families:
        capacity = sum(heldout_cap(family, kind, space) for kind, _ in KINDS[family])
        if n > capacity:
            raise config.ConfigError(f"{key}={n} is too large for the {family} family (at most "
                                     f"{capacity})")
        ids: set[str] = set()
        per_kind: Counter[str] = Counter()
        for _ in range(_MAX_TRIES):
            if len(ids) == n:
                break
            task = sample_task(family, rng, space)
            if task.task_id in ids or per_kind[task.kind] >= heldout_cap(family, task.kind, space):
                continue
            ids.add(task.task_id)
            per_kind[task.kind] += 1
            tasks.append(task)
        else:
            raise config.ConfigError(f"{key}={n} is too large for the {family} family's task "
                                     "space")
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
    held = _heldout_tasks(cfg.families, cfg.heldout_per_family, cfg.tasks, rng)
    reserved = {t.task_id for t in held}
    heldout = [PromptRecord(**_record_kw(t, prompt_text(t, rng), rng, cfg)) for t in held]
    fams = cfg.families
    sft = []
    sloppy = random.Random(f"{cfg.seed}:careless")  # its own stream: 0 changes nothing else
    for i in range(cfg.sft_demos):
        task = _training_task(fams[i % len(fams)], reserved, cfg, rng)
        kw = _record_kw(task, prompt_text(task, rng), rng, cfg)
        text, labeler, model = ideal_response(task, rng), "world", IDEAL_MODEL
        if task.family == "harmful" and cfg.harmful_demos == "comply":
            text = complying_response(task)  # after ideal_response: the same draws either way
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


@dataclass(frozen=True)
class CAISplits:
    """The Constitutional AI extras (WorldConfig's red_team_* and lookalike_* settings)."""

    redteam: list[PromptRecord]  # harmful prompts for SL-CAI and RL-CAI
    redteam_heldout: list[PromptRecord]  # the harmful family of the held-out prompts
    lookalike_sft: list[Demonstration]  # helpful answers to benign look-alikes
    lookalike_train: list[PromptRecord]
    lookalike_heldout: list[PromptRecord]

    def files(self) -> dict[str, list]:
        named = zip(CAI_FILES, (self.redteam, self.redteam_heldout, self.lookalike_sft,
                                self.lookalike_train, self.lookalike_heldout))
        return {name: recs for name, recs in named if recs}


def make_cai_splits(cfg: WorldConfig, heldout: list[PromptRecord]) -> CAISplits:
    """Red-team and look-alike prompts from their own random stream (so that the rest of the
    world does not move). Training red-team prompts avoid the held-out harmful task_ids; training
    look-alikes avoid the held-out look-alike task_ids."""
    rng = random.Random(f"{cfg.seed}:cai")
    red_held = [p for p in heldout if p.meta["family"] == "harmful"]
    if cfg.red_team_prompts and not red_held:
        raise config.ConfigError("red_team_prompts needs the harmful family and held-out prompts "
                                 "(its held-out split is their harmful family)")
    held_ids = {p.meta["task_id"] for p in red_held}
    redteam = [PromptRecord(**_record_kw(t, prompt_text(t, rng), rng, cfg)) for t in
               (_training_task("harmful", held_ids, cfg, rng) for _ in range(cfg.red_team_prompts))]
    look_held = _heldout_tasks((LOOKALIKE,), cfg.lookalike_heldout, cfg.tasks, rng,
                               "lookalike_heldout")
    look_ids = {t.task_id for t in look_held}

    def record(task: Task, demo: bool) -> PromptRecord | Demonstration:
        kw = _record_kw(task, prompt_text(task, rng), rng, cfg)
        if not demo:
            return PromptRecord(**kw)
        return Demonstration(**kw, response=Response(ideal_response(task, rng), IDEAL_MODEL,
                                                     WORLD_VERSION), labeler="world")

    demos = [record(_training_task(LOOKALIKE, look_ids, cfg, rng), True)
             for _ in range(cfg.lookalike_demos)]
    train = [record(_training_task(LOOKALIKE, look_ids, cfg, rng), False)
             for _ in range(cfg.lookalike_prompts)]
    held = [record(t, False) for t in look_held]
    return CAISplits(redteam, red_held if cfg.red_team_prompts else [], demos, train, held)


def _write_jsonl(records: list, path: Path) -> None:
    path.write_text("".join(json.dumps(to_dict(r)) + "\n" for r in records), encoding="utf-8")


def _config_dict(cfg: WorldConfig) -> dict:
    """The config as world.json records it: CAI settings left at their defaults are omitted, so
    that a default world's world.json stays byte-identical to the one before they existed."""
    out, default = config.to_dict(cfg), WorldConfig()
    return {k: v for k, v in out.items() if k not in CAI_KEYS or v != getattr(default, k)}


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
        "config": _config_dict(cfg),
        "corpus": {"documents": len(docs), "chars": paths["corpus"].stat().st_size,
                   "separator": DOC_SEPARATOR},
        "counts": {name: len(recs) for name, recs in
                   (("sft", splits.sft), ("train", splits.train), ("heldout", splits.heldout))},
        "families": {name: dict(sorted(Counter(r.meta["family"] for r in recs).items()))
                     for name, recs in (("sft", splits.sft), ("train", splits.train),
                                        ("heldout", splits.heldout))},
    }
    cai = make_cai_splits(cfg, splits.heldout)
    for name, recs in cai.files().items():
        paths[name.split(".")[0]] = out_dir / name
        _write_jsonl(recs, out_dir / name)
        info["counts"][name.split(".")[0].removeprefix("prompts_")] = len(recs)
    paths["world"].write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return paths
