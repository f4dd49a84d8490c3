"""FSDP2 (`fully_shard`) on two CPU processes (gloo), launched with
examples/accelerate/fsdp_cpu2.yaml: SFT, DPO with LoRA and the adapter-disabled reference, and
the reward model give the losses and final weights of one process with the same global batch.

Tolerances as in test_engine_multiprocess (losses rel 1e-5, gradient norms rel 1e-4, weights
atol 2e-5 / rtol 1e-4): FSDP reduce-scatters the gradients where DDP all-reduces them, so the
sums run in another order. Besides the update, this covers what runs outside the wrapper on
the whole weights (`Engine.full_params`): validation, the reference-reward fit of the reward
model, and the final save by one process (LoRA merged).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_engine_multiprocess import _sft_args, assert_same_run, files, launch, run_cli  # noqa: F401

FSDP = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "fsdp_cpu2.yaml"


def _common(out: Path, accum: int) -> list[str]:
    return ["--out", str(out), "train.batch_size=4", f"train.grad_accum={accum}",
            "train.max_steps=3", "train.log_every=1", "train.threads=1", "train.bf16=false",
            "train.device=cpu", "train.checkpoint_every=0", "val_fraction=0.1"]


@pytest.mark.slow
def test_fsdp_sft_two_processes_equal_one(files, tmp_path):  # noqa: F811
    def args(out, accum):
        return [*_sft_args(files, out, accum), "train.checkpoint_every=0"]
    launch(args(tmp_path / "two", 1), config_file=FSDP)
    run_cli(args(tmp_path / "one", 2))
    assert_same_run(tmp_path / "one", tmp_path / "two", distributed="FSDP")


@pytest.mark.slow
def test_fsdp_dpo_lora_adapter_reference_equal_one(files, tmp_path):  # noqa: F811
    """LoRA under FSDP: frozen base and trainable adapter in the same shards, the reference
    policy the same sharded weights with the adapter off; saved merged and as an adapter."""
    def args(out, accum):
        return ["dpo", "--model", str(files / "base"), "--data", str(files / "prefs.jsonl"),
                *_common(out, accum), "train.lr=3e-3", "train.warmup_ratio=0", "lora.r=4",
                "reference=adapter"]
    launch(args(tmp_path / "two", 1), config_file=FSDP)
    run_cli(args(tmp_path / "one", 2))
    assert_same_run(tmp_path / "one", tmp_path / "two", distributed="FSDP")
    assert (tmp_path / "two" / "final" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_fsdp_reward_model_equal_one(files, tmp_path):  # noqa: F811
    def args(out, accum):
        return ["rm", "--model", str(files / "base"), "--data", str(files / "prefs.jsonl"),
                *_common(out, accum), "epochs=null", "train.lr=1e-3"]
    launch(args(tmp_path / "two", 1), config_file=FSDP)
    run_cli(args(tmp_path / "one", 2))
    assert_same_run(tmp_path / "one", tmp_path / "two", distributed="FSDP")
    one, two = (json.loads((tmp_path / d / "final" / "reward.json").read_text())
                for d in ("one", "two"))
    assert (two["gain"], two["bias"]) == pytest.approx((one["gain"], one["bias"]), rel=1e-4)
