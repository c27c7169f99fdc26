// The device page's history chart: one point over a chosen range, averaged per window by the
// hub (/devices/{id}/history.json), drawn with uPlot (vendored: static/uplot/).
(function () {
  "use strict";
  var form = document.getElementById("chart-form");
  var box = document.getElementById("chart");
  if (!form || !box || !window.uPlot) return;
  var device = form.getAttribute("data-device");
  var plot = null;
  function load() {
    var point = form.elements.point.value, hours = form.elements.hours.value;
    var url = "/devices/" + encodeURIComponent(device) + "/history.json?point=" +
      encodeURIComponent(point) + "&hours=" + hours;
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (d) {
      if (plot) { plot.destroy(); plot = null; }
      box.textContent = "";
      box.setAttribute("data-points", String(d.times.length));
      if (!d.times.length) { box.textContent = box.getAttribute("data-empty"); return; }
      var unit = d.unit ? " (" + d.unit + ")" : "";
      plot = new uPlot({
        width: Math.max(300, box.clientWidth), height: 260,
        series: [{}, { label: d.label + unit, stroke: "#0b6e99", width: 2, spanGaps: false }],
        axes: [{}, { label: d.unit || "" }],
        scales: { x: { time: true, range: [d.start, d.end] } },
      }, [d.times, d.values], box);
      window.hubChart = { points: d.times.length, point: d.point };
    });
  }
  form.addEventListener("change", load);
  window.addEventListener("resize", function () { if (plot) plot.setSize({ width: Math.max(300, box.clientWidth), height: 260 }); });
  load();
})();
