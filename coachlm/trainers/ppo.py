"""`coachlm ppo`: PPO against a reward with a per-token KL penalty, through LoRA; GRPO and RLOO
beside it on the same rollout code and loop.

PPO for language models as in Ziegler et al., 2019 and Ouyang et al., 2022 (InstructGPT), with
the details of Huang et al., 2023, "The N Implementation Details of RLHF with PPO" (see
ARCHITECTURE.md's checklist). With LoRA (the default) the reference policy is the same weights
with the adapter disabled, so there is no second copy of the model; full fine-tuning keeps a
frozen copy. GRPO (Shao et al., 2024) and RLOO (Ahmadian et al., 2024) drop the critic and use
the other samples of the same prompt as the baseline.

Each iteration reads top to bottom (`ppo_steps` holds the steps):
  # 1. generate  # 2. score  # 3. KL-shape  # 4. GAE / group advantages  # 5. update

Outputs under `out`: config.yaml, metrics.jsonl (one row per iteration), samples.jsonl (a few
responses every `sample_every` iterations), summary.json, checkpoints/ (adapter + value head,
optimizer, KL controller, reward normalization, RNG, data position) and final/ (the merged
policy, and the adapter alone in final/adapter).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from coachlm import config
from coachlm.data.chat import encode_prompt
from coachlm.data.schema import Prompt
from coachlm.errors import CoachError
from coachlm.memory import release_free_memory
from coachlm.models.attention import use_fp32_attention
from coachlm.models.lora import trainable_fraction
from coachlm.rl_math import AdaptiveKLController, FixedKLController
from coachlm.rollout.generators import Generator, check_generator, make_generator
from coachlm.rollout.rewards import Reward
from coachlm.rollout.sampling import decode_responses, fit_prompts
from coachlm.runlog import RunLog, progress, warn
from coachlm.engine.accel import Engine
from coachlm.engine.checkpoint import check_resume_settings, latest_checkpoint, load_checkpoint
from coachlm.engine.config import TrainConfig
from coachlm.engine.loop import (Trainee, check_checkpointing, checkpoint, make_optimizer, prepare,
                                 seed_everything)
from coachlm.trainers.ppo_config import PPOConfig, PPORunConfig
from coachlm.trainers.ppo_steps import (ActorCritic, RewardNorm, frozen_dtype,
                                        frozen_reference, group_relative_advantages, measure_kl,
                                        old_logprobs_from_update, ppo_advantages, rollout,
                                        rollout_metrics, score_responses, shape_rewards)
from coachlm.trainers.ppo_update import gather_experience, ppo_loss, ppo_update

# Settings that fix the data order, the sampling streams and the update: a resume keeps them.
_RESUME_KEYS = ("algo", "seed", "rollout_batch_size", "samples_per_prompt", "mini_batch_size",
                "ppo_epochs")


class PromptStream:
    """Prompts in a seeded random order, epoch after epoch, resumable by (epoch, position)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.position = n, seed, 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            order = self._order()
            chunk = order[self.position:self.position + k - len(out)].tolist()
            out += chunk
            self.position += len(chunk)
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


@dataclass
class PPOResult:
    steps: int
    metrics: dict[str, Any]  # the last iteration's
    summary: dict[str, Any]


def _hidden_size(model: nn.Module) -> int:
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for name in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(cfg, name, None), int):
            return getattr(cfg, name)
    raise CoachError(f"cannot find the hidden size of {type(model).__name__} for the value head")


def _optim_config(cfg: PPOConfig) -> TrainConfig:
    """The engine's optimizer settings; one 'step' is one mini-batch update."""
    return TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
                       max_steps=cfg.optimizer_steps, batch_size=cfg.mini_batch_size,
                       max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16, seed=cfg.seed,
                       threads=cfg.threads, min_lr_ratio=0.0, device=cfg.device)


def _kl_controller(cfg: PPOConfig) -> FixedKLController | AdaptiveKLController:
    if cfg.kl_target is None:
        return FixedKLController(cfg.kl_coef)
    return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)


@dataclass
class _RunState:
    step: int = 0
    opt_step: int = 0
    generated: int = 0  # response tokens sampled
    trained: int = 0  # tokens forwarded and back-propagated in updates
    seconds: float = 0.0


def _restore(out_dir: Path, ac: ActorCritic, optimizer: torch.optim.Optimizer,
             stream: PromptStream, kl_ctl: Any, norm: RewardNorm, cfg: PPOConfig) -> _RunState:
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return _RunState()
    state = load_checkpoint(ckpt, ac, optimizer)
    check_resume_settings(ckpt, state["ppo_config"], cfg, _RESUME_KEYS)
    stream.load_state_dict(state["data"])
    kl_ctl.load_state_dict(state["kl_controller"])
    norm.gain, norm.bias, norm.fitted = state["reward_norm"]
    return _RunState(**state["run"])


def _checkpoint(out_dir: Path, t: Trainee, stream: PromptStream, kl_ctl: Any, norm: RewardNorm,
                cfg: PPOConfig, run: _RunState) -> None:
    checkpoint(t.engine, out_dir, run.step, t.model, t.raw_optimizer, {
        "data": stream.state_dict(), "kl_controller": kl_ctl.state_dict(),
        "reward_norm": [norm.gain, norm.bias, norm.fitted], "run": vars(run).copy(),
        "ppo_config": config.to_dict(cfg)}, cfg.keep_checkpoints)


def _write_samples(path: Path, step: int, prompts: Sequence[Prompt], texts: Sequence[str],
                   raw: torch.Tensor, scores: torch.Tensor, prompt_index: Sequence[int],
                   k: int) -> None:
    with path.open("a") as f:
        for b in range(min(k, len(texts))):
            row = {"step": step, "prompt": prompts[prompt_index[b]][-1].content,
                   "response": texts[b], "reward_raw": round(float(raw[b]), 4),
                   "reward": round(float(scores[b]), 4)}
            f.write(json.dumps(row) + "\n")


def _trim_samples(path: Path, from_step: int, resume: bool) -> None:
    """A resumed run keeps the samples of steps it does not redo; a fresh run starts empty."""
    keep = []
    if resume and path.exists():
        keep = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= from_step]
    path.write_text("".join(line + "\n" for line in keep))


@dataclass
class _GlobalNorm(RewardNorm):
    """The reward normalization fitted on the whole first rollout, whichever process scores
    which share of it."""

    engine: Engine | None = None

    def fit(self, raw: torch.Tensor) -> None:
        super().fit(self.engine.gather_rows(raw) if self.engine is not None else raw)


def _iteration(t: Trainee, ref_model: nn.Module | None, tokenizer: Any,
               prompts: Sequence[Prompt], prompt_ids: Sequence[Sequence[int]], reward: Reward,
               batch: list[int], cfg: PPOConfig, tcfg: TrainConfig, kl_ctl: Any,
               norm: RewardNorm, run: _RunState, generator: Generator | None = None
               ) -> tuple[dict[str, float], dict[str, Any]]:
    """One PPO/GRPO/RLOO iteration on the prompts `batch` (this process samples and scores its
    share of them). Returns (metrics, sample table of this process's share)."""
    eng, ac = t.engine, t.model
    mine = eng.shard(len(batch))
    sub_prompts = [prompts[batch[i]] for i in mine]
    sub_ids = [prompt_ids[batch[i]] for i in mine]
    # 1. generate (pure sampling, seeded streams per iteration and row so a resumed or sharded
    # run repeats them); GRPO with one step per rollout takes pi_old from the update's forward
    policy_pass = not old_logprobs_from_update(ac, cfg, generator)
    with eng.full_params():  # FSDP / ZeRO-3: sample and score with the whole weights
        exp, gen, entropy = rollout(ac, ref_model, tokenizer, sub_ids, cfg,
                                    seed=cfg.seed * 1_000_003 + run.step, autocast=eng.autocast,
                                    row_offset=mine.start * cfg.samples_per_prompt,
                                    generator=generator, dtype=frozen_dtype(eng),
                                    policy_pass=policy_pass)
    texts = decode_responses(tokenizer, gen)
    # 2. score
    raw, exp.scores = score_responses(reward, sub_prompts, texts, gen, cfg, norm)
    table = {"prompts": sub_prompts, "texts": texts, "raw": raw, "scores": exp.scores,
             "prompt_index": gen.prompt_index}
    if entropy is not None:
        local_tokens = float(exp.action_mask.sum())
        entropy_sum, n_tokens = eng.sum([entropy * local_tokens, local_tokens])
        entropy = entropy_sum / max(n_tokens, 1.0)
    exp = gather_experience(eng, exp, mine.start)
    raw = eng.gather_rows(raw)
    # 3. KL-shape
    shape_rewards(exp, kl_ctl.value, cfg)
    # 4. GAE / group advantages (whitened over the whole rollout)
    if cfg.algo == "ppo":
        ppo_advantages(exp, cfg)
    else:
        group_relative_advantages(exp, cfg)
    # 5. update
    metrics, run.opt_step = ppo_update(t, exp, cfg, tcfg, run.opt_step,
                                       seed=cfg.seed * 7_919 + run.step,
                                       kl_coef=kl_ctl.value)
    if not policy_pass:  # the update's forward gave pi_old: its KL and entropy, for the logs
        measure_kl(exp, cfg)
        entropy = metrics.pop("entropy")
    if generator is not None:  # the engine samples the next rollout from the updated weights
        generator.sync(ac.policy)
    metrics.update(rollout_metrics(exp, raw, entropy),
                   kl_coef=kl_ctl.value)
    kl_ctl.update(metrics["kl"], cfg.episodes)
    run.generated += int(exp.response_lengths.sum())
    run.trained += int(exp.attention_mask.sum()) * cfg.ppo_epochs
    return metrics, table


def _setup(engine: Engine, model: nn.Module, cfg: PPOConfig, critic: nn.Module | None
           ) -> tuple[ActorCritic, nn.Module | None, TrainConfig, torch.optim.Optimizer]:
    """(actor-critic on the engine's device, reference or None with LoRA, optimizer settings,
    optimizer)."""
    from peft import PeftModel

    model = engine.place(model)
    ref_model = None if isinstance(model, PeftModel) else \
        frozen_reference(model, frozen_dtype(engine))
    with torch.random.fork_rng():  # the value head is zero-initialized; keep the streams intact
        ac = engine.place(ActorCritic(model, _hidden_size(model) if cfg.algo == "ppo" else None,
                                      critic))
    tcfg = _optim_config(cfg)
    return ac, ref_model, tcfg, make_optimizer(ac, tcfg)


def _check_processes(engine: Engine, cfg: PPOConfig) -> None:
    for name in ("rollout_batch_size", "mini_batch_size"):
        if getattr(cfg, name) % engine.world_size:
            raise CoachError(f"{name} ({getattr(cfg, name)}) must be a multiple of the number "
                             f"of processes ({engine.world_size})")


def train_ppo(model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], reward: Reward,
              cfg: PPOConfig, out_dir: str | Path, resume: bool = False,
              critic: nn.Module | None = None, engine: Engine | None = None,
              generator: Generator | None = None) -> PPOResult:
    """Optimize `model` in place (a peft LoRA model, or any causal LM for full fine-tuning).

    `critic`: a separate critic module (`trainers.critic`); None: a value head on the policy.
    `engine`: None builds one from `cfg` (device, bf16). `generator`: the rollout engine
    (`rollout.generators`), given the learner's weights at the start and after every update;
    None: the built-in sampler on the policy itself.

    Writes metrics.jsonl, samples.jsonl, summary.json and checkpoints under `out_dir` (from the
    main process); with `resume` it continues exactly from the latest checkpoint there.
    """
    if not prompts:
        raise CoachError("no prompts to train on")
    out_dir = Path(out_dir)
    engine = engine or Engine(cfg.device, cfg.bf16)
    _check_processes(engine, cfg)
    check_checkpointing(engine, cfg.checkpoint_every)
    if engine.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    threads = engine.threads(cfg.threads)
    seed_everything(cfg.seed)
    use_fp32_attention(model)  # bf16 autocast on CPU: attention in fp32 is faster (models.attention)
    ac, ref_model, tcfg, optimizer = _setup(engine, model, cfg, critic)
    lora = ref_model is None
    prompt_ids, truncated = fit_prompts(model, tokenizer,
                                        [encode_prompt(tokenizer, p) for p in prompts],
                                        cfg.max_new_tokens, cfg.max_prompt_length)
    if truncated:
        warn(f"{truncated} of {len(prompts)} prompts cut from the left to fit (max_prompt_length)")
    stream, kl_ctl = PromptStream(len(prompts), cfg.seed), _kl_controller(cfg)
    norm = _GlobalNorm(engine=engine)
    t = prepare(engine, ac, partial(ppo_loss, cfg=cfg), optimizer)
    # After `prepare`: a checkpoint loads into the run's own layout (FSDP shards or whole).
    run = _restore(out_dir, ac, optimizer, stream, kl_ctl, norm, cfg) if resume else _RunState()
    if generator is not None:  # a resumed run's weights, or the LoRA model's first ones
        generator.sync(ac.policy)
    log = RunLog(out_dir, resume=resume, from_step=run.step) if engine.is_main else None
    samples_path = out_dir / "samples.jsonl"
    if engine.is_main:
        _trim_samples(samples_path, run.step, resume)
    metrics: dict[str, float] = {}
    with progress(disable=None if engine.is_main else True) as bar:
        task = bar.add_task(cfg.algo, total=cfg.steps, completed=run.step, rate="")
        while run.step < cfg.steps:
            t0 = time.perf_counter()
            batch = stream.take(cfg.rollout_batch_size)
            metrics, table = _iteration(t, ref_model, tokenizer, prompts, prompt_ids, reward,
                                        batch, cfg, tcfg, kl_ctl, norm, run, generator)
            run.seconds += time.perf_counter() - t0
            run.step += 1
            tokens = run.generated + run.trained
            metrics.update(tokens_per_s=tokens / max(run.seconds, 1e-9))
            if log and (run.step % cfg.log_every == 0 or run.step == cfg.steps):
                log.log(run.step, metrics)
            if log and cfg.sample_every and (run.step % cfg.sample_every == 0 or run.step == 1):
                _write_samples(samples_path, run.step, table["prompts"], table["texts"],
                               table["raw"], table["scores"], table["prompt_index"],
                               cfg.samples_shown)
            if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 \
                    or run.step == cfg.steps:
                _checkpoint(out_dir, t, stream, kl_ctl, norm, cfg, run)
            bar.update(task, advance=1, rate=f"reward {metrics['reward_raw']:.3f}")
            if cfg.threads is None and run.step < cfg.steps:
                # The cores that other work leaves free, again for each rollout: a run that
                # started on a quiet machine kept two threads when a busy process came, at ~10x
                # the CPU seconds per operator (`coachlm.cpus`); a check sleeps 0.2 s.
                threads = engine.threads(None)
    engine.release(t.wrapped)
    summary = {} if log is None else log.summary(
        steps=run.step, tokens=run.generated + run.trained, seconds=run.seconds,
        generated_tokens=run.generated, trained_tokens=run.trained, algo=cfg.algo, lora=lora,
        truncated_prompts=truncated,
        trainable_fraction=round(trainable_fraction(ac), 6),
        trainable_params=sum(p.numel() for p in ac.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in ac.parameters()), threads=threads, bf16=engine.bf16,
        device=str(engine.device), processes=engine.world_size,
        distributed=engine.distributed_type)
    return PPOResult(run.step, metrics, summary)


def build_reward(spec: str, tokenizer: Any = None, device: torch.device | None = None) -> Reward:
    """"rubric" (the built-in world's rubric) or a coachlm reward model directory, which scores
    with its own tokenizer (a `tokenizer` given must equal it, else a CoachError), on `device`
    (the engine's: on a GPU the reward model scores there too)."""
    from coachlm.models.reward import is_reward_model, load_reward_model
    from coachlm.rollout.rewards import RewardModelReward, RubricReward

    if spec == "rubric":
        return RubricReward()
    if Path(spec).is_dir() and is_reward_model(spec):
        return RewardModelReward(load_reward_model(spec).to(device or "cpu"), tokenizer)
    raise CoachError(f"reward {spec!r} is neither 'rubric' nor a coachlm reward model directory "
                     "(train one with `coachlm rm`)")


def run_ppo(cfg: PPORunConfig, resume: bool = False) -> Path:
    """Train per `cfg`; returns the final policy directory (`cfg.out / "final"`)."""
    from coachlm.data.invalid import InvalidRecords
    from coachlm.data.io import read_prompts
    from coachlm.models.load import load_model, load_tokenizer
    from coachlm.trainers.final import save_final
    from coachlm.models.lora import apply_lora, continue_lora
    from coachlm.trainers.critic import build_critic

    check_generator(cfg.ppo.generator)
    tok = load_tokenizer(cfg.model)
    invalid = InvalidRecords(cfg.skip_invalid)
    with invalid.strict_hint():
        prompts = [r.prompt for r in read_prompts(cfg.prompts, on_error=invalid.on_error)]
    invalid.warn()
    model = load_model(cfg.model, dtype=torch.float32, tokenizer=tok)
    if cfg.adapter is not None:  # the reference stays `model`: see PPORunConfig.adapter
        model = continue_lora(model, cfg.adapter)
    elif cfg.ppo.lora is not None:
        with torch.random.fork_rng():  # LoRA init must not shift the run's seeded streams
            torch.manual_seed(cfg.ppo.seed)
            model = apply_lora(model, cfg.ppo.lora)
    critic = build_critic(cfg.ppo.critic, cfg.reward, cfg.ppo.lora, cfg.ppo.seed, tokenizer=tok)
    engine = Engine(cfg.ppo.device, cfg.ppo.bf16)
    # the reward model encodes with its own tokenizer, on the engine's device
    reward = build_reward(cfg.reward, device=engine.device)
    if cfg.ppo.generator != "builtin" and engine.world_size > 1:
        raise CoachError(f"generator {cfg.ppo.generator} runs in one process; launch without "
                         f"several processes or use generator builtin")
    generator = make_generator(cfg.ppo.generator, model, tok)
    if engine.is_main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        config.save(cfg, cfg.out / "config.yaml")
    try:
        train_ppo(model, tok, prompts, reward, cfg.ppo, cfg.out, resume=resume, critic=critic,
                  engine=engine, generator=generator)
    finally:
        if generator is not None:
            generator.close()
    final = save_final(engine, model, tok, cfg.out / "final")
    del model, critic, reward  # the stage's tensors go before the freed heap is handed back
    release_free_memory()  # (coachlm.memory)
    return final
