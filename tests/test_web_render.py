"""Server-side rendering of model text: allow-listed markdown, word counts and word diffs."""

from __future__ import annotations

from coachlm.web.diff import MAX_TOKENS, word_diff
from coachlm.web.markdown import render, words


def test_markdown_renders_structure_and_never_markup_from_the_model():
    html = render("## Plan\n\n```python\nprint(1)\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                  "<script>alert(1)</script> <img src=x onerror=alert(1)>\n\n"
                  "[bad](javascript:alert(1)) [good](https://example.org)")
    assert "<h2>Plan</h2>" in html and '<code class="language-python">' in html
    assert "<table>" in html and "<td>2</td>" in html
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
    assert 'href="javascript' not in html
    assert '<a href="https://example.org" rel="noopener noreferrer nofollow">good</a>' in html


def test_word_count_and_word_diff():
    assert words("It's 2 + 2 = 4, isn't it?") == 6
    left, right = word_diff("the cat sat <b>", "the dog sat <b> down")
    assert left == "the <del>cat</del> sat &lt;b&gt;"
    assert right == "the <ins>dog</ins> sat &lt;b&gt;<ins> down</ins>"
    assert word_diff("x " * MAX_TOKENS, "y") is None
