"""A leaderboard across policy versions: Bradley-Terry and Elo ratings with bootstrap
confidence intervals, from pairwise judgments of the versions' responses to the same prompts,
as public model arenas compute them (Chiang et al., 2024, "Chatbot Arena"). The rating math is
`feedback.ratings`; this module turns evaluations into matches.

Judges: the world's rubric (each eval's `samples_<model>.jsonl` carries `rubric_total`), a reward
model (`labelers.RewardModelJudge` scores the same responses), an AI judge (the RL-CAI feedback
model, `labelers.ai.AILabeler`, asked in both orders which of two versions' responses is better),
and comparisons from the store whose two responses come from different versions (a loop sends
pairs of two versions' responses to its labelers: `versus_samples`; `ratings.matches_from_records`
turns their labels into matches).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from coachlm.data.schema import Record, Response, Sample
from coachlm.eval.wins import outcome
from coachlm.feedback.ratings import Match, elo, leaderboard, matches_from_records
from coachlm.labelers.ai import AIConfig


@dataclass(frozen=True)
class LeaderboardConfig:
    evals: tuple[Path, ...]  # eval.json files of compare runs (their samples_*.jsonl beside)
    out: Path
    reward_model: Path | None = None  # also judge by this reward model
    feedback: tuple[Path, ...] = ()  # comparisons/rankings (e.g. from the store) between versions
    ai_judge: Path | None = None  # also judge by this feedback model (a local model directory)
    ai_judge_prompts: int | None = 64  # the AI judge compares versions on at most this many prompts
    constitution: Path | None = None  # the AI judge's principles (None: the built-in constitution)
    principles: tuple[str, ...] = ()  # only these principle ids (empty: all)
    ai: AIConfig = field(default_factory=AIConfig)  # both orders by default
    bootstrap: int = 200
    seed: int = 0


@dataclass(frozen=True)
class VersionsConfig:
    """Two versions' responses to the same prompts, as samples for labelers to compare (a
    loop's `versions` stage; the label stage after it sends them through the store)."""

    evals: tuple[Path, ...]  # eval.json files, as for the leaderboard
    out: Path  # the samples file
    players: tuple[str, ...] = ()  # (newer, older); empty: the two newest players
    limit: int | None = 32  # prompts
    # which of the eval's decodes: those at the policy's training temperature (what it does in
    # use; two versions' greedy answers are often the same text) or the greedy ones
    decoding: Literal["sampled", "greedy"] = "sampled"

    def __post_init__(self) -> None:
        if self.players and len(self.players) != 2:
            raise ValueError(f"players must name two versions, got {list(self.players)}")


def write_versus(cfg: VersionsConfig, names: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    from coachlm.data.io import write_records
    from coachlm.errors import CoachError

    players = read_players(cfg.evals, names, "_sampled" if cfg.decoding == "sampled" else "")
    a, b = cfg.players or (tuple(reversed(list(players)[-2:])) if len(players) > 1 else ("", ""))
    if a not in players or b not in players:
        raise CoachError(f"versions: no players {a!r} and {b!r} among {sorted(players)}")
    samples = versus_samples(players, a, b, cfg.limit)
    write_records(cfg.out, samples)
    return {"samples": str(cfg.out), "metrics": {"players": [a, b], "prompts": len(samples) // 2}}


def read_players(evals: Sequence[Path], names: Sequence[Mapping[str, str]], tag: str = ""
                 ) -> dict[str, list[Sample]]:
    """Each player's evaluation samples; `names[i]` maps eval i's model names to player names
    (a model seen in an earlier eval under the same player name is read once). `tag`
    "_sampled": the decodes at the policy's training temperature (test half), where the eval
    made them, else the greedy ones."""
    from coachlm.data.io import read_records

    players: dict[str, list[Sample]] = {}
    for path, rename in zip(evals, names):
        for model in json.loads(Path(path).read_text())["models"]:
            player = rename.get(model, model)
            if player not in players:
                found = Path(path).parent / f"samples_{model}{tag}.jsonl"
                if not found.is_file():
                    found = Path(path).parent / f"samples_{model}.jsonl"
                players[player] = list(read_records(found, kinds=["sample"]))
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


def versus_samples(players: Mapping[str, list[Sample]], a: str, b: str,
                   limit: int | None = None, same: bool = False) -> list[Sample]:
    """Players a's and b's responses to the prompts both answered (first `limit` of them), two
    samples per prompt, each response's model renamed to its player: what a judge or a
    labeler compares, and how `matches_from_records` tells the versions apart afterwards.
    Prompts where both gave the same text are left out (nothing to compare) unless `same`."""
    def named(s: Sample, player: str) -> Sample:
        return replace(s, response=Response(s.response.text, model=player,
                                            model_version=s.response.model_version))

    theirs = {str(s.meta.get("prompt_id")): s for s in players[b]}
    out: list[Sample] = []
    for s in players[a]:
        other = theirs.get(str(s.meta.get("prompt_id")))
        if other is not None and (same or other.response.text != s.response.text):
            out += [named(s, a), named(other, b)]
    return out[: 2 * limit] if limit is not None else out


def ai_judge_matches(players: Mapping[str, list[Sample]], cfg: LeaderboardConfig
                     ) -> tuple[list[Match], int]:
    """Every pair of players on (at most `ai_judge_prompts` of) the prompts both answered,
    judged by the feedback model: its soft label P(a better), read in both orders by default
    (Bai et al., 2022, sec. 4.1; swapping cancels position bias), gives a win, loss or tie.
    Also returns how many pairs were skipped because the question with both responses does
    not fit the feedback model's context (the AI labeler's own check, `AILabeler.fitting`):
    cutting a response short would judge an answer the player never gave."""
    from coachlm.constitution import load_constitution
    from coachlm.labelers.ai import AILabeler
    from coachlm.labelers.backends import LocalModel
    from coachlm.labelers.base import group_samples

    constitution = load_constitution(cfg.constitution).select(cfg.principles)
    labeler = AILabeler(LocalModel(cfg.ai_judge), constitution.principles, cfg.ai)
    ties, groups = [], []
    for a, b in combinations(sorted(players), 2):
        pairs = versus_samples(players, a, b, cfg.ai_judge_prompts, same=True)
        for x, y in zip(pairs[::2], pairs[1::2]):
            if x.response.text == y.response.text:  # the same answer: a tie, as for the rubric
                ties.append(Match(a, b, 0.5))
            else:
                groups += group_samples([x, y], min_size=2)
    matches = ties + version_matches(labeler.label(groups))
    return matches, labeler.skipped_too_long


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
    skipped: dict[str, int] = {}
    if cfg.reward_model is not None:
        judges["reward_model"] = reward_model_matches(players, cfg.reward_model)
    if cfg.ai_judge is not None:
        judges["ai_judge"], skipped["ai_judge"] = ai_judge_matches(players, cfg)
    if cfg.feedback:
        judges["feedback"] = version_matches(  # (a round whose versions all agreed: no file)
            r for p in cfg.feedback if Path(p).stat().st_size
            for r in read_records(p, kinds=PREFERENCE_KINDS))
    result = {"players": list(players),
              "boards": {j: board(m, cfg.bootstrap, cfg.seed) for j, m in judges.items()},
              "matches": {j: len(m) for j, m in judges.items()},
              "skipped_too_long": skipped}  # pairs too long for a judge's context
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "leaderboard.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
