"""One interface for every source of feedback: simulated, AI (RLAIF) and people (the store).

A *labeler* takes Sample groups (one prompt with 2..K policy samples) and returns canonical
Comparison / Ranking / Rating records (`coachlm.data.schema`) with full provenance: `source`
(simulated | ai | human), `labeler` (an id), each response's model and version, `time_spent_s`,
and in `meta` the cost, the judged sample ids and, for AI labels, the principle id and the soft
label P(a better than b). Everything that needs feedback (the demo, the CLI, the round loop)
makes the same call:

    from coachlm.labelers import group_samples, SimulatedLabelers, SimulatedConfig
    groups = group_samples(samples, min_size=2)          # [SampleGroup(prompt, samples)]
    records = SimulatedLabelers(SimulatedConfig(kind="rankings", n_labelers=3, seed=0)).label(groups)

    # people in the web app (or scripts through the store API): tasks in a project, a quota, a deadline
    from coachlm.feedback.db import open_store
    from coachlm.labelers import StoreLabeler, StoreLabelerConfig
    lab = StoreLabeler(open_store("feedback.db"), StoreLabelerConfig(
        project="round-1", kind="comparisons", n_labels=3, deadline_s=3600))
    records = lab.label(groups)                         # blocks until the quota or the deadline
    lab.last                                            # Collection(tasks, wanted, collected, ...)

    # an AI feedback model under principles (RL-CAI; Bai et al., 2022, sec. 4)
    from coachlm.constitution import load_constitution
    from coachlm.labelers.ai import AILabeler, AIConfig
    from coachlm.labelers.backends import EndpointConfig, LocalModel, OpenAIModel
    principles = load_constitution().principles          # or load_constitution("mine.yaml")
    records = AILabeler(LocalModel("runs/feedback-model"), principles, AIConfig()).label(groups)
    endpoint = OpenAIModel(EndpointConfig(base_url="http://127.0.0.1:8000/v1"))  # coachlm serve, vLLM, ...
    records = AILabeler(endpoint, principles).label(groups)  # r.meta["probability"]: P(a better)

A *judge* scores responses or says which of two is better (`judges`: the world's rubric, a
reward model with its own tokenizer, an AI judge); `JudgeReward(judge)` makes one PPO's reward.

Implementations: `simulated` (the world's labelers: the same records as
`world.simulate_rankings` / `simulate_comparisons`), `store` (feedback-store tasks), `ai` (the
RL-CAI labeler), `backends` (where the feedback model runs: in process, or any OpenAI-compatible
endpoint, e.g. `coachlm serve`). Heavy parts (torch, transformers, openai) load on first use.
"""

from coachlm.labelers.base import (FEEDBACK_KINDS, FeedbackKind, Labeler, SampleGroup, flatten,
                                   group_samples, label_samples)
from coachlm.labelers.judges import Judge, JudgeReward, RewardModelJudge, RubricJudge
from coachlm.labelers.simulated import SimulatedConfig, SimulatedLabelers
from coachlm.labelers.store import Collection, StoreLabeler, StoreLabelerConfig

__all__ = [
    "FEEDBACK_KINDS", "FeedbackKind", "Labeler", "SampleGroup", "flatten", "group_samples",
    "label_samples", "Judge", "JudgeReward", "RewardModelJudge", "RubricJudge",
    "SimulatedConfig", "SimulatedLabelers", "Collection", "StoreLabeler", "StoreLabelerConfig",
]
