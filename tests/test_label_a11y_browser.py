"""Guard: every page of the labeling app, at a 390 px phone width, has zero unlabeled controls,
no two controls with the same accessible name, one h1, text contrast of 4.5:1 and control borders
of 3:1 (WCAG 2.1, 1.4.3 and 1.4.11), and no horizontal overflow (issue 14, item 7). The pages are reached as a labeler (queue, each task kind, guidelines, an error page)
and as an admin (projects, a project, items, labelers, quality, ratings, dashboard, review
pages)."""

from __future__ import annotations

from browser_support import (PHONE, labelers, needs_chromium, new_page, project, sign_in,
                             site_fixture)

from coachlm.data import schema
from coachlm.feedback import importer

pytestmark = needs_chromium

# The accessible name as a screen reader would compute it, in the common cases the app uses.
AUDIT = """() => {
  const visible = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const text = el => (el.textContent || "").replace(/\\s+/g, " ").trim();
  function name(el) {
    if (el.getAttribute("aria-label")) return el.getAttribute("aria-label").trim();
    const by = el.getAttribute("aria-labelledby");
    if (by) return by.split(/\\s+/).map(id => text(document.getElementById(id) || {})).join(" ");
    if (el.labels && el.labels.length) return Array.from(el.labels).map(text).join(" ");
    if (/^(BUTTON|A|SUMMARY)$/.test(el.tagName)) return text(el);
    if (el.type === "submit" || el.type === "button") return el.value;
    return el.getAttribute("title") || "";
  }
  const controls = Array.from(document.querySelectorAll(
    "input:not([type=hidden]), select, textarea, button, a[href], summary, [tabindex='0']"))
    .filter(visible);
  const unlabeled = controls.filter(el => !name(el)).map(el => el.outerHTML.slice(0, 120));
  const named = controls.filter(el => !/^(radio|checkbox)$/.test(el.type) && el.tagName !== "A")
    .map(name);
  const dupes = named.filter((n, i) => n && named.indexOf(n) !== i);
  // WCAG 2.1 contrast: 4.5:1 for text (1.4.3), 3:1 for the borders of form controls (1.4.11).
  const rgb = c => (c.match(/[0-9.]+/g) || []).map(Number);
  const lum = c => { const v = rgb(c).slice(0, 3).map(x => x / 255).map(x =>
    x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4));
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05); };
  function background(el) {
    for (let e = el; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor, a = rgb(c)[3];
      if (a === undefined || a > 0.5) return c;
    }
    return "rgb(255, 255, 255)";
  }
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    if (!visible(el) || el.closest("svg, [disabled], label:has(input:disabled)")) continue;
    const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
    const st = getComputedStyle(el);
    if (own && ratio(st.color, background(el)) < 4.5)
      low.push(`text ${st.color} on ${background(el)}: ${text(el).slice(0, 40)}`);
    if (/^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName) && !/^(radio|checkbox)$/.test(el.type)
        && ratio(st.borderTopColor, background(el.parentElement)) < 3)
      low.push(`border ${st.borderTopColor} of ${el.name}`);
  }
  return {unlabeled, dupes, low: low.slice(0, 5), h1: document.querySelectorAll("h1").length,
          overflow: document.documentElement.scrollWidth - window.innerWidth};
}"""


def _build(s) -> None:
    p = project(s, "a-very-long-project-name-that-might-overflow-a-phone",
                [f"Question {i}?" for i in range(2)],
                lambda i, j: f"answer {i}.{j} " + "averyveryverylongunbrokenword" * 8,
                kinds=("comparison", "ranking", "rating", "demonstration"), n_responses=3,
                n_labels=2, max_per_prompt=1, guidelines="## Rules\n\n" + "Be careful. " * 40,
                models="model-{j}")
    a, b = (schema.Response(f"answer 0.{j} " + "averyveryverylongunbrokenword" * 8,
                            f"model-{j}") for j in range(2))
    importer.import_records(s, p, [schema.Comparison(
        prompt=schema.as_prompt("Question 0?"), a=a, b=b, choice=c, labeler=f"judge-{c}",
        source="ai", time_spent_s=1.0) for c in ("a", "b")])
    labelers(s, "ann")
    labelers(s, "root", role="admin")
    labelers(s, "rev", role="reviewer")


site = site_fixture(_build)


def _audit(page, where: str) -> list[str]:
    r = page.evaluate(AUDIT)
    problems = [f"{where}: unlabeled {u}" for u in r["unlabeled"]]
    problems += [f"{where}: two controls named {d!r}" for d in r["dupes"]]
    problems += [f"{where}: low contrast {x}" for x in r["low"]]
    if r["h1"] != 1:
        problems.append(f"{where}: {r['h1']} h1 headings")
    if r["overflow"] > 0:
        problems.append(f"{where}: {r['overflow']} px of horizontal overflow at 390 px")
    return problems


def test_labeler_pages_have_labels_headings_and_fit_a_phone(site):
    url = site[0]
    page = new_page(site, viewport=PHONE)
    page.goto(url + "/login")
    problems = _audit(page, "/login")
    sign_in(page, url, "ann", "ann-password")
    problems += _audit(page, "/")
    with page.expect_navigation():
        page.click("button.start")
    kinds = set()
    for _ in range(12):
        kind = page.get_attribute("#task-form", "data-kind")
        if kind is None:
            break
        if kind not in kinds:
            kinds.add(kind)
            problems += _audit(page, f"task {kind}")
        with page.expect_navigation():
            page.click("#skip-button")
    assert kinds == {"comparison", "ranking", "rating", "demonstration"}
    for path in ("/", "/p/1/guidelines", "/a/99999"):
        page.goto(url + path)
        problems += _audit(page, path)
    assert problems == [], "\n".join(problems)


def test_admin_and_reviewer_pages_have_labels_headings_and_fit_a_phone(site):
    url = site[0]
    page = new_page(site, viewport=PHONE)
    sign_in(page, url, "root", "root-password", "/admin")
    problems = []
    for path in ("/admin", "/admin/p/1", "/admin/labelers", "/admin/p/1/quality",
                 "/admin/p/1/ratings", "/admin/p/1/dashboard", "/admin/p/1/items",
                 "/review/p/1", "/review/t/1"):
        page.goto(url + path)
        problems += _audit(page, path)
    rev = new_page(site, viewport=PHONE)
    sign_in(rev, url, "rev", "rev-password")
    problems += _audit(rev, "/ (reviewer)")
    assert problems == [], "\n".join(problems)
