// Meshscope dashboard behaviour that htmx does not cover. Loaded as a file so
// the Content-Security-Policy can forbid inline script.
"use strict";
(function () {
  // Pause: while the pause box is checked, htmx polling requests are cancelled
  // before they leave the browser, so the data on screen stays as it is.
  document.addEventListener("htmx:beforeRequest", function (evt) {
    var pause = document.getElementById("pause");
    if (pause && pause.checked && evt.detail.elt.hasAttribute("data-poll")) {
      evt.preventDefault();
    }
  });
  // Theme toggle: system -> dark -> light -> system, kept for a year in the cookie "theme", which the
  // server reads to render <html data-theme> (no flash of the wrong colours on the next page).
  document.addEventListener("click", function (evt) {
    var b = evt.target.closest && evt.target.closest("#theme-toggle");
    if (!b) { return; }
    var next = { "": "dark", dark: "light", light: "" }[document.documentElement.dataset.theme || ""];
    var path = "; path=/; SameSite=Lax";
    document.cookie = next ? "theme=" + next + path + "; max-age=31536000" : "theme=" + path + "; max-age=0";
    document.documentElement.dataset.theme = next;
    b.textContent = "theme: " + (next || "system");
  });
  // A failed refresh must not leave a stale "updated at" without saying so.
  document.addEventListener("htmx:sendError", function () {
    var s = document.querySelector("[data-testid=refresh-status]");
    if (s) { s.textContent = "refresh failed: dashboard unreachable"; s.className = "bad"; }
  });
})();
