"""Optional highlighting of differences between two responses: a word-level diff (difflib's
Ratcliff/Obershelp matching), shown as plain text with words only in the left response marked
<del> and words only in the right one marked <ins>. Escaped here; no script needed."""

from __future__ import annotations

import difflib
import re

from markupsafe import Markup, escape

MAX_TOKENS = 6000  # beyond this the quadratic worst case of the matcher is not worth it
_TOKEN = re.compile(r"\s+|[^\s]+")


def word_diff(left: str, right: str) -> tuple[Markup, Markup] | None:
    """(left, right) as HTML with their differing words marked, or None when too long."""
    a, b = _TOKEN.findall(left or ""), _TOKEN.findall(right or "")
    if len(a) > MAX_TOKENS or len(b) > MAX_TOKENS:
        return None
    out_a, out_b = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        left_part, right_part = escape("".join(a[i1:i2])), escape("".join(b[j1:j2]))
        if op == "equal":
            out_a.append(left_part)
            out_b.append(right_part)
            continue
        if i2 > i1:
            out_a.append(Markup("<del>") + left_part + Markup("</del>"))
        if j2 > j1:
            out_b.append(Markup("<ins>") + right_part + Markup("</ins>"))
    return Markup("").join(out_a), Markup("").join(out_b)
