"""CPU time of a Llama forward+backward with and without `coachlm.models.fast_ops` (issue 15).

The same randomly initialized model (a preset's shape, fp32 weights, "sdpa_fp32" attention as
training uses) runs forward+backward on the same token batch, both variants alternating in one
process, so that the ratio holds on a busy machine. Reports CPU ms per step (median of `--steps`)
and operator calls per step, for fp32 and bf16 autocast, at each `--lengths` (rows x tokens).

    python benchmarks/fast_ops.py --preset world-25m --batch-size 8 --lengths 50 128 --threads 1

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM

from coachlm.models.attention import use_fp32_attention
from coachlm.models.fast_ops import use_fast_ops
from coachlm.models.presets import preset_config, preset_vocab_size


def build(preset: str) -> torch.nn.Module:
    shape = preset_config(preset)
    shape.pop("rope_theta", None)
    config = LlamaConfig(vocab_size=preset_vocab_size(preset), attn_implementation="sdpa", **shape)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    use_fp32_attention(model)
    return model


def step(model: torch.nn.Module, ids: torch.Tensor, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten()).backward()
    model.zero_grad(set_to_none=True)


def op_calls(model: torch.nn.Module, ids: torch.Tensor, bf16: bool) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(model, ids, bf16)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def measure(models: dict[str, torch.nn.Module], ids: torch.Tensor, bf16: bool,
            steps: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        step(model, ids, bf16)
    for _ in range(steps):
        for name, model in models.items():
            t = time.process_time()
            step(model, ids, bf16)
            times[name].append(1e3 * (time.process_time() - t))
    out: dict[str, Any] = {f"{name}_cpu_ms": round(statistics.median(ts), 1)
                           for name, ts in times.items()}
    out.update({f"{name}_aten_calls": op_calls(m, ids, bf16) for name, m in models.items()})
    out["speedup"] = round(out["plain_cpu_ms"] / out["fast_cpu_ms"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="world-25m")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lengths", type=int, nargs="+", default=[50, 128])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plain = build(args.preset)
    fast = copy.deepcopy(plain)
    use_fast_ops(fast)
    models = {"plain": plain, "fast": fast}
    results = []
    for length in args.lengths:
        ids = torch.randint(0, plain.config.vocab_size, (args.batch_size, length),
                            generator=torch.Generator().manual_seed(length))
        for bf16 in (False, True):
            results.append({"tokens": f"{args.batch_size}x{length}",
                            "precision": "bf16" if bf16 else "fp32",
                            **measure(models, ids, bf16, args.steps)})
    print(json.dumps({"preset": args.preset, "threads": args.threads, "cpu_ms": "median per "
                      "forward+backward, process CPU time", "results": results}, indent=1))


if __name__ == "__main__":
    main()
