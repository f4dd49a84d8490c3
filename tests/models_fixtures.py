"""Tiny tokenizers and models for the models/rollout tests (built at test time, nothing downloaded)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from coachlm.models.presets import build_model
from coachlm.models.tokenizer import train_tokenizer

WORDS = "the cat dog sat ran on a mat hat big small red blue and then it was happy sad".split()
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # ../shared/data beside the checkout (CI has it)
STORIES260K = SHARED_DATA / "models" / "stories260K" / "hf"


def texts(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + "." for _ in range(n)]
    return out + [f"What is {i} plus {i}? {i} plus {i} is {2 * i}." for i in range(20)]


_TOKENIZER = None


def tokenizer():
    """One shared tiny world tokenizer (about 300 entries); tests must not modify it."""
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = train_tokenizer(texts(), vocab_size=300)
    return _TOKENIZER


def model(seed: int = 0, **shape):
    return build_model({"preset": "world-tiny", **shape}, tokenizer(), seed=seed)


def random_prompts(lengths, vocab: int, seed: int = 0, low: int = 7) -> list[list[int]]:
    """Random token ids avoiding the specials (ids < 7), one prompt per length."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, vocab, (n,), generator=g).tolist() for n in lengths]
