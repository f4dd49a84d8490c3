"""Stage kinds of the RLAIF loop (Constitutional AI, Bai et al., 2022), registered in `kinds.KINDS`:

  cai_data   the world's CAI data sets: helpful-only SFT data, critique/revision demos, replay,
             (A)/(B) comparison documents (the feedback model's corpus), red-team / helpful /
             RL / eval prompt files (`constitution.cai_data`);
  cai_revise SL-CAI: answer, critique and revise each red-team prompt (`coachlm cai revise`);
  ai_label   RL-CAI: soft AI labels on every pair of a sample file (`coachlm cai label`); pairs
             longer than the feedback model's context are skipped and counted in the metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from coachlm.constitution.cai_data import CAIDataConfig
from coachlm.constitution.revise import ReviseConfig
from coachlm.labelers.ai_run import AILabelConfig

CAI_DATA_OUTPUTS = ("demos", "helpful_sft", "replay", "comparisons", "prompts_redteam",
                    "prompts_helpful", "prompts_rl", "prompts_eval")


def _cai_data(cfg: CAIDataConfig, d: Path, up: Mapping[str, Any]) -> dict[str, Any]:
    from coachlm.constitution.cai_data import write_cai_data

    return write_cai_data(cfg)


def _cai_revise(cfg: ReviseConfig, d: Path, up: Mapping[str, Any]) -> dict[str, Any]:
    from coachlm.constitution.revise import run_revise

    out = run_revise(cfg)
    return {"revisions": str(out), "metrics": json.loads((cfg.out / "summary.json").read_text())}


def _ai_label(cfg: AILabelConfig, d: Path, up: Mapping[str, Any]) -> dict[str, Any]:
    from coachlm.labelers.ai_run import run_ai_label

    summary = run_ai_label(cfg)
    return {"data": summary.pop("out"), "metrics": summary}


def cai_kinds(kind: type) -> dict[str, Any]:
    """The kinds above as `kind` (`kinds.Kind`) records, for `kinds.KINDS`."""
    return {"cai_data": kind(CAIDataConfig, CAI_DATA_OUTPUTS, _cai_data),
            "cai_revise": kind(ReviseConfig, ("revisions",), _cai_revise),
            "ai_label": kind(AILabelConfig, ("data",), _ai_label, out="comparisons.jsonl")}
