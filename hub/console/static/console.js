// The operators' console: polls /api/state and draws SVG charts. Text goes in with textContent only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 520;

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function html(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value) {
  if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (value >= 1e4) return (value / 1e3).toFixed(0) + "k";
  if (value >= 100 || Number.isInteger(value)) return String(Math.round(value));
  return value.toFixed(1);
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function empty(container, message) {
  const svg = el("svg", { viewBox: `0 0 ${WIDTH} 40`, role: "img", "aria-label": message });
  svg.appendChild(el("text", { x: 8, y: 24, class: "empty" }, message));
  container.replaceChildren(svg);
  container.dataset.points = "0";
}

// A line chart: one line per series over the same times (seconds since epoch).
function lineChart(container, times, series, unit) {
  const names = Object.keys(series);
  const height = 190, left = 44, right = 8, top = 8, bottom = 22;
  if (times.length < 2 || names.length === 0) return empty(container, "waiting for data…");
  const all = names.flatMap((name) => series[name]).filter((v) => v !== null);
  const max = niceMax(Math.max(0, ...all));
  const t0 = times[0], t1 = times[times.length - 1], span = Math.max(t1 - t0, 1);
  const x = (t) => left + ((t - t0) / span) * (WIDTH - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const svg = el("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": `line chart, ${unit}` });
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    svg.appendChild(el("line", { x1: left, x2: WIDTH - right, y1: y(value), y2: y(value), class: "axis" }));
    svg.appendChild(el("text", { x: left - 4, y: y(value) + 3, "text-anchor": "end", class: "tick" }, fmt(value)));
  }
  svg.appendChild(el("text", { x: left, y: height - 6, class: "tick" }, `−${Math.round(span)} s`));
  svg.appendChild(el("text", { x: WIDTH - right, y: height - 6, "text-anchor": "end", class: "tick" }, "now"));
  const legend = html("div", { class: "legend" });
  let points = 0;
  names.forEach((name, index) => {
    const values = series[name];
    // A null (unknown: the broker did not answer) breaks the line instead of drawing a 0.
    const d = values.map((v, i) => (v === null ? "" : `${i && values[i - 1] !== null ? "L" : "M"}${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`)).join(" ");
    const known = values.filter((v) => v !== null);
    const path = el("path", { d, class: `line c${index % 6}`, "data-series": name, "data-max": Math.max(0, ...known) });
    path.appendChild(el("title", {}, name));
    svg.appendChild(path);
    points += known.filter((v) => v > 0).length;
    const item = html("span");
    item.appendChild(html("i", { class: `c${index % 6}` }));
    const last = values[values.length - 1];
    item.appendChild(document.createTextNode(`${name} ${last === null ? "unknown" : fmt(last)}`));
    legend.appendChild(item);
  });
  container.replaceChildren(svg, legend);
  container.dataset.points = String(points);
}

// Horizontal bars: [{label, value, cls}].
function bars(container, items, message) {
  if (!items.length) return empty(container, message || "nothing yet");
  const row = 22, left = 170, right = 60;
  const height = items.length * row + 6;
  const max = niceMax(Math.max(...items.map((item) => item.value)));
  const svg = el("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "bar chart" });
  items.forEach((item, i) => {
    const y = 3 + i * row;
    const width = (item.value / max) * (WIDTH - left - right);
    svg.appendChild(el("text", { x: left - 6, y: y + 14, "text-anchor": "end", class: "label" }, item.label));
    const rect = el("rect", {
      x: left, y: y + 3, width: Math.max(width, item.value > 0 ? 2 : 0), height: row - 8, rx: 2,
      class: `bar ${item.cls}`, "data-label": item.label, "data-value": item.value,
    });
    rect.appendChild(el("title", {}, `${item.label}: ${item.value}`));
    svg.appendChild(rect);
    svg.appendChild(el("text", { x: left + width + 6, y: y + 14, class: "value" }, fmt(item.value)));
  });
  container.replaceChildren(svg);
  container.dataset.points = String(items.filter((item) => item.value > 0).length);
}

// Stacked bars: [{label, parts: [{name, value}]}], the part names as classes.
function stacked(container, rows, message) {
  if (!rows.length) return empty(container, message || "nothing yet");
  const row = 22, left = 170, right = 60;
  const height = rows.length * row + 6;
  const max = niceMax(Math.max(...rows.map((r) => r.parts.reduce((s, p) => s + p.value, 0))));
  const svg = el("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "stacked bar chart" });
  let points = 0;
  rows.forEach((r, i) => {
    const y = 3 + i * row;
    let x = left;
    svg.appendChild(el("text", { x: left - 6, y: y + 14, "text-anchor": "end", class: "label" }, r.label));
    for (const part of r.parts) {
      const width = (part.value / max) * (WIDTH - left - right);
      const rect = el("rect", {
        x, y: y + 3, width, height: row - 8, class: `bar ${part.name}`,
        "data-label": `${r.label}/${part.name}`, "data-value": part.value,
      });
      rect.appendChild(el("title", {}, `${r.label} ${part.name}: ${part.value}`));
      svg.appendChild(rect);
      x += width;
      if (part.value > 0) points += 1;
    }
    const total = r.parts.map((p) => fmt(p.value)).join(" / ");
    svg.appendChild(el("text", { x: x + 6, y: y + 14, class: "value" }, total));
  });
  container.replaceChildren(svg);
  container.dataset.points = String(points);
}

function tile(name, ok, detail) {
  const node = html("div", { class: "tile", "data-ok": ok ? "true" : "false", "data-name": name });
  node.appendChild(html("strong", {}, `${ok ? "✓" : "✗"} ${name}`));
  node.appendChild(html("span", {}, detail || ""));
  return node;
}

function healthy(state) {
  const h = state.health;
  return h.broker.ok && h.topics.ok && h.targets.every((t) => t.up) && !h.stage_failures;
}

function render(state) {
  const h = state.health;
  const tiles = [
    tile("broker", h.broker.ok, h.broker.detail),
    tile("topics", h.topics.ok, h.topics.ok ? `${h.topics.expected} present` : `missing: ${h.topics.missing.join(", ") || "unknown"}`),
    ...h.targets.map((t) => tile(t.name, t.up, t.up ? "/metrics answers" : `down (${t.error})`)),
    ...h.groups.map((g) => tile(`group ${g.group}`, g.members > 0, `${g.state}, ${g.members} member(s)`)),
  ];
  if (h.stage_failures) tiles.push(tile("stage failures", false, `${h.stage_failures} record(s) raised`));
  document.getElementById("health").replaceChildren(...tiles);

  lineChart(document.getElementById("chart-throughput"), state.series.t, state.series.throughput, "records/s");
  lineChart(document.getElementById("chart-lag"), state.series.t, state.series.lag, "records");
  bars(
    document.getElementById("chart-lag-partitions"),
    state.lag_partitions.filter((p) => p.lag > 0).slice(0, 12)
      .map((p) => ({ label: `${p.topic.split(".").slice(-2, -1)[0] || p.topic}[${p.partition}] ${p.group.endsWith("-gateway") ? "gw" : ""}`.trim(), value: p.lag, cls: "lag" })),
    "no lag: every group is caught up",
  );
  bars(
    document.getElementById("chart-receipts"),
    Object.entries(state.receipts).map(([status, value]) => ({ label: status, value, cls: status })),
  );
  bars(
    document.getElementById("chart-dlq"),
    Object.entries(state.dlq_by_code).map(([code, value]) => ({ label: code, value, cls: "code" })),
    "no rejects",
  );
  bars(
    document.getElementById("chart-dlq-sources"),
    Object.entries(state.dlq_by_source).map(([source, value]) => ({ label: source, value, cls: "code" })),
    "no rejects",
  );
  const list = document.getElementById("latest-rejects");
  list.replaceChildren(...state.latest_rejects.map((r) => {
    const item = html("li");
    item.appendChild(html("code", {}, r.code));
    item.appendChild(document.createTextNode(` from ${r.source} at ${r.at} (${r.where})`));
    return item;
  }));
  stacked(
    document.getElementById("chart-share"),
    Object.entries(state.share).map(([rule, v]) => ({
      label: rule, parts: [{ name: "permit", value: v.permit || 0 }, { name: "deny", value: v.deny || 0 }],
    })),
    "no share decisions yet",
  );
  bars(
    document.getElementById("chart-alerts"),
    ["sent", "unread", "read", "dismissed"].map((k) => ({ label: k, value: state.alerts[k] || 0, cls: k })),
  );
  bars(
    document.getElementById("chart-tables"),
    Object.entries(state.tables).map(([table, value]) => ({ label: table, value, cls: "table" })),
    "no worker reports its tables",
  );

  const ok = healthy(state);
  const overall = document.getElementById("overall");
  overall.dataset.state = ok ? "ok" : "bad";
  overall.textContent = ok ? "healthy" : "needs attention";
  document.getElementById("updated").textContent = `updated ${state.generated_at}`;
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

async function refresh() {
  let delay = 2000;
  try {
    const response = await fetch("/api/state", { cache: "no-store", credentials: "same-origin" });
    if (response.status === 401) { window.location.assign("/login"); return; }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const state = await response.json();
    delay = Math.max(500, state.refresh_seconds * 1000);
    render(state);
  } catch (error) {
    const overall = document.getElementById("overall");
    overall.dataset.state = "bad";
    overall.textContent = "console unreachable";
  }
  setTimeout(refresh, delay);
}

refresh();
