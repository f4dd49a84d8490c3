"""A leaderboard across policy versions: Bradley-Terry and Elo ratings with bootstrap
confidence intervals, from pairwise judgments of the versions' responses to the same prompts,
as public model arenas compute them (Chiang et al., 2024, "Chatbot Arena"). The rating math is
`feedback.ratings`; this module turns evaluations into matches.

Judges: the world's rubric (each eval's `samples_<model>.jsonl` carries `rubric_total`), a reward
model (`labelers.RewardModelJudge` scores the same responses), and comparisons from the store
whose two responses come from different versions (`ratings.matches_from_records`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from coachlm.data.schema import Record, Sample
from coachlm.eval.wins import outcome
from coachlm.feedback.ratings import Match, elo, leaderboard, matches_from_records


@dataclass(frozen=True)
class LeaderboardConfig:
    evals: tuple[Path, ...]  # eval.json files of compare runs (their samples_*.jsonl beside)
    out: Path
    reward_model: Path | None = None  # also judge by this reward model
    feedback: tuple[Path, ...] = ()  # comparisons/rankings (e.g. from the store) between versions
    bootstrap: int = 200
    seed: int = 0


def read_players(evals: Sequence[Path], names: Sequence[Mapping[str, str]]
                 ) -> dict[str, list[Sample]]:
    """Each player's evaluation samples; `names[i]` maps eval i's model names to player names
    (a model seen in an earlier eval under the same player name is read once)."""
    from coachlm.data.io import read_records

    players: dict[str, list[Sample]] = {}
    for path, rename in zip(evals, names):
        for model in json.loads(Path(path).read_text())["models"]:
            player = rename.get(model, model)
            if player not in players:
                players[player] = list(read_records(Path(path).parent / f"samples_{model}.jsonl",
                                                    kinds=["sample"]))
    return players


def _by_prompt(players: Mapping[str, list[Sample]], scores: Mapping[str, Sequence[float]]
               ) -> list[Match]:
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for name, samples in players.items():
        for s, x in zip(samples, scores[name]):
            table[str(s.meta.get("prompt_id"))][name] = x
    matches = []
    for row in table.values():
        for a, b in combinations(sorted(row), 2):
            matches.append(Match(a, b, outcome(row[a], row[b])))
    return matches


def rubric_matches(players: Mapping[str, list[Sample]]) -> list[Match]:
    """Every pair of players on every prompt both answered, judged by the rubric totals."""
    return _by_prompt(players, {n: [float(s.meta["rubric_total"]) for s in ss]
                                for n, ss in players.items()})


def reward_model_matches(players: Mapping[str, list[Sample]], model_dir: Path) -> list[Match]:
    from coachlm.labelers import RewardModelJudge

    judge = RewardModelJudge(model_dir)
    return _by_prompt(players, {n: judge.score([s.prompt for s in ss],
                                               [s.response.text for s in ss])
                                for n, ss in players.items()})


def version_matches(records: Iterable[Record]) -> list[Match]:
    return matches_from_records(records)


def elo_intervals(matches: Sequence[Match], rounds: int, seed: int = 0,
                  ci: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """Online Elo on the matches in a random order, with a bootstrap interval (matches
    resampled with replacement, in a new random order, `rounds` times), as Chatbot Arena did
    before moving to Bradley-Terry: Elo depends on the order, so the interval includes that."""
    rng = np.random.default_rng(seed)
    point = elo([matches[i] for i in rng.permutation(len(matches))])
    names = sorted(point)
    boot = np.array([[elo([matches[i] for i in rng.integers(0, len(matches), len(matches))])
                      .get(n, 1000.0) for n in names] for _ in range(rounds)]).reshape(rounds, -1)
    alpha = (1 - ci) / 2 * 100
    lo, hi = (np.percentile(boot, [alpha, 100 - alpha], axis=0) if rounds
              else (np.array([point[n] for n in names]),) * 2)
    return {n: (point[n], float(lo[i]), float(hi[i])) for i, n in enumerate(names)}


def board(matches: Sequence[Match], rounds: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Standings, best first: Bradley-Terry rating and interval, Elo and interval, record."""
    if not matches:
        return []
    el = elo_intervals(matches, rounds, seed)
    return [{"name": s.name, "bt": round(s.rating, 1), "bt_lo": round(s.lo, 1),
             "bt_hi": round(s.hi, 1), "elo": round(el[s.name][0], 1),
             "elo_lo": round(el[s.name][1], 1), "elo_hi": round(el[s.name][2], 1),
             "wins": s.wins, "matches": s.matches}
            for s in leaderboard(matches, rounds=rounds, seed=seed)]


def run_leaderboard(cfg: LeaderboardConfig, names: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """One board per judge; writes leaderboard.json in `cfg.out`."""
    from coachlm.data.io import PREFERENCE_KINDS, read_records

    players = read_players(cfg.evals, names)
    judges = {"rubric": rubric_matches(players)}
    if cfg.reward_model is not None:
        judges["reward_model"] = reward_model_matches(players, cfg.reward_model)
    if cfg.feedback:
        judges["feedback"] = version_matches(
            r for p in cfg.feedback for r in read_records(p, kinds=PREFERENCE_KINDS))
    result = {"players": list(players),
              "boards": {j: board(m, cfg.bootstrap, cfg.seed) for j, m in judges.items()},
              "matches": {j: len(m) for j, m in judges.items()}}
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "leaderboard.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
