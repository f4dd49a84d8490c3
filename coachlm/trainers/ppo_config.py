"""Settings of `coachlm ppo` (PPO with a KL penalty, GRPO, RLOO), validated against each other."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from coachlm.models.lora_config import LoRAConfig


@dataclass(frozen=True)
class PPOConfig:
    """One PPO/GRPO/RLOO run. Sizes count *episodes* (prompt x sample) unless named for prompts.

    Each of `steps` iterations samples `rollout_batch_size` prompts x `samples_per_prompt`
    responses, then runs `ppo_epochs` passes over them in shuffled mini-batches of
    `mini_batch_size` episodes (one optimizer step each), forwarded `micro_batch_size` at a time.
    Defaults follow Huang et al., 2023 ("The N Implementation Details of RLHF with PPO"):
    gamma 1, lambda 0.95, clip 0.2, value clip 0.2, whitened advantages, pure sampling.
    """

    algo: Literal["ppo", "grpo", "rloo"] = "ppo"
    steps: int = 100
    rollout_batch_size: int = 16  # prompts per rollout
    samples_per_prompt: int = 1  # responses per prompt (>= 2 for grpo / rloo)
    mini_batch_size: int = 16  # episodes per optimizer step
    micro_batch_size: int = 8  # episodes per forward/backward pass
    ppo_epochs: int = 4
    max_new_tokens: int = 32
    # Longer prompts lose their oldest tokens (`sampling.fit_prompts`), counted in summary.json.
    # None: as many as the model's context leaves after max_new_tokens.
    max_prompt_length: int | None = None
    temperature: float = 1.0
    # KL penalty to the reference policy, beta = kl_coef. PPO and RLOO subtract beta * KL from
    # the reward (per token, Ziegler et al., 2019; per sequence, Ahmadian et al., 2024); GRPO
    # adds beta * KL to the loss instead (Shao et al., 2024, DeepSeekMath eq. 3).
    kl_coef: float = 0.05
    # None: k1 for PPO/RLOO (in the reward: k3 there gives a biased gradient, hence a warning),
    # k3 for GRPO (the loss term of DeepSeekMath eq. 4, which needs k3: k1's gradient in a loss
    # is zero in expectation).
    kl_estimator: Literal["k1", "k3"] | None = None
    kl_target: float | None = None  # set: adaptive controller, per-sequence KL target (nats)
    kl_horizon: float = 10000.0
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    vf_coef: float = 0.1
    # "shared": a zero-initialized value head on the policy's trunk (cheap: one forward).
    # "reward_model": a separate critic initialized from the reward model (InstructGPT; needs a
    # reward-model directory as the reward; a second trunk to forward and train).
    critic: Literal["shared", "reward_model"] = "shared"
    whiten_advantages: bool = True  # PPO only: group advantages are already relative
    # GRPO only: divide the group-centred scores by the group's std (DeepSeekMath, the default);
    # False is Dr. GRPO (Liu et al., 2025), which finds the division biases toward easy prompts.
    scale_std: bool = True
    # How per-token losses become one number (`rl_math.aggregate`): "sequence" (1/G sum_i
    # 1/|o_i| sum_t, DeepSeekMath eq. 3) or "token" (a mean over all tokens). None: "sequence"
    # for GRPO, "token" for PPO and RLOO (Huang et al., 2023).
    loss_aggregation: Literal["token", "sequence"] | None = None
    # Scale the score to mean 0 / std 1 on the first rollout, which the reference policy samples
    # (a fresh LoRA adapter changes nothing): Ziegler et al., 2019, sec. 2.2. Off for a reward
    # model, whose `score` is already normalized so.
    normalize_reward: bool = False
    reward_clip: float | None = 10.0  # clip the (normalized) score to [-c, c]
    # Subtracted from the score of a response that never emits EOS (TRL's missing_eos_penalty;
    # lm-human-preferences replaces the score with -1 instead). None: no penalty.
    no_eos_penalty: float | None = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    # Rank 2 on every projection: about 1.3% of world-small's weights. RL needs little adapter
    # capacity (Schulman et al., 2025, "LoRA Without Regret": rank 1 matches full fine-tuning
    # for policy-gradient RL); alpha / r = 2 as in the usual r 8 / alpha 16. None: full FT.
    lora: LoRAConfig | None = field(default_factory=lambda: LoRAConfig(r=2, alpha=4.0))
    bf16: bool | None = False  # None: where bf16 matmuls are fast (engine.accel.fast_bf16)
    # The rollout engine (`rollout.generators`): the built-in KV-cache sampler on the learner's
    # own weights, or vLLM (optional, its own environment: README, 'vLLM rollouts'), which gets
    # the learner's weights after every update.
    generator: Literal["builtin", "vllm"] = "builtin"
    # Truncated importance sampling for a rollout another engine sampled (its logprobs mu differ
    # slightly from the learner's pi_old): each token's policy loss is weighted by
    # min(pi_old / mu, importance_cap) (Yao et al., 2025, who use C = 2). None: no correction.
    # The built-in sampler samples the learner itself and needs none.
    importance_cap: float | None = 2.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    threads: int | None = None  # None: the free usable cores, chosen again for each rollout
    checkpoint_every: int = 0  # rollouts between checkpoints; 0: none (always one at the end)
    keep_checkpoints: int = 2
    log_every: int = 1
    sample_every: int = 10  # rollouts between sample tables in samples.jsonl; 0: never
    samples_shown: int = 4

    def __post_init__(self) -> None:
        positive = ("steps", "rollout_batch_size", "samples_per_prompt", "mini_batch_size",
                    "micro_batch_size", "ppo_epochs", "max_new_tokens", "keep_checkpoints",
                    "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        episodes = self.rollout_batch_size * self.samples_per_prompt
        if episodes % self.mini_batch_size:
            raise ValueError(
                f"rollout_batch_size x samples_per_prompt = {self.rollout_batch_size} x "
                f"{self.samples_per_prompt} = {episodes} episodes per rollout must be a multiple "
                f"of mini_batch_size ({self.mini_batch_size})")
        if self.mini_batch_size % self.micro_batch_size:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) must be a multiple of "
                             f"micro_batch_size ({self.micro_batch_size})")
        if self.algo != "ppo" and self.critic != "shared":
            raise ValueError(f"algo {self.algo} has no critic: critic={self.critic!r} needs algo ppo")
        if self.algo in ("grpo", "rloo") and self.samples_per_prompt < 2:
            raise ValueError(f"algo {self.algo} compares responses to the same prompt: "
                             f"samples_per_prompt must be >= 2, got {self.samples_per_prompt}")
        if self.lora is not None and self.lora.dropout > 0:
            # Huang et al., 2023: dropout off in RL. With it, the rollout's logprobs and the KL
            # to the reference are noisy, and the first epoch's ratio is not 1.
            raise ValueError(f"lora.dropout must be 0 for RL (dropout makes the old logprobs and "
                             f"the KL penalty noisy), got {self.lora.dropout}")
        if self.algo == "grpo" and self.kl_estimator == "k1":
            raise ValueError("algo grpo puts the KL in the loss, which needs kl_estimator k3 "
                             "(DeepSeekMath eq. 4): k1's gradient there is zero in expectation")
        if self.algo != "grpo" and self.kl_estimator == "k3":
            # A reward -beta * k3 gives the policy gradient E_pi[grad log pi * k3] =
            # grad KL(pi || ref) + E_ref[grad log pi]: biased (k3 = k1 + ref / pi - 1).
            warnings.warn(f"kl_estimator k3 in the reward of algo {self.algo} gives a biased "
                          "gradient of the KL; k1 is unbiased there", UserWarning, stacklevel=3)
        checks = [
            (self.temperature > 0, "temperature must be > 0 (RL samples; 0 would be greedy)"),
            (self.kl_coef >= 0, "kl_coef must be >= 0"),
            (self.kl_target is None or self.kl_target > 0, "kl_target must be > 0 or null"),
            (self.kl_horizon > 0, "kl_horizon must be > 0"),
            (self.max_prompt_length is None or self.max_prompt_length >= 2,
             "max_prompt_length must be >= 2 or null"),
            (0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma and lam must be in [0, 1]"),
            (self.clip_eps > 0 and self.value_clip_eps > 0, "clip_eps, value_clip_eps must be > 0"),
            (self.vf_coef >= 0, "vf_coef must be >= 0"),
            (self.importance_cap is None or self.importance_cap > 0,
             "importance_cap must be > 0 or null"),
            (self.reward_clip is None or self.reward_clip > 0, "reward_clip must be > 0 or null"),
            (self.lr > 0, "lr must be > 0"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be > 0"),
            (self.checkpoint_every >= 0 and self.sample_every >= 0,
             "checkpoint_every and sample_every must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def kl_kind(self) -> Literal["k1", "k3"]:
        """The KL estimator in effect (see `kl_estimator`)."""
        return self.kl_estimator or ("k3" if self.algo == "grpo" else "k1")

    @property
    def aggregation(self) -> Literal["token", "sequence"]:
        """The loss aggregation in effect (see `loss_aggregation`)."""
        return self.loss_aggregation or ("sequence" if self.algo == "grpo" else "token")

    @property
    def episodes(self) -> int:
        return self.rollout_batch_size * self.samples_per_prompt

    @property
    def optimizer_steps(self) -> int:
        return self.steps * self.ppo_epochs * (self.episodes // self.mini_batch_size)


@dataclass(frozen=True)
class PPORunConfig:
    """`coachlm ppo`: the starting policy, the RL prompts, where to write, and what rewards.

    `reward`: "rubric" (the built-in world's rubric) or the directory of a coachlm reward model.
    `adapter`: a LoRA adapter an earlier run trained on this same `model` (its `final/adapter`):
    training continues it instead of a fresh one, so the policy starts where that run ended
    while the reference (the adapter off) stays `model`. Rounds of RLHF use it to keep the KL
    penalty to SFT throughout, as InstructGPT does (Ouyang et al., 2022, eq. 2); the adapter's
    own rank and targets are kept.
    """

    model: Path
    prompts: Path
    out: Path
    reward: str = "rubric"
    skip_invalid: bool = False  # skip (and count) malformed prompt records instead of stopping
    ppo: PPOConfig = field(default_factory=PPOConfig)
    adapter: Path | None = None

    def __post_init__(self) -> None:
        if self.adapter is not None and self.ppo.lora is None:
            raise ValueError("adapter continues a LoRA adapter: it needs ppo.lora (not null)")
