"""Several processes on the CPU (gloo): each command, launched by `accelerate launch` with two
processes and grad_accum g, must give the losses and the final weights that one process gives
with grad_accum 2g (the same global batch); data is dealt out without duplicates; checkpoints
are written once and resume on a different number of processes.

Tolerances: per-step losses within rel 1e-5, weights within atol 2e-5 / rtol 1e-4 -- the two runs
sum the same per-item gradients in a different order (and in different micro-batch layouts),
and Adam divides by sqrt(v), so float noise in a near-zero gradient moves a weight by up to
~lr * 1e-3 (as `test_loop.test_grad_accumulation_equals_one_big_batch` measures).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from coachlm import config
from coachlm.data.io import write_records
from coachlm.data.schema import Message, PromptRecord
from coachlm.engine.loop import my_micro_batches
from coachlm.models.load import save_pretrained
from test_dpo import toy_comparisons
from trainers_fixtures import ListSource, tiny_demos, tiny_model, tiny_tokenizer

WEIGHTS = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    tok = tiny_tokenizer()
    save_pretrained(tiny_model(tok, seed=0), tok, root / "base")
    write_records(root / "demos.jsonl", tiny_demos(48))
    write_records(root / "prefs.jsonl", toy_comparisons(48))
    prompts = [(Message("user", f"What is {i} plus {i}?"),) for i in range(8)]
    write_records(root / "prompts.jsonl", [PromptRecord(prompt=p) for p in prompts])
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int = 2, config_file: Path | None = None) -> None:
    """`accelerate launch` (torchrun underneath; gloo on the CPU) of `coachlm.cli args`, as
    DDP or with an accelerate config file."""
    how = ["--config_file", str(config_file)] if config_file else [
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *how,
           "--main_process_port", str(_free_port()), "-m", "coachlm.cli", *args]
    env = {**os.environ, "COACHLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def run_cli(args: list[str]) -> None:
    """The same command in this process, without a launcher."""
    from typer.testing import CliRunner

    from coachlm.cli.app import _mount_subapps, app

    _mount_subapps()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def losses(out: Path, key: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if key in r]
    assert len(steps) == len(set(steps)), "a step was logged twice (more than one writer?)"
    return [r[key] for r in rows if key in r]


def weights(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the final model's safetensors files."""
    return {f"{f.name}:{k}": v for f in sorted((out / "final").glob("*.safetensors"))
            for k, v in load_file(str(f)).items()}


def assert_same_run(one: Path, two: Path, key: str = "loss", distributed: str | None = None) -> None:
    assert losses(two, key) == pytest.approx(losses(one, key), rel=1e-5)
    # Adam is blind to a constant gradient scale; the gradient norm is not.
    assert losses(two, "grad_norm") == pytest.approx(losses(one, "grad_norm"), rel=1e-4)
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], **WEIGHTS, msg=name)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2
    if distributed:
        assert summary["distributed"] == distributed


def test_micro_batches_are_dealt_without_duplicates():
    """Of each step's grad_accum x N micro-batches, process r takes those = r mod N: together
    exactly the one-process step's, none twice, and every process ends at the same position."""
    seen = []
    for rank in (0, 1):
        source = ListSource(range(100))
        engine = SimpleNamespace(rank=rank, world_size=2)
        seen.append([my_micro_batches(source, 3, engine) for _ in range(2)])
        assert source.position == 12
    one = ListSource(range(100))
    single = [my_micro_batches(one, 6, SimpleNamespace(rank=0, world_size=1)) for _ in range(2)]
    for step in range(2):
        a, b = seen[0][step], seen[1][step]
        assert not set(a) & set(b) and sorted(a + b) == single[step]


def _sft_args(files: Path, out: Path, accum: int, steps: int = 4) -> list[str]:
    return ["sft", "--model", str(files / "base"), "--data", str(files / "demos.jsonl"),
            "--out", str(out), "train.batch_size=4", f"train.grad_accum={accum}",
            f"train.max_steps={steps}", "train.lr=3e-3", "train.warmup_steps=1",
            "train.checkpoint_every=2", "train.log_every=1", "train.threads=1",
            "train.bf16=false", "train.device=cpu", "val_fraction=0.1"]


@pytest.mark.slow
def test_sft_two_processes_equal_one_and_resume_on_one(files, tmp_path):
    launch(_sft_args(files, tmp_path / "two", accum=1))
    run_cli(_sft_args(files, tmp_path / "one", accum=2))
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert losses(tmp_path / "two", "val_loss") == pytest.approx(losses(tmp_path / "one", "val_loss"),
                                                                  rel=1e-5)
    ckpts = tmp_path / "two" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000004"]
    # Resume the two-process run's step-2 checkpoint in one process (grad_accum 2: the same
    # micro-batches per step): it ends where the two-process run ended.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    run_cli([*_sft_args(files, resumed, accum=2), "--resume"])
    assert_same_run(resumed, tmp_path / "two")
    with pytest.raises(AssertionError, match="micro-batches"):
        run_cli([*_sft_args(files, resumed, accum=1), "--resume"])


@pytest.mark.slow
def test_reward_model_two_processes_equal_one(files, tmp_path):
    def args(out, accum):
        return ["rm", "--model", str(files / "base"), "--data", str(files / "prefs.jsonl"),
                "--out", str(out), "epochs=null", "train.batch_size=4",
                f"train.grad_accum={accum}", "train.max_steps=3", "train.lr=1e-3",
                "train.log_every=1", "train.threads=1", "train.bf16=false", "train.device=cpu",
                "train.checkpoint_every=0", "val_fraction=0.1"]
    launch(args(tmp_path / "two", 1))
    run_cli(args(tmp_path / "one", 2))
    assert_same_run(tmp_path / "one", tmp_path / "two")
    one, two = (json.loads((tmp_path / d / "final" / "reward.json").read_text())
                for d in ("one", "two"))
    assert (two["gain"], two["bias"]) == pytest.approx((one["gain"], one["bias"]), rel=1e-4)


@pytest.mark.slow
def test_dpo_two_processes_equal_one(files, tmp_path):
    def args(out, accum):
        return ["dpo", "--model", str(files / "base"), "--data", str(files / "prefs.jsonl"),
                "--out", str(out), "train.batch_size=4", f"train.grad_accum={accum}",
                "train.max_steps=3", "train.lr=3e-3", "train.warmup_ratio=0",
                "train.log_every=1", "train.threads=1", "train.bf16=false", "train.device=cpu",
                "train.checkpoint_every=0", "val_fraction=0.1"]
    launch(args(tmp_path / "two", 1))
    run_cli(args(tmp_path / "one", 2))
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert len(list((tmp_path / "two").glob("ref_logps-*.pt"))) == 1


def ppo_args(files: Path, out: Path, algo: str) -> list[str]:
    """A PPO/GRPO/RLOO run of 2 rollouts of 4 prompts x 2 samples (LoRA, the reference the
    adapter-disabled policy), 2 epochs of one 4-row mini-batch in 2-row micro-batches."""
    return ["ppo", "--model", str(files / "base"), "--prompts", str(files / "prompts.jsonl"),
            "--out", str(out), f"ppo.algo={algo}", "ppo.steps=2",
            "ppo.rollout_batch_size=4", "ppo.samples_per_prompt=2", "ppo.mini_batch_size=4",
            "ppo.micro_batch_size=2", "ppo.ppo_epochs=2", "ppo.max_new_tokens=6",
            "ppo.kl_target=0.5", "ppo.normalize_reward=true", "ppo.threads=1",
            "ppo.device=cpu", "ppo.lr=1e-3"]


def assert_same_ppo_run(one: Path, two: Path) -> None:
    """The same per-iteration KL, reward, KL coefficient, losses and final weights."""
    for key in ("kl", "kl_coef", "reward", "reward_raw", "response_length", "policy_loss",
                "value_loss", "grad_norm", "entropy"):
        assert losses(two, key) == pytest.approx(losses(one, key), rel=1e-4, abs=1e-6), key
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], **WEIGHTS, msg=name)
    assert len(list((two / "checkpoints").iterdir())) == 1
    assert json.loads((two / "summary.json").read_text())["processes"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_ppo_two_processes_equal_one(files, tmp_path, algo):
    """Rollouts sharded (2 prompts x 2 samples per process), advantages whitened over the
    global batch, the adaptive KL controller on the global mean KL, reward normalization fitted
    on the whole first rollout: the same per-step KL, reward, KL coefficient and weights."""
    launch(ppo_args(files, tmp_path / "two", algo))
    run_cli(ppo_args(files, tmp_path / "one", algo))
    assert_same_ppo_run(tmp_path / "one", tmp_path / "two")
