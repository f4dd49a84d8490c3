"""Peak resident memory of the demo's stages in one process, next to the model's own bytes
(parameters, gradients, AdamW's two moments), issue 15: world -> pretrain -> SFT, or with
`--demo` the whole `coachlm demo` pipeline (world ... PPO -> eval), each stage monitored.

A thread samples this process's RSS every 20 ms; each stage reports the RSS it started and ended
with and the peak in between. Run it with the stage settings of interest, e.g. the demo's:

    python benchmarks/memory_stages.py --pretrain-steps 20 --sft-steps 20
    python benchmarks/memory_stages.py --demo pretrain.train.max_steps=40 ppo.ppo.steps=4
    MALLOC_ARENA_MAX=2 python benchmarks/memory_stages.py ...   # glibc arenas capped
    python benchmarks/memory_stages.py --mmap-threshold 1048576   # see coachlm.memory
    python benchmarks/memory_stages.py --sft-steps 900 --pack-width-multiple 1  # tight packing

Standalone runs also report the SFT loop's CPU seconds, its final losses, and the SFT batches'
distinct shapes and padded share (the same batches replayed without a model).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

MB = 2 ** 20


class RSSMonitor:
    """This process's RSS, sampled by a daemon thread; `stage()` records start/peak/end."""

    def __init__(self, interval: float = 0.02) -> None:
        self.proc, self.peak, self.stages = psutil.Process(), 0, {}
        self.interval = interval
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.proc.memory_info().rss
        self.peak = start
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        end = self.proc.memory_info().rss
        self.stages[name] = {"start_mb": round(start / MB), "peak_mb": round(max(self.peak, end) / MB),
                             "end_mb": round(end / MB), "seconds": round(time.perf_counter() - t0, 1),
                             "cpu_s": round(time.process_time() - c0, 1)}


def model_bytes(path: Path) -> dict[str, float]:
    """Parameters, gradients and AdamW moments of the model saved at `path` (a policy or a
    reward model: the tensors of its safetensors files), fp32, in MB."""
    from safetensors import safe_open

    n = 0
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            n += sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    return {"parameters": n, "params_mb": round(4 * n / MB, 1),
            "params_grads_adam_mb": round(16 * n / MB, 1)}


def run_demo_stages(mon: RSSMonitor, overrides: list[str]) -> dict:
    """`coachlm demo` (the quickstart pipeline) with `overrides`, each stage under `mon.stage`."""
    import coachlm.pipeline.run as pipeline_run
    from coachlm.demo import run_demo

    plain = pipeline_run.run_stage

    def monitored(root, name, *args, **kwargs):
        with mon.stage(name):
            return plain(root, name, *args, **kwargs)

    pipeline_run.run_stage = monitored
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_demo(Path(tmp), overrides)
        models = {name: model_bytes(Path(tmp) / name / "final")
                  for name in ("pretrain", "sft", "rm", "ppo") if (Path(tmp) / name / "final").is_dir()}
    return {"models": models, "stage_seconds": summary["stage_seconds"],
            "quality": {"if_rate": summary["if_rate"], "ppo_over_sft": summary["wins"]["ppo_over_sft"],
                        "kl_ppo_sft": summary["kl_ppo_sft"]["kl"]}}


def batch_shapes(cfg, steps: int) -> dict:
    """The distinct shapes and padded share of the first `steps` training batches that
    `run_sft(cfg)` draws (same examples, split and seed; `cfg` as the run saved it, its width
    multiple resolved), and the distinct shapes of the LM head's input (the labelled
    positions, rounded up as `lm_loss.labelled_lm_loss` rounds them)."""
    from coachlm.data.collate import ExampleBatches, round_up
    from coachlm.models.load import load_tokenizer
    from coachlm.trainers.lm_loss import HEAD_ROWS_MULTIPLE
    from coachlm.trainers.sft import load_examples, split_examples

    tok = load_tokenizer(cfg.model)
    train_ex, _ = split_examples(load_examples(cfg.data, tok, cfg.max_length), cfg.val_fraction,
                                 cfg.train.seed)
    src = ExampleBatches(train_ex, cfg.train.batch_size, tok.pad_token_id, seed=cfg.train.seed,
                         width_multiple=cfg.pack_width_multiple, rows_multiple=cfg.pack_rows_multiple)
    shapes, kept, real, total = set(), set(), 0, 0
    for _ in range(steps):
        b = src.next_batch()
        shapes.add(tuple(b.input_ids.shape))
        kept.add(round_up(int((b.labels[:, 1:] != -100).sum()), HEAD_ROWS_MULTIPLE))
        real, total = real + b.num_tokens, total + b.input_ids.numel()
    return {"distinct_shapes": len(shapes), "distinct_logit_shapes": len(kept),
            "padded_share": round(1 - real / total, 3), "positions_per_step": round(total / steps, 1)}


def _numel(shape: list[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def peak_rss_mb() -> int:
    """This process's peak RSS so far (the kernel's high-water mark, not a sample)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="world-small")
    p.add_argument("--pretrain-steps", type=int, default=20)
    p.add_argument("--sft-steps", type=int, default=20)
    p.add_argument("--sft-batch-size", type=int, default=32)  # the demo's
    p.add_argument("--pack-width-multiple", type=int, default=None,
                   help="SFTConfig.pack_width_multiple (default: the shipped one)")
    p.add_argument("--pack-rows-multiple", type=int, default=None,
                   help="SFTConfig.pack_rows_multiple (default: the shipped one)")
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) between stages")
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="coachlm.memory.fix_mmap_threshold(BYTES) first (0: glibc's default)")
    p.add_argument("--demo", nargs="*", default=None, metavar="OVERRIDE",
                   help="profile the whole demo pipeline instead (dotted overrides, as `coachlm demo`)")
    args = p.parse_args(argv)
    os.environ.setdefault("COACHLM_NO_PROGRESS", "1")
    if args.mmap_threshold:
        from coachlm.memory import fix_mmap_threshold
        fix_mmap_threshold(args.mmap_threshold)
    mon = RSSMonitor()
    if args.demo is not None:
        with mon.stage("import"):
            import coachlm.demo  # noqa: F401  (the pipeline and its stage kinds)
        out = run_demo_stages(mon, args.demo)
        return {"setup": {"demo_overrides": args.demo, "mmap_threshold": args.mmap_threshold},
                **out, "stages": mon.stages,
                "process_end_mb": round(psutil.Process().memory_info().rss / MB),
            "process_peak_mb": peak_rss_mb()}
    with mon.stage("import"):
        from coachlm import config
        from coachlm.engine.config import TrainConfig
        from coachlm.trainers.pretrain import PretrainConfig, run_pretrain
        from coachlm.trainers.sft import SFTConfig, run_sft
        from coachlm.world.build import WorldConfig, build_world
    trim = ctypes.CDLL("libc.so.6").malloc_trim if args.trim else (lambda _: None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with mon.stage("world"):
            world = build_world(root / "world", WorldConfig())
        trim(0)
        with mon.stage("pretrain"):
            base = run_pretrain(PretrainConfig(
                corpus=Path(world["corpus"]), out=root / "pretrain", preset=args.preset,
                train=TrainConfig(lr=2e-3, max_steps=args.pretrain_steps, batch_size=16,
                                  checkpoint_every=0, threads=1, log_every=20)))
        trim(0)
        rounding = {f"pack_{k}_multiple": getattr(args, f"pack_{k}_multiple") for k in ("width", "rows")}
        sft_cfg = SFTConfig(model=base, data=(Path(world["sft"]),), out=root / "sft", max_length=256,
                            train=TrainConfig(lr=1e-3, max_steps=args.sft_steps,
                                              batch_size=args.sft_batch_size, checkpoint_every=0,
                                              threads=1, log_every=20),
                            **{k: v for k, v in rounding.items() if v is not None})
        with mon.stage("sft"):
            run_sft(sft_cfg)
        trim(0)
        sizes = model_bytes(base)
        summary = json.loads((root / "sft" / "summary.json").read_text())
        sft_cfg = config.load(SFTConfig, root / "sft" / "config.yaml")  # as resolved by the run
        sft_out = {"pack_width_multiple": sft_cfg.pack_width_multiple,
                   "pack_rows_multiple": sft_cfg.pack_rows_multiple,
                   "loop_cpu_s": summary["cpu_seconds"], "bf16": summary["bf16"],
                   "cpu_s_per_step": round(summary["cpu_seconds"] / summary["steps"], 4),
                   "final_metrics": summary["final_metrics"],
                   **batch_shapes(sft_cfg, args.sft_steps)}
    return {"setup": {**vars(args), "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX")},
            "model": sizes, "sft": sft_out, "stages": mon.stages,
            "process_end_mb": round(psutil.Process().memory_info().rss / MB),
            "process_peak_mb": peak_rss_mb()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
