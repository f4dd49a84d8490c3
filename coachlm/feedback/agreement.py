"""Inter-annotator agreement and labeler quality, in plain Python (numpy-free, exact).

Labels are given as `{item: {labeler: value}}` (values are hashable: a choice, a score, ...).

- Cohen's kappa for two labelers (Cohen, 1960): (p_o - p_e) / (1 - p_e).
- Fleiss' kappa for a fixed number of labelers per item (Fleiss, 1971).
- Krippendorff's alpha for any number of labelers per item, missing labels allowed, with a
  nominal or interval metric (Krippendorff, 2011, "Computing Krippendorff's Alpha-Reliability").
- Each labeler's agreement with the majority of the *other* labelers, accuracy on gold items,
  and each item's agreement (share of its labels equal to its most common label).

Undefined values (e.g. kappa when both labelers always use one category) are NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from typing import Callable, Hashable, Mapping, Sequence

Labels = Mapping[Hashable, Mapping[str, Hashable]]
NAN = float("nan")


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Agreement of two labelers on the same items, corrected for chance agreement."""
    if len(a) != len(b):
        raise ValueError("cohen_kappa needs two equally long label sequences")
    n = len(a)
    if n == 0:
        return NAN
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    return NAN if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> float:
    """Chance-corrected agreement when every item has the same number n >= 2 of labels."""
    items = [list(x) for x in items]
    if not items:
        return NAN
    n = len(items[0])
    if n < 2 or any(len(x) != n for x in items):
        raise ValueError("fleiss_kappa needs the same number (>= 2) of labels on every item")
    total = Counter()
    p_bar = 0.0
    for labels in items:
        counts = Counter(labels)
        total.update(counts)
        p_bar += (sum(c * c for c in counts.values()) - n) / (n * (n - 1))
    p_bar /= len(items)
    p_e = sum((c / (len(items) * n)) ** 2 for c in total.values())
    return NAN if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def _delta2(metric: str) -> Callable[[Hashable, Hashable], float]:
    if metric == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if metric == "interval":
        return lambda c, k: (float(c) - float(k)) ** 2  # type: ignore[arg-type]
    raise ValueError(f"metric must be 'nominal' or 'interval', got {metric!r}")


def krippendorff_alpha(items: Sequence[Sequence[Hashable]], metric: str = "nominal") -> float:
    """alpha = 1 - D_o / D_e over the coincidence matrix; items with < 2 labels are unpairable
    and dropped. Each item u with m_u labels adds 1/(m_u - 1) per ordered pair of its labels."""
    delta2 = _delta2(metric)
    o: Counter = Counter()
    for labels in items:
        m = len(labels)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[(labels[i], labels[j])] += 1.0 / (m - 1)
    n_c: Counter = Counter()
    for (c, _k), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    if n <= 1:
        return NAN
    d_o = sum(w * delta2(c, k) for (c, k), w in o.items()) / n
    d_e = sum(n_c[c] * n_c[k] * delta2(c, k) for c in n_c for k in n_c) / (n * (n - 1))
    return NAN if d_e == 0 else 1.0 - d_o / d_e


def pairwise_kappas(labels: Labels, min_items: int = 1) -> dict[tuple[str, str], tuple[float, int]]:
    """Cohen's kappa and the number of shared items for every pair of labelers."""
    raters = sorted({r for by in labels.values() for r in by})
    out = {}
    for r1, r2 in combinations(raters, 2):
        shared = [(by[r1], by[r2]) for by in labels.values() if r1 in by and r2 in by]
        if len(shared) >= min_items:
            out[(r1, r2)] = (cohen_kappa([x for x, _ in shared], [y for _, y in shared]),
                             len(shared))
    return out


def _mode(values: Sequence[Hashable]) -> Hashable | None:
    """The most common value, or None when two values tie for most common."""
    common = Counter(values).most_common(2)
    if not common or (len(common) == 2 and common[0][1] == common[1][1]):
        return None
    return common[0][0]


def majority_agreement(labels: Labels) -> dict[str, tuple[int, int]]:
    """(agreements, comparable items) of each labeler with the majority of the *others* on
    each item (items where the others are absent or split evenly are skipped)."""
    out: dict[str, list[int]] = {}
    for by in labels.values():
        for r, v in by.items():
            majority = _mode([w for q, w in by.items() if q != r])
            if majority is not None:
                agree_total = out.setdefault(r, [0, 0])
                agree_total[0] += v == majority
                agree_total[1] += 1
    return {r: (a, t) for r, (a, t) in out.items()}


def item_agreement(labels: Labels) -> dict[Hashable, float]:
    """Share of each item's labels that equal its most common label (1.0 for a single label)."""
    out = {}
    for item, by in labels.items():
        if by:
            out[item] = Counter(by.values()).most_common(1)[0][1] / len(by)
    return out


def gold_accuracy(labels: Labels, gold: Mapping[Hashable, Hashable],
                  correct: Callable[[Hashable, Hashable], bool] | None = None
                  ) -> dict[str, tuple[int, int]]:
    """(correct, answered) gold items per labeler; `correct(label, gold)` defaults to ==."""
    correct = correct or (lambda v, g: v == g)
    out: dict[str, list[int]] = {}
    for item, answer in gold.items():
        for r, v in labels.get(item, {}).items():
            ct = out.setdefault(r, [0, 0])
            ct[0] += bool(correct(v, answer))
            ct[1] += 1
    return {r: (c, t) for r, (c, t) in out.items()}


def ratio(pair: tuple[int, int]) -> float:
    return pair[0] / pair[1] if pair[1] else NAN


def fmt(x: float, digits: int = 3) -> str:
    """A metric for display: NaN (undefined) shows as a dash."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"
