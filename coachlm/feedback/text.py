"""Text that may enter the store, and text that leaves it.

JSON lets a client send a lone UTF-16 surrogate (`"\\ud800"`): Python decodes it into a `str`
that cannot be encoded as UTF-8, so it would be stored and then break every export (and the
pages that show it). PostgreSQL cannot store a NUL character in a text column. Both are
refused at the door (`check_text`, `check_tree`), with the field named; `scrub` replaces
anything already stored that way by U+FFFD so that exports of old stores still work.
"""

from __future__ import annotations

import re
from typing import Any

from coachlm.feedback.db import StoreError

_BAD = re.compile("[\ud800-\udfff\x00]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def bad_text(value: str) -> str | None:
    """Why `value` cannot be stored (None if it can)."""
    m = _BAD.search(value)
    if m is None:
        return None
    return "contains a NUL character" if m.group() == "\x00" else (
        f"contains a lone surrogate (U+{ord(m.group()):04X}), which is not valid Unicode")


def check_text(value: str, where: str) -> str:
    """`value` itself if it may be stored, else a StoreError naming `where`."""
    why = bad_text(value)
    if why:
        raise StoreError(f"{where} {why}")
    return value


def check_tree(value: Any, where: str = "body") -> None:
    """Check every string (keys included) in a JSON-like value; errors name the path."""
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                check_text(k, f"{where} key")
            check_tree(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_tree(v, f"{where}[{i}]")


def scrub(value: Any) -> Any:
    """A copy of a JSON-like value with lone surrogates replaced by U+FFFD (for output)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub(v) for v in value)
    return value
