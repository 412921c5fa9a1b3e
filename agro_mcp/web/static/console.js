// agro console: feedback posts, keyboard, path completion and live job progress (server-sent events).
(function () {
  "use strict";
  var body = document.body;
  var root = body.dataset.root || "";
  var csrf = body.dataset.csrf || "";

  function post(url, fields) {
    var data = new URLSearchParams();
    Object.keys(fields).forEach(function (k) { if (fields[k] !== undefined && fields[k] !== null) data.append(k, fields[k]); });
    return fetch(root + url, { method: "POST", body: data, credentials: "same-origin",
                               headers: { "X-CSRF-Token": csrf, "Accept": "application/json" } })
      .then(function (r) { return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || r.statusText); return j; }); });
  }
  function say(el, text, bad) { if (!el) return; el.textContent = text; el.classList.toggle("bad", !!bad); }

  // ---- search: feedback on hits --------------------------------------------------------------------------
  var results = document.getElementById("results");
  var hits = results ? Array.prototype.slice.call(results.querySelectorAll("li.hit")) : [];
  var eventId = results ? results.dataset.event : null;

  function feedback(hit, signal, rating) {
    var status = hit.querySelector(".fb-status");
    return post("/api/feedback", { event_id: eventId, signal: signal, doc_id: hit.dataset.doc, rating: rating })
      .then(function (j) {
        say(status, (signal === "rating" ? "rated " + rating : signal.replace("_", " ")) + " · " + j.message);
        var sel = signal === "rating" ? '[data-rating="' + rating + '"]' : '[data-signal="' + signal + '"]';
        var b = hit.querySelector(".fb button" + sel); if (b) b.classList.add("on");
        hit.dataset.last = signal;
      })
      .catch(function (e) { say(status, e.message, true); });
  }
  hits.forEach(function (hit) {
    var details = hit.querySelector("details");
    details.addEventListener("toggle", function () {
      if (details.open && !hit.dataset.clicked) { hit.dataset.clicked = "1"; feedback(hit, "click"); }
      select(hit, true);
    });
    hit.querySelectorAll(".fb button").forEach(function (b) {
      b.addEventListener("click", function () { select(hit, false); feedback(hit, b.dataset.signal, b.dataset.rating); });
    });
  });

  var current = -1;
  function select(hit, keepFocus) {
    hits.forEach(function (h) { h.classList.remove("sel"); });
    current = hits.indexOf(hit);
    if (hit) { hit.classList.add("sel"); if (!keepFocus) hit.focus({ preventScroll: true }); }
  }
  function move(d) {
    if (!hits.length) return;
    var i = Math.max(0, Math.min(hits.length - 1, current + d));
    select(hits[i]); hits[i].scrollIntoView({ block: "nearest" });
  }

  // ---- the answer is at ... (correct_location) -----------------------------------------------------------
  var answer = document.getElementById("answer-at");
  if (answer) {
    var pathInput = document.getElementById("answer-path");
    var list = document.getElementById("answer-paths");
    var timer = null;
    pathInput.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var q = encodeURIComponent(pathInput.value), c = encodeURIComponent(results.dataset.corpus);
        fetch(root + "/api/paths?corpus=" + c + "&q=" + q, { credentials: "same-origin" })
          .then(function (r) { return r.json(); })
          .then(function (j) {
            while (list.firstChild) list.removeChild(list.firstChild);
            j.paths.forEach(function (p) { var o = document.createElement("option"); o.value = p; list.appendChild(o); });
          });
      }, 120);
    });
    answer.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var f = new FormData(answer), fields = {};
      f.forEach(function (v, k) { if (k !== "csrf") fields[k] = v; });
      var status = answer.querySelector(".fb-status");
      post("/api/feedback", fields)
        .then(function (j) { say(status, "correct location " + j.doc_id + " · " + j.message); })
        .catch(function (e) { say(status, e.message, true); });
    });
  }

  // ---- keyboard ------------------------------------------------------------------------------------------
  document.addEventListener("keydown", function (ev) {
    var t = ev.target, typing = t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA");
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (typing) { if (ev.key === "Escape") t.blur(); return; }
    if (ev.key === "Enter" && t && (t.tagName === "BUTTON" || t.tagName === "A" || t.tagName === "SUMMARY")) return;
    var q = document.getElementById("q");
    if (ev.key === "/" && q) { ev.preventDefault(); q.focus(); q.select(); return; }
    if (!hits.length) return;
    var hit = hits[current];
    switch (ev.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "o": case "Enter": if (hit) { var d = hit.querySelector("details"); d.open = !d.open; } break;
      case "+": case "=": if (hit) feedback(hit, "thumbs_up"); break;
      case "-": if (hit) feedback(hit, "thumbs_down"); break;
      case "u": if (hit) feedback(hit, "used"); break;
      case "1": case "2": case "3": case "4": case "5": if (hit) feedback(hit, "rating", ev.key); break;
      case "a": if (answer) { ev.preventDefault(); document.getElementById("answer-path").focus(); } break;
      default: return;
    }
    ev.preventDefault();
  });

  // ---- live job progress -----------------------------------------------------------------------------------
  var rows = {};
  document.querySelectorAll("tr.job").forEach(function (tr) {
    var s = tr.dataset.state;
    if (s === "queued" || s === "running") rows[tr.dataset.job] = tr;
  });
  var ids = Object.keys(rows);
  if (ids.length && window.EventSource) {
    var src = new EventSource(root + "/events/jobs?" + ids.map(function (i) { return "run_id=" + encodeURIComponent(i); }).join("&"));
    src.addEventListener("job", function (ev) {
      var j = JSON.parse(ev.data), tr = rows[j.run_id];
      if (!tr) return;
      tr.dataset.state = j.state;
      tr.querySelector(".state").textContent = j.state;
      var p = tr.querySelector("progress"); p.value = j.progress;
      tr.querySelector(".pct").textContent = Math.round(j.progress * 100) + "%";
      tr.querySelector(".message").textContent = j.error || j.message || "";
      if (j.state !== "queued" && j.state !== "running") {
        var c = tr.querySelector("form"); if (c) c.remove();
        var a = document.createElement("a");
        a.href = window.location.pathname; a.textContent = "reload to see the result"; a.className = "reload";
        tr.querySelector(".message").appendChild(document.createTextNode(" · "));
        tr.querySelector(".message").appendChild(a);
      }
    });
    src.addEventListener("end", function () { src.close(); });
  }
})();
