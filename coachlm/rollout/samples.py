"""`coachlm sample`: N responses per prompt from a model, written as Sample records.

Every response carries its provenance: `response.model` (a name) and `response.model_version`
(by default a short hash of the weights), so that the feedback collected on it names the exact
model it judged. `meta` keeps the prompt record's meta and adds `prompt_id` and `finished`
(whether the response ended with EOS within max_new_tokens).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coachlm.data.chat import encode_prompt
from coachlm.data.io import read_prompts, write_records
from coachlm.data.schema import PromptRecord, Response, Sample
from coachlm.errors import CoachError
from coachlm.runlog import RunLog, progress, warn


@dataclass(frozen=True)
class SampleConfig:
    model: Path
    prompts: Path
    out: Path
    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 32
    seed: int | None = 0
    limit: int | None = None  # only the first `limit` prompts (after `offset`)
    offset: int = 0  # skip this many prompts first (fresh prompts for each round of a loop)
    model_name: str | None = None  # default: the model directory's name
    model_version: str | None = None  # default: a short hash of the weights
    dtype: Literal["fp32", "bf16"] = "fp32"  # bf16 loads the weights in bfloat16
    # Longer prompts lose their oldest tokens (`sampling.fit_prompts`), counted in the summary.
    # None: as many as the model's context leaves after max_new_tokens.
    max_prompt_length: int | None = None
    # The engine (`rollout.generators`): the built-in KV-cache sampler, or vLLM (optional, its
    # own environment; README, 'vLLM rollouts').
    generator: Literal["builtin", "vllm"] = "builtin"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.max_prompt_length is not None and self.max_prompt_length < 2:
            raise ValueError(f"max_prompt_length must be >= 2, got {self.max_prompt_length}")


def model_name_for(path: Path) -> str:
    """A readable model name: the directory's name, or its parent's for a trainer's `final/`."""
    path = path.resolve()
    return f"{path.parent.name}/{path.name}" if path.name in ("final", "adapter") else path.name


def _samples(prompts: list[PromptRecord], responses: list[str], finished: list[bool],
             index: list[int], name: str, version: str) -> list[Sample]:
    return [
        Sample(prompt=prompts[i].prompt, source="model",
               response=Response(text, model=name, model_version=version),
               meta={**prompts[i].meta, "finished": done, "prompt_id": prompts[i].id})
        for i, text, done in zip(index, responses, finished)
    ]


def run_sample(cfg: SampleConfig) -> Path:
    """Sample per `cfg`; writes `cfg.out` (Sample records) and `summary.json` beside it."""
    import torch

    from coachlm.models.load import load_model, load_tokenizer, weights_hash
    from coachlm.rollout.generators import BuiltinGenerator, check_generator, make_generator
    from coachlm.rollout.sampling import SamplingConfig, decode_responses, fit_prompts

    check_generator(cfg.generator)
    prompts = read_prompts(cfg.prompts)[cfg.offset:][: cfg.limit]
    if not prompts:
        raise CoachError(f"{cfg.prompts}: no prompts to sample from")
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, dtype=torch.bfloat16 if cfg.dtype == "bf16" else torch.float32,
                       tokenizer=tokenizer)
    ids, truncated = fit_prompts(model, tokenizer,
                                 [encode_prompt(tokenizer, p.prompt) for p in prompts],
                                 cfg.max_new_tokens, cfg.max_prompt_length)
    if truncated:
        warn(f"{truncated} of {len(ids)} prompts cut from the left to fit (max_prompt_length)")
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_k=cfg.top_k, top_p=cfg.top_p, n=cfg.n, batch_size=cfg.batch_size,
                          seed=cfg.seed)
    # RunLog(resume=True) keeps any metrics.jsonl already in the output folder (e.g. a run's).
    runlog = RunLog(cfg.out.parent, resume=True, from_step=2**62)
    start, tokens = time.perf_counter(), 0
    with progress() as bar:
        task = bar.add_task("sample", total=len(ids) * cfg.n, rate="")

        def on_batch(rows: int, new_tokens: int) -> None:
            nonlocal tokens
            tokens += new_tokens
            rate = tokens / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=rows, rate=f"{rate:,.0f} tok/s")

        engine = make_generator(cfg.generator, model, tokenizer, dtype=cfg.dtype, seed=cfg.seed)
        try:
            gen = (engine or BuiltinGenerator(model, tokenizer))(ids, scfg, on_batch=on_batch)
        finally:
            if engine is not None:
                engine.close()
    seconds = time.perf_counter() - start
    name = cfg.model_name or model_name_for(cfg.model)
    version = cfg.model_version or weights_hash(cfg.model)
    samples = _samples(prompts, decode_responses(tokenizer, gen), gen.finished, gen.prompt_index,
                       name, version)
    write_records(cfg.out, samples)
    runlog.summary(seconds=seconds, tokens=gen.num_tokens, prompts=len(prompts),
                   responses=len(samples), truncated_prompts=truncated,
                   finished_fraction=sum(gen.finished) / len(samples),
                   model=name, model_version=version, out=str(cfg.out))
    return cfg.out
