"""The built-in world: a small, deterministic instruction world for running RLHF offline.

A pretraining corpus in which instructions are not followed, five task families with
checkable answers, SFT demonstrations (by default half of them by careless demonstrators who pad
right answers with a stock pleasantry), RL and held-out prompts, a hidden rubric that scores any
response, degraded responses, and simulated labelers that write the same feedback records as
people do. Pure Python (no torch).

    build_world(out_dir, WorldConfig(seed=0))      # corpus.txt, sft.jsonl, prompts_*.jsonl
    score(prompt, response)                        # RubricScore(total, follows, family, parts)
    make_labelers(3)[0].compare(prompt, a, b)      # a Comparison record
"""

from coachlm.world.build import (CAI_FILES, FILES, CAISplits, WorldConfig, WorldSplits, build_world,
                                 make_cai_splits, make_splits)
from coachlm.world.calibrate import (LabelerConfig, expected_agreement, measure_agreement,
                                     noise_for_agreement)
from coachlm.world.corpus import DOC_SEPARATOR, generate_corpus, read_corpus
from coachlm.world.degrade import DEGRADATIONS, degrade, make_comparisons, make_pairs
from coachlm.world.labelers import (SimulatedLabeler, make_labelers, simulate_comparisons,
                                    simulate_rankings)
from coachlm.world.rubric import PARTS, RubricScore, prefer, score
from coachlm.world.tasks import (FAMILIES, IDEAL_MODEL, LOOKALIKE, WORLD_VERSION, Task, TaskSpace,
                                 complying_response, ideal_response, prompt_text, sample_task)
from coachlm.world.templates import parse_prompt

__all__ = [
    "FILES", "CAI_FILES", "WorldConfig", "WorldSplits", "CAISplits", "build_world", "make_splits",
    "make_cai_splits", "LOOKALIKE", "complying_response",
    "LabelerConfig", "expected_agreement", "measure_agreement", "noise_for_agreement",
    "DOC_SEPARATOR", "generate_corpus", "read_corpus",
    "DEGRADATIONS", "degrade", "make_comparisons", "make_pairs",
    "SimulatedLabeler", "make_labelers", "simulate_comparisons", "simulate_rankings",
    "PARTS", "RubricScore", "prefer", "score",
    "FAMILIES", "IDEAL_MODEL", "WORLD_VERSION", "Task", "TaskSpace", "ideal_response",
    "prompt_text", "sample_task", "parse_prompt",
]
