"""Each training command (pretrain, sft, rm, dpo, ppo) on the built-in world, in one process and
in two processes under `accelerate launch --multi_gpu --num_processes 2` (gloo on a CPU
machine), the same global batch: wall time of the whole command (launcher start included)
and peak RSS of every process (`/usr/bin/time -f %M` around each), as JSON.

    python benchmarks/processes_world.py --steps 20 --out /tmp/processes_world

Comparisons for rm/dpo: each demonstration's ideal response against its words shuffled (as
gpu_check.py); PPO is rewarded by the rubric. The base model is the 1-process pretrain run's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def world(out: Path, n: int) -> dict[str, Path]:
    from gpu_check import world_pairs

    paths, _ = world_pairs(out, n)
    return {"corpus": paths["corpus"], "sft": paths["sft"], "prefs": out / "prefs.jsonl",
            "prompts": paths["prompts_train"]}


def commands(f: dict[str, Path], base: Path, steps: int) -> dict[str, list[str]]:
    """(command, accumulation-dependent args) with grad_accum {accum} filled in per run."""
    train = [f"train.max_steps={steps}", "train.checkpoint_every=0", "train.threads=1",
             "train.device=cpu", "train.grad_accum={accum}"]
    return {
        "pretrain": ["pretrain", "--corpus", str(f["corpus"]), "preset=world-small",
                     "seq_len=256", "vocab_size=2048", "train.batch_size=8", *train],
        "sft": ["sft", "--model", str(base), "--data", str(f["sft"]), "train.batch_size=16", *train],
        "rm": ["rm", "--model", str(base), "--data", str(f["prefs"]), "epochs=null",
               "train.batch_size=8", *train],
        "dpo": ["dpo", "--model", str(base), "--data", str(f["prefs"]), "train.batch_size=8", *train],
        "ppo": ["ppo", "--model", str(base), "--prompts", str(f["prompts"]), "--reward", "rubric",
                f"ppo.steps={max(2, steps // 4)}", "ppo.rollout_batch_size=32",
                "ppo.mini_batch_size=16", "ppo.micro_batch_size=8", "ppo.max_new_tokens=48",
                "ppo.threads=1", "ppo.device=cpu", "ppo.checkpoint_every=0", "ppo.sample_every=0"],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name: str, args: list[str], out: Path, processes: int) -> dict:
    accum = 2 if processes == 1 else 1  # the same global batch
    args = [a.format(accum=accum) for a in args] + ["--out", str(out)]
    rss = out.parent / f"{out.name}.rss"
    rss.mkdir(parents=True, exist_ok=True)
    timed = ["/usr/bin/time", "-f", "%M", "-o", f"{rss}/rank${{LOCAL_RANK:-0}}", sys.executable, "-m",
             "coachlm.cli", *args]
    shell = ["sh", "-c", " ".join(f"'{a}'" if "$" not in a else f'"{a}"' for a in timed)]
    if processes > 1:
        port = str(_free_port())  # a fixed port may be taken by another launch on the machine
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", port, "--no_python", *shell]
    else:
        cmd = shell
    env = {**os.environ, "COACHLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{name} x{processes} failed:\n{done.stderr[-3000:]}")
    peaks = {p.name: round(int(p.read_text().split()[-1]) / 1024, 1) for p in sorted(rss.iterdir())}
    summary = json.loads((out / "summary.json").read_text())
    last = summary.get("final_metrics", {})
    return {"processes": processes, "wall_s": round(wall, 1), "peak_rss_mb": peaks,
            "train_s": summary.get("seconds"),
            "final_loss": last.get("loss", last.get("reward"))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default="pretrain,sft,rm,dpo,ppo")
    a = ap.parse_args()
    f = world(a.out, 512)
    base = a.out / "pretrain-1" / "final"
    cmds = commands(f, base, a.steps)
    results = {}
    for name in ["pretrain", *[c for c in a.only.split(",") if c != "pretrain"]]:  # base first
        results[name] = [run(name, cmds[name], a.out / f"{name}-{n}", n) for n in (1, 2)]
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    print(json.dumps({"steps": a.steps, "results": results}, indent=2))


if __name__ == "__main__":
    main()
