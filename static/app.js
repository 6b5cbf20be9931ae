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
  // A failed refresh must not leave a stale "updated at" without saying so.
  document.addEventListener("htmx:sendError", function () {
    var s = document.querySelector("[data-testid=refresh-status]");
    if (s) { s.textContent = "refresh failed: dashboard unreachable"; s.className = "bad"; }
  });
})();
