"""GPU check: SFT, reward model, DPO and PPO through the one engine on a ~0.5B-parameter
random-init Llama shape, a fixed number of steps each; prints one JSON object with tokens/s,
peak GPU memory and model FLOPs utilization (MFU) per method. Exits 3 with a one-line message
when no CUDA device is visible. Run it through `benchmarks/gpu_check.sh`.

MFU = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s, with 6 N FLOPs per trained
token and 2 N per generated token (N = parameters; Kaplan et al., 2020; the PaLM paper's
appendix B definition, attention FLOPs left out, so MFU is slightly understated). Peak: looked up
from the device name, or GPU_PEAK_TFLOPS. TRL's SFT, reward and DPO trainers then run the same
work (`gpu_check_trl.py`; rows "trl_sft", "trl_rm", "trl_dpo"; `--no-trl` skips them). "rollout": the
rollout speed of the built-in sampler and of vLLM (when installed) on the same weights.

    python benchmarks/gpu_check.py --steps 20 --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import torch

# Dense bf16 peak TFLOP/s (vendor data sheets, without sparsity).
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0,
         "RTX 4090": 165.0, "A6000": 155.0}
SHAPE = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=32, num_attention_heads=16,
             num_key_value_heads=16, max_position_embeddings=1024, tie_word_embeddings=False)


def peak_flops() -> float:
    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"]) * 1e12
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAKS.items() if k in name), float("nan")) * 1e12


def world_pairs(root: Path, n: int) -> tuple[dict[str, Path], list]:
    """The built-in world under root/world, its first n demonstrations, and root/prefs.jsonl:
    each demonstration's ideal response against its words shuffled (a clear preference)."""
    from coachlm.data.io import read_records, write_records
    from coachlm.data.schema import Comparison, Response
    from coachlm.world.build import WorldConfig, build_world

    paths = build_world(root / "world", WorldConfig())
    demos = list(read_records(paths["sft"], kinds=["demonstration"]))[:n]
    rng = random.Random(0)
    comparisons = []
    for d in demos:
        words = d.response.text.split()
        rng.shuffle(words)
        comparisons.append(Comparison(prompt=d.prompt, a=d.response, b=Response(" ".join(words)),
                                      choice="a"))
    write_records(root / "prefs.jsonl", comparisons)
    return paths, demos


def files(root: Path, n: int, preset: str | None = None) -> dict[str, Path]:
    """World demonstrations, comparisons (the ideal response against its words shuffled) and
    prompts, and a random-init Llama (the ~0.5B SHAPE, or a named preset with its vocabulary
    size) with a tokenizer trained on the world corpus."""
    from coachlm.data.io import write_records
    from coachlm.data.schema import PromptRecord
    from coachlm.models.load import save_pretrained
    from coachlm.models.presets import build_model, preset_vocab_size
    from coachlm.models.tokenizer import train_tokenizer

    paths, demos = world_pairs(root, n)
    write_records(root / "prompts.jsonl", [PromptRecord(prompt=d.prompt) for d in demos])
    docs = paths["corpus"].read_text().split("\n\n")
    tok = train_tokenizer(docs[:20000], vocab_size=preset_vocab_size(preset) if preset else 8192)
    model = build_model(preset or SHAPE, tok, seed=0)
    save_pretrained(model, tok, root / "base")
    return {"base": root / "base", "sft": paths["sft"], "prefs": root / "prefs.jsonl",
            "prompts": root / "prompts.jsonl", "params": sum(p.numel() for p in model.parameters())}


def measure(name: str, run, out: Path, params: int, generated_key: str | None = None) -> dict:
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    run()
    s = json.loads((out / "summary.json").read_text())
    trained = s.get("trained_tokens", s["tokens"])
    generated = s.get(generated_key, 0) if generated_key else 0
    flops = (6 * trained + 2 * generated) * params / s["seconds"]
    return {"method": name, "tokens_per_s": s["tokens_per_s"], "seconds": s["seconds"],
            "trained_tokens": trained, "generated_tokens": generated,
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
            "mfu": round(flops / peak_flops(), 4) if gpu else None,
            "precision": s.get("precision", "bf16" if s.get("bf16") else "no")}


def rollout_speed(f: dict, device: str, prompts: int, new_tokens: int) -> dict:
    """Rollout tokens/s of the built-in sampler and, where vLLM is importable, of the vLLM
    engine (`rollout.vllm_engine`) on the same prompts and weights (bf16 on the GPU; sampling
    at T = 1 as RL samples; one warm-up call, then one timed call each), and whether their
    greedy responses agree row for row."""
    import importlib.util
    import time

    from coachlm.data.chat import encode_prompt
    from coachlm.data.io import read_prompts
    from coachlm.models.load import load_model, load_tokenizer
    from coachlm.rollout.sampling import SamplingConfig, generate

    tok = load_tokenizer(f["base"])
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = load_model(f["base"], dtype=dtype, tokenizer=tok).to(device).eval()
    ids = [encode_prompt(tok, r.prompt) for r in read_prompts(f["prompts"])[:prompts]]
    rl = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, batch_size=len(ids))
    greedy = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, batch_size=len(ids))

    def rate(sample) -> float:
        sample(rl)
        start = time.perf_counter()
        return round(sample(rl).num_tokens / (time.perf_counter() - start), 1)

    out = {"prompts": len(ids), "max_new_tokens": new_tokens,
           "builtin_tokens_per_s": rate(lambda c: generate(model, tok, ids, c))}
    if importlib.util.find_spec("vllm") is None:
        return {**out, "vllm": "not installed (pip install 'coachlm[vllm]')"}
    from coachlm.rollout.vllm_engine import VLLMGenerator

    engine = VLLMGenerator(model, tok, dtype="fp32" if device == "cpu" else "bf16",
                           kv_cache_mb=256 if device == "cpu" else 8192)
    try:
        same = [a == b for a, b in zip(generate(model, tok, ids, greedy).response_ids,
                                       engine(ids, greedy).response_ids)]
        out.update(vllm_tokens_per_s=rate(engine), greedy_rows_equal=sum(same) / len(same))
    finally:
        engine.close()
    return out


def guarded(name: str, fn, many: bool = False):
    """fn()'s result, or {"method": name, "error": ...} (in a list with `many`) with the
    traceback on stderr."""
    import traceback

    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (a benchmark row, not control flow)
        traceback.print_exc()
        row = {"method": name, "error": f"{type(e).__name__}: {e}"[:500]}
        return [row] if many else row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--preset", default=None,
                    help="a model preset (e.g. world-25m) instead of the ~0.5B shape")
    ap.add_argument("--no-trl", action="store_true", help="skip TRL's runs of the same work")
    ap.add_argument("--smoke", action="store_true",
                    help="a 2-step run of a tiny shape on the CPU: checks the script, measures nothing")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        # head size 32: the smallest vLLM's CPU attention runs
        SHAPE.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=1, num_key_value_heads=1)
        args.steps, args.batch_size = 2, 4
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; nothing to measure", file=sys.stderr)
        sys.exit(3)
    from coachlm import config
    from coachlm.trainers.dpo import DPOConfig, run_dpo
    from coachlm.trainers.ppo import PPORunConfig, run_ppo
    from coachlm.trainers.reward import RMConfig, run_rm
    from coachlm.trainers.sft import SFTConfig, run_sft

    root = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    f = files(root, 64 if args.smoke else 4000, None if args.smoke else args.preset)
    train = {"max_steps": args.steps, "batch_size": args.batch_size, "device": device,
             "bf16": not args.smoke, "checkpoint_every": 0, "log_every": 5, "warmup_steps": 0}
    common = {"model": str(f["base"]), "val_fraction": 0.0, "epochs": None, "train": train}
    runs = [
        ("sft", lambda o: run_sft(config.from_dict(SFTConfig, {**common, "data": [str(f["sft"])],
                                                               "out": str(o)}))),
        ("rm", lambda o: run_rm(config.from_dict(RMConfig, {**common, "data": [str(f["prefs"])],
                                                            "out": str(o), "normalize_max": 64}))),
        ("dpo", lambda o: run_dpo(config.from_dict(DPOConfig, {**common, "data": [str(f["prefs"])],
                                                               "out": str(o)}))),
        ("ppo", lambda o: run_ppo(config.from_dict(PPORunConfig, {
            "model": str(f["base"]), "prompts": str(f["prompts"]), "out": str(o),
            "ppo": {"steps": max(2, args.steps // 4), "rollout_batch_size": 8 if args.smoke else 64,
                    "samples_per_prompt": 2, "mini_batch_size": 16, "micro_batch_size": 8,
                    "ppo_epochs": 2, "max_new_tokens": 8 if args.smoke else 64, "device": device,
                    "bf16": not args.smoke,
                    "sample_every": 0}}))),
    ]
    # A failing method is one row with its error: the other rows still come back (a device
    # lease is short, and a crash would lose them all).
    results = [guarded(name, lambda: measure(name, lambda: run(root / name), root / name,
                                             f["params"],
                                             "generated_tokens" if name == "ppo" else None))
               for name, run in runs]
    if not args.no_trl:
        from gpu_check_trl import trl_rows

        results += guarded("trl", lambda: trl_rows(root, f, args.steps, args.batch_size,
                                                   "no" if args.smoke else "bf16", peak_flops),
                           many=True)
    rollout = guarded("rollout", lambda: rollout_speed(f, device, 8 if args.smoke else 256,
                                                       8 if args.smoke else 128))
    print(json.dumps({"device": torch.cuda.get_device_name() if not args.smoke else "cpu (smoke)", "params": f["params"],
                      "shape": args.preset or SHAPE, "steps": args.steps, "results": results,
                      "rollout": rollout}, indent=2))


if __name__ == "__main__":
    main()
