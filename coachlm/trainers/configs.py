"""The settings of `coachlm pretrain`, `sft`, `rm` and `dpo` (typed configs), apart from the
trainers, which load torch and transformers: a pipeline builds and checks every stage's config
(and its cache key) without them (`coachlm.pipeline.kinds`). PPO's are in `ppo_config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from coachlm.engine.config import TrainConfig
from coachlm.models.lora_config import LoRAConfig

# `compile:` of the trainers that can torch.compile their model (`models.compiled`).
Compile = Literal["auto", True, False]


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings; `train.batch_size` counts blocks of `seq_len` tokens."""

    corpus: Path
    out: Path
    tokenizer: Path | None = None  # None: the init model's tokenizer, else train one on the corpus
    vocab_size: int = 2048  # when training a tokenizer
    preset: str = "world-small"  # network shape of a model built from scratch
    init_model: Path | None = None  # continue pretraining this HF model instead
    seq_len: int = 256
    val_fraction: float = 0.02
    max_val_blocks: int = 64  # evaluate on at most this many held-out blocks
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-3, warmup_ratio=0.05, max_steps=1000, batch_size=16, checkpoint_every=200))

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_val_blocks < 1:
            raise ValueError(f"max_val_blocks must be >= 1, got {self.max_val_blocks}")


@dataclass(frozen=True)
class SFTConfig:
    """SFT settings. `train.batch_size` counts examples; `epochs`, when set, replaces
    `train.max_steps` with the number of optimizer steps that many passes over the data take."""

    DEFAULT_YIELDS: ClassVar[dict[str, tuple[str, str]]] = {"epochs": ("train", "max_steps")}

    model: Path
    data: tuple[Path, ...]
    out: Path
    max_length: int = 512
    lora: LoRAConfig | None = None
    epochs: float | None = None
    val_fraction: float = 0.05
    # Length bucketing: batches per length-sorted chunk (collate.ExampleBatches); 1 = plain random
    # batches, the default. Bucketing pads less, but in the world data length tracks the task, so
    # bucketed batches hold one task each, and at equal steps the held-out loss came out clearly
    # worse (4.8 vs 4.1 nats after 30 steps of world-small); raise it only for homogeneous data.
    bucket_batches: int = 1
    # Pack each micro-batch's examples into shared rows (collate.pack_examples); None (auto): pack
    # when the model's attention honours restarting position ids (checked on the model itself).
    pack: bool | None = None
    # Packed rows are a multiple of this many tokens wide (the width of least estimated cost,
    # collate.pack_geometry) and the row count is rounded up to a multiple of
    # `pack_rows_multiple`. None: 64 under bf16 on a CPU, 16 otherwise (`sft.width_multiple`).
    # bf16 matmuls on a CPU go through oneDNN, which compiles and caches kernels per shape: few
    # distinct batch shapes stop its cache churning and fragmenting the heap (coachlm.memory
    # has the figures; world-small SFT, 400 steps of 32, peak RSS 790 MB at 64 vs 971 MB at
    # 16). fp32 (MKL) and GPUs keep no such cache: there 16 pads less and keeps rows narrower,
    # +7-13% tokens per CPU s over 64 at world-small fp32 with the same peak RSS (README).
    # Padding is inert (no labels, its own position-id block); 1 packs tightly.
    pack_width_multiple: int | None = None
    pack_rows_multiple: int = 1
    skip_invalid: bool = False  # skip (and count) malformed records instead of stopping
    # torch.compile the decoder layers (`models.compiled`): fused elementwise kernels, less CPU
    # per step after a one-off compile; auto: only where the run's steps repay the compile
    # (`models.compiled.resolve_compile`, with the measured break-even), so short runs stay eager.
    compile: Compile = "auto"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=2e-4, warmup_ratio=0.03, max_steps=300, batch_size=16, checkpoint_every=100))

    def __post_init__(self) -> None:
        _check_examples(self, min_length=2)
        _check_compile(self.compile)
        for key in ("bucket_batches", "pack_width_multiple", "pack_rows_multiple"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class RMConfig:
    """Reward-model settings. `train.batch_size` counts prompts (groups of judgements);
    `epochs` (1 by default: reward models overfit after one, Ouyang et al., 2022, sec. C.2)
    replaces `train.max_steps` when set. A `train.max_steps` given without `epochs` wins over
    the default epoch (`config.from_dict`'s DEFAULT_YIELDS); given both, the config is refused."""

    DEFAULT_YIELDS: ClassVar[dict[str, tuple[str, str]]] = {"epochs": ("train", "max_steps")}

    model: Path
    data: tuple[Path, ...]
    out: Path
    val_data: tuple[Path, ...] = ()  # held-out files; empty: split val_fraction of the prompts
    val_fraction: float = 0.05
    max_length: int = 512
    lora: LoRAConfig | None = None
    epochs: float | None = 1.0
    layout: Literal["auto", "pad", "pack", "share"] = "auto"
    bucket_batches: int = 4  # batches per length-sorted chunk; 1 = no length bucketing
    ties: Literal["skip", "davidson"] = "skip"
    tie_log_nu: float = 0.0  # Davidson's log nu; 0: P(tie) = 1/3 for equal rewards
    margin_scale: float = 0.0  # margin = margin_scale * record.margin; 0: no margin
    # Soft labels (RL-CAI, Bai et al., 2022, sec. 4.1): a comparison with meta.probability
    # (the AI labeler's P(a better)) trains Bradley-Terry against that target.
    soft_labels: bool = True
    # Mix of sources in the training records: the share of AI-labelled (source "ai") records,
    # the rest human or simulated, reached by a seeded subsample of the larger side (Bai et al.
    # mixed AI harmlessness labels with human helpfulness labels). None: use every record.
    ai_share: float | None = None
    max_group_responses: int = 16
    normalize_on: Path | None = None  # Sample records of the reference policy
    normalize_max: int | None = None  # fit on a seeded sample of ~this many responses; None: all
    skip_invalid: bool = False  # skip (and count) malformed records instead of stopping
    compile: Compile = "auto"  # torch.compile the backbone's layers; as SFTConfig.compile
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-4, weight_decay=0.0, warmup_ratio=0.05, max_steps=200, batch_size=32,
        checkpoint_every=100, log_every=5))

    def __post_init__(self) -> None:
        _check_examples(self, min_length=4)
        _check_compile(self.compile)
        if self.bucket_batches < 1 or self.max_group_responses < 2:
            raise ValueError("bucket_batches must be >= 1 and max_group_responses >= 2")
        if self.normalize_max is not None and self.normalize_max < 2:
            raise ValueError(f"normalize_max must be >= 2, got {self.normalize_max}")
        if self.ai_share is not None and not 0.0 < self.ai_share < 1.0:
            raise ValueError(f"ai_share must be in (0, 1), got {self.ai_share}")
        if self.ties == "davidson" and self.margin_scale:
            raise ValueError("margin_scale and ties=davidson do not combine: Davidson's tie "
                             "model has no margin term")


Reference = Literal["cached", "adapter"]


@dataclass(frozen=True)
class DPOConfig:
    """DPO settings. `train.batch_size` counts pairs; `epochs`, when set, replaces
    `train.max_steps` with the steps that many passes over the pairs take."""

    DEFAULT_YIELDS: ClassVar[dict[str, tuple[str, str]]] = {"epochs": ("train", "max_steps")}

    model: Path
    data: tuple[Path, ...]
    out: Path
    val_data: tuple[Path, ...] = ()  # held-out files; empty: hold out val_fraction of the prompts
    val_fraction: float = 0.05
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO (sigmoid loss only)
    # RPO (Pang et al., 2024, "Iterative Reasoning Preference Optimization", eq. 2): add
    # nll_weight * (-log pi(chosen) / its tokens) per pair, so DPO cannot lower the likelihood of
    # the chosen responses while it widens the margin (the failure Pal et al., 2024 analyse).
    nll_weight: float = 0.0
    reference: Reference = "cached"  # "adapter": LoRA only, the base weights each step
    max_length: int = 512
    layout: Literal["auto", "pad", "pack", "share"] = "auto"
    bucket_batches: int = 1  # batches per length-sorted chunk; 1 = plain random batches
    # Drop comparisons whose margin (1 slightly .. 3 much better, Touvron et al., 2023) is below
    # this: near-even judgements are mostly labeler noise. Pairs without a margin are kept.
    min_margin: float | None = None
    lora: LoRAConfig | None = None
    epochs: float | None = None
    skip_invalid: bool = False  # skip (and count) malformed records instead of stopping
    # torch.compile the policy's layers (as SFTConfig.compile); the reference's no-grad
    # forwards stay eager (`models.compiled`).
    compile: Compile = "auto"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=5e-5, weight_decay=0.0, warmup_ratio=0.1, max_steps=200, batch_size=32,
        checkpoint_every=100, log_every=5))

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.nll_weight < 0:
            raise ValueError(f"nll_weight must be >= 0, got {self.nll_weight}")
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError("label_smoothing applies to the sigmoid loss only")
        if self.reference == "adapter" and self.lora is None:
            raise ValueError("reference: adapter needs LoRA (the reference is the base weights "
                             "with the adapter off); use reference: cached without LoRA")
        _check_examples(self, min_length=4)
        _check_compile(self.compile)
        if self.bucket_batches < 1:
            raise ValueError(f"bucket_batches must be >= 1, got {self.bucket_batches}")


def _check_compile(value: object) -> None:
    if value != "auto" and not isinstance(value, bool):
        raise ValueError(f"compile must be auto, true or false, got {value!r}")


def _check_examples(cfg: SFTConfig | RMConfig | DPOConfig, min_length: int) -> None:
    """The checks every example-based trainer's config shares: data, length, epochs, split."""
    if not cfg.data:
        raise ValueError("data must name at least one file")
    if cfg.max_length < min_length:
        raise ValueError(f"max_length must be >= {min_length}, got {cfg.max_length}")
    if cfg.epochs is not None and cfg.epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {cfg.epochs}")
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
