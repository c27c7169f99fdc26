// The console's map: every device with a position on a canvas (no map library, no tiles unless
// the county configured its own server), clustered where markers would overlap, with a side
// panel for the device clicked. window.hubMap exposes its state to tests.
(function () {
  "use strict";
  var canvas = document.getElementById("map");
  if (!canvas || !canvas.getContext) return;
  var ctx = canvas.getContext("2d");
  var panel = document.getElementById("map-panel");
  var count = document.getElementById("map-count");
  var tilesUrl = canvas.getAttribute("data-tiles") || "";
  var TILE = 256, CELL = 44, RADIUS = 6, MAX_R = 19;
  var COLORS = { critical: "#b42318", major: "#d9480f", minor: "#c69026", warning: "#c69026",
                 info: "#476582", online: "#1a7f37", offline: "#8a949e", unknown: "#476582" };
  var RANK = { critical: 5, major: 4, minor: 3, warning: 2, info: 1 };
  var state = { devices: [], zoom: 3, cx: 0, cy: 0, clusters: [], tiles: {} };

  function world(lat, lon, zoom) {  // Web Mercator, in pixels at this zoom
    var size = TILE * Math.pow(2, zoom);
    var s = Math.sin(Math.max(-85, Math.min(85, lat)) * Math.PI / 180);
    return [(lon + 180) / 360 * size, (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * size];
  }
  function screen(lat, lon) {
    var p = world(lat, lon, state.zoom);
    return [p[0] - state.cx + canvas.width / 2, p[1] - state.cy + canvas.height / 2];
  }

  function fit() {
    if (!state.devices.length) { state.zoom = 3; var c0 = world(30, 110, 3); state.cx = c0[0]; state.cy = c0[1]; return; }
    var lat0 = 90, lat1 = -90, lon0 = 180, lon1 = -180;
    state.devices.forEach(function (d) {
      lat0 = Math.min(lat0, d[1]); lat1 = Math.max(lat1, d[1]);
      lon0 = Math.min(lon0, d[2]); lon1 = Math.max(lon1, d[2]);
    });
    for (var z = 19; z >= 1; z--) {
      var a = world(lat1, lon0, z), b = world(lat0, lon1, z);
      if (b[0] - a[0] < canvas.width * 0.8 && b[1] - a[1] < canvas.height * 0.8) break;
    }
    state.zoom = z;
    var c = world((lat0 + lat1) / 2, (lon0 + lon1) / 2, z);
    state.cx = c[0]; state.cy = c[1];
  }

  function cluster() {
    // greedy: a marker joins a cluster seeded within CELL pixels (seeds are looked up in a grid
    // of CELL cells, so this stays linear), else it seeds one; a cluster is drawn at its centre
    var grid = {}, list = [];
    state.devices.forEach(function (d) {
      var p = screen(d[1], d[2]);
      if (p[0] < -CELL || p[1] < -CELL || p[0] > canvas.width + CELL || p[1] > canvas.height + CELL) return;
      var gx = Math.floor(p[0] / CELL), gy = Math.floor(p[1] / CELL), found = null;
      for (var i = -1; i <= 1 && !found; i++) for (var j = -1; j <= 1 && !found; j++) {
        var near = grid[(gx + i) + ":" + (gy + j)];
        if (!near) continue;
        for (var k = 0; k < near.length; k++) {
          var c = near[k];
          if ((c.sx - p[0]) * (c.sx - p[0]) + (c.sy - p[1]) * (c.sy - p[1]) < CELL * CELL) { found = c; break; }
        }
      }
      if (!found) {
        found = { sx: p[0], sy: p[1], x: 0, y: 0, members: [], alarm: null, online: 0 };
        (grid[gx + ":" + gy] = grid[gx + ":" + gy] || []).push(found);
        list.push(found);
      }
      found.x += p[0]; found.y += p[1]; found.members.push(d);
      if (d[3] === "online") found.online++;
      if (d[4] && (!found.alarm || RANK[d[4]] > RANK[found.alarm])) found.alarm = d[4];
    });
    list.forEach(function (c) { c.x /= c.members.length; c.y /= c.members.length; });
    state.clusters = list;
  }

  function clusterColor(c) {  // its worst open alarm, else what most of it is
    if (c.alarm) return COLORS[c.alarm];
    if (c.members.length === 1) return COLORS[c.members[0][3]] || COLORS.unknown;
    return c.online * 2 >= c.members.length ? COLORS.online : COLORS.offline;
  }

  function drawTiles() {
    if (!tilesUrl) return;
    var n = Math.pow(2, state.zoom);
    var x0 = Math.floor((state.cx - canvas.width / 2) / TILE), x1 = Math.floor((state.cx + canvas.width / 2) / TILE);
    var y0 = Math.floor((state.cy - canvas.height / 2) / TILE), y1 = Math.floor((state.cy + canvas.height / 2) / TILE);
    for (var x = x0; x <= x1; x++) for (var y = Math.max(0, y0); y <= Math.min(n - 1, y1); y++) {
      var url = tilesUrl.replace("{z}", state.zoom).replace("{x}", ((x % n) + n) % n).replace("{y}", y);
      var img = state.tiles[url];
      if (!img) { img = state.tiles[url] = new Image(); img.onload = draw; img.src = url; }
      if (img.complete && img.naturalWidth) {
        ctx.drawImage(img, x * TILE - state.cx + canvas.width / 2, y * TILE - state.cy + canvas.height / 2);
      }
    }
  }

  function drawBase() {  // a plain base: a graticule and the sites where their devices are
    ctx.fillStyle = "#eef2f5"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    drawTiles();
    ctx.strokeStyle = "#d3dbe2"; ctx.lineWidth = 1;
    var step = state.zoom >= 14 ? 0.01 : state.zoom >= 11 ? 0.1 : state.zoom >= 7 ? 1 : 10;
    for (var lon = -180; lon <= 180; lon += step) {
      var x = screen(0, lon)[0];
      if (x < 0 || x > canvas.width) continue;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, canvas.height); ctx.stroke();
    }
    for (var lat = -80; lat <= 80; lat += step) {
      var y = screen(lat, 0)[1];
      if (y < 0 || y > canvas.height) continue;
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(canvas.width, y); ctx.stroke();
    }
  }

  function drawSites() {  // each site's name above where its devices are
    var sites = {};
    state.devices.forEach(function (d) {
      var s = sites[d[5] || ""] || (sites[d[5] || ""] = { top: -90, lon: 0, n: 0 });
      s.top = Math.max(s.top, d[1]); s.lon += d[2]; s.n++;
    });
    ctx.font = "600 13px system-ui, sans-serif"; ctx.fillStyle = "#34495e"; ctx.textAlign = "center";
    Object.keys(sites).forEach(function (name) {
      if (!name) return;
      var s = sites[name], p = screen(s.top, s.lon / s.n);  // above its northernmost device
      ctx.lineWidth = 4; ctx.strokeStyle = "#fff";
      ctx.strokeText(name, p[0], p[1] - 30); ctx.fillText(name, p[0], p[1] - 30);
    });
  }

  function draw() {
    var rect = canvas.getBoundingClientRect();
    if (canvas.width !== Math.round(rect.width) || canvas.height !== Math.round(rect.height)) {
      canvas.width = Math.round(rect.width); canvas.height = Math.round(rect.height);
    }
    drawBase();
    cluster();
    ctx.textAlign = "center"; ctx.textBaseline = "middle";
    state.clusters.forEach(function (c) {
      ctx.fillStyle = clusterColor(c);
      ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
      ctx.beginPath();
      var r = c.members.length > 1 ? Math.min(MAX_R, 10 + Math.log(c.members.length) * 2) : RADIUS;
      ctx.arc(c.x, c.y, r, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      if (c.members.length > 1) {
        ctx.fillStyle = "#fff"; ctx.font = "700 11px system-ui, sans-serif";
        ctx.fillText(String(c.members.length), c.x, c.y);
      }
    });
    drawSites();
  }

  function at(x, y) {
    var best = null, bestD = 18 * 18;
    state.clusters.forEach(function (c) {
      var d = (c.x - x) * (c.x - x) + (c.y - y) * (c.y - y);
      if (d < bestD) { best = c; bestD = d; }
    });
    return best;
  }

  function zoomAt(x, y, dz) {
    var z = Math.max(1, Math.min(20, state.zoom + dz));
    if (z === state.zoom) return;
    var f = Math.pow(2, z - state.zoom);
    var wx = state.cx + (x - canvas.width / 2), wy = state.cy + (y - canvas.height / 2);
    state.cx = wx * f - (x - canvas.width / 2); state.cy = wy * f - (y - canvas.height / 2);
    state.zoom = z; draw();
  }

  function text(tag, value, cls) {
    var el = document.createElement(tag); el.textContent = value == null ? "-" : String(value);
    if (cls) el.className = cls; return el;
  }

  function show(id) {
    fetch("/map/devices/" + encodeURIComponent(id) + ".json", { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (d) {
        panel.textContent = "";
        panel.appendChild(text("h2", d.device_id));
        panel.setAttribute("data-device", d.device_id || "");
        panel.appendChild(text("p", [d.profile, d.site, d.pole, d.mount_position, d.status].filter(Boolean).join(" · "), "muted"));
        var table = document.createElement("table"); table.className = "values";
        (d.values || []).forEach(function (v) {
          var tr = document.createElement("tr"); tr.appendChild(text("th", v.name)); tr.appendChild(text("td", v.text));
          table.appendChild(tr);
        });
        panel.appendChild(table);
        (d.alarms || []).forEach(function (a) { panel.appendChild(text("p", a.severity + ": " + a.message, "sev-row")); });
        actions(d);
        var link = text("a", panel.getAttribute("data-open")); link.href = "/devices/" + encodeURIComponent(d.device_id);
        panel.appendChild(link);
      });
  }

  // the panel's actions (for those who may command): each command a small form posted to the
  // device page's own route; its state then follows the device's live stream
  var live = null;
  function actions(d) {
    if (live) { live.close(); live = null; }
    var csrf = panel.getAttribute("data-csrf");
    if (!csrf || !(d.commands || []).length) return;
    var labels = JSON.parse(panel.getAttribute("data-labels") || "{}");
    var status = text("p", "", "muted map-command-status");
    status.setAttribute("role", "status");
    d.commands.forEach(function (c) {
      var form = document.createElement("form");
      form.className = "map-command"; form.setAttribute("data-command", c.name);
      form.appendChild(text("b", c.label));
      c.params.forEach(function (p) {
        var label = document.createElement("label"), input;
        label.appendChild(document.createTextNode(p.label + (p.unit ? " (" + p.unit + ")" : "") + " "));
        if (p.choices) {
          input = document.createElement("select");
          p.choices.forEach(function (v) { var o = document.createElement("option"); o.value = String(v); o.textContent = String(v); input.appendChild(o); });
        } else if (p.type === "bool") {
          input = document.createElement("input"); input.type = "checkbox"; input.value = "true";
        } else {
          input = document.createElement("input");
          input.type = p.type === "string" ? "text" : "number"; input.required = true;
          if (p.type === "int") input.step = "1"; else if (p.type === "float") input.step = "any";
          if (p.min != null) input.min = String(p.min);
          if (p.max != null) input.max = String(p.max);
        }
        input.name = p.name; label.appendChild(input); form.appendChild(label);
      });
      var button = text("button", panel.getAttribute("data-send")); button.type = "submit";
      form.appendChild(button);
      form.addEventListener("submit", function (e) {
        e.preventDefault();
        var body = new URLSearchParams(new FormData(form)); body.set("csrf_token", csrf);
        status.textContent = "…";
        fetch("/devices/" + encodeURIComponent(d.device_id) + "/commands/" + encodeURIComponent(c.name), {
          method: "POST", credentials: "same-origin", body: body,
        }).then(function (r) {
          var refused = new URL(r.url).searchParams.get("error");
          status.textContent = refused || (r.ok ? panel.getAttribute("data-sent") + " " + c.label : String(r.status));
          status.setAttribute("data-outcome", refused ? "refused" : r.ok ? "sent" : "error");
        });
      });
      panel.appendChild(form);
    });
    panel.appendChild(status);
    if (!window.EventSource) return;
    live = new EventSource("/devices/" + encodeURIComponent(d.device_id) + "/live");
    live.addEventListener("command", function (message) {
      var data = JSON.parse(message.data);
      status.textContent = data.name + ": " + (labels[data.status] || data.status);
      status.setAttribute("data-status", data.status);
    });
  }

  // one pointer drags (or clicks); two pointers pinch: every doubling of their distance is a
  // zoom level in, every halving one out, about their midpoint
  var drag = null, pointers = {}, pinch = null;
  function local(e) { var r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }
  function twoPointers() {
    var ids = Object.keys(pointers);
    if (ids.length !== 2) return null;
    var a = pointers[ids[0]], b = pointers[ids[1]];
    return { d: Math.max(1, Math.hypot(a[0] - b[0], a[1] - b[1])), x: (a[0] + b[0]) / 2, y: (a[1] + b[1]) / 2 };
  }
  canvas.addEventListener("pointerdown", function (e) {
    pointers[e.pointerId] = local(e);
    try { canvas.setPointerCapture(e.pointerId); } catch (err) { /* not an active pointer */ }
    var two = twoPointers();
    if (two) { pinch = two; drag = null; return; }
    drag = { x: e.clientX, y: e.clientY, moved: false };
  });
  canvas.addEventListener("pointermove", function (e) {
    if (pointers[e.pointerId]) pointers[e.pointerId] = local(e);
    if (pinch) {
      var two = twoPointers();
      if (!two) return;
      var steps = Math.log2(two.d / pinch.d);
      if (Math.abs(steps) >= 0.5) { zoomAt(two.x, two.y, steps > 0 ? 1 : -1); pinch = two; }
      return;
    }
    if (!drag) return;
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    state.cx -= dx; state.cy -= dy; drag.x = e.clientX; drag.y = e.clientY;
    if (drag.moved) draw();
  });
  function lift(e) {
    delete pointers[e.pointerId];
    if (pinch) { if (!Object.keys(pointers).length) pinch = null; drag = null; return true; }
    return false;
  }
  canvas.addEventListener("pointercancel", function (e) { lift(e); drag = null; });
  canvas.addEventListener("pointerup", function (e) {
    if (lift(e)) return;
    var wasDrag = drag && drag.moved; drag = null;
    if (wasDrag) return;
    var p = local(e), c = at(p[0], p[1]);
    if (!c) return;
    if (c.members.length > 1) zoomAt(c.x, c.y, 2); else show(c.members[0][0]);
  });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var r = canvas.getBoundingClientRect();
    zoomAt(e.clientX - r.left, e.clientY - r.top, e.deltaY < 0 ? 1 : -1);
  }, { passive: false });
  document.getElementById("zoom-in").addEventListener("click", function () { zoomAt(canvas.width / 2, canvas.height / 2, 1); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomAt(canvas.width / 2, canvas.height / 2, -1); });
  document.getElementById("zoom-fit").addEventListener("click", function () { fit(); draw(); });
  window.addEventListener("resize", draw);

  window.hubMap = {
    state: state,
    ready: false,
    positionOf: function (id) {
      var d = state.devices.filter(function (x) { return x[0] === id; })[0];
      if (!d) return null;
      var r = canvas.getBoundingClientRect(), p = screen(d[1], d[2]);
      return { x: r.left + p[0], y: r.top + p[1] };
    },
    zoomTo: function (z) { state.zoom = z; draw(); },
    redraw: function () { draw(); },
    show: show,
  };

  fetch("/map/devices.json", { credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(function (body) {
      state.devices = body.devices;
      if (count) count.textContent = String(body.devices.length);
      draw(); fit(); draw();
      window.hubMap.ready = true;
    });
})();
