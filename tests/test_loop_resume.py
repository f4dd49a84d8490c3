"""Exact resume: a run killed with SIGKILL and resumed from its checkpoint ends with the same
weights, bit for bit, as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from coachlm.engine.checkpoint import list_checkpoints
from trainers_fixtures import resume_run

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_killed_run_resumes_exactly(tmp_path):
    reference = resume_run(tmp_path / "straight")

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
           "COACHLM_NO_PROGRESS": "1"}
    code = f"from trainers_fixtures import resume_run; resume_run({str(out)!r}, kill_at=5)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in list_checkpoints(out)] == ["step-000003"]  # steps 4 and 5 are lost
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 5

    resumed = resume_run(out, resume=True)
    _assert_same(reference, resumed)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # the lost steps' lines were replaced, not duplicated


def test_interrupted_lora_run_resumes_exactly(tmp_path):
    reference = resume_run(tmp_path / "straight", lora=True)
    with pytest.raises(KeyboardInterrupt):
        resume_run(tmp_path / "crashed", lora=True, crash_at=7)
    ckpt = list_checkpoints(tmp_path / "crashed")[-1]
    assert ckpt.name == "step-000006"
    saved = [k for k in FileSystemReader(ckpt / "weights").read_metadata().state_dict_metadata
             if k.startswith("model.")]
    assert saved and all("lora_" in name for name in saved)  # only the adapter is stored
    _assert_same(reference, resume_run(tmp_path / "crashed", lora=True, resume=True))
