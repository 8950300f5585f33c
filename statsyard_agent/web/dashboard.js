// StatsYard built-in dashboard: plain DOM, no framework, no build step.
// Series names come from the network: they are only ever inserted as text (textContent) or inside
// SVG the server rendered and escaped; the page's CSP forbids inline scripts and handlers.
"use strict";

const state = { range: "-1h", selected: [], auto: true };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error((await response.text()).trim() || response.statusText);
  return response.json();
}

// -- URL state ------------------------------------------------------------------------------

function loadHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("range")) state.range = params.get("range");
  state.selected = params.getAll("s");
}

function saveHash() {
  const params = new URLSearchParams();
  params.set("range", state.range);
  for (const name of state.selected) params.append("s", name);
  history.replaceState(null, "", "#" + params.toString());
}

// -- health ---------------------------------------------------------------------------------

function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1e9) return (value / 1e9).toFixed(1) + "G";
  if (abs >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (abs >= 1e4) return (value / 1e3).toFixed(1) + "k";
  return value.toFixed(digits === undefined ? 0 : digits);
}

function fmtSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
  return seconds.toFixed(2) + " s";
}

function setCard(id, value, sub, bad) {
  $(id).textContent = value;
  if (sub !== undefined) $(id + "-sub").textContent = sub;
  $(id).parentElement.classList.toggle("bad", Boolean(bad));
}

async function refreshHealth() {
  try {
    const h = await getJSON("/dashboard/health");
    $("version").textContent = "v" + h.version;
    $("status").textContent = h.status;
    $("status").dataset.status = h.status;
    $("problems").textContent = h.problems.join("; ");
    const i = h.ingest;
    setCard("h-rate", fmt(i.lines_per_second, i.lines_per_second < 10 ? 1 : 0),
      `lines/s · ${fmt(i.packets_per_second, 1)} packets/s · ${fmt(i.lines)} lines in all`);
    setCard("h-series", fmt(h.series_active), `${fmt(h.points_written)} points written`);
    const e = h.errors;
    const drops = (e.kernel_drops || 0) + e.dropped_batches + e.rejected_series;
    setCard("h-drops", fmt(drops),
      `kernel ${e.kernel_drops === null ? "n/a" : fmt(e.kernel_drops)} · queue ${fmt(e.dropped_batches)} · cardinality ${fmt(e.rejected_series)}`,
      drops > 0);
    const reasons = Object.entries(e.parse_errors_by_reason).map(([k, v]) => `${k} ${v}`).join(", ");
    setCard("h-errors", fmt(e.parse_errors), reasons || "none", e.parse_errors > 0);
    const f = h.flush;
    setCard("h-flush", fmtSeconds(f.average_seconds),
      `avg of ${fmt(f.flushes)} flushes · write ${fmtSeconds(f.write_average_seconds)} · every ${f.interval_seconds} s`);
    const tasks = Object.entries(h.tasks).map(([k, t]) => `${k} ${t.state}`).join(", ");
    setCard("h-restarts", fmt(h.restarts), tasks, h.restarts > 0);
    document.body.dataset.health = "loaded";
  } catch (err) {
    $("status").textContent = "unreachable";
    $("status").dataset.status = "down";
  }
}

// -- choosing series --------------------------------------------------------------------------

function toggle(name) {
  const at = state.selected.indexOf(name);
  if (at >= 0) state.selected.splice(at, 1);
  else state.selected.push(name);
  saveHash();
  markSelected();
  renderCharts();
}

function markSelected() {
  for (const node of document.querySelectorAll("[data-series]")) {
    node.classList.toggle("selected", state.selected.includes(node.dataset.series));
  }
}

let searchTimer = null;
function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 200);
}

async function runSearch() {
  const query = $("search").value.trim();
  const list = $("results");
  list.replaceChildren();
  $("search-info").textContent = "";
  if (!query) return;
  try {
    const found = await getJSON("/dashboard/search?limit=200&q=" + encodeURIComponent(query));
    for (const name of found.results) {
      const item = el("li", { "data-series": name, title: name }, name);
      item.addEventListener("click", () => toggle(name));
      list.append(item);
    }
    $("search-info").textContent = found.total > found.results.length
      ? `${found.results.length} of ${found.total} series` : `${found.total} series`;
    markSelected();
  } catch (err) {
    $("search-info").textContent = String(err.message || err);
  }
}

async function expand(parent, query) {
  const nodes = await getJSON("/metrics/find?query=" + encodeURIComponent(query));
  const list = el("ul");
  for (const node of nodes) {
    const item = el("li");
    const label = el("span", {}, node.text);
    if (node.expandable) {
      label.className = "branch";
      label.addEventListener("click", async () => {
        if (item.classList.toggle("open")) {
          if (!item.querySelector("ul")) await expand(item, node.id + ".*");
        } else {
          item.querySelector("ul")?.remove();
        }
      });
    } else {
      label.dataset.series = node.id;
      label.title = node.id;
      label.addEventListener("click", () => toggle(node.id));
    }
    item.append(label);
    list.append(item);
  }
  if (parent.tagName === "UL") parent.replaceChildren(...list.children);
  else parent.append(list);
  markSelected();
}

// -- charts -----------------------------------------------------------------------------------

function chartURL(name, width) {
  const params = new URLSearchParams({ target: name, from: state.range, until: "now", format: "svg",
    width: String(width), height: "260" });
  return "/render?" + params.toString();
}

async function loadChart(card) {
  const body = card.querySelector(".body");
  const width = Math.max(320, Math.min(1600, Math.floor(body.clientWidth || 800)));
  try {
    const response = await fetch(chartURL(card.dataset.target, width), { cache: "no-store" });
    const text = await response.text();
    if (!response.ok) throw new Error(text.trim() || response.statusText);
    const doc = new DOMParser().parseFromString(text, "image/svg+xml");
    const svg = doc.documentElement;
    if (svg.nodeName !== "svg") throw new Error("the server sent no chart");
    body.replaceChildren(document.importNode(svg, true));
    card.dataset.loaded = String(Date.now());
  } catch (err) {
    body.replaceChildren(el("div", { class: "error" }, String(err.message || err)));
    card.dataset.loaded = "error";
  }
}

function renderCharts() {
  const charts = $("charts");
  const existing = new Map([...charts.children].map((c) => [c.dataset.target, c]));
  const cards = state.selected.map((name) => {
    let card = existing.get(name);
    if (!card) {
      card = el("div", { class: "chart-card", "data-target": name });
      const head = el("div", { class: "head" });
      const close = el("button", { type: "button", title: "remove", "aria-label": "remove chart" }, "×");
      close.addEventListener("click", () => toggle(name));
      head.append(el("code", {}, name), close);
      card.append(head, el("div", { class: "body" }));
    }
    return card;
  });
  charts.replaceChildren(...cards);
  $("empty").hidden = cards.length > 0;
  for (const card of cards) loadChart(card);
}

function setRange(range) {
  state.range = range;
  for (const button of document.querySelectorAll("#ranges button")) {
    button.classList.toggle("active", button.dataset.range === range);
  }
  saveHash();
  renderCharts();
}

// -- start ------------------------------------------------------------------------------------

function start() {
  loadHash();
  $("search").addEventListener("input", onSearch);
  for (const button of document.querySelectorAll("#ranges button")) {
    button.addEventListener("click", () => setRange(button.dataset.range));
  }
  $("auto").addEventListener("change", (event) => { state.auto = event.target.checked; });
  $("clear").addEventListener("click", () => { state.selected = []; saveHash(); markSelected(); renderCharts(); });
  setRange(state.range);
  expand($("tree"), "*").catch((err) => { $("tree").replaceChildren(el("li", { class: "muted" }, String(err.message || err))); });
  refreshHealth();
  setInterval(refreshHealth, 2000);
  setInterval(() => { if (state.auto && state.selected.length) renderCharts(); }, 10000);
}

document.addEventListener("DOMContentLoaded", start);
