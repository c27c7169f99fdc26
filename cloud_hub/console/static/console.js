// The console's script (besides the map's): live values and command states on the device page
// (/devices/{id}/live), live alarms with a cue for a new critical one (/alarms/live). Pages work
// without it: a reload shows the same.
(function () {
  "use strict";
  var table = document.getElementById("alarms");
  if (!table || !window.EventSource) return;
  var banner = document.getElementById("alarm-banner");
  function beep() {  // a short tone: browsers may refuse it before a click, the banner stays
    try {
      var audio = new (window.AudioContext || window.webkitAudioContext)();
      var tone = audio.createOscillator(), gain = audio.createGain();
      tone.frequency.value = 880; gain.gain.value = 0.15;
      tone.connect(gain); gain.connect(audio.destination);
      tone.start(); tone.stop(audio.currentTime + 0.6);
    } catch (e) { /* no audio: the banner is the cue */ }
  }
  function refresh() {  // the same page again, its rows swapped in
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("alarms");
        if (fresh) table.querySelector("tbody").replaceWith(fresh.querySelector("tbody"));
        table.setAttribute("data-refreshed", String(Date.now()));
      });
  }
  var source = new EventSource(table.getAttribute("data-live"));
  source.addEventListener("alarm", function (message) {
    var data = JSON.parse(message.data).data || {};
    if (data.transition === "raised" && data.severity === "critical" && banner) {
      var p = document.createElement("p");
      p.className = "alert-critical"; p.setAttribute("role", "alert");
      p.textContent = banner.getAttribute("data-text") + " " + (data.message || "");
      banner.textContent = ""; banner.appendChild(p);
      beep();
    }
    refresh();
  });
})();

(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var device = live.getAttribute("data-device");
  var readAt = document.getElementById("read-at");
  function showTime(ms) {
    if (readAt && ms) readAt.textContent = new Date(ms).toLocaleTimeString();
  }
  showTime(Number(readAt && readAt.getAttribute("data-ms")));
  var source = new EventSource("/devices/" + encodeURIComponent(device) + "/live");
  source.addEventListener("telemetry", function (message) {
    var data = JSON.parse(message.data);
    Object.keys(data.values).forEach(function (name) {
      var cell = live.querySelector('[data-point="' + name + '"]');
      if (!cell) return;
      var shown = data.values[name];
      cell.textContent = shown.text + (shown.label ? " " + shown.label : "");
      cell.classList.remove("fresh");
      void cell.offsetWidth;  // restart the highlight
      cell.classList.add("fresh");
    });
    showTime(data.ts_ms);
  });
  source.addEventListener("command", function (message) {
    var data = JSON.parse(message.data);
    var row = document.querySelector('[data-command="' + data.command_id + '"]');
    if (!row) return;
    var cell = row.querySelector(".cmd-status");
    var labels = JSON.parse(document.getElementById("commands").getAttribute("data-labels") || "{}");
    cell.textContent = labels[data.status] || data.status;
    cell.className = "cmd-status status-cmd-" + data.status;
    cell.setAttribute("data-status", data.status);
  });
})();

(function () {
  "use strict";
  // Live figures: an element with data-refresh="<seconds>" (and an id) is fetched again from
  // the same page that often while the page is visible, and swapped in place.
  var parts = document.querySelectorAll("[data-refresh][id]");
  Array.prototype.forEach.call(parts, function (part) {
    var every = Math.max(5, Number(part.getAttribute("data-refresh")) || 30) * 1000;
    function refresh() {
      if (document.hidden) return;
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.text(); })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(part.id);
          if (!fresh) return;
          part.innerHTML = fresh.innerHTML;
          part.setAttribute("data-refreshed", String(Date.now()));
        })
        .catch(function () { part.setAttribute("data-stale", "1"); });
    }
    window.setInterval(refresh, every);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  });
})();
