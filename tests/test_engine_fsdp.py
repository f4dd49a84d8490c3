"""FSDP2 (`fully_shard`) on two CPU processes (gloo), launched with
examples/accelerate/fsdp_cpu2.yaml: SFT, DPO with LoRA and the adapter-disabled reference, the
reward model and PPO/GRPO (LoRA, sharded rollouts) give the losses and final weights of one
process with the same global batch; a checkpoint written by 2 FSDP processes (each its shard)
resumes on 2 processes and on 1, and one written by 1 process resumes on 2 FSDP processes.

Tolerances as in test_engine_multiprocess (losses rel 1e-5, gradient norms rel 1e-4, weights
atol 2e-5 / rtol 1e-4; PPO's metrics rel 1e-4): FSDP reduce-scatters the gradients where DDP
all-reduces them, so the sums run in another order. A run resumed on the processes that wrote
its checkpoint ends bit for bit where the uninterrupted run ended. Besides the update, this
covers what runs outside the wrapper on the whole weights (`Engine.full_params`): validation,
PPO's rollouts and reference, the reference-reward fit of the reward model, and the final save
by one process (LoRA merged).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_engine_multiprocess import (_sft_args, assert_same_ppo_run, assert_same_run,  # noqa: F401
                                      files, launch, losses, ppo_args, run_cli, weights)

FSDP = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "fsdp_cpu2.yaml"


def _common(out: Path, accum: int) -> list[str]:
    return ["--out", str(out), "train.batch_size=4", f"train.grad_accum={accum}",
            "train.max_steps=3", "train.log_every=1", "train.threads=1", "train.bf16=false",
            "train.device=cpu", "train.checkpoint_every=0", "val_fraction=0.1"]


def _interrupted(run: Path, to: Path) -> Path:
    """A copy of a finished 4-step run as if it had stopped after step 2 (its step-2
    checkpoint the latest, no final model); the lines of steps 3 and 4 stay, to be replaced."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / "step-000004")
    shutil.rmtree(to / "final")
    return to


@pytest.mark.slow
def test_fsdp_sft_equal_one_and_checkpoints_resume_on_any_processes(files, tmp_path):  # noqa: F811
    """SFT, 4 steps, checkpoints at steps 2 and 4 (torch.distributed.checkpoint)."""
    two, one = tmp_path / "two", tmp_path / "one"
    launch(_sft_args(files, two, 1), config_file=FSDP)
    run_cli(_sft_args(files, one, 2))
    assert_same_run(one, two, distributed="FSDP")
    shards = sorted(f.name for f in (two / "checkpoints" / "step-000002" / "weights").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each process its shard
    # 2 -> 2: the interrupted run ends bit for bit where the uninterrupted one ended.
    again = _interrupted(two, tmp_path / "again")
    launch([*_sft_args(files, again, 1), "--resume"], config_file=FSDP)
    assert losses(again) == losses(two)
    assert losses(again, "grad_norm") == losses(two, "grad_norm")
    w, w_again = weights(two), weights(again)
    assert w.keys() == w_again.keys() and all(w[k].equal(w_again[k]) for k in w)
    # 2 -> 1 (grad_accum 2: the same micro-batches per step), and 1 -> 2: DCP reshards.
    on_one = _interrupted(two, tmp_path / "on-one")
    run_cli([*_sft_args(files, on_one, 2), "--resume"])
    assert_same_run(on_one, two)
    on_two = _interrupted(one, tmp_path / "on-two")
    launch([*_sft_args(files, on_two, 1), "--resume"], config_file=FSDP)
    assert_same_run(one, on_two, distributed="FSDP")


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


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_fsdp_ppo_lora_equal_one(files, tmp_path, algo):  # noqa: F811
    """PPO (value head) and GRPO (its KL in the loss) with LoRA under FSDP2: rollouts sharded
    and sampled on the gathered weights, the reference the same shards with the adapter off,
    advantages whitened over the global batch, the KL controller on the global mean KL; the
    final checkpoint written in shards."""
    launch(ppo_args(files, tmp_path / "two", algo), config_file=FSDP)
    run_cli(ppo_args(files, tmp_path / "one", algo))
    assert_same_ppo_run(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["distributed"] == "FSDP"
