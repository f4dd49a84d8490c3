"""Benchmark: the whole RLHF loop on a real pretrained model and real human preferences.

stories260K (a 260K-parameter Llama pretrained on TinyStories; ../shared/data/models/stories260K)
on the HH-RLHF harmlessness pairs (../shared/data/hh-rlhf/harmless-base/test.jsonl.gz; Bai et
al., 2022). The valid pairs (5 of 2,312 are not a comparison of one prompt and are skipped) are
shuffled with numpy default_rng(seed) and split: `--heldout` pairs held out, the rest for
training, whose two halves A and B each train a reward model:

  1. SFT: stories260K fine-tuned on the chosen responses of the training pairs.
  2. RM (the judge trained with it): a reward model on half A, from the SFT model.
  3. RM2 (the independent judge): a reward model on half B, from the SFT model.
  4. DPO from SFT on half A's pairs;  PPO from SFT against RM, on half A's prompts.
  5. Held out: RM and RM2 accuracy and ECE on the held-out pairs; each policy's win rate over
     SFT (one sampled response per held-out prompt, ties count half) judged by RM and by RM2;
     KL(policy || SFT) in nats per response, on the same prompts.

Prints one JSON object. Usage (small settings; the figures in the README came from these):

    nice python benchmarks/real_model_table.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from coachlm.data.io import read_records, write_records
from coachlm.data.schema import Demonstration, PromptRecord
from coachlm.eval.kl import kl_to_reference
from coachlm.eval.reward_eval import RMEvalConfig, run_rm_eval
from coachlm.models.lora import LoRAConfig
from coachlm.trainers.dpo import DPOConfig, run_dpo
from coachlm.engine.accel import set_threads
from coachlm.engine.config import TrainConfig
from coachlm.trainers.ppo import run_ppo
from coachlm.trainers.ppo_config import PPOConfig, PPORunConfig
from coachlm.trainers.reward import RMConfig, run_rm
from coachlm.trainers.sft import SFTConfig, run_sft

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; COACHLM_SHARED_DATA points elsewhere (e.g. from a worktree)
SHARED = Path(os.environ.get("COACHLM_SHARED_DATA", REPO.parent / "shared" / "data"))
HH = SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
STORIES = SHARED / "models" / "stories260K" / "hf"


def split(heldout: int, seed: int) -> tuple[list, list, list, int]:
    """(half A, half B, held out, invalid pairs skipped) in a seeded random order."""
    invalid: list = []
    records = list(read_records(HH, on_error=invalid.append))
    order = np.random.default_rng(seed).permutation(len(records))
    shuffled = [records[i] for i in order]
    held, train = shuffled[:heldout], shuffled[heldout:]
    half = len(train) // 2
    return train[:half], train[half:], held, len(invalid)


def win_rate(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """P(a > b) with ties counting half, and its standard error over prompts."""
    wins = (a > b).float() + 0.5 * (a == b).float()  # (n,)
    n = len(wins)
    return {"win_rate": round(float(wins.mean()), 4),
            "stderr": round(float(wins.std(unbiased=True)) / n ** 0.5, 4) if n > 1 else 0.0}


def sample_texts(model_dir: Path, prompts: list[PromptRecord], args: argparse.Namespace) -> list[str]:
    from coachlm.data.chat import encode_prompt
    from coachlm.models.load import load_model, load_tokenizer
    from coachlm.rollout.sampling import SamplingConfig, decode_responses, fit_prompts, generate

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, tokenizer=tok)
    ids, _ = fit_prompts(model, tok, [encode_prompt(tok, p.prompt) for p in prompts],
                         args.max_new_tokens, args.max_prompt_length)
    gen = generate(model, tok, ids, SamplingConfig(max_new_tokens=args.max_new_tokens,
                                                   temperature=1.0, seed=args.seed))
    return decode_responses(tok, gen)


def judge_scores(rm_dir: Path, prompts: list[PromptRecord], texts: list[str]) -> torch.Tensor:
    from coachlm.trainers.ppo import build_reward

    return build_reward(str(rm_dir))([p.prompt for p in prompts], texts, [[]] * len(texts))


def train_all(root: Path, args: argparse.Namespace) -> dict[str, Path]:
    train = lambda steps, lr, bs: TrainConfig(  # noqa: E731
        lr=lr, weight_decay=0.0, warmup_ratio=0.05, max_steps=steps, batch_size=bs,
        seed=args.seed, threads=args.threads, bf16=False, log_every=10, checkpoint_every=0)
    L = args.max_length
    sft = run_sft(SFTConfig(model=STORIES, data=(root / "sft.jsonl",), out=root / "sft",
                            max_length=L, val_fraction=0.0,
                            train=train(args.sft_steps, 1e-3, 16)))
    rm = run_rm(RMConfig(model=sft, data=(root / "a.jsonl",), out=root / "rm", max_length=L,
                         val_fraction=0.0, epochs=args.rm_epochs, train=train(1, 1e-3, 16)))
    rm2 = run_rm(RMConfig(model=sft, data=(root / "b.jsonl",), out=root / "rm2", max_length=L,
                          val_fraction=0.0, epochs=args.rm_epochs, train=train(1, 1e-3, 16)))
    dpo = run_dpo(DPOConfig(model=sft, data=(root / "a.jsonl",), out=root / "dpo", max_length=L,
                            val_fraction=0.0, beta=0.1, lora=None,
                            train=train(args.dpo_steps, 1e-4, 16)))
    ppo = run_ppo(PPORunConfig(
        model=sft, prompts=root / "a_prompts.jsonl", out=root / "ppo", reward=str(rm),
        ppo=PPOConfig(steps=args.ppo_steps, rollout_batch_size=16, samples_per_prompt=1,
                      mini_batch_size=16, micro_batch_size=16, ppo_epochs=2,
                      max_new_tokens=args.max_new_tokens, max_prompt_length=args.max_prompt_length,
                      kl_coef=0.05, lr=1e-3, lora=LoRAConfig(r=2, alpha=4.0),
                      seed=args.seed, threads=args.threads, checkpoint_every=0,
                      sample_every=0)))
    return {"sft": sft, "rm": rm, "rm2": rm2, "dpo": dpo, "ppo": ppo}


def evaluate(dirs: dict[str, Path], root: Path, held: list, args: argparse.Namespace) -> dict:
    out: dict = {}
    for judge in ("rm", "rm2"):
        report = run_rm_eval(RMEvalConfig(model=dirs[judge], data=(root / "held.jsonl",),
                                          max_length=args.max_length))
        out[f"{judge}_heldout"] = {"accuracy": round(report["accuracy"], 4),
                                   "ece": round(report["ece"], 4), "pairs": report["n"]}
    prompts = [PromptRecord(prompt=r.prompt) for r in held[:args.eval_prompts]]
    texts = {name: sample_texts(dirs[name], prompts, args) for name in ("sft", "dpo", "ppo")}
    scores = {(name, judge): judge_scores(dirs[judge], prompts, texts[name])
              for name in texts for judge in ("rm", "rm2")}
    for name in ("dpo", "ppo"):
        out[name] = {
            "win_rate_over_sft_by_rm": win_rate(scores[name, "rm"], scores["sft", "rm"]),
            "win_rate_over_sft_by_rm2": win_rate(scores[name, "rm2"], scores["sft", "rm2"]),
            "kl_to_sft": kl_to_reference(dirs[name], dirs["sft"], prompts, args.max_new_tokens,
                                         seed=args.seed, max_prompt_length=args.max_prompt_length),
        }
    out["mean_response_chars"] = {k: round(sum(map(len, v)) / len(v), 1) for k, v in texts.items()}
    out["example"] = {"prompt_tail": prompts[0].prompt[-1].content[-200:],
                      **{k: v[0][:200] for k, v in texts.items()}}
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", type=int, default=307)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-prompt-length", type=int, default=192)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--sft-steps", type=int, default=150)
    p.add_argument("--rm-epochs", type=float, default=1.0)
    p.add_argument("--dpo-steps", type=int, default=60)
    p.add_argument("--ppo-steps", type=int, default=30)
    p.add_argument("--eval-prompts", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse(argv)
    if not HH.is_file() or not STORIES.is_dir():
        print(json.dumps({"skipped": f"{HH} or {STORIES} is absent (../shared/data)"}))
        sys.exit(0)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    threads = set_threads(args.threads)
    a, b, held, invalid = split(args.heldout, args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_records(root / "a.jsonl", a)
        write_records(root / "b.jsonl", b)
        write_records(root / "held.jsonl", held)
        write_records(root / "sft.jsonl", [
            Demonstration(prompt=r.prompt, response=r.a if r.choice == "a" else r.b)
            for r in a + b])
        write_records(root / "a_prompts.jsonl", [PromptRecord(prompt=r.prompt) for r in a])
        dirs = train_all(root, args)
        results = evaluate(dirs, root, held, args)
    return {"setup": {**vars(args), "pairs_a": len(a), "pairs_b": len(b), "heldout_pairs": len(held),
                      "invalid_pairs_skipped": invalid, "threads": threads,
                      "seconds": round(time.perf_counter() - start, 1)}, **results}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
