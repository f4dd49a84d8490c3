"""`coachlm report RUN_DIR`: one self-contained HTML file (plots embedded as base64 SVG, no
scripts, no external files) for a pipeline or loop run: per round reward, KL, response length
and win rates with intervals; the leaderboard; labels (agreement, accuracy against the rubric,
seconds and money per label); best / worst / most changed samples; and the reward-hacking watch
(reward-model score against the rubric over training, length drift, KL over budget) with alarms.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

from coachlm.eval.run_data import RL_KINDS, ReportConfig, labels, round_of, stages, training
from coachlm.eval.wins import fmt

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;font-size:13px}th{background:#f3f3f3}.alarm{color:#a00;font-weight:bold}
.ok{color:#070}img{max-width:100%}pre{white-space:pre-wrap;margin:0;max-width:380px}"""


def _svg(draw: Any) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="plot" src="data:image/svg+xml;base64,{data}">'


def _lines(series: dict[str, tuple[list, list]], title: str, ylabel: str) -> str:
    def draw(ax: Any) -> None:
        for name, (x, y) in series.items():
            pts = [(a, b) for a, b in zip(x, y) if b is not None]
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker=".", label=name)
        ax.set(title=title, xlabel="PPO iteration", ylabel=ylabel)
        ax.legend(fontsize=7)

    return _svg(draw)


def _win_plot(rounds: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        for i, (key, label) in enumerate((("greedy", "greedy"), ("sampled", "sampled"))):
            pts = [(r["round"], r[key]) for r in rounds if r.get(key)]
            if pts:
                xs = [x + 0.1 * i for x, _ in pts]
                ys = [w["rate"] for _, w in pts]
                err = [[w["rate"] - w["lo"] for _, w in pts], [w["hi"] - w["rate"] for _, w in pts]]
                ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=4, label=label)
        ax.axhline(0.5, color="gray", lw=0.8)
        ax.set_xticks(sorted({r["round"] for r in rounds}))  # rounds are whole numbers
        ax.set(title="win rate over the starting policy (95% CI)", xlabel="round", ylim=(0, 1))
        ax.legend(fontsize=7)

    return _svg(draw)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _rounds(recs: dict[str, dict]) -> list[dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for name, rec in recs.items():
        r = out.setdefault(round_of(name), {"round": round_of(name)})
        if rec.get("kind") == "eval" and rec["result"].get("wins"):
            key = next(iter(rec["result"]["wins"]))
            r.update(eval=rec, key=key, greedy=rec["result"]["wins"][key],
                     sampled=(rec["result"].get("sampled") or {}).get("wins", {}).get(key),
                     kl=rec["result"].get("kl"))
        elif rec.get("kind") in RL_KINDS:
            r["train"], r["policy_stage"] = training(Path(rec["result"]["model"]).parent), name
        elif rec.get("kind") == "label":
            r.setdefault("labels", []).append((name, Path(rec["result"]["data"])))
    return [out[k] for k in sorted(out)]


def alarms(rounds: list[dict[str, Any]], cfg: ReportConfig) -> list[str]:
    """The reward-hacking watch: KL over budget, length drift, reward model up while the
    independent judge goes down (Gao et al., 2023, "Scaling laws for reward model
    overoptimization": the proxy keeps rising after the true reward turns)."""
    out = []
    for r in rounds:
        kl, train = r.get("kl"), r.get("train")
        if kl and kl.get("within_budget") is False:
            out.append(f"round {r['round']}: KL {kl['kl']:.2f} nats is over the "
                       f"{kl['budget']:g} budget")
        if train:
            length = [x for x in train["curves"]["response_length"] if x is not None]
            k = max(len(length) // 5, 1)
            if length and sum(length[:k]) > 0:
                a, b = sum(length[:k]) / k, sum(length[-k:]) / k
                if abs(b - a) / a > cfg.length_drift:
                    out.append(f"round {r['round']}: response length drifted "
                               f"{a:.1f} -> {b:.1f} tokens")
            w = train["watch"]
            rm_up = len(w["step"]) >= 2 and w["rm"][-1] > w["rm"][0]
            if rm_up and w["rubric"][-1] < w["rubric"][0] - 0.02:
                out.append(f"round {r['round']}: reward-model score rose ({w['rm'][0]:.2f} -> "
                           f"{w['rm'][-1]:.2f}) while the rubric fell ({w['rubric'][0]:.3f} -> "
                           f"{w['rubric'][-1]:.3f}): possible reward hacking")
    return out


def _samples(r: dict[str, Any], n: int) -> str:
    from coachlm.data.io import read_records

    ev = r["eval"]
    a, b = r["key"].split("_over_")
    d = Path(ev["result"]["report"]).parent
    ours = list(read_records(d / f"samples_{a}.jsonl", kinds=["sample"]))
    theirs = list(read_records(d / f"samples_{b}.jsonl", kinds=["sample"]))
    rows = [(x.meta["rubric_total"] - y.meta["rubric_total"], x, y) for x, y in zip(ours, theirs)]
    pick = {"best": sorted(rows, key=lambda t: -t[1].meta["rubric_total"])[:n],
            "worst": sorted(rows, key=lambda t: t[1].meta["rubric_total"])[:n],
            "most changed": sorted(rows, key=lambda t: -abs(t[0]))[:n]}
    esc = lambda s: f"<pre>{html.escape(s)}</pre>"  # noqa: E731
    return "".join(f"<h3>{name} ({a} vs {b})</h3>" + _table(
        ["prompt", f"{a}", f"{b}", f"{a} score", f"{b} score"],
        [[esc(x.prompt[-1].content), esc(x.response.text), esc(y.response.text),
          f"{x.meta['rubric_total']:.2f}", f"{y.meta['rubric_total']:.2f}"] for _, x, y in sel])
        for name, sel in pick.items())


def _leaderboard(recs: dict[str, dict]) -> str:
    boards = [rec for rec in recs.values() if rec.get("kind") == "leaderboard"]
    if not boards:
        return "<p>No leaderboard stage in this run.</p>"
    parts = []
    result = boards[-1]["result"]
    for judge, rows in result["boards"].items():
        skipped = (result.get("skipped_too_long") or {}).get(judge)
        if skipped:
            parts.append(f"<p class=alarm>{html.escape(judge)}: {skipped} pairs skipped, too "
                         f"long for the judge's context ({result['matches'][judge]} judged)</p>")
        parts.append(f"<h3>by {html.escape(judge)}</h3>" + _table(
            ["player", "Bradley-Terry [95% CI]", "Elo [95% CI]", "wins", "matches"],
            [[html.escape(x["name"]), f"{x['bt']:.0f} [{x['bt_lo']:.0f}, {x['bt_hi']:.0f}]",
              f"{x['elo']:.0f} [{x['elo_lo']:.0f}, {x['elo_hi']:.0f}]", f"{x['wins']:g}",
              x["matches"]] for x in rows]))
    return "".join(parts)


def _labels(rounds: list[dict[str, Any]], cfg: ReportConfig) -> str:
    rows = []
    for r in rounds:  # a round's own labels, then (a loop) its comparisons of two versions
        for stage, path in r.get("labels", []):
            if not path.stat().st_size:
                continue
            s = labels(path, cfg.rate_per_hour)
            money = "-" if s["money_per_label"] is None else f"${s['money_per_label']:.3f}"
            secs = "-" if s["seconds_per_label"] is None else f"{s['seconds_per_label']:.1f}"
            alpha = "n/a (one label per item)" if s["alpha"] is None else f"{s['alpha']:.3f}"
            rows.append([r["round"], html.escape(stage), s["n"],
                         html.escape(json.dumps(s["by_source"])),
                         f"{s['gold_accuracy_all']:.1%}", alpha, secs, money,
                         f"${s['n'] * (s['money_per_label'] or 0):.2f}"])
    return _table(["round", "stage", "labels", "by source", "accuracy vs rubric (gold)",
                   "Krippendorff alpha", "seconds / label",
                   f"money / label at ${cfg.rate_per_hour:g}/h",
                   "round total"], rows)


def _round_section(r: dict[str, Any]) -> str:
    parts = [f"<h2>Round {r['round']}</h2>" if r["round"] else "<h2>Training and evaluation</h2>"]
    if r.get("greedy"):
        a, b = r["key"].split("_over_")
        rows = [["greedy", fmt(r["greedy"])]]
        test = r["eval"]["result"].get("splits", {}).get("test")
        if test:
            rows.append([f"greedy, test half ({test['n']} prompts)", fmt(test["wins"][r["key"]])])
        if r.get("sampled"):
            rows.append(["sampled (training temperature and length)", fmt(r["sampled"])])
        if r.get("kl"):
            rows.append([f"KL({a} || {b}) at temperature {r['kl'].get('temperature', 1):g}",
                         f"{r['kl']['kl']:.3f} ± {r['kl']['kl_stderr']:.3f} nats"])
        for flag in r["eval"]["result"].get("flags", []):
            rows.append(["<span class=alarm>flag</span>", html.escape(flag)])
        parts.append(f"<h3>win rate of {html.escape(a)} over {html.escape(b)}</h3>"
                     + _table(["judged", "win rate [95% CI] (W/T/L)"], rows))
    t = r.get("train")
    if t:
        c, w = t["curves"], t["watch"]
        parts.append(_lines({"reward (normalized)": (c["step"], c["reward"]),
                             "reward model (raw)": (c["step"], c["reward_raw"])}, "reward", "score")
                     + _lines({"KL": (c["step"], c["kl"])}, "KL to the start", "nats")
                     + _lines({"length": (c["step"], c["response_length"])}, "response length",
                              "tokens")
                     + _lines({"reward model (raw)": (w["step"], w["rm"]),
                               "rubric (independent judge)": (w["step"], w["rubric"])},
                              "reward model vs rubric on training samples", "mean score"))
    return "".join(parts)


def write_report(cfg: ReportConfig) -> Path:
    """Write the report; returns its path."""
    run_dir = Path(cfg.run_dir)
    recs = stages(run_dir)
    rounds = _rounds(recs)
    found = alarms(rounds, cfg)
    watch = ("".join(f"<li class=alarm>{html.escape(a)}</li>" for a in found)
             or "<li class=ok>no alarm: KL within budget, length steady, reward model and "
                "rubric move together</li>")
    with_wins = [r for r in rounds if r.get("greedy")]
    body = [f"<h1>coachlm run report: {html.escape(str(run_dir))}</h1>",
            f"<h2>Reward-hacking watch</h2><ul>{watch}</ul>"]
    if len(with_wins) > 1:
        body.append(_win_plot(with_wins))
    body += [_round_section(r) for r in rounds if r.get("greedy") or r.get("train")]
    body += ["<h2>Leaderboard</h2>", _leaderboard(recs), "<h2>Labels</h2>", _labels(rounds, cfg)]
    if with_wins:
        body += ["<h2>Samples</h2>", _samples(with_wins[-1], cfg.samples_shown)]
    body.append("<h2>Stages</h2>" + _table(
        ["stage", "kind", "key", "seconds"],
        [[html.escape(n), r.get("kind", ""), r["key"], r["seconds"]] for n, r in recs.items()]))
    out = cfg.out or run_dir / "report.html"
    out.write_text("<!doctype html><html><head><meta charset=utf-8><title>coachlm report</title>"
                   f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    return out
