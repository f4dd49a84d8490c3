"""Operators per generated token in coachlm's KV-cache sampler (issue 15: on a busy machine the
decode loop's many small per-token operators are what two threads fight over).

A freshly initialized preset Llama (its rows rarely stop, so every step runs the whole batch)
samples `--rows` responses of `--new-tokens` tokens under `torch.profiler`; every model forward
is marked, so the operators the sampler itself dispatches per decode step (sampling, stop
checks, bookkeeping: outside the forwards) are counted apart from the model's. Also prints the
CPU seconds per generated token, and a digest of the greedy and the sampled output, so that a
change to the loop can be checked to give the same tokens.

    python benchmarks/decode_ops.py --preset world-small --rows 32 --new-tokens 32
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from coachlm.models.presets import build_model, preset_vocab_size
from coachlm.models.tokenizer import train_tokenizer
from coachlm.rollout.sampling import Generation, SamplingConfig, generate


@contextmanager
def marked(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, every forward of `model` runs inside a profiler range named "forward"."""
    plain = model.forward

    @functools.wraps(plain)  # the same signature: the sampler passes the cache by its name
    def forward(*args, **kwargs):
        with record_function("forward"):
            return plain(*args, **kwargs)

    model.forward = forward
    try:
        yield
    finally:
        del model.forward


def count_ops(prof: profile) -> tuple[int, int]:
    """(aten operators dispatched outside any forward, all aten operators), top-level only."""
    outside = total = 0
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        parents, p = [], e.cpu_parent
        while p is not None:
            parents.append(p.name)
            p = p.cpu_parent
        if any(n.startswith("aten::") for n in parents):
            continue  # counted with the operator that called it
        total += 1
        outside += "forward" not in parents
    return outside, total


def profiled_generate(model: torch.nn.Module, tok, prompts, cfg: SamplingConfig
                      ) -> tuple[Generation, int, int]:
    """`generate` under the profiler: (generation, sampler operators, all operators)."""
    with marked(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        gen = generate(model, tok, prompts, cfg)
    return (gen, *count_ops(prof))


def digest(gen) -> str:
    return hashlib.sha256(json.dumps(gen.response_ids).encode()).hexdigest()[:16]


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="world-small")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    texts = [f"request {i}: write {i % 7} lines about item {i * 13 % 29}" for i in range(200)]
    tok = train_tokenizer(texts, preset_vocab_size(args.preset))
    model = build_model(args.preset, tok, seed=0)
    prompts = [tok.encode(texts[i])[: 4 + i % 9] for i in range(args.rows)]
    out: dict = {"setup": vars(args)}
    for name, temperature in (("greedy", 0.0), ("sampled", 1.0)):
        cfg = SamplingConfig(max_new_tokens=args.new_tokens, temperature=temperature,
                             batch_size=args.rows, stop_token_ids=(tok.pad_token_id + 10_000,))
        generate(model, tok, prompts, cfg)  # warm-up
        c0 = time.process_time()
        gen, outside, total = profiled_generate(model, tok, prompts, cfg)
        cpu = time.process_time() - c0
        c1 = time.process_time()
        gen = generate(model, tok, prompts, cfg)
        plain_cpu = time.process_time() - c1
        steps = max(len(r) for r in gen.response_ids)
        out[name] = {"tokens": gen.num_tokens, "decode_steps": steps,
                     "sampler_ops_per_step": round(outside / steps, 1),
                     "all_ops_per_step": round(total / steps, 1),
                     "cpu_ms_per_token": round(1e3 * plain_cpu / gen.num_tokens, 3),
                     "profiled_cpu_s": round(cpu, 2), "digest": digest(gen)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
