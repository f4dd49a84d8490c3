"""GPU check: SFT, reward model, DPO and PPO through the one engine on a ~0.5B-parameter
random-init Llama shape, a fixed number of steps each; prints one JSON object with tokens/s,
peak GPU memory and model FLOPs utilization (MFU) per method. Exits 3 with a one-line message
when no CUDA device is visible. Run it through `benchmarks/gpu_check.sh`.

MFU = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s, with 6 N FLOPs per trained
token and 2 N per generated token (N = parameters; Kaplan et al., 2020; the PaLM paper's
appendix B definition, attention FLOPs left out, so MFU is slightly understated). Peak: looked up
from the device name, or GPU_PEAK_TFLOPS. TRL's SFT, reward and DPO trainers then run the same
work (`gpu_check_trl.py`; rows "trl_sft", "trl_rm", "trl_dpo"; `--no-trl` skips them).

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


def files(root: Path, n: int) -> dict[str, Path]:
    """World demonstrations, comparisons (the ideal response against its words shuffled) and
    prompts, and a ~0.5B random-init Llama with a tokenizer trained on the world corpus."""
    from coachlm.data.io import write_records
    from coachlm.data.schema import Comparison, PromptRecord, Response
    from coachlm.data.io import read_records
    from coachlm.models.load import save_pretrained
    from coachlm.models.presets import build_model
    from coachlm.models.tokenizer import train_tokenizer
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
    write_records(root / "prompts.jsonl", [PromptRecord(prompt=d.prompt) for d in demos])
    docs = paths["corpus"].read_text().split("\n\n")
    tok = train_tokenizer(docs[:20000], vocab_size=8192)
    model = build_model(SHAPE, tok, seed=0)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-trl", action="store_true", help="skip TRL's runs of the same work")
    ap.add_argument("--smoke", action="store_true",
                    help="a 2-step run of a tiny shape on the CPU: checks the script, measures nothing")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        SHAPE.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4)
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
    f = files(root, 64 if args.smoke else 4000)
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
    results = [measure(name, lambda: run(root / name), root / name, f["params"],
                       "generated_tokens" if name == "ppo" else None) for name, run in runs]
    if not args.no_trl:
        from gpu_check_trl import trl_rows

        results += trl_rows(root, f, args.steps, args.batch_size, "no" if args.smoke else "bf16",
                            peak_flops)
    print(json.dumps({"device": torch.cuda.get_device_name() if not args.smoke else "cpu (smoke)", "params": f["params"],
                      "shape": SHAPE, "steps": args.steps, "results": results}, indent=2))


if __name__ == "__main__":
    main()
