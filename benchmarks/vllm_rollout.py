"""Rollout engines side by side: vLLM, the built-in KV-cache sampler and transformers'
`generate`, on the same prompts and weights. Prints one JSON object per model: tokens/s of each
(one warm-up call first, then the median of `--repeats` timed calls; sampling at T = 1 with
top-k/top-p off, as RL samples) and the agreement of vLLM with the built-in sampler (greedy
responses equal row for row; max and mean |logprob difference| over the greedy tokens).

Run it with the vLLM environment's python (`make vllm-env`), from the repository root:

    .venv-vllm/bin/python benchmarks/vllm_rollout.py --model runs/demo/sft/final \\
        --prompts runs/demo/world/prompts_heldout.jsonl --preset world-25m

`--model`: a trained model directory (the world model); `--preset`: also a random-init preset
with a 512-entry tokenizer trained on the prompts. Both in fp32 on CPU, one thread for the
built-in sampler and `generate` (`--threads`); vLLM's CPU worker sets its own threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from coachlm.data.chat import encode_prompt
from coachlm.data.io import read_prompts
from coachlm.rollout.sampling import Generation, SamplingConfig, fit_prompts, generate
from coachlm.rollout.vllm_engine import VLLMGenerator


def timed(fn: Callable[[], int], repeats: int) -> float:
    """tokens/s: one warm-up call, then the median of `repeats` timed calls."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def hf_generate(model: Any, tok: Any, prompts: list[list[int]], new: int) -> int:
    """transformers' `generate` (sampling, KV cache) on left-padded prompts; tokens generated
    up to each row's EOS."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                             do_sample=True, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
    tokens = 0
    for row in out[:, width:].tolist():
        tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return tokens


def agreement(ref: Generation, got: Generation) -> dict[str, float]:
    diffs = [abs(a - b) for r, g in zip(ref.logprobs, got.logprobs) for a, b in zip(r, g)]
    same = [a == b for a, b in zip(ref.response_ids, got.response_ids)]
    return {"greedy_rows_equal": sum(same) / len(same),
            "logprob_max_abs_diff": max(diffs, default=0.0),
            "logprob_mean_abs_diff": sum(diffs) / max(len(diffs), 1)}


def bench(name: str, model: Any, tok: Any, prompt_ids: list[list[int]], args: Any) -> dict:
    model.eval()
    prompts, _ = fit_prompts(model, tok, prompt_ids, args.new_tokens)
    rl = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, batch_size=len(prompts))
    greedy = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.0,
                            batch_size=len(prompts))
    start = time.perf_counter()
    engine = VLLMGenerator(model, tok)
    result: dict[str, Any] = {"model": name, "params": sum(p.numel() for p in model.parameters()),
                              "prompts": len(prompts), "max_new_tokens": args.new_tokens,
                              "vllm_start_s": round(time.perf_counter() - start, 1)}
    try:
        result.update(agreement(generate(model, tok, prompts, greedy), engine(prompts, greedy)))
        result["vllm_tokens_per_s"] = timed(lambda: engine(prompts, rl).num_tokens, args.repeats)
    finally:
        engine.close()
    result["builtin_tokens_per_s"] = timed(lambda: generate(model, tok, prompts, rl).num_tokens,
                                           args.repeats)
    result["hf_generate_tokens_per_s"] = timed(
        lambda: hf_generate(model, tok, prompts, args.new_tokens), args.repeats)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a trained model directory (the world model)")
    ap.add_argument("--prompts", type=Path, required=True, help="prompt records")
    ap.add_argument("--preset", default=None, help="also a random-init preset, e.g. world-25m")
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from coachlm.models.load import load_model, load_tokenizer
    from coachlm.models.presets import build_model, preset_vocab_size
    from coachlm.models.tokenizer import train_tokenizer

    records = read_prompts(args.prompts)[: args.n_prompts]
    runs = []
    if args.model is not None:
        tok = load_tokenizer(args.model)
        model = load_model(args.model, dtype=torch.float32, tokenizer=tok)
        runs.append((str(args.model), model, tok))
    if args.preset is not None:
        texts = [m.content for r in read_prompts(args.prompts) for m in r.prompt]  # all turns
        tok = train_tokenizer(texts, vocab_size=preset_vocab_size(args.preset))
        runs.append((args.preset, build_model(args.preset, tok, seed=0), tok))
    for name, model, tok in runs:
        ids = [encode_prompt(tok, r.prompt) for r in records]
        print(json.dumps(bench(name, model, tok, ids, args)), flush=True)


if __name__ == "__main__":  # vLLM may spawn an engine process
    main()
