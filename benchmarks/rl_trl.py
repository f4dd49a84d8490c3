"""TRL's side of `rl_vs_trl.py`: RLOOTrainer (`--algo rloo`) or GRPOTrainer (`--algo grpo`) set
to do coachlm's work (the choices are listed in rl_vs_trl's docstring), with its sampling,
scoring, rollout and loop timed."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rl_figures import Phases, phase_times, rates
from trl_common import trl_args as common_trl_args
from coachlm.data.schema import Prompt
from coachlm.models.fast_ops import use_plain_ops
from coachlm.models.load import load_model, load_tokenizer
from coachlm.models.lora import LLAMA_TARGETS
from coachlm.trainers.ppo_config import PPOConfig


def _timed_trl_trainer(algo: str, phases: Phases, **kwargs: Any) -> Any:
    """TRL's RLOOTrainer or GRPOTrainer (`algo`), unchanged, with its sampling, scoring and rollout calls timed, and a
    callback timing its training loop alone (after `train()` has set itself up) as "loop"."""
    from transformers import TrainerCallback
    import trl

    class LoopClock(TrainerCallback):
        start = cpu = 0.0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            phases.seconds["loop"] += time.perf_counter() - self.start
            phases.cpu["loop"] += time.process_time() - self.cpu

    class Timed(trl.GRPOTrainer if algo == "grpo" else trl.RLOOTrainer):
        def _generate_single_turn(self, *a: Any, **k: Any) -> Any:
            return phases.wrap("generate", super()._generate_single_turn)(*a, **k)

        def _calculate_rewards(self, *a: Any, **k: Any) -> Any:
            return phases.wrap("score", super()._calculate_rewards)(*a, **k)

        def _generate_and_score_completions(self, *a: Any, **k: Any) -> Any:
            return phases.wrap("rollout", super()._generate_and_score_completions)(*a, **k)

    return Timed(callbacks=[LoopClock()], **kwargs)


def trl_args(root: Path, cfg: PPOConfig) -> Any:
    """RLOOConfig or GRPOConfig doing coachlm's work: see rl_vs_trl's docstring for each choice."""
    import trl

    micro = cfg.micro_batch_size
    if cfg.algo == "grpo":  # DeepSeekMath as coachlm's grpo: std-scaled group advantages,
        # per-sequence mean loss, beta * k3 KL in the loss (no bias correction)
        own = dict(loss_type="grpo", scale_rewards="group", use_bias_correction_kl=False)
    else:  # RLOO: the leave-one-out baseline on score - beta * k1 KL, advantages as they are
        own = dict(normalize_advantages=False, reward_clip_range=None)
    config = trl.GRPOConfig if cfg.algo == "grpo" else trl.RLOOConfig
    return config(**common_trl_args(
        root, cfg.optimizer_steps, micro, cfg.lr, "bf16" if cfg.bf16 else "fp32",
        gradient_accumulation_steps=cfg.mini_batch_size // micro,
        steps_per_generation=cfg.episodes // micro, num_iterations=cfg.ppo_epochs,
        num_generations=cfg.samples_per_prompt, max_completion_length=cfg.max_new_tokens,
        temperature=1.0, top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0,
        use_vllm=False, beta=cfg.kl_coef, epsilon=cfg.clip_eps,
        mask_truncated_completions=False, shuffle_dataset=False,
        lr_scheduler_type="constant", warmup_steps=0, adam_beta2=0.95, seed=cfg.seed,
        data_seed=cfg.seed, disable_dropout=True, logging_steps=cfg.optimizer_steps,
        log_completions=False, **own))


def run_trl(root: Path, base: Path, ordered: list[Prompt], counter: Any,
            cfg: PPOConfig) -> dict:
    """TRL's side of one run: its trainer on `ordered` prompts, `counter` (rl_vs_trl's
    CountingRubric) as the reward function; the same figures as coachlm's side."""
    from datasets import Dataset
    from peft import LoraConfig

    def rubric(prompts: list, completions: list, completion_ids: list, **_: Any) -> list[float]:
        return counter.score([p[-1]["content"] for p in prompts],
                             [c[-1]["content"] for c in completions], completion_ids)

    tok = load_tokenizer(base)
    model = load_model(base, dtype=torch.float32, tokenizer=tok)
    use_plain_ops(model)  # TRL runs transformers' own modules, not coachlm's fast_ops
    peft_config = None if cfg.lora is None else LoraConfig(
        task_type="CAUSAL_LM", r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
        target_modules=list(LLAMA_TARGETS))
    data = Dataset.from_dict({"prompt": [[{"role": m.role, "content": m.content} for m in p]
                                         for p in ordered]})
    phases = Phases()
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints its logs; keep stdout JSON
        trainer = _timed_trl_trainer(
            cfg.algo, phases, model=model, reward_funcs=rubric, args=trl_args(root, cfg),
            train_dataset=data, processing_class=tok, peft_config=peft_config)
        t0, cpu0 = time.perf_counter(), time.process_time()
        trainer.train()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    counts = counter.counts(cfg.ppo_epochs)
    num_tokens = int(trainer.state.num_input_tokens_seen)
    return {**counts, **rates(counts["tokens"], seconds, cpu, phases.seconds["loop"]),
            "own_counts": {"num_tokens": num_tokens,
                           "num_tokens_x_iterations": num_tokens * cfg.ppo_epochs},
            **{key: phase_times(total, generate=s["generate"],
                                logprobs_ref=s["rollout"] - s["generate"] - s["score"],
                                score=s["score"], update=s["loop"] - s["rollout"])
               for key, total, s in (("phases", seconds, phases.seconds),
                                     ("phases_cpu", cpu, phases.cpu))}}
