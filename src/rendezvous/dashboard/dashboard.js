// Live dashboard: one section per deployment, redrawn every REFRESH_MS from the JSON
// endpoints (/v1/deployments/{d}/windows and /alarms). No build step: plain browser JS.
"use strict";
const REFRESH_MS = 2000;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
                "#17becf", "#7f7f7f", "#bcbd22", "#393b79", "#637939"];
// What each chart plots, readable by tests: rendezvousCharts[deployment][chart] = {labels, data}
window.rendezvousCharts = {};
window.rendezvousRefreshes = 0;

async function getJSON(path) {
  const r = await fetch(path, {cache: "no-store"});
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
  if (text !== undefined) e.textContent = text;
  return e;
}

const pick = (obj, path) => path.reduce((o, k) => (o == null ? null : o[k]), obj);
const num = (v) => (v === undefined || v === null || Number.isNaN(v) ? null : v);

// Build the charts of one deployment from its windows document.
function chartsOf(doc) {
  const w = doc.windows;
  const x = w.map((win) => win.start_ns / 1e9);
  const models = Array.from(new Set([].concat(doc.models, ...w.map((win) => Object.keys(win.models || {})))));
  const others = models.filter((m) => m !== doc.champion);
  const charts = {};
  const series = (labels, fns) => ({labels, data: [x, ...fns.map((f) => w.map((win) => num(f(win))))]});
  charts.latency = series(
    models.flatMap((m) => [m + " p50", m + " p99"]),
    models.flatMap((m) => [(win) => pick(win, ["models", m, "latency_ms", "p50"]),
                           (win) => pick(win, ["models", m, "latency_ms", "p99"])]));
  charts.on_time = series(models.map((m) => m + " on time %"), models.map((m) => (win) => {
    const s = pick(win, ["models", m]);
    return s && s.requests ? 100 * ((s.statuses || {}).on_time || 0) / s.requests : null;
  }));
  charts.chosen = series(models.map((m) => m + " chosen %"), models.map((m) => (win) => {
    const s = pick(win, ["models", m]);
    return s && win.requests ? 100 * s.chosen / win.requests : null;
  }));
  charts.scores = series(
    models.map((m) => m + " p50").concat([doc.champion + " p5", doc.champion + " p95"]),
    models.map((m) => (win) => pick(win, ["models", m, "score", "p50"])).concat([
      (win) => pick(win, ["models", doc.champion, "score", "p5"]),
      (win) => pick(win, ["models", doc.champion, "score", "p95"])]));
  charts.agreement = series(others.map((m) => m + " agreement"),
    others.map((m) => (win) => pick(win, ["compare", m, "agreement"])));
  const cols = Array.from(new Set([].concat(...w.map((win) => Object.keys(pick(win, ["drift", "column_drift", "columns"]) || {})))));
  charts.drift = series(
    ["threshold", "canary score"].concat(cols),
    [(win) => pick(win, ["drift", "column_drift", "threshold"]) ?? pick(win, ["drift", "canary_drift", "threshold"]),
     (win) => pick(win, ["drift", "canary_drift", "columns", "score", "neg_log10_p"])].concat(
      cols.map((c) => (win) => pick(win, ["drift", "column_drift", "columns", c, "neg_log10_p"]))));
  const metric = (m) => (w.some((win) => pick(win, ["accuracy", m, "mae"]) != null) ? "mae" : "accuracy");
  charts.accuracy = series(
    models.map((m) => m + " " + metric(m)).concat([doc.champion + " low", doc.champion + " high"]),
    models.map((m) => (win) => pick(win, ["accuracy", m, metric(m)])).concat([
      (win) => pick(win, ["accuracy", doc.champion, metric(doc.champion) + "_ci", 0]),
      (win) => pick(win, ["accuracy", doc.champion, metric(doc.champion) + "_ci", 1])]));
  return charts;
}

const TITLES = {
  latency: "Latency per model (ms, p50 and p99)", on_time: "On time (% of scheduled)",
  chosen: "Share chosen (%)", scores: "Score distribution (p50 per model; champion p5-p95)",
  agreement: "Agreement with the champion", drift: "Drift: -log10 p per test (above the threshold line = drift)",
  accuracy: "Live accuracy from feedback (champion with 95 % interval)",
};

const plots = {};

function draw(dep, name, chart, container) {
  const key = dep + "/" + name;
  const width = Math.max(480, container.clientWidth - 16);
  const opts = {
    width, height: 220, legend: {live: false},
    scales: {x: {time: true}},
    series: [{}].concat(chart.labels.map((label, i) => ({
      label, stroke: label === "threshold" ? "#000" : COLORS[i % COLORS.length], width: 1.5,
      dash: /( low| high| p5| p95|threshold)$/.test(label) ? [4, 4] : undefined,
      spanGaps: true, points: {show: chart.data[0].length < 3},
    }))),
  };
  const prev = plots[key];
  if (prev && prev.series.length === opts.series.length) {
    prev.setData(chart.data);
    return;
  }
  if (prev) prev.destroy();
  container.innerHTML = "";
  plots[key] = new uPlot(opts, chart.data, container);
}

function section(dep) {
  let s = document.getElementById("dep-" + dep);
  if (s) return s;
  s = el("section", {id: "dep-" + dep, "data-deployment": dep});
  s.appendChild(el("h2", {}, dep));
  s.appendChild(el("div", {class: "muted", "data-role": "summary"}));
  const grid = el("div", {class: "grid"});
  Object.keys(TITLES).forEach((name) => {
    const p = el("div", {class: "panel"});
    p.appendChild(el("h3", {}, TITLES[name]));
    p.appendChild(el("div", {"data-chart": name}));
    grid.appendChild(p);
  });
  const alarms = el("div", {class: "panel"});
  alarms.appendChild(el("h3", {}, "Alarms"));
  alarms.appendChild(el("table", {"data-role": "alarms"}));
  grid.appendChild(alarms);
  s.appendChild(grid);
  document.getElementById("deployments").appendChild(s);
  return s;
}

function drawAlarms(table, doc) {
  table.innerHTML = "<tr><th>alarm</th><th>state</th><th>since</th><th>evidence</th></tr>";
  doc.alarms.forEach((a) => {
    const tr = el("tr", {"data-alarm": a.name, "data-state": a.state});
    tr.appendChild(el("td", {}, a.name));
    tr.appendChild(el("td", {class: a.state}, a.state));
    tr.appendChild(el("td", {}, new Date(a.since_ns / 1e6).toLocaleTimeString()));
    tr.appendChild(el("td", {class: "muted"}, JSON.stringify(a.evidence).slice(0, 160)));
    table.appendChild(tr);
  });
  if (!doc.alarms.length) table.appendChild(el("tr", {}, "no alarm has been checked yet"));
}

async function refresh() {
  const {deployments} = await getJSON("/v1/deployments");
  for (const dep of deployments) {
    let doc, alarms;
    try {
      [doc, alarms] = await Promise.all([getJSON(`/v1/deployments/${dep}/windows`),
                                         getJSON(`/v1/deployments/${dep}/alarms`)]);
    } catch (e) {
      continue;  // e.g. this process does not run the monitor of that deployment
    }
    const s = section(dep);
    const charts = chartsOf(doc);
    window.rendezvousCharts[dep] = charts;
    Object.entries(charts).forEach(([name, chart]) =>
      draw(dep, name, chart, s.querySelector(`[data-chart="${name}"]`)));
    const total = doc.windows.reduce((n, win) => n + (win.requests || 0), 0);
    s.querySelector('[data-role="summary"]').textContent =
      `champion ${doc.champion}, canary ${doc.canary || "none"}, deadline ${doc.deadline_ms} ms, ` +
      `${doc.windows.length} windows, ${total} requests shown; firing: ${alarms.firing.join(", ") || "none"}`;
    drawAlarms(s.querySelector('[data-role="alarms"]'), alarms);
  }
  window.rendezvousRefreshes += 1;
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function loop() {
  try { await refresh(); } catch (e) { document.getElementById("updated").textContent = "error: " + e; }
  setTimeout(loop, REFRESH_MS);
}
loop();
