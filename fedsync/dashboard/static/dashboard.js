"use strict";
// Polls the JSON endpoints and redraws. Data goes into the DOM through textContent
// only: device URLs and failure reasons come from the network.
const POLL_MS = 2000;
const COLORS = {training: "#2563eb", evaluation: "#ea580c", server: "#16a34a", seconds: "#475569"};
const charts = new Map();
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function duration(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "-";
  if (seconds < 60) return seconds.toFixed(seconds < 10 ? 2 : 1) + " s";
  const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? h + " h " + String(m).padStart(2, "0") + " min" : m + " min " + String(s % 60).padStart(2, "0") + " s");
}

function number(value) {
  if (value === null || value === undefined) return "-";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4);
  return String(value);
}

function showRun(run) {
  $("where").textContent = run.source === "folder" ? "checkpoint folder " + run.folder : "live, in the coordinator's process";
  $("repetition").textContent = number(run.repetition);
  $("rounds_done").textContent = run.rounds_planned === null ? number(run.rounds_done) : run.rounds_done + " of " + run.rounds_planned;
  $("rounds_to_go").textContent = run.rounds_to_go === null ? "unknown" : (run.finished ? "0 (finished)" : String(run.rounds_to_go));
  $("elapsed").textContent = duration(run.elapsed_seconds);
  $("per_round").textContent = duration(run.seconds_per_round);
  $("eta").textContent = run.finished ? "done" : duration(run.eta_seconds);
  const note = $("note");
  note.hidden = !run.note;
  note.textContent = run.note || "";
  showConfig(run.config || {});
}

function chartWidth(wrap) {
  return Math.max(280, (wrap.clientWidth || 440) - 12);
}

// A metric's axis always spans a visible range (a constant accuracy gets ticks around it, not one);
// durations start at zero, so that noise of a few milliseconds does not look like spikes.
function metricRange(u, min, max) {
  if (min === null || max === null) return [0, 1];
  const pad = max > min ? (max - min) * 0.1 : Math.max(Math.abs(max) * 0.05, 0.01);
  return [min - pad, max + pad];
}

function secondsRange(u, min, max) {
  return [0, max !== null && max > 0 ? max * 1.1 : 1];
}

function drawChart(container, title, x, series, range) {
  const signature = series.map((s) => s.label).join("+");
  let chart = charts.get(title);
  if (chart && chart.signature !== signature) {  // evaluation began: the chart gains a series
    chart.plot.destroy();
    chart.wrap.remove();
    chart = undefined;
  }
  const data = [x].concat(series.map((s) => s.values));
  if (!chart) {
    const wrap = el("div", "chart");
    wrap.setAttribute("data-metric", title);
    wrap.appendChild(el("h3", null, title));
    container.appendChild(wrap);
    const opts = {
      width: chartWidth(wrap), height: 200,
      scales: {x: {time: false}, y: {range: range}},
      axes: [{label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]}, {size: 60}],
      series: [{label: "round"}].concat(series.map((s) => ({
        label: s.label, stroke: COLORS[s.label] || COLORS.seconds, width: 2, spanGaps: true, points: {show: true, size: 5},
      }))),
    };
    chart = {wrap: wrap, signature: signature, plot: new uPlot(opts, data, wrap)};
    charts.set(title, chart);
  } else {
    chart.plot.setData(data);
  }
  chart.wrap.setAttribute("data-points", series.map((s) => s.label + ":" + s.values.filter((v) => v !== null).length).join(","));
}

function showCharts(history) {
  const container = $("charts"), rounds = history.rounds;
  if (!rounds.length) return;
  const empty = container.querySelector(".empty");
  if (empty) empty.remove();
  const x = rounds.map((r) => r.round);
  const server = history.metrics.server || [];  // present only when the run has an evaluate_fn
  const names = Array.from(new Set(history.metrics.training.concat(history.metrics.evaluation, server)));
  for (const name of names) {
    const series = [];
    if (history.metrics.training.includes(name))
      series.push({label: "training", values: rounds.map((r) => (name in r.metrics ? r.metrics[name] : null))});
    if (history.metrics.evaluation.includes(name))
      series.push({label: "evaluation", values: rounds.map((r) => (r.evaluation && name in r.evaluation ? r.evaluation[name] : null))});
    if (server.includes(name))
      series.push({label: "server", values: rounds.map((r) => (r.server && name in r.server ? r.server[name] : null))});
    drawChart(container, name, x, series, metricRange);
  }
  drawChart(container, "round seconds", x, [{label: "seconds", values: rounds.map((r) => r.seconds)}], secondsRange);
}

function showDevices(answer) {
  const rows = answer.devices.map((d) => {
    const tr = el("tr");
    tr.setAttribute("data-url", d.url);
    tr.appendChild(el("td", "url", d.url));
    const state = el("td", "state-cell");
    state.appendChild(el("span", "state " + (d.state === "answered" || d.state === "failed" ? d.state : "idle"), d.state));
    tr.appendChild(state);
    tr.appendChild(el("td", "n samples", number(d.samples)));
    tr.appendChild(el("td", "n seconds", d.seconds_per_round === null ? "-" : d.seconds_per_round.toFixed(2)));
    tr.appendChild(el("td", "n sampled", d.sampled));
    tr.appendChild(el("td", "n answered", d.answered));
    const f = d.last_failure;
    // One clear line; the device's whole text on hover (and in the history).
    const failure = el("td", "last_failure", f ? "round " + f.round + (f.during === "evaluation" ? " (evaluation)" : "") + ": " + (f.summary || f.reason) : "-");
    if (f) failure.title = f.reason;
    tr.appendChild(failure);
    return tr;
  });
  $("devices").tBodies[0].replaceChildren(...rows);
}

function showConfig(config) {
  const rows = [];
  const add = (key, value) => {
    if (value !== null && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) add(key + "." + k, v);
      return;
    }
    const tr = el("tr");
    tr.appendChild(el("th", null, key));
    tr.appendChild(el("td", null, value === null ? "-" : String(value)));
    rows.push(tr);
  };
  for (const [k, v] of Object.entries(config)) add(k, v);
  if (!rows.length) rows.push(el("tr", "empty", "not known"));
  $("config").tBodies[0].replaceChildren(...rows);
}

async function getJSON(path) {
  const response = await fetch(path, {cache: "no-store"});
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

async function refresh() {
  try {
    const [run, history, devices] = await Promise.all([getJSON("api/run"), getJSON("api/history"), getJSON("api/devices")]);
    showRun(run);
    showCharts(history);
    showDevices(devices);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    $("status").textContent = "cannot reach the dashboard's server (" + error.message + "); retrying";
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

window.addEventListener("resize", () => { for (const c of charts.values()) c.plot.setSize({width: chartWidth(c.wrap), height: 200}); });
refresh();
