"""Prompt-set checks, reported for every prompt set that enters a round: exact and near
duplicates, overlap with another set (leakage of training prompts into the test set), and
diversity per task family.

Near duplicates are found with MinHash locality-sensitive hashing (Broder, 1997) over word
3-gram shingles, via `datasketch`: two prompts are near duplicates when their estimated Jaccard
similarity is at least `threshold`. Diversity is distinct-n (Li et al., 2016): the number of
distinct word n-grams over the total, per family; a family of one template repeated scores low.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache
from typing import Any, Sequence

from coachlm.data.schema import PromptRecord

NUM_PERM = 64


@lru_cache(maxsize=65536)
def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _shingles(text: str, n: int = 3) -> set[str]:
    words = normalize(text).split()
    return {" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}


@lru_cache(maxsize=1)
def _permutations() -> Any:
    """The seeded permutations every MinHash shares: drawing them is most of the cost of a
    MinHash of a short prompt, and datasketch would draw them again for each one."""
    from datasketch import MinHash

    m = MinHash(num_perm=NUM_PERM, seed=1)
    return m.permutations, m.scheme


@lru_cache(maxsize=65536)
def _minhash(text: str) -> Any:
    """The prompt's MinHash (cached: a prompt set is checked alone and against another set).
    Equal to `MinHash(NUM_PERM, seed=1)` updated shingle by shingle, in one batch."""
    from datasketch import MinHash

    permutations, scheme = _permutations()
    m = MinHash(num_perm=NUM_PERM, seed=1, permutations=permutations, scheme=scheme)
    m.update_batch([s.encode() for s in _shingles(text)])
    return m


@lru_cache(maxsize=16)
def _bands(threshold: float) -> tuple[int, int]:
    """The LSH bands and rows for `threshold` (datasketch finds them by numerical integration
    each time an index is made; once is enough)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    return lsh.b, lsh.r


def _text(p: PromptRecord) -> str:
    return p.prompt_text


def _show(prompts: Sequence[PromptRecord], pairs: list[tuple[int, int]]) -> list[list[str]]:
    return [[_text(prompts[a]), _text(prompts[b])] for a, b in pairs[:3]]


def duplicates(prompts: Sequence[PromptRecord], threshold: float = 0.8) -> dict[str, Any]:
    """Prompts that repeat an earlier one exactly (after normalizing case, punctuation and
    spaces), and those that nearly do (MinHash Jaccard >= threshold), with a few examples."""
    from datasketch import MinHashLSH

    seen: dict[str, int] = {}
    exact: list[tuple[int, int]] = []
    near: list[tuple[int, int]] = []
    lsh = MinHashLSH(num_perm=NUM_PERM, params=_bands(threshold))
    for i, p in enumerate(prompts):
        key = normalize(_text(p))
        if key in seen:
            exact.append((seen[key], i))
            continue
        seen[key] = i
        m = _minhash(_text(p))
        hits = [int(j) for j in lsh.query(m)]
        if hits:
            near.append((min(hits), i))
        lsh.insert(str(i), m)
    return {"n": len(prompts), "exact_duplicates": len(exact), "near_duplicates": len(near),
            "exact_examples": _show(prompts, exact), "near_examples": _show(prompts, near)}


def overlap(reference: Sequence[PromptRecord], prompts: Sequence[PromptRecord],
            threshold: float = 0.8) -> dict[str, int]:
    """How many of `prompts` appear in `reference` exactly or nearly (e.g. test in train)."""
    from datasketch import MinHashLSH

    exact_keys = {normalize(_text(p)) for p in reference}
    lsh = MinHashLSH(num_perm=NUM_PERM, params=_bands(threshold))
    for i, p in enumerate(reference):
        lsh.insert(str(i), _minhash(_text(p)))
    exact = sum(normalize(_text(p)) in exact_keys for p in prompts)
    near = sum(bool(lsh.query(_minhash(_text(p)))) for p in prompts
               if normalize(_text(p)) not in exact_keys)
    return {"n": len(prompts), "exact": exact, "near": near}


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams = [tuple(w[i:i + n]) for w in (normalize(t).split() for t in texts)
             for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(prompts: Sequence[PromptRecord]) -> dict[str, dict[str, float]]:
    """Per family: prompts, the fraction of distinct prompts, distinct-1 and distinct-2."""
    groups: dict[str, list[str]] = defaultdict(list)
    for p in prompts:
        groups[str(p.meta.get("family", "unknown"))].append(_text(p))
    return {fam: {"n": len(ts), "unique": len({normalize(t) for t in ts}) / len(ts),
                  "distinct_1": round(distinct_n(ts, 1), 4),
                  "distinct_2": round(distinct_n(ts, 2), 4)}
            for fam, ts in sorted(groups.items())}


def prompt_set_report(prompts: Sequence[PromptRecord], threshold: float = 0.8) -> dict[str, Any]:
    return {**duplicates(prompts, threshold), "per_family": diversity(prompts)}
