// The pymesh dashboard. Every second it reads GET /metrics (Prometheus text), /stats and
// /clusters, keeps the last samples, and derives rates and quantiles from the difference
// between the newest sample and one about WINDOW_S seconds older. No libraries: the charts
// are SVG paths drawn here.
"use strict";

const TICK_MS = 1000;
const WINDOW_S = 5;      // rates and quantiles over about this many seconds
const HISTORY = 60;      // points in each sparkline
const TOKEN_KEY = "pymesh-admin-token";

const $ = (id) => document.getElementById(id);
const state = {
  token: null, generation: 0, samples: [], trends: new Map(), version: null, selected: null, listeners: [],
};

// === the admin API ===

class AuthError extends Error {}

async function api(path, text = false) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` }, cache: "no-store" });
  if (r.status === 401) throw new AuthError("the admin API refused the token");
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return text ? r.text() : r.json();
}

// === Prometheus text -> samples ===

function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;  // comments and blank lines
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[k] = v.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

const key = (...parts) => parts.join("\u0000");

// Counters and histograms of one scrape: requests by route ("listener\0route"), by cluster,
// and by route and cluster together (a route may split its traffic).
function summarize(metrics) {
  const routes = new Map(), clusters = new Map(), pairs = new Map();
  const hists = new Map(), clusterHists = new Map(), ejected = new Map();
  const add = (map, k, total, errors) => {
    const e = map.get(k) || { total: 0, errors: 0 };
    e.total += total; e.errors += errors; map.set(k, e);
  };
  const bucket = (map, k, le, v) => {
    const h = map.get(k) || new Map();
    h.set(le, (h.get(le) || 0) + v); map.set(k, h);
  };
  for (const { name, labels, value } of metrics) {
    if (name === "pymesh_requests_total") {
      const cls = labels.status_class || labels.class || "";
      const errors = cls === "5xx" ? value : 0;
      add(routes, key(labels.listener, labels.route), value, errors);
      if (labels.cluster) {
        add(clusters, labels.cluster, value, errors);
        add(pairs, key(labels.listener, labels.route, labels.cluster), value, errors);
      }
    } else if (name === "pymesh_request_duration_seconds_bucket") {
      bucket(hists, key(labels.listener, labels.route), labels.le, value);
    } else if (name.endsWith("_duration_seconds_bucket") && labels.cluster && !labels.route) {
      // A per-cluster latency histogram, if the core has one (time to the upstream's answer).
      bucket(clusterHists, labels.cluster, labels.le, value);
    } else if (name === "pymesh_outlier_ejected_endpoints") {
      ejected.set(labels.cluster, value);
    }
  }
  return { routes, clusters, pairs, hists, clusterHists, ejected };
}

// === rates and quantiles between two samples ===

const delta = (now, then) => (now >= then ? now - then : now);  // a reset starts from 0

function bucketDeltas(now, then) {
  // [[upper bound, cumulative count]] sorted by bound, +Inf last.
  return [...(now || new Map())]
    .map(([le, v]) => [le === "+Inf" ? Infinity : Number(le), delta(v, then?.get(le) || 0)])
    .sort((a, b) => a[0] - b[0]);
}

// histogram_quantile: linear interpolation inside the bucket that holds the rank.
function quantile(q, buckets) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  const rank = q * total;
  for (let i = 0; i < buckets.length; i++) {
    const [le, count] = buckets[i];
    if (count < rank) continue;
    const [lo, below] = i ? buckets[i - 1] : [0, 0];
    if (le === Infinity) return lo;
    return count > below ? lo + (le - lo) * ((rank - below) / (count - below)) : lo;
  }
  return null;
}

function mix(parts) {
  // Sum bucket deltas, each part scaled by its weight: [[le, count]] -> [[le, count]].
  const sum = new Map();
  for (const [buckets, weight] of parts) {
    for (const [le, n] of buckets) sum.set(le, (sum.get(le) || 0) + n * weight);
  }
  return [...sum].sort((a, b) => a[0] - b[0]);
}

function rates(now, then) {
  const dt = (now.t - then.t) / 1000;
  const rate = (e, old) => {
    const n = delta(e.total, old?.total || 0);
    const bad = delta(e.errors, old?.errors || 0);
    return { rps: dt > 0 ? n / dt : 0, n, bad, success: n ? (n - bad) / n : null };
  };
  const withLatency = (r, buckets) => ({ ...r, p50: quantile(0.5, buckets), p99: quantile(0.99, buckets) });
  const routes = new Map(), clusters = new Map(), routeBuckets = new Map();
  for (const [k, e] of now.m.routes) {
    const r = rate(e, then.m.routes.get(k));
    const buckets = bucketDeltas(now.m.hists.get(k), then.m.hists.get(k));
    routeBuckets.set(k, { buckets, n: r.n });
    routes.set(k, withLatency(r, buckets));
  }
  for (const [c, e] of now.m.clusters) {
    let buckets = bucketDeltas(now.m.clusterHists.get(c), then.m.clusterHists.get(c));
    if (!buckets.length) {
      // No per-cluster histogram: the routes' latencies, each weighted by the share of the
      // route's requests that went to this cluster.
      const parts = [];
      for (const [pair, pe] of now.m.pairs) {
        const [l, rt, pc] = pair.split("\u0000");
        const route = routeBuckets.get(key(l, rt));
        const sent = delta(pe.total, then.m.pairs.get(pair)?.total || 0);
        if (pc === c && sent && route?.n) parts.push([route.buckets, sent / route.n]);
      }
      buckets = mix(parts);
    }
    clusters.set(c, withLatency(rate(e, then.m.clusters.get(c)), buckets));
  }
  const all = [...routes.values()];
  const n = all.reduce((s, x) => s + x.n, 0), bad = all.reduce((s, x) => s + x.bad, 0);
  const buckets = mix([...routeBuckets.values()].map((b) => [b.buckets, 1]));
  const total = withLatency({ rps: all.reduce((s, x) => s + x.rps, 0), success: n ? (n - bad) / n : null }, buckets);
  return { routes, clusters, total };
}

function trend(name, value) {
  const points = state.trends.get(name) || [];
  points.push(value ?? 0);
  if (points.length > HISTORY) points.shift();
  state.trends.set(name, points);
  return points;
}

// === formatting and drawing ===

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function fmtRate(v) {
  if (v === null || v === undefined) return "—";
  return v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString("en");
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 1e-3) return `${Math.round(s * 1e6)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

function fmtSuccess(v) {
  if (v === null || v === undefined) return '<span class="idle">—</span>';
  const cls = v >= 0.99 ? "ok" : v >= 0.95 ? "warn" : "bad";
  return `<span class="${cls}">${(v * 100).toFixed(v === 1 ? 0 : 1)} %</span>`;
}

function fmtAge(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

// A sparkline: the newest point at the right edge, scaled to the largest point shown.
function spark(points, top) {
  const w = 120, h = 30;
  const max = top ?? Math.max(...points, 0);
  const step = w / (HISTORY - 1);
  const xy = points.map((v, i) => {
    const x = w - (points.length - 1 - i) * step;
    const y = h - 1 - (max > 0 ? (v / max) * (h - 3) : 0);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  if (xy.length < 2) return "";
  const line = `M${xy.join("L")}`;
  const x0 = xy[0].split(",")[0];
  return `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" aria-hidden="true">` +
    `<path class="area" d="${line}L${w},${h}L${x0},${h}Z"/>` +
    `<path class="line" vector-effect="non-scaling-stroke" d="${line}"/></svg>`;
}

function endpointState(e) {
  if (e.ejected === true) return "ejected";
  if (e.healthy === false) return "unhealthy";
  if (e.healthy === true) return "healthy";
  return "unknown";
}

// === rendering ===

function renderKpis(r, stats) {
  const t = r?.total || { rps: null, success: null, p50: null, p99: null };
  $("kpi-rps").textContent = fmtRate(t.rps);
  $("kpi-success").innerHTML = fmtSuccess(t.success);
  $("kpi-latency").textContent = t.p50 === null ? "—" : `${fmtSeconds(t.p50)} / ${fmtSeconds(t.p99)}`;
  $("kpi-conns").textContent =
    `${stats.active_downstream_connections ?? 0} / ${stats.active_upstream_connections ?? 0}`;
  $("kpi-total").textContent = `${(stats.requests_total ?? 0).toLocaleString("en")} requests since start`;
  $("spark-rps").innerHTML = spark(trend("all:rps", t.rps));
  $("spark-success").innerHTML = spark(trend("all:success", t.success ?? 1), 1);
  $("spark-p99").innerHTML = spark(trend("all:p99", t.p99));
}

function renderRoutes(r) {
  const rows = [...(r?.routes || [])].sort(([a], [b]) => a.localeCompare(b)).map(([k, x]) => {
    const [listener, route] = k.split("\u0000");
    const name = route ? esc(route) : '<span class="muted">(no route matched)</span>';
    return `<tr data-route="${esc(route)}" data-listener="${esc(listener)}">` +
      `<td>${esc(listener)}</td><td class="name">${name}</td>` +
      `<td class="num rps">${fmtRate(x.rps)}</td><td class="trend"><div class="spark">${spark(trend(`route:${k}`, x.rps))}</div></td>` +
      `<td class="num">${fmtSuccess(x.success)}</td>` +
      `<td class="num">${fmtSeconds(x.p50)}</td><td class="num">${fmtSeconds(x.p99)}</td></tr>`;
  });
  $("routes").tBodies[0].innerHTML =
    rows.join("") || '<tr><td colspan="7" class="empty">No requests yet.</td></tr>';
}

function renderClusters(r, clusters, latest) {
  $("clusters").innerHTML = clusters.map((c) => {
    const x = r?.clusters.get(c.name);
    const ejected = latest.m.ejected.get(c.name) || 0;
    const endpoints = c.endpoints.map((e) => {
      const s = endpointState(e);
      const cls = { healthy: "ok", unhealthy: "bad", ejected: "warn", unknown: "idle" }[s];
      return `<li class="${s}" data-state="${s}"><span class="dot"></span>${esc(e.address)}` +
        `<span class="state ${cls}">${s}</span></li>`;
    });
    const healthy = c.endpoints.filter((e) => endpointState(e) === "healthy").length;
    return `<div class="card cluster" data-cluster="${esc(c.name)}">` +
      `<header><h3>${esc(c.name)}</h3><span class="lb">${esc(c.spec.lb || "")} · ` +
      `${healthy}/${c.endpoints.length} healthy${ejected ? ` · ${ejected} ejected` : ""}</span></header>` +
      `<div class="stats"><div class="rps">${fmtRate(x?.rps ?? 0)}<small>req/s</small></div>` +
      `<div>${fmtSuccess(x?.success ?? null)}<small>success</small></div>` +
      `<div>${fmtSeconds(x?.p50 ?? null)}<small>p50</small></div>` +
      `<div>${fmtSeconds(x?.p99 ?? null)}<small>p99</small></div></div>` +
      `<div class="spark">${spark(trend(`cluster:${c.name}`, x?.rps ?? 0))}</div>` +
      `<ul class="endpoints">${endpoints.join("")}</ul></div>`;
  }).join("");
}

function renderListeners(stats, configured) {
  const byName = new Map(configured.map((l) => [l.name, l]));
  const rows = Object.entries(stats.listeners || {}).map(([name, s]) => {
    const cfg = byName.get(name) || {};
    return `<tr data-listener="${esc(name)}"><td class="name">${esc(name)}</td>` +
      `<td><code>${esc(s.address)}</code></td><td>${esc(cfg.protocol || "")}${cfg.tls ? " + tls" : ""}</td>` +
      `<td class="num">${(cfg.routes || []).length}</td><td class="num">${s.active_connections}</td>` +
      `<td class="num">${Number(s.requests_total).toLocaleString("en")}</td></tr>`;
  });
  $("listeners").tBodies[0].innerHTML =
    rows.join("") || '<tr><td colspan="6" class="empty">No listeners.</td></tr>';
}

function renderHistory(versions) {
  $("history").tBodies[0].innerHTML = versions.map((v) =>
    `<tr class="clickable${v.version === state.selected ? " selected" : ""}" data-version="${v.version}">` +
    `<td class="name">v${v.version}${v.version === state.version ? ' <span class="ok">● serving</span>' : ""}</td>` +
    `<td title="${esc(v.applied_at)}">${esc(new Date(v.applied_at).toLocaleString("en"))}</td>` +
    `<td>${esc(v.source)}</td><td>${esc(v.token || "")}</td><td class="num">${v.changes}</td></tr>`,
  ).join("");
}

async function showDiff(version) {
  state.selected = version;
  for (const tr of $("history").tBodies[0].rows) {
    tr.classList.toggle("selected", Number(tr.dataset.version) === version);
  }
  const v = await api(`/config/versions/${version}`);
  const sign = { add: "+", remove: "-", replace: "~" };
  // Values as compact JSON, leaving out the unset fields (null, [] and {}) of a whole item.
  const unset = (v) => v === null || (typeof v === "object" && Object.keys(v).length === 0);
  const show = (x) => JSON.stringify(x, (k, v) => (k && unset(v) ? undefined : v));
  const lines = v.diff.map((c) => {
    const what = c.op === "add" ? show(c.new) : c.op === "remove" ? show(c.old) : `${show(c.old)} → ${show(c.new)}`;
    return `<span class="${esc(c.op)}">${sign[c.op] || "?"} ${esc(c.path || "(root)")}: ${esc(what)}</span>`;
  });
  const box = $("diff");
  box.innerHTML = `<h3>v${v.version}: ${v.changes} change${v.changes === 1 ? "" : "s"} from v${v.version - 1}</h3>` +
    `<pre>${lines.join("\n") || "(no changes)"}</pre>`;
  box.hidden = false;
}

// === the loop ===

async function tick() {
  const [text, stats, clusters] = await Promise.all([api("/metrics", true), api("/stats"), api("/clusters")]);
  const now = { t: performance.now(), m: summarize(parseMetrics(text)) };
  state.samples.push(now);
  while (state.samples.length > 2 && now.t - state.samples[1].t >= WINDOW_S * 1000) state.samples.shift();
  const then = state.samples[0];
  const r = then === now ? null : rates(now, then);

  if (stats.config_version !== state.version) {
    state.version = stats.config_version;
    const [versions, listeners] = await Promise.all([api("/config/versions?limit=20"), api("/listeners")]);
    state.listeners = listeners;
    renderHistory(versions);
  }
  $("version").textContent = `v${stats.config_version}`;
  $("uptime").textContent = `up ${fmtAge(stats.uptime_seconds || 0)}`;
  renderKpis(r, stats);
  renderRoutes(r);
  renderClusters(r, clusters, now);
  renderListeners(stats, state.listeners);
}

function setStatus(ok, text) {
  $("status").className = `status ${ok ? "live" : "down"}`;
  $("status-text").textContent = text;
}

// One loop per token: a loop started for an older token stops at its next turn.
async function loop(generation) {
  if (generation !== state.generation) return;
  const started = performance.now();
  try {
    await tick();
    setStatus(true, `live · ${new Date().toLocaleTimeString("en")}`);
  } catch (e) {
    if (e instanceof AuthError) return askToken(e.message);
    setStatus(false, e.message);
  }
  setTimeout(loop, Math.max(0, TICK_MS - (performance.now() - started)), generation);
}

// === the token ===

function askToken(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.generation += 1;
  $("dash").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

function start(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("dash").hidden = false;
  $("logout").hidden = false;
  state.generation += 1;
  loop(state.generation);
}

// A token may come in the URL fragment (never sent to the server): taken once, then dropped
// from the address bar.
function tokenFromFragment() {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given) history.replaceState(null, "", location.pathname + location.search);
  return given;
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    start($("token").value.trim());
  });
  $("logout").addEventListener("click", () => askToken());
  $("history").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-version]");
    if (tr) showDiff(Number(tr.dataset.version)).catch((e) => setStatus(false, e.message));
  });
  window.addEventListener("hashchange", () => {
    const given = tokenFromFragment();
    if (given) start(given);
  });
  const token = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
  if (token) start(token); else askToken();
});
