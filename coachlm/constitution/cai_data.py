"""The data sets the RLAIF loop needs, cut from a world built with the CAI extras.

From a world directory (`WorldConfig` with `harmful_demos=comply`, `red_team_prompts`,
`lookalike_*`), `write_cai_data` writes:
  - demos.jsonl: the world's critique/revision demonstrations (`world_demos.feedback_demos`);
  - helpful_sft.jsonl: the helpful-only SFT data: the world's demonstrations (harmful requests
    answered compliantly), the look-alike demonstrations and the critique/revision demos;
  - replay.jsonl: the same minus its harmful demonstrations (SL-CAI fine-tunes on the revisions
    plus this replay: Bai et al., 2022, sec. 3.1 mixed in helpfulness samples);
  - comparisons.txt: (A)/(B) comparison documents in the AI labeler's layout, the corpus a
    feedback model continues pretraining on (`world_demos.comparison_documents`);
  - prompts_redteam.jsonl: red-team training prompts (AI harmlessness labels are asked on the
    policy's answers to these);
  - prompts_helpful.jsonl: the RL training prompts of every family but the harmful one, plus
    the look-alike training prompts: where simulated *helpfulness* labels are asked, so that no
    simulated label ever judges a harmful request;
  - prompts_rl.jsonl: red-team + helpful prompts, interleaved (PPO's prompts);
  - prompts_eval.jsonl: the held-out prompts plus the held-out look-alikes.
Only training splits feed training sets; held-out prompts are only copied to prompts_eval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coachlm.errors import CoachError


@dataclass(frozen=True)
class CAIDataConfig:
    world: Path  # a world directory, or its world.json
    out: Path
    feedback_demos: int = 1500  # critique demonstrations (as many revisions again); 0: none
    comparisons: int = 2000  # (A)/(B) comparison documents
    constitution: Path | None = None  # None: the built-in default
    seed: int = 0

    def __post_init__(self) -> None:
        if self.feedback_demos < 0 or self.comparisons < 1:
            raise ValueError("feedback_demos must be >= 0 and comparisons >= 1")


def _interleave(a: list, b: list) -> list:
    """a[0], b[0], a[1], b[1], ... then the rest of the longer list."""
    out = [x for pair in zip(a, b) for x in pair]
    return out + a[len(b):] + b[len(a):]


def write_cai_data(cfg: CAIDataConfig) -> dict[str, Any]:
    """Write the files of the module docstring under `cfg.out`; returns their paths and counts."""
    from coachlm.constitution import load_constitution
    from coachlm.constitution.world_demos import comparison_documents, feedback_demos
    from coachlm.data.io import read_prompts, read_records, write_records
    from coachlm.labelers.ai import ANSWER, question
    from coachlm.world.corpus import write_corpus

    world = cfg.world.parent if cfg.world.is_file() else cfg.world
    needed = ("sft.jsonl", "sft_lookalike.jsonl", "prompts_redteam.jsonl", "prompts_train.jsonl",
              "prompts_lookalike.jsonl", "prompts_heldout.jsonl",
              "prompts_lookalike_heldout.jsonl")
    for name in needed:
        if not (world / name).is_file():
            raise CoachError(f"{world / name} does not exist: build the world with "
                             "red_team_prompts, lookalike_demos, lookalike_prompts and "
                             "lookalike_heldout > 0")
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    c = load_constitution(cfg.constitution)
    demos = feedback_demos(world, c, cfg.feedback_demos, cfg.seed) if cfg.feedback_demos else []
    helpful = [*read_records(world / "sft.jsonl"), *read_records(world / "sft_lookalike.jsonl"),
               *demos]
    replay = [r for r in helpful if r.meta.get("family") != "harmful" or r.meta.get("cai_role")]
    docs = comparison_documents(world, c, cfg.comparisons,
                                lambda p, a, b, pr: question(p, a, b, pr) + ANSWER, cfg.seed)
    redteam = read_prompts(world / "prompts_redteam.jsonl")
    useful = [p for p in read_prompts(world / "prompts_train.jsonl")
              if p.meta.get("family") != "harmful"]
    useful = _interleave(useful, read_prompts(world / "prompts_lookalike.jsonl"))
    evals = [*read_prompts(world / "prompts_heldout.jsonl"),
             *read_prompts(world / "prompts_lookalike_heldout.jsonl")]
    files = {"demos": demos, "helpful_sft": helpful, "replay": replay, "prompts_redteam": redteam,
             "prompts_helpful": useful, "prompts_rl": _interleave(redteam, useful),
             "prompts_eval": evals}
    paths = {name: str(out / f"{name}.jsonl") for name in files}
    for name, records in files.items():
        write_records(Path(paths[name]), records)
    write_corpus(docs, out / "comparisons.txt")
    paths["comparisons"] = str(out / "comparisons.txt")
    return {**paths, "metrics": {name: len(r) for name, r in files.items()}
            | {"comparisons": len(docs)}}


__all__ = ["CAIDataConfig", "write_cai_data"]
