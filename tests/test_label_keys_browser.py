"""The keyboard on a comparison page, in a real browser (issue 14's verified bugs).

Each test reproduces one bug seen when the app was used as a lead would use it: Enter on the
"Skip" button or the "Queue" link submitted the label; arrow keys inside the "How much better?"
group changed the left/right choice; "better" was pre-selected as the strength, so a margin the
labeler never chose was recorded. Every test uses its own labeler, so they share one server.
"""

from __future__ import annotations

from browser_support import (labelers, labels_of, needs_chromium, new_page, press, project,
                             site_fixture, start, statuses_of)

pytestmark = needs_chromium
LABELERS = ("skipper", "linker", "arrows", "strength", "keys", "tie")


def _build(s) -> None:
    project(s, "demo", [f"Question {i}?" for i in range(4)], lambda i, j: f"answer {i}.{j}",
            n_labels=len(LABELERS), guidelines="Prefer **correct** answers.")
    labelers(s, *LABELERS)


site = site_fixture(_build)


def _start(site, name: str):
    page = new_page(site, name, timeout_ms=5000)
    start(page)
    return page


def test_enter_on_skip_button_skips_instead_of_submitting(site):
    page = _start(site, "skipper")
    press(page, "ArrowLeft", "3")
    page.focus("#skip-button")
    press(page, "Enter", navigates=True)
    assert labels_of(site[1], "skipper") == []
    assert statuses_of(site[1], "skipper")[0] == "skipped"


def test_enter_on_queue_link_follows_the_link(site):
    page = _start(site, "linker")
    press(page, "ArrowRight", "2")
    page.focus("#nav-queue")
    press(page, "Enter", navigates=True)
    assert page.url.rstrip("/") == site[0]
    assert labels_of(site[1], "linker") == []


def test_arrow_keys_in_the_strength_group_keep_the_choice(site):
    page = _start(site, "arrows")
    page.keyboard.press("ArrowLeft")
    page.click('label:has(input[name="strength"][value="1"])')
    page.keyboard.press("ArrowRight")  # the browser moves within the strength group
    assert page.is_checked('input[name="choice"][value="first"]')
    assert not page.is_checked('input[name="choice"][value="second"]')
    assert page.is_checked('input[name="strength"][value="2"]')


def test_no_strength_is_preselected_and_a_or_b_needs_one(site):
    page = _start(site, "strength")
    assert page.eval_on_selector_all('input[name="strength"]', "els => els.filter(e => e.checked)"
                                     ".length") == 0
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")  # no strength chosen: the browser refuses to submit
    page.wait_for_timeout(300)
    assert labels_of(site[1], "strength") == []
    assert "/a/" in page.url
    page.keyboard.press("1")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    (label,) = labels_of(site[1], "strength")
    assert label.answer["margin"] == 1.0


def test_tie_needs_no_strength_and_records_none(site):
    page = _start(site, "tie")
    page.keyboard.press("t")
    assert page.is_disabled('input[name="strength"][value="1"]')
    with page.expect_navigation():
        page.keyboard.press("Enter")
    (label,) = labels_of(site[1], "tie")
    assert label.answer == {"choice": "tie", "margin": None}


def test_s_skips_and_question_mark_shows_the_shortcuts(site):
    page = _start(site, "keys")
    assert not page.is_visible("#shortcuts")
    page.keyboard.press("?")
    assert page.is_visible("#shortcuts")
    assert "Skip" in page.inner_text("#shortcuts")
    page.keyboard.press("Escape")
    assert not page.is_visible("#shortcuts")
    with page.expect_navigation():
        page.keyboard.press("s")
    assert statuses_of(site[1], "keys")[0] == "skipped" and labels_of(site[1], "keys") == []
