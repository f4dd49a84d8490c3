"""Ratings from pairwise matches: online Elo and Bradley-Terry maximum likelihood with bootstrap
confidence intervals, over the responses of one prompt or over models/policy versions (a
leaderboard), as Chatbot Arena does (Chiang et al., 2024, "Chatbot Arena").

A match is (a, b, score): score 1 if a won, 0 if b won, 0.5 for a tie; "both bad" is a tie, as
in Chatbot Arena. Rankings give one match per pair of ranked responses. Ratings are on the Elo
scale: rating = base + scale * log10(strength), so a 400-point gap means 10:1 odds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from coachlm.data import schema


@dataclass(frozen=True)
class Match:
    a: str
    b: str
    score: float  # 1: a won, 0: b won, 0.5: tie


@dataclass(frozen=True)
class Standing:
    name: str
    rating: float
    lo: float  # bootstrap confidence interval
    hi: float
    wins: float  # ties count half
    matches: int


def elo(matches: Iterable[Match], k: float = 4.0, base: float = 1000.0,
        scale: float = 400.0) -> dict[str, float]:
    """Online Elo (Elo, 1978): after each match, R_a += k (S_a - E_a) with
    E_a = 1 / (1 + 10^((R_b - R_a) / scale)), and b symmetrically. Order matters; Chatbot Arena
    used k=4 to keep late matches from swinging ratings."""
    r: dict[str, float] = defaultdict(lambda: base)
    for m in matches:
        e_a = 1.0 / (1.0 + 10.0 ** ((r[m.b] - r[m.a]) / scale))
        delta = k * (m.score - e_a)
        r[m.a] += delta
        r[m.b] -= delta
    return dict(r)


def _tables(matches: Sequence[Match], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {n: i for i, n in enumerate(names)}
    wins = np.zeros(len(names))  # (P,) wins, ties counted half
    games = np.zeros((len(names), len(names)))  # (P, P) games between each pair
    for m in matches:
        i, j = index[m.a], index[m.b]
        wins[i] += m.score
        wins[j] += 1.0 - m.score
        games[i, j] += 1
        games[j, i] += 1
    return wins, games


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def bt_strengths(wins: np.ndarray, games: np.ndarray, prior: float = 0.0, iters: int = 100,
                 tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry maximum likelihood log-strengths theta, by Newton's method on the concave
    log-likelihood L = sum_i W_i theta_i - sum_{i<j} N_ij log(e^theta_i + e^theta_j), where W_i
    counts wins (ties half) and N_ij games (Bradley & Terry, 1952). Hunter's (2004) MM algorithm
    reaches the same maximum but needs thousands of steps when strengths are far apart; Newton
    needs a handful.

    `prior` > 0 adds that many virtual tied games of every player against a fixed player of
    strength 0, a shrinkage that keeps the estimate finite for a player who never lost (or never
    won). The likelihood does not change when every theta shifts by one constant, so each step
    is the minimum-norm solution, which never moves along that direction. Returns log-strengths
    centered to mean 0.
    """
    theta = np.zeros(len(wins))  # (P,)
    for _ in range(iters):
        p = _sigmoid(theta[:, None] - theta[None, :])  # (P, P) P(i beats j)
        grad = wins - (games * p).sum(1)  # (P,)
        curv = games * p * (1 - p)  # (P, P)
        neg_hess = np.diag(curv.sum(1)) - curv  # (P, P) positive semi-definite
        if prior > 0:
            s = _sigmoid(theta)
            grad = grad + prior * (0.5 - s)
            neg_hess = neg_hess + np.diag(prior * s * (1 - s))
        step = np.linalg.lstsq(neg_hess, grad, rcond=None)[0]
        size = np.max(np.abs(step), initial=0.0)
        if size > 5.0:  # damp big early steps (a player far from the rest)
            step *= 5.0 / size
        theta = theta + step
        if size < tol:
            break
    return theta - theta.mean()


def bradley_terry(matches: Sequence[Match], prior: float = 0.0, base: float = 1000.0,
                  scale: float = 400.0) -> dict[str, float]:
    """Bradley-Terry ratings on the Elo scale (mean `base`)."""
    names = sorted({m.a for m in matches} | {m.b for m in matches})
    wins, games = _tables(matches, names)
    theta = bt_strengths(wins, games, prior)
    return {n: base + scale * t / math.log(10) for n, t in zip(names, theta)}


def leaderboard(matches: Sequence[Match], rounds: int = 200, prior: float = 0.5, ci: float = 0.95,
                seed: int = 0, base: float = 1000.0, scale: float = 400.0) -> list[Standing]:
    """Bradley-Terry ratings with percentile bootstrap intervals (matches resampled with
    replacement `rounds` times), best first."""
    matches = list(matches)
    names = sorted({m.a for m in matches} | {m.b for m in matches})
    if not names:
        return []
    to_elo = scale / math.log(10)
    wins, games = _tables(matches, names)
    point = base + to_elo * bt_strengths(wins, games, prior)
    rng = np.random.default_rng(seed)
    samples = np.empty((rounds, len(names)))  # (R, P)
    for r in range(rounds):
        pick = rng.integers(0, len(matches), len(matches))
        w, g = _tables([matches[i] for i in pick], names)
        samples[r] = base + to_elo * bt_strengths(w, g, prior, tol=1e-8)
    alpha = (1 - ci) / 2 * 100
    lo, hi = np.percentile(samples, [alpha, 100 - alpha], axis=0) if rounds else (point, point)
    played = games.sum(1)
    out = [Standing(n, float(point[i]), float(lo[i]), float(hi[i]), float(wins[i]), int(played[i]))
           for i, n in enumerate(names)]
    return sorted(out, key=lambda s: -s.rating)


def by_model(r: schema.Response) -> str:
    name = r.model or "unknown"
    return f"{name}@{r.model_version}" if r.model_version else name


def by_text(r: schema.Response) -> str:
    return r.text


def matches_from_records(records: Iterable[schema.Record],
                         key: Callable[[schema.Response], str] = by_model) -> list[Match]:
    """Matches from comparisons and rankings (other records are ignored). Responses with the
    same key (e.g. two samples of one model) do not play each other."""
    out = []
    for rec in records:
        if isinstance(rec, schema.Comparison):
            pairs = [(rec.a, rec.b, {"a": 1.0, "b": 0.0}.get(rec.choice, 0.5))]
        elif isinstance(rec, schema.Ranking):
            pairs = []
            for i in range(len(rec.responses)):
                for j in range(i + 1, len(rec.responses)):
                    ri, rj = rec.ranks[i], rec.ranks[j]
                    if ri is not None and rj is not None:
                        s = 1.0 if ri < rj else 0.0 if ri > rj else 0.5
                        pairs.append((rec.responses[i], rec.responses[j], s))
        else:
            continue
        for a, b, s in pairs:
            ka, kb = key(a), key(b)
            if ka != kb:
                out.append(Match(ka, kb, s))
    return out


def per_prompt(records: Iterable[schema.Record], rounds: int = 100,
               seed: int = 0) -> dict[str, list[Standing]]:
    """A leaderboard of the responses of each prompt, keyed by the conversation's last user turn
    (conversations that differ earlier but end alike get " (2)", " (3)"... appended)."""
    groups: dict[schema.Prompt, list[schema.Record]] = defaultdict(list)
    for rec in records:
        if isinstance(rec, (schema.Comparison, schema.Ranking)):
            groups[rec.prompt].append(rec)
    out: dict[str, list[Standing]] = {}
    for prompt, recs in groups.items():
        name, n = prompt[-1].content, 1
        while name in out:
            n += 1
            name = f"{prompt[-1].content} ({n})"
        out[name] = leaderboard(matches_from_records(recs, by_text), rounds=rounds, seed=seed)
    return out
