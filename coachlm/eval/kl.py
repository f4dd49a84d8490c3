"""KL(policy || reference) on held-out prompts, estimated from the policy's own samples.

Responses are sampled from the policy at its sampling temperature T (1 unless given: the
temperature PPO trained it at, since that is the distribution the KL penalty constrained), and
both models' logprobs are computed at T, as the trainer computes them; the sequence-level KL
is the mean of
log pi(y|x) - log pi_ref(y|x) over them (the k1 estimator, unbiased for the sequence-level KL;
Schulman, 2020, "Approximating KL divergence"). This is the number a KL budget refers to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from coachlm.data.schema import PromptRecord


def _batch(seqs: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), pad_id)  # (B, T) right-padded
    attention = torch.zeros(len(seqs), width, dtype=torch.long)  # (B, T)
    response = torch.zeros(len(seqs), width, dtype=torch.long)  # (B, T) 1 on response tokens
    for i, (seq, n_p) in enumerate(zip(seqs, prompt_lens)):
        input_ids[i, :len(seq)] = torch.tensor(seq)
        attention[i, :len(seq)] = 1
        response[i, n_p:len(seq)] = 1
    return input_ids, attention, response


@torch.no_grad()
def kl_to_reference(policy_dir: Path, ref_dir: Path, prompts: Sequence[PromptRecord],
                    max_new_tokens: int, seed: int = 0, batch_size: int = 64,
                    temperature: float = 1.0, max_prompt_length: int | None = None
                    ) -> dict[str, float]:
    """Sequence-level KL(policy || reference) in nats, with its standard error, on samples drawn
    at `temperature`. Prompts longer than `max_prompt_length` (None: what the context leaves)
    lose their oldest tokens."""
    from coachlm.data.chat import encode_prompt
    from coachlm.models.load import load_model, load_tokenizer
    from coachlm.models.logprobs import sequence_logprobs
    from coachlm.rollout.sampling import SamplingConfig, fit_prompts, generate

    tok = load_tokenizer(policy_dir)
    policy = load_model(policy_dir, tokenizer=tok).eval()
    ref = load_model(ref_dir, tokenizer=tok).eval()
    ids, _ = fit_prompts(policy, tok, [encode_prompt(tok, p.prompt) for p in prompts],
                         max_new_tokens, max_prompt_length)
    scfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                          batch_size=batch_size, seed=seed)
    gen = generate(policy, tok, ids, scfg)
    diffs: list[float] = []
    lengths: list[int] = []
    for start in range(0, len(gen.response_ids), batch_size):
        rows = range(start, min(start + batch_size, len(gen.response_ids)))
        seqs = [ids[gen.prompt_index[r]] + list(gen.response_ids[r]) for r in rows]
        input_ids, attention, response = _batch(
            seqs, [len(ids[gen.prompt_index[r]]) for r in rows], tok.pad_token_id)
        lp = sequence_logprobs(policy, input_ids, attention, response, temperature).sum(-1)  # (B,)
        lr = sequence_logprobs(ref, input_ids, attention, response, temperature).sum(-1)  # (B,)
        diffs += (lp - lr).tolist()
        lengths += response.sum(-1).tolist()
    n = len(diffs)
    mean = sum(diffs) / n
    std = (sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)) ** 0.5
    return {"kl": round(mean, 4), "kl_stderr": round(std / n ** 0.5, 4),
            "kl_per_token": round(sum(diffs) / max(sum(lengths), 1), 5), "kl_samples": n,
            "mean_response_tokens": round(sum(lengths) / n, 1)}
