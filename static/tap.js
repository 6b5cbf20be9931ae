// Meshscope live views: the tap table (/tap and the live calls panel of
// deployment and pod pages) and the top table (/top). Each reads its socket and
// filter from the data attributes of its [data-live] section, keeps the socket
// open with automatic reconnection, and shows its state in data-ws-state.
// Every value from the wire goes into the page through textContent only.
"use strict";
(function () {
  var root = document.querySelector("[data-live]");
  if (!root) { return; }
  var mode = root.dataset.live;
  var maxRows = parseInt(root.dataset.maxRows, 10) || 200;
  var stateEl = root.querySelector("[data-testid=ws-state]");
  var countsEl = root.querySelector("[data-testid=live-counts]");
  var problemsEl = root.querySelector("[data-testid=proxy-problems]");
  var hiddenEl = root.querySelector("[data-testid=hidden-list]");
  var pauseBtn = root.querySelector("[data-action=pause]");
  var clearBtn = root.querySelector("[data-action=clear]");
  var tbody = root.querySelector("tbody");
  var emptyEl = root.querySelector(".empty");
  var details = root.querySelector("[data-testid=tap-details]");

  var ws = null;
  var paused = false;
  var backoff = 500;
  var retryTimer = null;
  var shown = 0, dropped = 0, proxyDropped = 0, hiddenCount = 0, topSummary = "";
  // Sampling: the rate the selected proxies carry (the dashboard's "sampling" status, from Prometheus)
  // against the rate of requests that reached this page over the last 10 s (arrivals: [time, count]).
  var sampling = null, arrivals = [];
  function arrived(n) {
    var now = Date.now();
    arrivals.push([now, n]);
    while (arrivals.length && arrivals[0][0] < now - 10000) { arrivals.shift(); }
  }
  function shownRate() {
    if (arrivals.length < 2) { return 0; }
    var span = (arrivals[arrivals.length - 1][0] - arrivals[0][0]) / 1000;
    var n = 0;
    for (var i = 1; i < arrivals.length; i++) { n += arrivals[i][1]; }
    return span > 0 ? n / span : 0;
  }
  var proxies = {};   // proxy name -> last status
  var notice = null;  // a status without a proxy: nothing matches, or listing failed
  var calls = new Map(); // proxy + " " + id -> {tr, req, rsp, end, proxy}

  var pageParams = new URLSearchParams(location.search);
  var hidden = {
    authority: new Set(pageParams.getAll("hide_authority")),
    path: new Set(pageParams.getAll("hide_path"))
  };

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }

  function setState(state, detail) {
    stateEl.dataset.wsState = state;
    stateEl.textContent = detail ? state + ": " + detail : state;
  }

  function socketURL() {
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    var q = root.dataset.query;
    return proto + "//" + location.host + root.dataset.socket + (q ? "?" + q : "");
  }

  function connect() {
    clearTimeout(retryTimer);
    setState("connecting");
    var sock = new WebSocket(socketURL());
    ws = sock;
    sock.onopen = function () {
      // With no query string the server waits for the filter as a first message.
      if (!root.dataset.query) { sock.send("{}"); }
      // A new socket reports every proxy afresh.
      proxies = {};
      notice = null;
      problemsEl.replaceChildren();
      setState("open");
    };
    sock.onmessage = function (m) {
      backoff = 500;
      var frame;
      try { frame = JSON.parse(m.data); } catch (e) { return; }
      onFrame(frame);
    };
    sock.onclose = function (e) {
      if (ws !== sock) { return; }
      ws = null;
      if (paused) { return; }
      if (e.code === 1008) {
        // Policy violation: a bad filter or a foreign origin. Retrying cannot help.
        setState("refused", e.reason || "policy violation");
        return;
      }
      var wait = backoff;
      backoff = Math.min(backoff * 2, 10000);
      setState("closed", (e.reason ? e.reason + "; " : "") + "reconnecting in " + (wait / 1000).toFixed(1) + " s");
      retryTimer = setTimeout(connect, wait);
    };
  }

  var lastRequests = null;
  function onFrame(f) {
    (f.status || []).forEach(noteStatus);
    dropped = f.dropped || 0;
    proxyDropped = f.proxy_dropped || 0;
    if (mode === "top") {
      if (f.top) { arrived(f.top.requests - (lastRequests === null ? f.top.requests : lastRequests)); lastRequests = f.top.requests; }
      renderTop(f.top);
    } else {
      arrived((f.events || []).filter(function (it) { return it.event.type === "request"; }).length);
      (f.events || []).forEach(addEvent);
    }
    renderCounts();
  }

  function noteStatus(s) {
    if (s.state === "sampling") { sampling = s; return; }
    if (s.proxy) {
      proxies[s.proxy] = s;
      if (s.state === "gone") { delete proxies[s.proxy]; }
      notice = null;
    } else {
      notice = s;
    }
    problemsEl.replaceChildren();
    if (notice) { problemsEl.appendChild(el("li", notice.error, "warn")); }
    Object.keys(proxies).sort().forEach(function (name) {
      var p = proxies[name];
      if (p.state === "failed") {
        var li = el("li", "proxy " + name + " not tapped: " + p.error, "bad");
        li.dataset.proxy = name;
        problemsEl.appendChild(li);
      }
    });
  }

  function renderCounts() {
    var streaming = Object.keys(proxies).filter(function (n) { return proxies[n].state === "streaming"; }).length;
    var parts = [];
    if (mode === "tap") {
      parts.push(shown + " calls");
      if (hiddenCount) { parts.push(hiddenCount + " hidden"); }
    } else if (topSummary) {
      parts.push(topSummary);
    }
    parts.push(streaming + (streaming === 1 ? " proxy" : " proxies") + " streaming");
    parts.push("dropped: " + dropped + " by the dashboard, " + proxyDropped + " by proxies");
    if (sampling) {
      parts.unshift("showing " + shownRate().toFixed(1) + " of " + sampling.observed_rps.toFixed(1) + " req/s" +
        (sampling.observed_rps > sampling.max_rps ? " (sampled: max " + sampling.max_rps + " req/s)" : ""));
      countsEl.dataset.observedRps = String(sampling.observed_rps);
      countsEl.title = sampling.error;
    }
    countsEl.textContent = parts.join(" · ");
    countsEl.dataset.dropped = String(dropped + proxyDropped);
  }

  // Names a request's side for humans: its pod, else its deployment, else the ServiceAccount its mutual
  // TLS identity names (an inbound caller), else its address.
  function who(ep) {
    var l = (ep && ep.labels) || {};
    if (!l.pod && !l.deployment && l.serviceaccount) { return l.namespace + "/" + l.serviceaccount; }
    return l.pod || l.deployment || (ep && ep.addr) || "?";
  }

  // The identity of a request's peer over mutual TLS: the caller's inbound, the callee's outbound; "" in
  // plain text.
  function peerIdentity(ev) {
    var peer = ev.direction === "outbound" ? ev.destination : ev.source;
    return (peer && peer.identity) || "";
  }

  function fmtMS(v) {
    if (v === undefined || v === null) { return ""; }
    if (v < 1) { return Math.round(v * 1000) + " µs"; }
    if (v < 1000) { return v.toFixed(1) + " ms"; }
    return (v / 1000).toFixed(2) + " s";
  }

  var grpcNames = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

  function isHidden(req) {
    return hidden.authority.has(req.authority) || hidden.path.has(req.path);
  }

  function addEvent(item) {
    var ev = item.event;
    var key = item.proxy + " " + ev.id;
    if (ev.type === "request") {
      if (isHidden(ev)) { hiddenCount++; return; }
      var tr = document.createElement("tr");
      tr.dataset.key = key;
      tr.tabIndex = 0;
      tr.dataset.ts = ev.ts;
      tr.dataset.shown = String(Date.now());
      tr.dataset.path = ev.path || "";
      tr.dataset.authority = ev.authority || "";
      var target = (ev.path || "") + (ev.query ? "?" + ev.query : "");
      var secured = peerIdentity(ev);
      [(ev.direction === "outbound" ? "out" : "in") + (secured ? " 🔒" : ""), who(ev.source), who(ev.destination), ev.method, target, "…", ""]
        .forEach(function (v, i) {
          var td = el("td", v);
          if (i === 0) { td.title = secured ? "mutual TLS with " + secured : "plain text"; td.dataset.secured = String(!!secured); }
          if (i === 4) { td.title = (ev.authority || "") + target; td.className = "path"; }
          tr.appendChild(td);
        });
      tr.cells[1].title = (ev.source && ev.source.addr) || "";
      tr.cells[2].title = (ev.destination && ev.destination.addr) || "";
      tbody.insertBefore(tr, tbody.firstChild);
      calls.set(key, { tr: tr, req: ev, proxy: item.proxy });
      shown++;
      while (tbody.rows.length > maxRows) {
        var old = tbody.rows[tbody.rows.length - 1];
        calls.delete(old.dataset.key);
        old.remove();
      }
      emptyEl.hidden = true;
      return;
    }
    var c = calls.get(key);
    if (!c) { return; }
    var statusTd = c.tr.cells[5];
    if (ev.type === "response") {
      c.rsp = ev;
      statusTd.textContent = String(ev.status);
      statusTd.className = ev.status >= 500 ? "bad" : "ok";
      c.tr.cells[6].textContent = fmtMS(ev.latency_ms);
    } else if (ev.type === "end") {
      c.end = ev;
      if (ev.grpc_status !== undefined && ev.grpc_status !== null) {
        var name = grpcNames[ev.grpc_status] || String(ev.grpc_status);
        statusTd.textContent = "grpc " + name;
        statusTd.className = ev.grpc_status === 0 ? "ok" : "bad";
      }
      if (ev.error) {
        statusTd.textContent = (c.rsp ? c.rsp.status + " " : "") + "error";
        statusTd.className = "bad";
        statusTd.title = ev.error;
      }
      if (!c.rsp) { c.tr.cells[6].textContent = fmtMS(ev.duration_ms); }
    }
    if (details.dataset.key === key) { showDetails(key); }
  }

  function headerList(title, headers) {
    var box = el("div");
    box.appendChild(el("h3", title));
    var names = Object.keys(headers || {}).sort();
    if (!names.length) { box.appendChild(el("p", "none", "none")); return box; }
    var dl = el("dl");
    names.forEach(function (n) {
      headers[n].forEach(function (v) {
        dl.appendChild(el("dt", n));
        var dd = el("dd", v === "REDACTED" ? "REDACTED (value hidden by the proxy)" : v);
        if (v === "REDACTED") { dd.className = "redacted"; dd.dataset.testid = "redacted"; }
        dl.appendChild(dd);
      });
    });
    box.appendChild(dl);
    return box;
  }

  function showDetails(key) {
    var c = calls.get(key);
    var prev = tbody.querySelector("tr.selected");
    if (prev) { prev.classList.remove("selected"); }
    if (!c) { details.hidden = true; delete details.dataset.key; return; }
    c.tr.classList.add("selected");
    var r = c.req;
    details.dataset.key = key;
    details.replaceChildren();
    var head = el("div", null, "details-head");
    head.appendChild(el("b", r.method + " " + (r.authority || "") + r.path + (r.query ? "?" + r.query : "")));
    var close = el("button", "Close");
    close.type = "button";
    close.onclick = function () { details.hidden = true; delete details.dataset.key; };
    head.appendChild(close);
    details.appendChild(head);
    var facts = [
      "proxy " + c.proxy + " · id " + r.id + " · " + r.direction + " · " + r.ts,
      "source " + (r.source.addr || "?") + " " + JSON.stringify(r.source.labels || {}) +
        (r.source.identity ? " · identity " + r.source.identity : ""),
      "destination " + (r.destination.addr || "?") + " " + JSON.stringify(r.destination.labels || {}) +
        (r.destination.identity ? " · identity " + r.destination.identity : ""),
      peerIdentity(r) ? "mutual TLS" : "plain text"
    ];
    if (c.end) {
      facts.push("ended after " + fmtMS(c.end.duration_ms) + ", " + (c.end.bytes || 0) + " bytes" +
        (c.end.error ? ", error: " + c.end.error : ""));
    }
    facts.forEach(function (f) { details.appendChild(el("p", f)); });
    var cols = el("div", null, "details-cols");
    cols.appendChild(headerList("Request headers", r.headers));
    cols.appendChild(headerList("Response headers", c.rsp ? c.rsp.headers : {}));
    details.appendChild(cols);
    var actions = el("div", null, "details-actions");
    if (r.authority) { actions.appendChild(hideButton("authority", r.authority)); }
    actions.appendChild(hideButton("path", r.path));
    details.appendChild(actions);
    details.hidden = false;
  }

  function hideButton(kind, value) {
    var b = el("button", "Hide this " + kind + " (" + value + ")");
    b.type = "button";
    b.dataset.action = "hide-" + kind;
    b.onclick = function () { setHidden(kind, value, true); details.hidden = true; };
    return b;
  }

  // setHidden hides or shows again the calls of one authority or path, and
  // keeps the choice in the page URL so a pasted link hides the same noise.
  function setHidden(kind, value, hide) {
    if (hide) { hidden[kind].add(value); } else { hidden[kind].delete(value); }
    if (hide) {
      Array.prototype.slice.call(tbody.rows).forEach(function (tr) {
        if (tr.dataset[kind] === value) { calls.delete(tr.dataset.key); tr.remove(); }
      });
    }
    var q = new URLSearchParams(location.search);
    q.delete("hide_" + kind);
    hidden[kind].forEach(function (v) { q.append("hide_" + kind, v); });
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : "") + location.hash);
    renderHidden();
  }

  function renderHidden() {
    if (!hiddenEl) { return; }
    hiddenEl.replaceChildren();
    ["authority", "path"].forEach(function (kind) {
      hidden[kind].forEach(function (v) {
        var b = el("button", "show " + kind + " " + v, "unhide");
        b.type = "button";
        b.onclick = function () { setHidden(kind, v, false); };
        hiddenEl.appendChild(b);
      });
    });
  }

  function renderTop(snap) {
    if (!snap) { return; }
    var rows = snap.rows || [];
    tbody.replaceChildren();
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.dataset.path = r.path;
      var rate = r.count ? r.success / r.count : 0;
      [r.source, r.destination, r.method, r.path, r.count, fmtMS(r.best_ms), fmtMS(r.worst_ms), fmtMS(r.last_ms),
        (rate * 100).toFixed(1) + "%"].forEach(function (v, i) {
        var td = el("td", v);
        if (i === 3) { td.className = "path"; td.title = r.path; }
        if (i === 4) { td.dataset.testid = "top-count"; }
        if (i === 8) { td.className = rate >= 0.99 ? "ok" : rate >= 0.95 ? "warn" : "bad"; }
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    emptyEl.hidden = rows.length > 0;
    countsEl.dataset.requests = String(snap.requests);
    topSummary = snap.requests + " requests · " + snap.keys + (snap.keys === 1 ? " row" : " rows") +
      (snap.untracked ? " · " + snap.untracked + " requests beyond the row limit" : "");
  }

  pauseBtn.onclick = function () {
    if (!paused) {
      paused = true;
      clearTimeout(retryTimer);
      var s = ws;
      ws = null;
      if (s) { s.close(1000, "paused"); }
      setState("paused");
      pauseBtn.textContent = "Resume";
    } else {
      paused = false;
      backoff = 500;
      pauseBtn.textContent = "Pause";
      connect();
    }
  };
  if (clearBtn) {
    clearBtn.onclick = function () {
      tbody.replaceChildren();
      calls.clear();
      shown = 0;
      hiddenCount = 0;
      details.hidden = true;
      emptyEl.hidden = false;
      renderCounts();
    };
  }
  tbody.addEventListener("click", function (e) {
    var tr = e.target.closest("tr");
    if (tr && tr.dataset.key) { showDetails(tr.dataset.key); }
  });
  tbody.addEventListener("keydown", function (e) {
    var tr = e.target.closest("tr");
    if (e.key === "Enter" && tr && tr.dataset.key) { showDetails(tr.dataset.key); }
  });
  renderHidden();
  renderCounts();
  connect();
})();
