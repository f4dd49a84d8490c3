"""Long answers and the labeler's flow in a real browser (issue 14, items 2 and 4).

Markdown is rendered (allow-listed, server side), the vote bar is on screen at desktop and phone
widths however long the answers, the columns stack on a phone; Back + Enter and a second tab
get "already saved" rather than an error page; a label can be revised (the old answer is kept);
a network error or an expired session keeps the typed answer and a retry sends it once with the
same client id; skipped items can be revisited; a dry project moves the labeler on; without
JavaScript, a refused answer (left/right with no strength) comes back on the task page, kept.
Set COACHLM_SCREENSHOTS=dir to save the long-answer screenshots there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_support import (DESKTOP, PHONE, labelers, labels_of, needs_chromium, new_page, press,
                             project, sign_in, site_fixture, start)
from sqlalchemy import delete, select

from coachlm.feedback.tables import Assignment, LabelRevision, Labeler, WebSession

pytestmark = needs_chromium
NAMES = ("looker", "backer", "tabber", "reviser", "offline", "sleepy", "skipper", "mover", "nojs")


def long_answer(i: int) -> str:
    steps = "\n".join(f"{k}. Step {k}: " + "explain the reasoning in detail. " * 6 for k in range(1, 25))
    return (f"## Plan {i}\n\nHere is **the** approach.\n\n```python\ndef solve(x):\n"
            f"    return x * {i}\n```\n\n{steps}\n\n### Summary\n\n- one\n- two\n")


def _build(s) -> None:
    project(s, "docs", [f"Question {i}: write a plan with code." for i in range(3)],
            lambda i, j: long_answer(i * 2 + j), n_labels=len(NAMES),
            guidelines="## Rules\n\nPrefer *correct* answers.")
    project(s, "rate", ["Say hi."], lambda i, j: "hi", kinds=("rating",), n_responses=1,
            n_labels=len(NAMES), models="m")
    labelers(s, *NAMES)


site = site_fixture(_build)


def _in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    vp = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= vp["height"] + 1


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_long_answers_render_markdown_with_the_vote_bar_on_screen(site, viewport):
    page = new_page(site, "looker", viewport)
    start(page, "docs")
    pane = page.locator("#response-1 .pane")
    assert pane.locator("h2").count() == 1 and pane.locator("pre code").count() == 1
    assert "```" not in pane.inner_text() and "## Plan" not in pane.inner_text()
    assert "words" in page.inner_text("#response-1-title")
    assert _in_view(page, "#submit") and _in_view(page, "#strength-group")
    page.mouse.wheel(0, 4000)  # scroll the page: the prompt and the vote bar stay in view
    page.wait_for_timeout(200)
    assert _in_view(page, "#submit") and _in_view(page, ".conversation .turn.user")
    first, second = (page.locator(f"#response-{i}").bounding_box() for i in (1, 2))
    if viewport is PHONE:
        assert second["y"] >= first["y"] + first["height"] - 1 and first["width"] > 300
    else:
        assert abs(second["y"] - first["y"]) < 2 and first["width"] > 500
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    if os.environ.get("COACHLM_SCREENSHOTS"):
        out = Path(os.environ["COACHLM_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        name = "long-answer-phone.png" if viewport is PHONE else "long-answer-desktop.png"
        page.screenshot(path=str(out / name))
    page.click("#diff-panel summary")  # optional: the two answers' differing words marked
    assert page.locator("#diff-panel ins").count() >= 1
    assert page.locator("#diff-panel del").count() >= 1


def test_back_and_enter_says_already_saved(site):
    page = new_page(site, "backer")
    start(page, "docs")
    press(page, "ArrowLeft", "1", "Enter", navigates=True)
    page.go_back()
    page.wait_for_selector("#already")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.is_visible("#already-saved") and "Error" not in page.title()
    assert len(labels_of(site[1], "backer")) == 1


def test_a_second_tab_gets_already_saved_not_an_error(site):
    page = new_page(site, "tabber")
    start(page, "docs")
    other = new_page(site, "tabber", context=page.context)
    other.goto(page.url)
    press(page, "ArrowLeft", "3", "Enter", navigates=True)
    press(other, "ArrowRight", "1", "Enter", navigates=True)
    assert other.is_visible("#already-saved") and "Error" not in other.title()
    (label,) = labels_of(site[1], "tabber")
    assert label.answer["margin"] == 3.0  # the first tab's answer stands


def test_revise_own_label_keeps_the_replaced_answer(site):
    page = new_page(site, "reviser")
    start(page, "docs")
    press(page, "ArrowLeft", "1", "Enter", navigates=True)
    with page.expect_navigation():
        page.click("#prev-link")
    assert "change your answer" in page.inner_text("#already")
    page.keyboard.press("t")
    with page.expect_navigation():
        page.click("#submit")
    (label,) = labels_of(site[1], "reviser")
    assert label.answer == {"choice": "tie", "margin": None}
    with site[1].read() as s:
        (old,) = s.scalars(select(LabelRevision).where(LabelRevision.label_id == label.id))
        assert old.answer["margin"] == 1.0


def test_network_error_keeps_the_answer_and_a_retry_counts_once(site):
    page = new_page(site, "offline")
    start(page, "docs")
    page.route("**/a/*", lambda route: route.abort() if route.request.method == "POST"
               else route.continue_())
    press(page, "ArrowRight", "2", "Enter")
    page.wait_for_selector("#form-error:not([hidden])")
    assert "network" in page.inner_text("#form-error") and "/a/" in page.url
    cid = page.input_value(".client-id")
    page.unroute("**/a/*")
    assert page.is_checked('input[name="choice"][value="second"]')
    with page.expect_navigation():
        page.click("#submit")
    (label,) = labels_of(site[1], "offline")
    assert label.client_id == cid


def test_expired_session_keeps_score_and_critique(site):
    page = new_page(site, "sleepy")
    start(page, "rate")
    page.keyboard.press("5")
    page.fill("#critique", "Too curt for a greeting.")
    with site[1].write() as s:  # the session ends while the labeler is typing
        lab = s.scalar(select(Labeler).where(Labeler.name == "sleepy"))
        s.execute(delete(WebSession).where(WebSession.labeler_id == lab.id))
    page.click("#submit")
    page.wait_for_selector("#form-error:not([hidden])")
    assert "session has expired" in page.inner_text("#form-error")
    assert page.input_value("#critique") == "Too curt for a greeting."
    other = new_page(site, "sleepy", context=page.context)
    sign_in(other, site[0], "sleepy", "sleepy-password")
    with page.expect_navigation():
        page.click("#submit")
    (label,) = labels_of(site[1], "sleepy")
    assert label.answer["score"] == 5 and label.answer["critique"] == "Too curt for a greeting."


def test_skip_with_a_reason_then_revisit(site):
    page = new_page(site, "skipper")
    start(page, "docs")
    first = page.url.split("?")[0]
    page.select_option("#skip-reason", "I cannot judge this topic")
    with page.expect_navigation():
        page.click("#skip-button")
    page.goto(site[0] + "/")
    assert "I cannot judge this topic" in page.inner_text("#skipped")
    with page.expect_navigation():
        page.click("#skipped button")
    assert page.url.split("?")[0] == first and page.is_visible("#submit")
    with site[1].read() as s:
        a = s.get(Assignment, int(first.rsplit("/", 1)[1]))
        assert a.status == "pending" and a.slot is not None


def test_a_dry_project_moves_on_to_the_next_with_work(site):
    page = new_page(site, "mover")
    start(page, "rate")  # one item only
    page.keyboard.press("4")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    assert page.is_visible("#moved-note") and "docs" in page.inner_text("#moved-note")


def test_without_javascript_a_missing_strength_keeps_the_answer_on_the_page(site):
    page = new_page(site, "nojs", js=False)
    start(page, "docs")
    item = page.url.split("?")[0]
    page.check('input[name="choice"][value="second"]')  # Right, and no strength
    with page.expect_navigation() as nav:
        page.click("#submit")
    assert nav.value.status == 400 and page.url.split("?")[0] == item
    assert "how much better" in page.inner_text("#form-error")
    assert "Error" not in page.title() and page.is_checked('input[name="choice"][value="second"]')
    assert labels_of(site[1], "nojs") == []
    page.check('input[name="strength"][value="2"]')
    with page.expect_navigation():
        page.click("#submit")
    (label,) = labels_of(site[1], "nojs")
    assert label.answer["margin"] == 2.0 and "Saved" in page.inner_text("main")
