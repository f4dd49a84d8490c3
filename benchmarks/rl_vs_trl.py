"""Benchmark: `coachlm ppo --algo rloo` against TRL's RLOOTrainer (or `--algo grpo` against its
GRPOTrainer), the same work through both.

Same model (a freshly initialized preset Llama, optionally fine-tuned briefly, saved once and
loaded by both in fp32), same tokenizer (trained on the built-in world's texts; the script
checks that TRL's own chat-template tokenization gives coachlm's prompt ids), same RL prompts in
the same order (the world's training prompts, in the order coachlm's seeded `PromptStream` takes
them, handed to TRL as a conversational dataset with `shuffle_dataset=False`), same prompts per
rollout, samples per prompt (`num_generations`), response length (`max_completion_length`),
reward function (the world's rubric, `coachlm.world.rubric.score`, one Python function called
by both), KL beta, number of rollouts, optimizer steps and episodes.

TRL-side choices, made to keep the comparison fair:
- LoRA on both sides, r=2 alpha=4 dropout 0 on all seven Llama projections (coachlm's default
  for RL; TRL gets the same `peft.LoraConfig` as `peft_config`). With a fresh adapter both take
  the reference policy as the base model with the adapter disabled, so neither holds a second
  copy of the model and both do the same reference pass. `--full-ft` trains every weight on both
  sides instead (coachlm deep-copies a frozen reference; TRL loads one from disk).
- Sampling: temperature 1, top_k 0, top_p 1, min_p off, repetition penalty 1, transformers'
  `generate` (no vLLM, no continuous batching). fp32 (`bf16=False`; TRL defaults to bf16);
  `--precision bf16` turns autocast on for both.
- Gradient checkpointing off (TRL defaults to on; coachlm never checkpoints), dropout off.
- Batch layout: TRL's `per_device_train_batch_size` = coachlm's micro-batch (it is also the
  batch of TRL's no-grad logprob passes, as coachlm's micro-batch is of its own),
  `gradient_accumulation_steps` = mini-batch / micro-batch (one optimizer step per coachlm
  mini-batch), `steps_per_generation` = episodes / micro-batch (one rollout = one generation
  batch), `num_iterations` = coachlm's `ppo_epochs`, `max_steps` = coachlm's optimizer steps.
- Optimizer: AdamW with coachlm's settings (betas 0.9/0.95, eps 1e-8, weight decay 0), constant
  learning rate, no warm-up, gradient clipping at 1.0, clip epsilon 0.2.
- GRPO (`--algo grpo`): group advantages scaled by the group's std, the per-sequence mean loss
  (TRL's loss_type "grpo"), beta * k3 KL in the loss without TRL's bias correction, on both
  sides; missing-EOS penalty and reward clipping off as for RLOO.
- Reward shaping as TRL's RLOO does it: the sequence reward is score - beta * sum of k1 KL, the
  leave-one-out baseline, no advantage normalization, no reward clipping; coachlm's missing-EOS
  penalty and reward clipping are turned off to match. (The losses differ as the designs do:
  TRL clips one sequence-level ratio, coachlm clips per token; both cost one forward/backward.)
- No checkpoints for TRL (`save_strategy="no"`); coachlm's timed call includes its final
  checkpoint, which cannot be turned off.

coachlm does the same work with less computation (merged-LoRA sampling, one prefill per prompt,
length-sorted trimmed micro-batches with shared prompts: see `trainers.ppo_steps`); prompt tokens
still count once per episode for both, so tokens/s compares work done, not FLOPs.

Tokens are counted the same way for both, from the episodes each produced, by the shared reward
function: generated = response tokens sampled (up to and including EOS); trained = prompt +
response tokens of every episode, times the passes over it (epochs). coachlm's own
summary.json counts (generated_tokens, trained_tokens) and TRL's `num_tokens` (prompt +
completion tokens per generation, so times `num_iterations` gives trained) are reported next to
them so that a reader can check that the definitions agree.

Speed is (generated + trained) tokens per wall-clock second and per CPU second of the process,
over the training call (`train_ppo`, `trainer.train()`; model loading excluded for both), and
per second of the loop alone (coachlm's summary seconds; TRL from its on_train_begin to
on_train_end). `--repeats N` alternates the runs and reports medians. `phases` (wall-clock) and
`phases_cpu` (CPU seconds of the process) split each side's seconds into sampling, the no-grad logprob passes (policy and reference; for coachlm also
merging the adapter before sampling), scoring and the update; "other" is the rest (set-up,
coachlm's final checkpoint, decoding, logging).
TRL's logs go to stderr; stdout is the JSON alone.

The starting model is the fresh preset (`--sft-steps 0`), which almost never samples EOS, so
nearly every response is `--max-new-tokens` long; `--sft-steps 150` first fine-tunes it on the
world's demonstrations, so that, as in real RLHF, it answers briefly and stops (responses of varied
length, where stopping rows early and padding matter). Run niced on a shared machine:

    nice -n 15 python benchmarks/rl_vs_trl.py --threads 1 --repeats 3
    nice -n 15 python benchmarks/rl_vs_trl.py --threads 1 --repeats 3 --sft-steps 150

`--background-load [CORE]` runs a busy process pinned to one core (the last usable one by
default) for the whole of both sides, the figure under load that issue 15 asks for; the JSON's
setup.background_load says which core and how many CPU seconds the competitor got. It starts
before the thread count is chosen: without `--threads` both sides get coachlm's default
(`engine.accel.set_threads`), which leaves out cores that other work keeps busy. `--preset
world-25m --precision bf16` is the real-shape run; MFU is nominal (see `_utilization`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

import torch

from background import busy_core
from rl_figures import Phases, median, phase_times, rates
from rl_trl import run_trl
from mfu import add_peak_arg, parameters, peak_gflops, utilization
from coachlm.data.chat import encode_prompt
from coachlm.data.schema import Prompt
from coachlm.models.load import load_model, load_tokenizer, save_pretrained
from coachlm.models.lora import LoRAConfig, apply_lora
from coachlm.models.presets import build_model, preset_vocab_size
from coachlm.models.tokenizer import train_tokenizer
from coachlm.trainers import ppo as ppo_module
from coachlm.rollout import generators as generators_module
from coachlm.engine.accel import set_threads
from coachlm.trainers.ppo import PromptStream, train_ppo
from coachlm.trainers.ppo_config import PPOConfig


class CountingRubric:
    """The world rubric, the one reward both trainers call; counts the episodes it scores."""

    def __init__(self, prompt_tokens: dict[str, int]):
        self.prompt_tokens = prompt_tokens  # instruction text -> rendered prompt length
        self.episodes = self.generated = self.prompt = 0
        self.means: list[float] = []  # mean rubric score of each rollout

    def score(self, prompt_texts: Sequence[str], texts: Sequence[str],
              response_ids: Sequence[Sequence[int]]) -> list[float]:
        from coachlm.world.rubric import score

        self.episodes += len(texts)
        self.generated += sum(len(r) for r in response_ids)
        self.prompt += sum(self.prompt_tokens[p] for p in prompt_texts)
        out = [score(p, t).total for p, t in zip(prompt_texts, texts)]
        self.means.append(sum(out) / len(out))
        return out

    def counts(self, epochs: int) -> dict[str, Any]:
        trained = (self.prompt + self.generated) * epochs
        return {"episodes": self.episodes, "generated_tokens": self.generated,
                "mean_response_tokens": round(self.generated / self.episodes, 2),
                "trained_tokens": trained, "tokens": self.generated + trained,
                "reward_first": round(self.means[0], 4), "reward_last": round(self.means[-1], 4)}


def ppo_config(args: argparse.Namespace, threads: int) -> PPOConfig:
    return PPOConfig(
        algo=args.algo, steps=args.steps, rollout_batch_size=args.prompts,
        samples_per_prompt=args.samples, mini_batch_size=args.mini_batch_size,
        micro_batch_size=args.micro_batch_size, ppo_epochs=args.epochs,
        max_new_tokens=args.max_new_tokens, temperature=1.0, kl_coef=args.beta,
        kl_estimator="k1" if args.algo == "rloo" else None, clip_eps=0.2,
        normalize_reward=False, reward_clip=None,
        no_eos_penalty=None, lr=args.lr, weight_decay=0.0, max_grad_norm=1.0,
        schedule="constant", lora=None if args.full_ft else LoRAConfig(r=2, alpha=4.0),
        bf16=args.precision == "bf16", seed=args.seed, threads=threads, sample_every=0,
        log_every=1)


def our_policy(base: Path, cfg: PPOConfig, counter: CountingRubric) -> tuple[Any, Any, Any]:
    """(tokenizer, policy, reward) as `run_ppo` makes them: the fp32 model, LoRA seeded, and
    the counting rubric as coachlm's reward function."""
    tok = load_tokenizer(base)
    model = load_model(base, dtype=torch.float32, tokenizer=tok)
    if cfg.lora is not None:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            model = apply_lora(model, cfg.lora)

    def reward(ps: Sequence[Prompt], texts: Sequence[str], ids: Sequence[Sequence[int]]):
        return torch.tensor(counter.score([p[-1].content for p in ps], texts, ids))  # (B,)
    return tok, model, reward


def run_ours(root: Path, base: Path, prompts: list[Prompt], counter: CountingRubric,
             cfg: PPOConfig) -> dict:
    """`coachlm ppo --algo rloo|grpo` as `run_ppo` does it, timed phases."""
    tok, model, reward = our_policy(base, cfg, counter)

    phases = Phases()
    patches = [mock.patch.object(module, name, phases.wrap(name, getattr(module, name)))
               for module, name in ((ppo_module, "rollout"), (ppo_module, "score_responses"),
                                    (ppo_module, "ppo_update"), (generators_module, "generate"))]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = train_ppo(model, tok, prompts, reward, cfg, root / "ours")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    counts = counter.counts(cfg.ppo_epochs)
    return {**counts, **rates(counts["tokens"], seconds, cpu, result.summary["seconds"]),
            "own_counts": {k: result.summary[k] for k in ("generated_tokens", "trained_tokens")},
            **{key: phase_times(total, generate=s["generate"],
                                logprobs_ref=s["rollout"] - s["generate"],
                                score=s["score_responses"], update=s["ppo_update"])
               for key, total, s in (("phases", seconds, phases.seconds),
                                     ("phases_cpu", cpu, phases.cpu))}}


def world_setup(args: argparse.Namespace, root: Path, threads: int) -> tuple[Path, list[Prompt]]:
    """(starting model directory, the world's RL prompts): a fresh preset Llama with a tokenizer
    trained on the world's texts, optionally fine-tuned for `--sft-steps` on the world's
    demonstrations so that, like a real RLHF start, it answers briefly and stops with EOS."""
    from coachlm.data.io import write_records
    from coachlm.engine.config import TrainConfig
    from coachlm.trainers.sft import SFTConfig, sft
    from coachlm.world import WorldConfig, make_splits

    splits = make_splits(WorldConfig(seed=0, sft_demos=2000, train_prompts=args.world_prompts,
                                     heldout_per_family=10, corpus_chars=0))
    texts = [d.prompt[-1].content + "\n" + d.response.text for d in splits.sft]
    tok = train_tokenizer(texts + [r.prompt[-1].content for r in splits.train],
                          preset_vocab_size(args.preset))
    base = save_pretrained(build_model(args.preset, tok, seed=args.seed), tok, root / "fresh")
    if args.sft_steps:
        write_records(root / "sft.jsonl", splits.sft)
        train = TrainConfig(lr=1e-3, weight_decay=0.0, warmup_ratio=0.05,
                            max_steps=args.sft_steps, batch_size=16, bf16=False, seed=args.seed,
                            threads=threads, log_every=args.sft_steps)
        _, base = sft(SFTConfig(model=base, data=(root / "sft.jsonl",), out=root / "sft",
                                val_fraction=0.0, train=train))
    return base, [r.prompt for r in splits.train]


def _check_trl_prompt_ids(tok: Any, prompts: list[Prompt]) -> None:
    """TRL renders conversational prompts with the tokenizer's chat template itself: make sure
    it yields exactly coachlm's prompt ids, so that both sample from the same tokens."""
    for p in prompts[:50]:
        msgs = [{"role": m.role, "content": m.content} for m in p]
        trl_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"]
        if list(trl_ids) != encode_prompt(tok, p):
            raise SystemExit(f"TRL and coachlm tokenize the prompt {p[-1].content!r} differently")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=("rloo", "grpo"), default="rloo")
    p.add_argument("--preset", default="world-small")
    p.add_argument("--sft-steps", type=int, default=0,
                   help="fine-tune the fresh model on world demonstrations first (0: fresh)")
    p.add_argument("--world-prompts", type=int, default=1000, help="world training prompts")
    p.add_argument("--steps", type=int, default=8, help="rollouts")
    p.add_argument("--prompts", type=int, default=8, help="prompts per rollout")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--mini-batch-size", type=int, default=None,
                   help="episodes per optimizer step (default: the whole rollout)")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1, help="passes over each rollout")
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--background-load", type=int, nargs="?", const=-1, default=None, metavar="CORE",
                   help="a busy process pinned to CORE (default: the last usable core) while both run")
    add_peak_arg(p)
    p.add_argument("--precision", "--dtype", dest="precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast on both sides (coachlm's bf16, TRL's bf16=True)")
    p.add_argument("--full-ft", action="store_true", help="train every weight (default: LoRA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each, alternating; median reported")
    args = p.parse_args(argv)
    args.mini_batch_size = args.mini_batch_size or args.prompts * args.samples
    return args


def _utilization(run: dict, params: int, peak: float) -> dict[str, float]:
    """Nominal MFU: 2N per generated token (sampling) and 8N per trained token (6N for the
    policy's forward and backward, 2N for the live reference), as if every weight trained; with
    LoRA the real count is lower (no weight gradients for frozen weights), alike on both sides."""
    per_s = run["tokens_per_s"] / run["tokens"]  # the run's rate per token of work
    return utilization(params, run["trained_tokens"] * per_s, peak, 8,
                       forward_tokens_per_s=run["generated_tokens"] * per_s)


def _setup(args: argparse.Namespace, cfg: PPOConfig, threads: int,
           prompt_tokens: float) -> dict[str, Any]:
    training = "full" if cfg.lora is None else f"lora r={cfg.lora.r} alpha={cfg.lora.alpha}"
    return {"algo": cfg.algo, "preset": args.preset, "sft_steps": args.sft_steps, "rollouts": cfg.steps,
            "prompts_per_rollout": cfg.rollout_batch_size,
            "samples_per_prompt": cfg.samples_per_prompt, "episodes": cfg.steps * cfg.episodes,
            "max_new_tokens": cfg.max_new_tokens, "mini_batch_size": cfg.mini_batch_size,
            "micro_batch_size": cfg.micro_batch_size, "epochs": cfg.ppo_epochs,
            "optimizer_steps": cfg.optimizer_steps, "beta": cfg.kl_coef, "lr": cfg.lr,
            "training": training, "precision": args.precision, "threads": threads,
            "repeats": args.repeats, "mean_prompt_tokens": round(prompt_tokens, 1),
            "torch": torch.__version__, "trl": __import__("trl").__version__}


def main(argv: list[str]) -> dict:
    args = parse(argv)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    with busy_core(args.background_load) as load:  # there before the thread count is chosen
        return _main(args, load)


def _main(args: argparse.Namespace, load: dict) -> dict:
    threads = set_threads(args.threads)
    peak = peak_gflops(args.peak, args.precision)
    try:
        cfg = ppo_config(args, threads)
    except ValueError as e:
        raise SystemExit(f"invalid sizes: {e}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, prompts = world_setup(args, root, threads)
        tok = load_tokenizer(base)
        params = parameters(base)
        _check_trl_prompt_ids(tok, prompts)
        lengths = {p[-1].content: len(encode_prompt(tok, p)) for p in prompts}
        # The prompts coachlm's seeded stream takes, in order: TRL reads them unshuffled.
        ordered = [prompts[i] for i in PromptStream(len(prompts), cfg.seed).take(
            cfg.steps * cfg.rollout_batch_size)]
        runs: dict[str, list[dict]] = {"ours": [], "trl": []}
        for _ in range(args.repeats):  # alternate, so that load from other processes hits both
            runs["ours"].append(run_ours(root, base, prompts, CountingRubric(lengths), cfg))
            runs["trl"].append(run_trl(root, base, ordered, CountingRubric(lengths), cfg))
    ours, trl = median(runs["ours"]), median(runs["trl"])
    for run in (ours, trl):
        run.update(_utilization(run, params, peak))
    prompt_tokens = sum(lengths[p[-1].content] for p in ordered) / len(ordered)
    return {
        "setup": {**_setup(args, cfg, threads, prompt_tokens), "parameters": params,
                  "peak_gflops": round(peak, 1), "background_load": load or None},
        "ours": ours, "trl": trl,
        "speedup_tokens_per_s": round(ours["tokens_per_s"] / trl["tokens_per_s"], 2),
        "speedup_tokens_per_cpu_s": round(ours["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"], 2),
        "speedup_loop_tokens_per_s": round(
            ours["loop_tokens_per_s"] / trl["loop_tokens_per_s"], 2),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
