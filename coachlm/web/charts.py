"""Charts as server-rendered SVG: no script, no remote library, readable with CSS off.
Every chart carries a <title> and an aria-label (the data in words) for screen readers."""

from __future__ import annotations

from typing import Sequence

from markupsafe import Markup, escape

W, ROW, LEFT = 560, 26, 150


def hbars(title: str, rows: Sequence[tuple[str, float, str]], vmax: float = 1.0,
          ref: float | None = None) -> Markup:
    """Horizontal bars: (label, value, value as text); `ref` draws a dashed reference line."""
    h = ROW * len(rows) + 34
    scale = (W - LEFT - 70) / (vmax or 1.0)
    words = "; ".join(f"{lab}: {txt}" for lab, _, txt in rows)
    parts = [f'<svg class="chart" viewBox="0 0 {W} {h}" width="{W}" height="{h}" role="img" '
             f'aria-label="{escape(title)}: {escape(words)}"><title>{escape(title)}</title>',
             f'<text x="8" y="18" font-weight="600" fill="#1d1f23">{escape(title)}</text>']
    for i, (lab, v, txt) in enumerate(rows):
        y = 28 + i * ROW
        width = max(0.0, min(v, vmax)) * scale
        parts.append(f'<text x="8" y="{y + 15}" fill="#1d1f23">{escape(lab[:22])}</text>'
                     f'<rect x="{LEFT}" y="{y + 3}" width="{width:.1f}" height="{ROW - 8}" '
                     f'fill="#2457c5"/><text x="{LEFT + width + 6:.1f}" y="{y + 15}" '
                     f'fill="#1d1f23">{escape(txt)}</text>')
    if ref is not None:
        x = LEFT + ref * scale
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="26" y2="{h - 4}" stroke="#b3261e" '
                     'stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def columns(title: str, rows: Sequence[tuple[str, int]]) -> Markup:
    """Vertical bars of counts (e.g. labels per day)."""
    h, base = 180, 150
    vmax = max([v for _, v in rows] + [1])
    step = (W - 40) / max(len(rows), 1)
    words = "; ".join(f"{lab}: {v}" for lab, v in rows)
    parts = [f'<svg class="chart" viewBox="0 0 {W} {h}" width="{W}" height="{h}" role="img" '
             f'aria-label="{escape(title)}: {escape(words)}"><title>{escape(title)}</title>',
             f'<text x="8" y="18" font-weight="600" fill="#1d1f23">{escape(title)}</text>']
    for i, (lab, v) in enumerate(rows):
        x = 30 + i * step
        bh = (base - 40) * v / vmax
        parts.append(f'<rect x="{x:.1f}" y="{base - bh:.1f}" width="{step * 0.7:.1f}" '
                     f'height="{bh:.1f}" fill="#2457c5"/>')
        if v:
            parts.append(f'<text x="{x:.1f}" y="{base - bh - 4:.1f}" font-size="11" '
                         f'fill="#1d1f23">{v}</text>')
        if i % 2 == 0:
            parts.append(f'<text x="{x:.1f}" y="{base + 16}" font-size="11" '
                         f'fill="#4b5563">{escape(lab)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
