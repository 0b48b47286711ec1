// weft dashboard: polls api/overview and draws it. Every string from the mesh goes into the page
// as text (never as HTML): paths and identities come from whoever sent a request.
"use strict";

const POLL_MS = 2000;
const HISTORY_MS = 5 * 60 * 1000;
const DENIALS_SHOWN = 15;
const SVG_NS = "http://www.w3.org/2000/svg";

// Errors in this script show on the page (and mark the body, for the browser test).
function reportError(message) {
  const box = document.getElementById("problems");
  if (box) {
    box.hidden = false;
    box.textContent = "dashboard error: " + message;
  }
  document.body.dataset.jsErrors = String(Number(document.body.dataset.jsErrors || "0") + 1);
}
window.addEventListener("error", (e) => reportError(e.message));
window.addEventListener("unhandledrejection", (e) => reportError(String(e.reason)));

function el(tag, props, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children || []) node.append(c);
  return node;
}

function svg(tag, attrs, children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, String(v));
  }
  for (const c of children || []) node.append(c);
  return node;
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const pct = (v) => (isNum(v) ? (v * 100).toFixed(2) + "%" : "–");
const rps = (v) => (isNum(v) ? v.toFixed(1) : "–");
const ms = (v) => (isNum(v) ? (v < 10 ? v.toFixed(2) : v.toFixed(1)) + " ms" : "–");
const tls = (v) => (isNum(v) ? v.toFixed(0) + "%" : "–");

function health(rate) {
  if (!isNum(rate)) return "";
  if (rate >= 0.99) return "good";
  if (rate >= 0.95) return "warn";
  return "bad";
}

function cell(text, cls) {
  return el("td", { text, class: cls || "" });
}
function num(text, cls) {
  return el("td", { text, class: "num " + (cls || "") });
}

function fill(tableId, rows, columns, emptyText) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    body.append(el("tr", {}, [el("td", { text: emptyText, class: "empty", colspan: String(columns) })]));
    return;
  }
  for (const r of rows) body.append(r);
}

// A small line chart of one value of a series' points ([t, rps, success, p99]).
function spark(points, index, cls, now, format) {
  const w = 150, h = 30, pad = 2;
  const chart = svg("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  chart.append(svg("line", { class: "axis", x1: 0, y1: h - 0.5, x2: w, y2: h - 0.5 }));
  const values = (points || []).filter((p) => isNum(p[index]));
  if (values.length === 0) return chart;
  const max = Math.max(...values.map((p) => p[index]), index === 2 ? 1 : 1e-9);
  const min = index === 2 ? Math.min(...values.map((p) => p[index]), 0.9) : 0;
  // From the first point (at least a minute, at most the history) to now.
  const span = Math.min(HISTORY_MS, Math.max(60 * 1000, now - values[0][0]));
  const x = (t) => pad + ((t - (now - span)) / span) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - min) / (max - min || 1)) * (h - 2 * pad - 8);
  const coords = values.map((p) => `${x(p[0]).toFixed(1)},${y(p[index]).toFixed(1)}`).join(" ");
  chart.append(svg("polyline", { class: cls, points: coords }));
  chart.append(svg("text", { x: pad, y: 8, text: "max " + format(max) }));
  return chart;
}

function seriesIndex(series) {
  const out = new Map();
  for (const s of series || []) out.set(s.kind + " " + s.key, s.points);
  return out;
}

// The golden signals of a row (services, routes, backends), in the columns every table has.
function signalCells(r) {
  return [
    num(pct(r.success_rate), health(r.success_rate)),
    num(rps(r.rps)),
    num(ms(r.p50_ms)),
    num(ms(r.p95_ms)),
    num(ms(r.p99_ms)),
  ];
}

function renderServices(o, charts, now) {
  const rows = o.services.map((s) => {
    const points = charts.get("service " + s.service);
    return el("tr", {}, [
      cell(s.service),
      ...signalCells(s),
      num(tls(s.tls_percent)),
      el("td", {}, [spark(points, 1, "", now, rps)]),
      el("td", {}, [spark(points, 2, "success", now, pct)]),
    ]);
  });
  fill("services", rows, 9, "no requests yet");
}

function renderRoutes(o, charts, now) {
  const rows = o.routes.map((r) => {
    const points = charts.get(`route ${r.service} ${r.route} ${r.rule}`);
    return el("tr", {}, [
      cell(r.service),
      cell(r.route),
      cell(r.rule),
      ...signalCells(r),
      el("td", {}, [spark(points, 1, "", now, rps)]),
      el("td", {}, [spark(points, 3, "latency", now, ms)]),
    ]);
  });
  fill("routes", rows, 10, "no routed requests yet");
  const backends = o.backends.map((r) =>
    el("tr", {}, [
      cell(r.service),
      cell(r.route),
      cell(r.rule),
      cell(r.backend || ""),
      ...signalCells(r),
    ]),
  );
  fill("backends", backends, 9, "no routed requests yet");
}

// The short form of a SPIFFE ID: `ns/<ns>/sa/<name>` (the trust domain is the same mesh-wide).
function shortId(id) {
  const m = /^spiffe:\/\/[^/]+\/(.*)$/.exec(id);
  return m ? m[1] : id;
}

// Columns by call depth (callers left of the called), rows in name order.
function layout(nodes, edges) {
  const depth = new Map(nodes.map((n) => [n, 0]));
  for (let i = 0; i < nodes.length; i++) {
    let changed = false;
    for (const e of edges) {
      if (e.from === e.to) continue;
      const d = (depth.get(e.from) || 0) + 1;
      if (d > (depth.get(e.to) || 0) && d < nodes.length) {
        depth.set(e.to, d);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const n of nodes) {
    const d = depth.get(n) || 0;
    (columns[d] = columns[d] || []).push(n);
  }
  return columns.filter(Boolean);
}

function renderGraph(o) {
  const box = document.getElementById("graph");
  const edges = o.edges.filter((e) => e.requests > 0);
  const nodes = Array.from(new Set([...o.nodes, ...edges.flatMap((e) => [e.from, e.to])])).sort();
  if (nodes.length === 0) {
    box.replaceChildren(el("p", { text: "no services yet", class: "hint" }));
    return;
  }
  const columns = layout(nodes, edges);
  const nodeW = 170, nodeH = 46, colGap = 190, rowGap = 40, margin = 20;
  const pos = new Map();
  columns.forEach((col, c) =>
    col.forEach((n, r) => pos.set(n, { col: c, x: margin + c * (nodeW + colGap), y: margin + r * (nodeH + rowGap) })),
  );
  // A call to a neighbouring column is drawn straight across; any other (skipping columns,
  // or backwards) arcs below the graph, each a little lower, so no two labels overlap.
  const isLong = (e) => {
    const a = pos.get(e.from), b = pos.get(e.to);
    return a && b && b.col - a.col !== 1;
  };
  const long = edges.filter(isLong).length;
  const nodesBottom = margin + Math.max(...columns.map((c) => c.length)) * (nodeH + rowGap) - rowGap;
  const width = margin * 2 + columns.length * nodeW + (columns.length - 1) * colGap;
  const height = nodesBottom + (long > 0 ? 60 + long * 34 : 0) + margin;
  const g = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "service graph" });
  g.append(
    svg("defs", {}, [
      svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, [
        svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }),
      ]),
    ]),
  );
  const stats = new Map(o.services.map((s) => [s.service, s]));
  let arcs = 0;
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    let path, mx, my;
    if (isLong(e)) {
      // Leave from the bottom of the caller, arrive at the bottom of the called.
      const x1 = a.x + nodeW / 2, y1 = a.y + nodeH, x2 = b.x + nodeW / 2 + 12, y2 = b.y + nodeH;
      const low = nodesBottom + 40 + arcs * 34;
      arcs += 1;
      path = `M ${x1} ${y1} C ${x1} ${low}, ${x2} ${low}, ${x2} ${y2}`;
      mx = (x1 + x2) / 2;
      // Labels under the arc's lowest point.
      my = (y1 + y2) / 8 + (3 * low) / 4 + 18;
    } else {
      const x1 = a.x + nodeW, y1 = a.y + nodeH / 2, x2 = b.x, y2 = b.y + nodeH / 2;
      const bend = Math.max(40, Math.abs(x2 - x1) / 2);
      path = `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
      mx = (x1 + x2) / 2;
      my = (y1 + y2) / 2 - 2;
    }
    const refused = e.denied > 0;
    const cls = refused ? "edge denied" : health(e.success_rate) === "bad" ? "edge bad" : "edge";
    g.append(svg("path", { d: path, class: cls, "marker-end": "url(#arrow)" }));
    const how = isNum(e.tls_percent) && e.tls_percent > 0 ? "mTLS " + shortId(e.identity) : "plaintext";
    const what = refused
      ? `${rps(e.rps)} rps · ${Math.round(e.denied)} denied by policy`
      : `${rps(e.rps)} rps · ${pct(e.success_rate)}`;
    g.append(svg("text", { class: refused ? "label denied" : "label", x: mx, y: my - 6, text: what }));
    g.append(svg("text", { class: "label", x: mx, y: my + 8, text: how }));
  }
  for (const n of nodes) {
    const p = pos.get(n);
    const s = stats.get(n);
    const line = s ? `${pct(s.success_rate)} · ${rps(s.rps)} rps` : "no inbound traffic";
    g.append(
      svg("g", { class: "node" }, [
        svg("rect", { x: p.x, y: p.y, width: nodeW, height: nodeH, rx: 6 }),
        svg("text", { x: p.x + nodeW / 2, y: p.y + 19, text: n }),
        svg("text", { class: "stats", x: p.x + nodeW / 2, y: p.y + 36, text: line }),
      ]),
    );
  }
  box.replaceChildren(g);
  const rows = edges.map((e) =>
    el("tr", {}, [
      cell(e.from),
      cell(e.to),
      cell(e.identity, "mono"),
      num(tls(e.tls_percent)),
      num(pct(e.success_rate), health(e.success_rate)),
      num(rps(e.rps)),
      num(ms(e.p99_ms)),
      num(String(Math.round(e.denied)), e.denied > 0 ? "bad" : ""),
    ]),
  );
  fill("edges", rows, 8, "no calls yet");
}

function renderDenials(o) {
  document.getElementById("denied-total").textContent =
    `${o.denied_total} since the proxies started; the latest ${Math.min(o.denials.length, DENIALS_SHOWN)}, newest first`;
  const rows = o.denials.slice(0, DENIALS_SHOWN).map((d) =>
    el("tr", {}, [
      cell(new Date(d.at_ms).toLocaleTimeString()),
      cell(d.from || "unknown"),
      cell(d.peer, "mono"),
      cell(d.service || "?"),
      cell(`${d.method} ${d.path} (port ${d.port})`, "wrap mono"),
      cell(d.policy),
      cell(d.reason, "wrap"),
    ]),
  );
  fill("denials", rows, 7, "no request denied");
}

function renderProxies(o) {
  const rows = o.proxies.map((p) =>
    el("tr", {}, [
      cell(p.target, "mono"),
      cell(p.service || "?"),
      p.error ? cell("failed: " + p.error, "bad") : cell("ok", "good"),
    ]),
  );
  fill("proxies", rows, 3, "no proxy found");
}

function render(o) {
  const now = o.updated_ms;
  const charts = seriesIndex(o.series);
  for (const w of document.querySelectorAll(".window")) w.textContent = `${Math.round(o.window_seconds)} s`;
  renderServices(o, charts, now);
  renderRoutes(o, charts, now);
  renderGraph(o);
  renderDenials(o);
  renderProxies(o);
  const problems = document.getElementById("problems");
  const failed = o.proxies.filter((p) => p.error).length;
  const issues = [];
  if (o.error) issues.push(o.error);
  if (failed > 0) issues.push(`${failed} of ${o.proxies.length} proxies did not answer the last scrape`);
  problems.hidden = issues.length === 0;
  problems.textContent = issues.join(" · ");
}

const status = (text, stale) => {
  const s = document.getElementById("status");
  s.textContent = text;
  s.classList.toggle("stale", stale);
};

async function poll() {
  let o = null;
  try {
    const rsp = await fetch("api/overview", { cache: "no-store" });
    if (!rsp.ok) throw new Error(`the dashboard answered ${rsp.status}`);
    o = await rsp.json();
  } catch (e) {
    status("cannot reach the dashboard server (" + e.message + "); retrying", true);
  }
  setTimeout(poll, POLL_MS);
  if (!o) return;
  if (!o.updated_ms) {
    status("waiting for the first scrape…", true);
    return;
  }
  // A fault in drawing is not a network fault: it is reported as an error, not retried quietly.
  render(o);
  const ok = o.proxies.filter((p) => !p.error).length;
  status(`updated ${new Date(o.updated_ms).toLocaleTimeString()} · ${ok} prox${ok === 1 ? "y" : "ies"} · window ${Math.round(o.window_seconds)} s`, false);
}

poll();
