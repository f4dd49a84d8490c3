"""Model answers, prompts and guidelines rendered as markdown on the server, allow-listed.

Answers are judged as their readers would see them: code fences, headings, lists and tables
rendered rather than shown raw. CommonMark (markdown-it-py) runs with raw HTML off, so any HTML a
model writes is shown as text; the result then passes nh3's allow-list (tags, attributes and
link schemes), so that nothing can carry script even if the parser had a bug. No script is
needed to read the result, and the Content-Security-Policy still forbids inline script.
"""

from __future__ import annotations

import re
from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "code",
        "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td"}
# No style attributes: the Content-Security-Policy (style-src 'self') would refuse them anyway.
ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}
_WORD = re.compile(r"\w+(?:[-'’]\w+)*")


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}
                      ).enable(["table", "strikethrough"])


@lru_cache(maxsize=512)
def render(text: str | None) -> Markup:
    """Safe HTML for `text` read as CommonMark (with tables and strikethrough)."""
    html = _parser().render(text or "")
    clean = nh3.clean(html, tags=TAGS, attributes=ATTRIBUTES, url_schemes={"http", "https",
                      "mailto"}, link_rel="noopener noreferrer nofollow")
    return Markup(clean)


def words(text: str | None) -> int:
    """Words in `text`, as a labeler would count them (numbers and code tokens included)."""
    return len(_WORD.findall(text or ""))
