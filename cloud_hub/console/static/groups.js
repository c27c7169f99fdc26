// Group commands (/commands and /commands/{id}): each running group's progress bar follows its
// progress.json every 1.5 s until every command has a final status (then it stops), and on a
// group's page the statuses of its commands with it. The form's profile and command lists show
// the chosen command's fields at once. Pages work without it: a reload shows the same.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var POLL_MS = 1500;
  var state = (window.hubGroups = { polls: 0, updates: 0, following: 0 });

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function draw(box, p) {
    var labels = JSON.parse(box.getAttribute("data-labels") || "{}");
    var svg = box.querySelector("svg.gbar");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var counts = box.querySelector(".gcounts");
    counts.textContent = "";
    var share = el("span");
    share.appendChild(el("span", "gdone", labels.finished || ""));
    share.appendChild(document.createTextNode(" "));
    share.appendChild(el("b", "gpercent", p.percent + " %"));
    share.appendChild(document.createTextNode(" "));
    share.appendChild(el("span", "gfinished muted", "(" + p.finished + "/" + p.total + ")"));
    counts.appendChild(share);
    p.segments.forEach(function (s) {
      var label = labels[s.status] || s.status;
      var rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", "seg seg-" + s.status);
      rect.setAttribute("x", s.x.toFixed(3));
      rect.setAttribute("y", "0");
      rect.setAttribute("width", s.width.toFixed(3));
      rect.setAttribute("height", "10");
      var title = document.createElementNS(SVG, "title");
      title.textContent = label + ": " + s.count;
      rect.appendChild(title);
      svg.appendChild(rect);
      var count = el("span", "gcount");
      count.setAttribute("data-status", s.status);
      count.appendChild(el("i", "swatch seg-" + s.status));
      count.appendChild(document.createTextNode(label + " "));
      count.appendChild(el("b", "", String(s.count)));
      counts.appendChild(document.createTextNode(" "));
      counts.appendChild(count);
    });
    svg.setAttribute("aria-label", p.percent + " %");
    box.setAttribute("data-percent", String(p.percent));
    box.setAttribute("data-succeeded-percent", String(p.succeeded_percent));
    box.setAttribute("data-done", p.done ? "true" : "false");
  }

  function commands(list) {  // the group page's table of commands
    var table = document.getElementById("group-commands");
    if (!table || !list) return;
    var labels = JSON.parse(table.getAttribute("data-labels") || "{}");
    list.forEach(function (c) {
      var row = table.querySelector('tr[data-command="' + c.command_id + '"]');
      if (!row) return;
      var cell = row.querySelector(".cmd-status");
      cell.className = "cmd-status status-cmd-" + c.status;
      cell.textContent = labels[c.status] || c.status;
      row.querySelector(".cmd-detail").textContent = c.detail || "";
    });
  }

  function follow(box) {
    var url = box.getAttribute("data-url");
    state.following += 1;
    function poll() {
      state.polls += 1;
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (p) {
          if (!p) { state.following -= 1; return; }  // gone, or signed out: stop
          draw(box, p);
          commands(p.commands);
          state.updates += 1;
          if (p.done) {
            state.following -= 1;
            var cancel = document.getElementById("group-cancel");  // nothing left to cancel
            if (cancel) cancel.remove();
            return;
          }
          window.setTimeout(poll, POLL_MS);
        })
        .catch(function () { window.setTimeout(poll, 2 * POLL_MS); });  // the hub restarting
    }
    window.setTimeout(poll, POLL_MS);
  }

  Array.prototype.forEach.call(document.querySelectorAll("[data-group-progress]"), function (box) {
    if (box.getAttribute("data-done") !== "true") follow(box);
  });

  var choose = document.getElementById("group-choose");
  if (choose) {
    choose.addEventListener("change", function () { choose.submit(); });
    var button = choose.querySelector("button.choose");
    if (button) button.remove();  // a choice shows its form at once
  }
})();
