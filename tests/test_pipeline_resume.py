"""kill -9 during reward-model training: running the same pipeline again reuses every finished
stage, resumes the reward model from its last checkpoint, and ends with the same weights as an
uninterrupted run (the training loop resumes exactly: model, optimizer, scheduler, RNG, data)."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from pipeline_fixtures import TINY
from test_cli import ENV

from coachlm.demo import quickstart_path
from coachlm.pipeline import load_pipeline, run_pipeline

SLOW_RM = ["rm.epochs=null", "rm.train.max_steps=60", "rm.train.checkpoint_every=4",
           "rm.train.batch_size=2"]


def _weights(model_dir) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_kill_9_during_reward_model_training_resumes_to_the_same_model(tmp_path, capfd):
    spec = yaml.safe_load(quickstart_path().read_text())
    for stage in ("ppo", "eval", "report"):
        del spec["stages"][stage]
    path = tmp_path / "to_rm.yaml"
    path.write_text(yaml.safe_dump(spec))
    overrides = [o for o in TINY if o.split(".")[0] not in ("ppo", "eval")] + SLOW_RM
    out = tmp_path / "run"
    first = run_pipeline(load_pipeline(path, overrides), out)
    uninterrupted = _weights(out / "rm" / "final")
    proc = subprocess.Popen([sys.executable, "-m", "coachlm.cli", "run", str(path), "--out",
                             str(out), "--from", "rm", *overrides], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        start = time.monotonic()
        # running.json: the forced re-run has cleared the old directory and started training
        while not ((out / "rm" / "running.json").is_file()
                   and list((out / "rm" / "checkpoints").glob("step-*"))):
            assert proc.poll() is None and time.monotonic() - start < 600
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 mid-training
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "rm" / "stage.json").exists() and not (out / "rm" / "final").exists()
    capfd.readouterr()
    again = run_pipeline(load_pipeline(path, overrides), out)
    err = capfd.readouterr().err
    for stage in ("world", "pretrain", "sft", "sample", "feedback"):
        assert f"{stage}: cached" in err and again[stage]["key"] == first[stage]["key"]
    assert "resuming the interrupted run" in err
    assert _weights(out / "rm" / "final") == uninterrupted
