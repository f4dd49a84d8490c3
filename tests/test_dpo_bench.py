"""The DPO benchmark's reporting (benchmarks/dpo_vs_trl.py, mfu.py, peak.py): both sides' final
metrics cover the same steps, and MFU per CPU second is over the peak per CPU second; and
compile_sft.py's split of the first steps' CPU into compiling and training."""

from __future__ import annotations

import sys

import pytest

from models_fixtures import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import dpo_vs_trl
    import mfu
    import peak
finally:
    sys.path.remove(str(REPO / "benchmarks"))


def test_both_sides_report_the_same_last_five_steps():
    # A loss falling by 1 per step: coachlm logs each step, TRL each 5 steps their mean.
    ours = [{"step": s, "loss": 21.0 - s} for s in range(1, 21)]
    trl = [{"loss": sum(21.0 - s for s in range(k - 4, k + 1)) / 5} for k in (5, 10, 15, 20)]
    got_ours = dpo_vs_trl._final(ours, {"loss": "loss"}, last=5)["loss"]
    got_trl = dpo_vs_trl._final(trl, {"loss": "loss"}, last=1)["loss"]
    assert got_ours == got_trl == pytest.approx(3.0)  # steps 16-20 on both sides


def test_mfu_per_cpu_second_divides_by_the_cpu_second_peak():
    out = mfu.utilization(1_000_000, 100.0, peak=10.0, tokens_per_cpu_s=200.0, cpu_peak=40.0)
    assert out["mfu"] == pytest.approx(6 * 1e6 * 100 / 1e9 / 10)
    assert out["mfu_per_cpu_s"] == pytest.approx(6 * 1e6 * 200 / 1e9 / 40)
    # Without a CPU-second peak it falls back to the wall-clock one (older peak.json files).
    assert mfu.utilization(1_000_000, 100.0, 10.0, tokens_per_cpu_s=200.0)["mfu_per_cpu_s"] \
        == pytest.approx(6 * 1e6 * 200 / 1e9 / 10)


def test_peak_is_measured_per_wall_and_per_cpu_second(tmp_path):
    got = peak.measure(size=64, rounds=1, min_seconds=0.01, precisions=("fp32",))
    assert {"fp32_gflops", "fp32_gflops_per_cpu_s"} <= set(got)
    assert peak.matmul_gflops("fp32", 64, 1, 0.01, per_cpu_second=True) > 0
    path = tmp_path / "peak.json"
    path.write_text('{"bf16_gflops": 100.0}')  # a file from before the CPU-second peak
    assert mfu.peak_gflops(path, "bf16", per_cpu_second=True) == 100.0


def test_compile_benchmark_charges_the_first_steps_excess_to_compiling():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import compile_sft
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    # Steps of 10, 2, 1, 1 CPU s: steady 1 s (median of the second half), so the 4 steps'
    # 14 s hold 10 s of compiling; eager at 1.5 s per step saves 0.5 s a step: 20 steps to repay.
    got = compile_sft.summarize({"step_cpu": [10.0, 2.0, 1.0, 1.0], "tokens": 700, "loss": 2.0},
                                eager_step=1.5)
    assert got == {"step_cpu_s": 1.0, "first_step_cpu_s": 10.0, "total_cpu_s": 14.0,
                   "compile_cpu_s": 10.0, "tokens_per_cpu_s": 50.0, "final_loss": 2.0,
                   "break_even_steps": 20}
