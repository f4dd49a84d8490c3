"""A prepared run keeps the memory a step frees: the next step's tensors reuse it without
page faults (`engine.accel.keep_freed_memory`)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In a fresh process: mallopt is process-wide, and other tests in this one may have set it.
SCRIPT = """
import json, resource, torch
from coachlm.engine.accel import Engine
from coachlm.engine.loop import prepare
model = torch.nn.Linear(4, 4)
prepare(Engine("cpu", bf16=False), model, lambda m, b: None, torch.optim.SGD(model.parameters(), lr=0.1))

def step():  # a step's worth of 2 MiB activations, allocated, written and freed
    xs = [torch.empty(512 * 1024).fill_(1.0) for _ in range(40)]
    del xs

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                  "pages": 40 * 2 * 1024 * 1024 // resource.getpagesize()}))
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt") or sys.platform != "linux",
                    reason="glibc's malloc tuning")
def test_second_step_reuses_freed_memory_without_page_faults():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # glibc's defaults hand the freed 80 MiB back to the kernel: a fault for every page again
    assert got["faults"] < got["pages"] / 4, got
