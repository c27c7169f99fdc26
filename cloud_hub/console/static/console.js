// The console's only script: live values and command states on the device page, from the
// hub's server-sent stream (/devices/{id}/live). Pages work without it (a reload shows the same).
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
