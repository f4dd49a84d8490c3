"""The built-in-world DPO experiment: SFT policy -> samples -> simulated labelers -> DPO -> eval.

  1. sample `-n` responses per training prompt from the SFT model (`coachlm sample`);
  2. simulated labelers (rubric + noise + per-labeler bias, ~73% inter-labeler agreement) compare
     every pair of each prompt's samples (`world.simulate_comparisons`);
  3. DPO from the SFT model on those comparisons (`coachlm dpo`, overrides from the command line);
  4. rubric win rate of the DPO policy over the SFT policy on held-out prompts, greedy decoding,
     ties counting half (`coachlm eval --against`), and the instruction-following rates;
  5. KL(DPO || SFT) on held-out prompts: responses sampled from the DPO policy at temperature 1,
     KL estimated by the mean of log pi_DPO(y|x) - log pi_SFT(y|x) over them (the k1 estimator,
     unbiased for the sequence-level KL; Schulman, 2020, "Approximating KL divergence").
Steps 1-2 are cached in `--out`. Prints one JSON object (also written to the DPO run's `result.json`; set its directory with
the override `out=...` to compare settings on the same comparisons).

    python benchmarks/dpo_world.py --sft runs/demo/sft/final --world runs/demo/world \\
        --out runs/dpo_world beta=0.1 train.max_steps=150
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from coachlm import config
from coachlm.data.io import read_prompts, read_records, write_records
from coachlm.eval.kl import kl_to_reference
from coachlm.eval.compare import CompareConfig, run_compare
from coachlm.eval.world_eval import stratified
from coachlm.rollout.samples import SampleConfig, run_sample
from coachlm.trainers.dpo import DPOConfig, dpo
from coachlm.world import simulate_comparisons


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", type=Path, required=True)
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompts", type=int, default=600, help="training prompts to sample")
    p.add_argument("-n", type=int, default=4, help="samples per prompt")
    p.add_argument("--labelers", type=int, default=3)
    p.add_argument("--eval-limit", type=int, default=400)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("overrides", nargs="*", help="DPOConfig overrides, e.g. beta=0.1")
    args = p.parse_args(argv)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    # 1. samples from the SFT policy
    samples_path = out / "samples" / "samples.jsonl"
    t = time.perf_counter()
    if not samples_path.is_file():
        run_sample(SampleConfig(model=args.sft, prompts=args.world / "prompts_train.jsonl",
                                out=samples_path, n=args.n, limit=args.prompts,
                                max_new_tokens=args.max_new_tokens, batch_size=64))
    timings["sample"] = round(time.perf_counter() - t, 1)
    # 2. simulated labelers compare every pair of each prompt's samples
    comparisons_path = out / "comparisons.jsonl"
    if not comparisons_path.is_file():
        samples = list(read_records(samples_path, kinds=["sample"]))
        write_records(comparisons_path, simulate_comparisons(samples, n_labelers=args.labelers))
    choices: dict[str, int] = {}
    for c in read_records(comparisons_path):
        choices[c.choice] = choices.get(c.choice, 0) + 1
    # 3. DPO from the SFT model
    cfg = config.load(DPOConfig, None, args.overrides, defaults={
        "model": str(args.sft), "data": [str(comparisons_path)], "out": str(out / "dpo")})
    t = time.perf_counter()
    result, final = dpo(cfg, resume=True)
    timings["dpo"] = round(time.perf_counter() - t, 1)
    # 4. held-out win rate over SFT (rubric, greedy)
    t = time.perf_counter()
    report = run_compare(CompareConfig(models={"dpo": final, "sft": args.sft},
                                       prompts=args.world / "prompts_heldout.jsonl",
                                       out=cfg.out / "eval", pairs=(("dpo", "sft"),),
                                       limit=args.eval_limit, max_new_tokens=args.max_new_tokens))
    ev, sft = report["models"]["dpo"], report["models"]["sft"]
    timings["eval"] = round(time.perf_counter() - t, 1)
    # 5. KL to the SFT policy on held-out prompts
    kl = kl_to_reference(final, args.sft,
                         stratified(read_prompts(args.world / "prompts_heldout.jsonl"), args.eval_limit),
                         args.max_new_tokens)
    keep = ("loss", "rewards_accuracy", "rewards_margin", "val_loss", "val_accuracy", "val_margin")
    res = {"comparisons": choices, "dpo_config": config.to_dict(cfg),
           "train": {k: v for k, v in result.metrics.items() if k in keep},
           "tokens_per_s": result.summary["tokens_per_s"], "layout": result.summary["layout"],
           "win_rate_dpo_over_sft": report["win_rate"]["dpo_over_sft"],
           "if_rate": {"dpo": ev["if_rate"], "sft": sft["if_rate"]},
           "score": {"dpo": ev["score"], "sft": sft["score"]},
           "per_family_if": {f: (v["if_rate"], sft["per_family"][f]["if_rate"])
                             for f, v in ev["per_family"].items()},
           "eval_prompts": report["n"], **kl, "seconds": timings}
    (cfg.out / "result.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
