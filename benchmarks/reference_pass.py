"""Benchmark: the reference pass of full fine-tuning (no LoRA) under bf16 autocast, with the
frozen reference as an fp32 copy (autocast casts its Linear weights on every forward, as
before session 7) and as `ppo_steps.frozen_reference` (Linear weights cast once to bf16).
Both in one process, alternating, on the same rows: CPU seconds per pass (the update's
micro-batches of one rollout), and whether the logprobs agree bit for bit.

    python benchmarks/reference_pass.py --preset world-25m --threads 1

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from coachlm.engine.accel import set_threads
from coachlm.models.attention import use_fp32_attention
from coachlm.models.presets import build_model, preset_vocab_size
from coachlm.models.tokenizer import train_tokenizer
from coachlm.rollout.experience import policy_forward
from coachlm.trainers.ppo_steps import frozen_reference


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="world-25m")
    p.add_argument("--rows", type=int, default=32, help="episodes per rollout")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=30)
    p.add_argument("--response-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    tok = train_tokenizer([f"sample text {i} for the tokenizer" for i in range(200)],
                          preset_vocab_size(args.preset))
    model = build_model(args.preset, tok, seed=0)
    use_fp32_attention(model)  # as `train_ppo` sets it
    refs = {"fp32_copy_autocast": frozen_reference(model),
            "linear_bf16_once": frozen_reference(model, torch.bfloat16)}
    width = args.prompt_tokens + args.response_tokens
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(8, len(tok), (args.rows, width), generator=g)  # (B, P + N)
    mask = torch.ones_like(seqs)
    action = torch.ones(args.rows, args.response_tokens, dtype=torch.bool)  # (B, N)
    cpu: dict[str, list[float]] = {k: [] for k in refs}
    out: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats + 1):  # the first round warms up, left out
        for name, ref in refs.items():
            c0 = time.process_time()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                lps = [policy_forward(ref, None, seqs[i:i + args.micro_batch_size],
                                      mask[i:i + args.micro_batch_size],
                                      action[i:i + args.micro_batch_size], 1.0)[0]
                       for i in range(0, args.rows, args.micro_batch_size)]
            cpu[name].append(time.process_time() - c0)
            out[name] = torch.cat(lps)
    med = {k: statistics.median(v[1:]) for k, v in cpu.items()}
    a, b = med["fp32_copy_autocast"], med["linear_bf16_once"]
    return {"setup": {"preset": args.preset, "rows": args.rows, "width": width,
                      "micro_batch_size": args.micro_batch_size, "threads": threads,
                      "repeats": args.repeats,
                      "parameters": sum(p.numel() for p in model.parameters())},
            "cpu_s_per_pass": {k: round(v, 4) for k, v in med.items()},
            "cpu_s_runs": {k: [round(x, 4) for x in v[1:]] for k, v in cpu.items()},
            "speedup_cpu": round(a / b, 3),
            "reference_bytes": {k: sum(t.numel() * t.element_size()
                                       for t in r.state_dict().values())
                                for k, r in refs.items()},
            "logprobs_equal": bool(torch.equal(out["fp32_copy_autocast"],
                                               out["linear_bf16_once"]))}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
