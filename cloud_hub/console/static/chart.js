// The device page's history chart: a point (the select) and up to five more (the checkboxes)
// over a chosen range, aggregated per window by the hub (/devices/{id}/history.json, one
// series per point on shared times), drawn with uPlot (vendored: static/uplot/). The first
// point's unit is the left axis; every other unit shares the right one. The chart follows
// its box's width (a phone turned, a window resized).
(function () {
  "use strict";
  var form = document.getElementById("chart-form");
  var box = document.getElementById("chart");
  if (!form || !box || !window.uPlot) return;
  var device = form.getAttribute("data-device");
  var max = parseInt(form.getAttribute("data-max"), 10) || 6;
  var COLORS = ["#0b6e99", "#d9480f", "#1a7f37", "#7048e8", "#c69026", "#b42318"];
  // no value of a series for longer than this many windows: a gap in its line (shorter: bridged)
  var GAP_WINDOWS = 5;
  var plot = null, asked = 0, width = 0;
  // 24-hour times (the county's operators), with the date on ranges of days
  var clock = uPlot.fmtDate("{HH}:{mm}"), day = uPlot.fmtDate("{MM}-{DD} {HH}:{mm}");
  var stamp = uPlot.fmtDate("{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}");
  var main = form.elements.point.value;

  function checkboxes() {
    return Array.prototype.slice.call(form.querySelectorAll("input[name=also]"));
  }

  // the select's point is always drawn (its box checked, locked); at most `max` in all
  function sync() {
    var chosen = form.elements.point.value;
    checkboxes().forEach(function (c) {
      if (c.value === main && main !== chosen) c.checked = false; // the former first point
      if (c.value === chosen) c.checked = true;
    });
    main = chosen;
    var count = checkboxes().filter(function (c) { return c.checked; }).length;
    checkboxes().forEach(function (c) {
      c.disabled = c.value === chosen || (!c.checked && count >= max);
    });
  }

  function points() {
    var names = [main];
    checkboxes().forEach(function (c) {
      if (c.checked && names.indexOf(c.value) < 0) names.push(c.value);
    });
    return names.slice(0, max);
  }

  // times with a break (nulls) where nothing came for a while; a series' short holes bridged
  // (undefined: uPlot spans it), its long ones left as gaps (null)
  function align(d) {
    var limit = GAP_WINDOWS * d.window_s;
    var times = [], columns = d.series.map(function () { return []; });
    for (var i = 0; i < d.times.length; i++) {
      if (i && d.times[i] - d.times[i - 1] > limit) {
        times.push(d.times[i - 1] + d.window_s);
        columns.forEach(function (c) { c.push(null); });
      }
      times.push(d.times[i]);
      d.series.forEach(function (s, k) { columns[k].push(s.values[i]); });
    }
    columns.forEach(function (values) {
      var last = -1;
      for (var j = 0; j < values.length; j++) {
        if (values[j] === null) continue;
        if (last >= 0 && j - last > 1 && times[j] - times[last] <= limit) {
          for (var h = last + 1; h < j; h++) values[h] = undefined;
        }
        last = j;
      }
    });
    return [times].concat(columns);
  }

  function size() {
    var w = Math.max(220, box.clientWidth);
    return { width: w, height: w < 520 ? 220 : 280 };
  }

  function draw(d) {
    if (plot) { plot.destroy(); plot = null; }
    box.textContent = "";
    box.setAttribute("data-points", String(d.times.length));
    var units = [];
    d.series.forEach(function (s) { if (units.indexOf(s.unit) < 0) units.push(s.unit); });
    window.hubChart = {
      points: d.times.length,
      point: d.series.length ? d.series[0].point : null,
      series: d.series.map(function (s) { return s.point; }),
      units: units,
      axes: units.length > 1 ? 2 : 1,
      aggregate: d.aggregate,
    };
    if (!d.times.length) { box.textContent = box.getAttribute("data-empty"); return; }
    var multiDay = d.end - d.start > 2 * 86400;
    var series = [{
      label: box.getAttribute("data-time"),
      value: function (u, v) { return v == null ? "--" : stamp(new Date(v * 1000)); },
    }];
    var axes = [{
      values: function (u, splits) {
        return splits.map(function (v) { return (multiDay ? day : clock)(new Date(v * 1000)); });
      },
    }];
    d.series.forEach(function (s, i) {
      series.push({
        label: s.label + (s.unit ? " (" + s.unit + ")" : ""),
        stroke: COLORS[i % COLORS.length],
        width: 2,
        scale: units.indexOf(s.unit) === 0 ? "y" : "y2",
        spanGaps: false,
      });
    });
    axes.push({ scale: "y", label: units[0] || "" });
    if (units.length > 1) {
      axes.push({ scale: "y2", side: 1, label: units.slice(1).join(" · "), grid: { show: false } });
    }
    var dims = size();
    width = dims.width;
    plot = new uPlot({
      width: dims.width, height: dims.height, series: series, axes: axes,
      scales: { x: { time: true, range: [d.start, d.end] } },
    }, align(d), box);
  }

  function load() {
    var query = points().map(function (p) { return "point=" + encodeURIComponent(p); });
    query.push("hours=" + encodeURIComponent(form.elements.hours.value));
    query.push("aggregate=" + encodeURIComponent(form.elements.aggregate.value));
    var url = "/devices/" + encodeURIComponent(device) + "/history.json?" + query.join("&");
    var ticket = ++asked;
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("history: " + r.status);
      return r.json();
    }).then(function (d) {
      if (ticket === asked) draw(d); // an answer to an older choice is dropped
    }).catch(function () {
      if (ticket === asked) box.textContent = box.getAttribute("data-empty");
    });
  }

  function resize() {
    if (!plot) return;
    var dims = size();
    if (dims.width !== width) { width = dims.width; plot.setSize(dims); }
  }

  form.addEventListener("change", function () { sync(); load(); });
  form.addEventListener("submit", function (e) { e.preventDefault(); });
  if (window.ResizeObserver) new ResizeObserver(resize).observe(box);
  else window.addEventListener("resize", resize);
  sync();
  load();
})();
