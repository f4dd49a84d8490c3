"""Seconds per label of each feedback source on the same world pairs (prints JSON).

    python benchmarks/labelers_speed.py [--pairs 64] [--model DIR] [--threads 1]

Sources: the simulated labelers (`labelers.SimulatedLabelers`, comparisons; timed warm, after
the once-per-process noise calibration), the AI labeler (default constitution) with
its feedback model in process (`backends.LocalModel`), and the same AI labeler through
`coachlm serve` on 127.0.0.1 (`backends.OpenAIModel`, completions with echo logprobs), each in
both orders (two questions per label). The feedback model defaults to a freshly initialized
world-small model (the demo's size, ~2M parameters) with a world tokenizer, so the numbers are
of the plumbing, not of a good judge; `--model` takes any local causal LM (e.g. a demo SFT
model). The served and in-process probabilities are checked to agree (max |diff| reported).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pairs(n: int):
    from coachlm.data.schema import Sample, as_prompt
    from coachlm.labelers import SampleGroup
    from coachlm.world import make_pairs

    return [SampleGroup(as_prompt(p), (Sample(prompt=as_prompt(p), response=a),
                                       Sample(prompt=as_prompt(p), response=b)))
            for p, a, b in make_pairs(n, seed=7)]


def _model_dir(root: Path) -> Path:
    from coachlm.models.load import save_pretrained
    from coachlm.models.presets import build_model
    from coachlm.models.tokenizer import train_tokenizer
    from coachlm.world import generate_corpus

    tok = train_tokenizer(generate_corpus(300_000, seed=0), vocab_size=2048)
    # 512 positions: the default constitution's questions with two world responses run past 256.
    model = build_model({"preset": "world-small", "max_position_embeddings": 512}, tok, seed=0)
    save_pretrained(model, tok, root / "fm")
    return root / "fm"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _serve(model: Path, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "coachlm.cli", "serve", str(model), "--port",
                             str(port), "--threads", str(threads)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            time.sleep(0.5)
    raise TimeoutError("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()

    import torch

    from coachlm.constitution import load_constitution
    from coachlm.labelers import SimulatedConfig, SimulatedLabelers
    from coachlm.labelers.ai import AILabeler
    from coachlm.labelers.backends import EndpointConfig, LocalModel, OpenAIModel

    torch.set_num_threads(args.threads)
    groups = _pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or _model_dir(Path(tmp))
        simulated = SimulatedLabelers(SimulatedConfig(kind="comparisons"))
        simulated.label(groups[:2])  # once: the noise calibration is cached per process
        sim, t_sim = _timed(lambda: simulated.label(groups))
        principles = load_constitution().principles
        local = AILabeler(LocalModel(model), principles)
        ai, t_local = _timed(lambda: local.label(groups))
        proc = _serve(model, args.port, args.threads)
        try:
            remote = AILabeler(OpenAIModel(EndpointConfig(
                base_url=f"http://127.0.0.1:{args.port}/v1", concurrency=1)), principles)
            served, t_served = _timed(lambda: remote.label(groups))
        finally:
            proc.terminate()
            proc.wait(30)
    diff = max(abs(x.meta["probability"] - y.meta["probability"]) for x, y in zip(ai, served))
    n = len(groups)
    print(json.dumps({
        "pairs": n, "threads": args.threads, "model": str(args.model or "world-small (random init)"),
        "seconds_per_label": {"simulated": t_sim / len(sim), "ai_in_process": t_local / n,
                              "ai_served": t_served / n},
        "served_vs_in_process_max_abs_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
