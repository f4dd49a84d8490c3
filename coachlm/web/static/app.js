// coachlm label: timers, client-generated submission ids, keyboard shortcuts.
// Served from this origin only (the Content-Security-Policy forbids inline and remote script).
// Every page works without it; it only adds shortcuts, the strength rule and safe submits.
"use strict";

(function () {
  const form = document.getElementById("task-form");
  if (!form) return;
  // Back to a page kept in the browser's memory: reload it, so it shows what the server has
  // now (e.g. "you have answered this item") rather than a stale, half-sent form.
  window.addEventListener("pageshow", function (ev) { if (ev.persisted) location.reload(); });
  const started = performance.now();
  const timer = document.getElementById("timer");
  if (timer) {
    setInterval(function () {
      const s = Math.floor((performance.now() - started) / 1000);
      timer.textContent = Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
    }, 1000);
  }

  // A fresh id made here, once per page: resubmitting the same page (a double click, a retry
  // after a network error) sends the same id, and the server counts the label once.
  const cid = form.querySelector(".client-id");
  if (cid && window.crypto && crypto.randomUUID && !cid.dataset.keep) {
    cid.value = crypto.randomUUID().replace(/-/g, "");
  }

  // Submits go through fetch so that a failure never leaves the page: on a network error or an
  // expired session the answer stays on screen and in sessionStorage, and "Submit" again sends
  // it with the same client id (the server counts it once even if the first try got through).
  // Without fetch (or without this script) the form posts normally.
  const draftKey = "coachlm-draft:" + location.pathname;
  const live = document.getElementById("form-error") || makeErrorBox();
  function makeErrorBox() {
    const p = document.createElement("p");
    p.id = "form-error"; p.className = "error"; p.setAttribute("role", "alert"); p.hidden = true;
    form.parentNode.insertBefore(p, form);
    return p;
  }
  function fields() {
    const out = [];
    new FormData(form).forEach(function (v, k) {
      if (k !== "csrf" && k !== "elapsed_ms") out.push([k, String(v)]);
    });
    return out;
  }
  function saveDraft() {
    try { sessionStorage.setItem(draftKey, JSON.stringify(fields())); } catch (e) { /* full */ }
  }
  function restoreDraft() {
    let saved = null;
    try { saved = JSON.parse(sessionStorage.getItem(draftKey) || "null"); } catch (e) { saved = null; }
    if (!saved || !document.getElementById("submit")) return;
    const ranks = saved.filter(function (kv) { return kv[0] === "ranks"; });
    form.querySelectorAll('select[name="ranks"]').forEach(function (sel, i) {
      if (ranks[i]) sel.value = ranks[i][1];
    });
    saved.forEach(function (kv) {
      const k = kv[0], v = kv[1];
      if (k === "client_id") { if (cid) cid.value = v; return; }
      form.querySelectorAll('[name="' + k + '"]').forEach(function (el) {
        if (el.type === "radio" || el.type === "checkbox") { if (el.value === v) el.checked = true; }
        else if (el.tagName === "TEXTAREA") el.value = v;
      });
    });
  }
  restoreDraft();
  form.addEventListener("input", saveDraft);
  form.addEventListener("change", saveDraft);

  function fail(message, session) {
    live.hidden = false;
    live.textContent = "";
    live.append(message);
    if (session) {
      const a = document.createElement("a");
      a.href = "/login?next=" + encodeURIComponent(location.pathname);
      a.target = "_blank"; a.rel = "noopener"; a.textContent = " Sign in again in a new tab";
      live.append(a, ", then press Submit here: your answer is kept.");
    }
    needFreshToken = needFreshToken || Boolean(session);
    sending = false;
    const button = document.getElementById("submit");
    if (button) button.disabled = false;
  }
  function freshToken() {  // a new sign-in has a new CSRF token: read it from this page again
    return fetch(location.pathname, { credentials: "same-origin" }).then(function (r) {
      return r.text();
    }).then(function (html) {
      const doc = new DOMParser().parseFromString(html, "text/html");
      const fresh = doc.querySelector('input[name="csrf"]');
      if (fresh) form.querySelector('input[name="csrf"]').value = fresh.value;
    });
  }
  function send() {
    return fetch(form.action, { method: "POST", credentials: "same-origin",
                               headers: { "X-Coachlm-Fetch": "1" },
                               body: new URLSearchParams(new FormData(form)) });
  }
  let sending = false, needFreshToken = false;
  form.addEventListener("submit", function (ev) {
    if (!window.fetch) return;
    ev.preventDefault();
    if (sending) return;
    sending = true;
    saveDraft();
    form.querySelector(".elapsed").value = String(Math.round(performance.now() - started));
    const button = document.getElementById("submit");
    if (button) button.disabled = true;
    live.hidden = true;
    (needFreshToken ? freshToken() : Promise.resolve()).then(send).then(function (r) {
      if (r.redirected && new URL(r.url).pathname === "/login") {
        fail("Not saved: your session has expired.", true);
        return;
      }
      if (r.ok && (r.headers.get("content-type") || "").indexOf("application/json") >= 0) {
        return r.json().then(function (j) {
          try { sessionStorage.removeItem(draftKey); } catch (e) { /* ignore */ }
          location.assign(j.next);
        });
      }
      return r.text().then(function (html) {
        const doc = new DOMParser().parseFromString(html, "text/html");
        const msg = doc.querySelector("#error-message");
        if (r.status === 403) needFreshToken = true;
        fail("Not saved: " + (msg ? msg.textContent : "the server answered " + r.status) + ".");
      });
    }).catch(function () {
      fail("Not saved: the server cannot be reached (network error). Your answer is kept; " +
           "press Submit again to retry.");
    });
  });

  // The strength of a preference exists only for "left" or "right": required then, and
  // disabled (so it is not sent) for a tie or "both bad". Nothing is pre-selected, so a
  // recorded margin is always one the labeler chose.
  const strengths = form.querySelectorAll('input[name="strength"]');
  function syncStrength() {
    const chosen = form.querySelector('input[name="choice"]:checked');
    const decisive = chosen && (chosen.value === "first" || chosen.value === "second");
    strengths.forEach(function (input, i) {
      input.disabled = Boolean(chosen) && !decisive;
      if (input.disabled) input.checked = false;
      input.required = Boolean(decisive) && i === 0;
    });
    const group = document.getElementById("strength-group");
    if (group) group.classList.toggle("off", Boolean(chosen) && !decisive);
  }
  form.addEventListener("change", syncStrength);
  syncStrength();

  function pick(name, value) {
    const input = form.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (input && !input.disabled) {
      input.checked = true;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    }
  }

  const sheet = document.getElementById("shortcuts");
  function toggleSheet() {
    if (!sheet) return;
    if (sheet.open) sheet.close(); else sheet.showModal();
  }
  document.querySelectorAll("[data-opens=shortcuts]").forEach(function (b) {
    b.addEventListener("click", toggleSheet);
  });

  // Where a key belongs to the browser: Enter on a link or a button follows or presses it,
  // arrow keys move within a radio group, and text fields, selects and <summary> keep their keys.
  function ownsEnter(el) {
    return Boolean(el.closest("a, button, select, textarea, summary, dialog, " +
                               "input:not([type=radio]):not([type=checkbox])"));
  }
  function ownsArrows(el) {
    return Boolean(el.closest("input, select, textarea, button, a, summary, dialog"));
  }
  function typing(el) {
    const tag = (el.tagName || "").toLowerCase();
    return tag === "textarea" || tag === "select" ||
      tag === "input" && !/^(radio|checkbox|submit|button|hidden)$/.test(el.type);
  }

  const kind = form.dataset.kind;
  const choiceKeys = { ArrowLeft: "first", ArrowRight: "second", t: "tie", x: "both_bad" };
  document.addEventListener("keydown", function (ev) {
    const el = ev.target instanceof Element ? ev.target : document.body;
    if (sheet && sheet.open) return;  // the dialog has the keys (Escape closes it)
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      if (form.contains(el) || el === document.body) { ev.preventDefault(); form.requestSubmit(); }
      return;
    }
    if (ev.altKey || ev.ctrlKey || ev.metaKey || typing(el)) return;
    if (ev.key === "?") { ev.preventDefault(); toggleSheet(); return; }
    if (ev.key === "s") {
      const skip = document.getElementById("skip-button");
      if (skip) { ev.preventDefault(); skip.click(); }
      return;
    }
    if (ev.key === "g") {
      const panel = document.getElementById("guidelines-panel");
      if (panel) { ev.preventDefault(); panel.open = !panel.open; }
      return;
    }
    if (kind === "comparison") {
      const arrow = ev.key === "ArrowLeft" || ev.key === "ArrowRight";
      if (arrow && ownsArrows(el)) return;
      if (choiceKeys[ev.key]) { ev.preventDefault(); pick("choice", choiceKeys[ev.key]); }
      else if (/^[1-3]$/.test(ev.key)) { ev.preventDefault(); pick("strength", ev.key); }
      else if (ev.key === "Enter" && !ownsEnter(el)) { ev.preventDefault(); form.requestSubmit(); }
    } else if (kind === "rating" && /^[1-9]$/.test(ev.key)) {
      pick("score", ev.key);
    }
  });
})();
