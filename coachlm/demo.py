"""`coachlm demo`: the shipped quickstart pipeline (`pipelines/quickstart.yaml`) on the built-in
world, with its summary:

  world -> pretrain -> SFT -> sample -> simulated feedback -> reward model -> PPO -> eval

The stages, their caching, lineage and resume are the pipeline's (`coachlm.pipeline`); this
module only names the shipped file and prints the held-out table: base / SFT / PPO
instruction-following rates, the PPO-over-SFT rubric win rate (with its interval, on all
held-out prompts and on the test half), and the KL of the PPO policy to the SFT policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from coachlm.pipeline import console, load_pipeline, run_pipeline
from coachlm.pipeline.spec import shipped_pipelines


def quickstart_path() -> Path:
    return shipped_pipelines()["quickstart"]


def summarize(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """demo.json: IF rates, scores, win rates, KL and stage seconds of a quickstart run."""
    result = records["eval"]["result"]
    kl = result["kl"]
    summary = {"if_rate": {name: m["if_rate"] for name, m in result["models"].items()},
               "score": {name: m["score"] for name, m in result["models"].items()},
               "win_rate": result["win_rate"], "wins": result["wins"],
               "test": result["splits"]["test"], "sampled": result.get("sampled"),
               "kl_ppo_sft": {k: kl[k] for k in ("kl", "kl_stderr", "kl_per_token", "kl_samples",
                                                 "mean_response_tokens", "temperature")},
               "kl_budget": kl["budget"], "kl_within_budget": kl["within_budget"],
               "stage_seconds": {name: r["seconds"] for name, r in records.items()}}
    summary["total_seconds"] = round(sum(summary["stage_seconds"].values()), 1)
    return summary


def run_demo(out: Path, overrides: Sequence[str] = (), from_stage: str | None = None
             ) -> dict[str, Any]:
    """Run the quickstart pipeline; print the held-out table; return (and write) demo.json."""
    from coachlm.eval.compare import print_comparison
    from coachlm.eval.wins import fmt

    out = Path(out)
    pipe = load_pipeline(quickstart_path(), overrides)
    records = run_pipeline(pipe, out, from_stage=from_stage)
    print_comparison(records["eval"]["result"])
    summary = summarize(records)
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print("held-out instruction-following: " + " -> ".join(
        f"{name} {rate:.1%}" for name, rate in summary["if_rate"].items()))
    console.print(f"PPO over SFT: win rate {fmt(summary['wins']['ppo_over_sft'])}, KL "
                  f"{summary['kl_ppo_sft']['kl']:.2f} nats per response "
                  f"({'within' if summary['kl_within_budget'] else 'OVER'} the "
                  f"{summary['kl_budget']} budget)")
    return summary
