// coachlm label: timers, client-generated submission ids, keyboard shortcuts.
// Served from this origin only (the Content-Security-Policy forbids inline and remote script).
"use strict";

(function () {
  const form = document.getElementById("task-form");
  if (!form) return;
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
  if (cid && window.crypto && crypto.randomUUID) cid.value = crypto.randomUUID().replace(/-/g, "");

  let sent = false;
  form.addEventListener("submit", function (ev) {
    if (sent) { ev.preventDefault(); return; }
    sent = true;
    form.querySelector(".elapsed").value = String(Math.round(performance.now() - started));
    const button = document.getElementById("submit");
    if (button) button.disabled = true;
  });

  function pick(name, value) {
    const input = form.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (input) input.checked = true;
  }

  const kind = form.dataset.kind;
  document.addEventListener("keydown", function (ev) {
    const tag = (ev.target.tagName || "").toLowerCase();
    const typing = tag === "textarea" || tag === "input" && ev.target.type === "text" || tag === "select";
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); form.requestSubmit(); return; }
    if (typing || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.key === "g") { document.getElementById("guidelines-link").click(); return; }
    if (kind === "comparison") {
      const keys = { ArrowLeft: ["choice", "first"], ArrowRight: ["choice", "second"],
                     t: ["choice", "tie"], x: ["choice", "both_bad"],
                     "1": ["strength", "1"], "2": ["strength", "2"], "3": ["strength", "3"] };
      if (keys[ev.key]) { ev.preventDefault(); pick(keys[ev.key][0], keys[ev.key][1]); }
      else if (ev.key === "Enter") { ev.preventDefault(); form.requestSubmit(); }
    } else if (kind === "rating" && /^[1-9]$/.test(ev.key)) {
      pick("score", ev.key);
    }
  });
})();
