// Sluicegate live dashboard: polls /dashboard/data every 2 s and redraws.
// Vanilla JS, inline SVG charts, no dependencies. Every number shown is an element with a
// stable data-metric attribute (tests read them); rates come from successive documents.
"use strict";

const POLL_MS = 2000;
const HISTORY = 150; // samples kept for the charts: 5 minutes at one every 2 s
const WINDOW_MS = HISTORY * POLL_MS;
const STATUSES = ["ok", "cached", "degraded", "rejected", "shed", "failed"];
const PRIORITIES = ["critical", "high", "normal", "low"];
const COLORS = {
  ok: "#2e9d5b", cached: "#1f8fb3", degraded: "#d49a1b", rejected: "#8a5cc7",
  shed: "#e0672b", failed: "#d43c3c",
  critical: "#d43c3c", high: "#e0672b", normal: "#1f8fb3", low: "#8893a0",
};
const PALETTE = ["#1f8fb3", "#e0672b", "#2e9d5b", "#8a5cc7", "#d49a1b", "#d43c3c", "#4b5563", "#0f766e"];

const state = { history: [], updates: 0, failures: 0, last: null };
window.sluicegateDashboard = state; // for tests and curious operators

// -- formatting -------------------------------------------------------------------------

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function int(n) { return Math.round(n || 0).toLocaleString("en-US"); }
function usd(x) {
  x = x || 0;
  if (x === 0) return "$0";
  if (x < 0.01) return "$" + x.toFixed(6);
  if (x < 1) return "$" + x.toFixed(4);
  return "$" + x.toFixed(2);
}
function pct(ratio) { return (100 * (ratio || 0)).toFixed(1) + "%"; }
function ms(v) { return v === null || v === undefined ? "–" : v.toFixed(v < 10 ? 1 : 0); }
function rate(v) { return v.toFixed(v < 10 ? 2 : 1); }
function duration(s) {
  s = Math.floor(s || 0);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}
// A number on the page: the one place data-metric attributes are written.
function num(metric, text, cls) {
  return `<span data-metric="${esc(metric)}"${cls ? ` class="${cls}"` : ""}>${esc(text)}</span>`;
}
function setNum(id, text) { document.getElementById(id).textContent = text; }
function colorOf(name, i) { return COLORS[name] || PALETTE[i % PALETTE.length]; }

// -- charts -----------------------------------------------------------------------------

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// series: [{name, color, points: [[t_ms, value], ...], current: text, metric: name}]
function lineChart(el, series, format) {
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  const ymax = niceMax(Math.max(0, ...all));
  const labels = [0, 0.5, 1].map((f) => format(f * ymax));
  const w = Math.max(200, el.clientWidth || 600), h = 150, right = 6, top = 8, bottom = 18;
  const left = 10 + 6 * Math.max(...labels.map((l) => l.length));
  // The time axis spans what has been seen, up to the last five minutes.
  const now = state.last ? state.last.generated_at_ms : Date.now();
  const first = state.history.length ? state.history[0].t : now;
  const span = Math.max(10000, Math.min(WINDOW_MS, now - first));
  const t0 = now - span;
  const x = (t) => left + ((t - t0) / span) * (w - left - right);
  const y = (v) => top + (1 - v / ymax) * (h - top - bottom);
  let svg = `<svg viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" role="img">`;
  [0, 0.5, 1].forEach((f, i) => {
    const yy = y(f * ymax);
    svg += `<line class="axis" x1="${left}" x2="${w - right}" y1="${yy}" y2="${yy}"/>`;
    svg += `<text x="${left - 4}" y="${yy + 3}" text-anchor="end">${esc(labels[i])}</text>`;
  });
  svg += `<text x="${left}" y="${h - 4}">-${span >= 120000 ? Math.round(span / 60000) + " min" : Math.round(span / 1000) + " s"}</text>`;
  svg += `<text x="${w - right}" y="${h - 4}" text-anchor="end">now</text>`;
  const enough = series.some((s) => s.points.length > 1);
  if (!enough) {
    svg += `<text x="${(w + left) / 2}" y="${h / 2}" text-anchor="middle">collecting…</text>`;
  }
  for (const s of series) {
    if (s.points.length < 2) continue;
    const pts = s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg += `<polyline fill="none" stroke="${s.color}" stroke-width="1.8" points="${pts}"/>`;
  }
  svg += "</svg>";
  const legend = series
    .map((s) => `<span><i style="background:${s.color}"></i>${esc(s.name)} ${num(s.metric, s.current)}</span>`)
    .join("");
  el.innerHTML = svg + `<div class="legend">${legend}</div>`;
}

// Per-second rates of a counter picked out of each history sample.
function rates(pick) {
  const out = [];
  const h = state.history;
  for (let i = 1; i < h.length; i++) {
    const dt = (h[i].t - h[i - 1].t) / 1000;
    if (dt <= 0) continue;
    out.push([h[i].t, Math.max(0, (pick(h[i]) - pick(h[i - 1])) / dt)]);
  }
  return out;
}

function donut(ratio, label) {
  const r = 36, c = 2 * Math.PI * r, on = Math.max(0, Math.min(1, ratio)) * c;
  return `<svg viewBox="0 0 92 92"><circle cx="46" cy="46" r="${r}" fill="none" stroke="#edf0f4" stroke-width="12"/>` +
    `<circle cx="46" cy="46" r="${r}" fill="none" stroke="${COLORS.cached}" stroke-width="12" ` +
    `stroke-dasharray="${on.toFixed(2)} ${c.toFixed(2)}" transform="rotate(-90 46 46)"/>` +
    `<text x="46" y="50" text-anchor="middle" font-size="14" font-weight="600" fill="#1c2430">${esc(label)}</text></svg>`;
}

function bar(fraction, color, extraFraction) {
  const f = Math.max(0, Math.min(1, fraction || 0));
  const e = Math.max(0, Math.min(1 - f, extraFraction || 0));
  let html = `<div class="track"><div class="fill" style="width:${(100 * f).toFixed(2)}%;background:${color}"></div>`;
  if (e > 0) {
    html += `<div class="fill reserved" style="left:${(100 * f).toFixed(2)}%;width:${(100 * e).toFixed(2)}%;background:${color}"></div>`;
  }
  return html + "</div>";
}

// -- panels -----------------------------------------------------------------------------

function renderCards(d) {
  const r = d.responses, tenants = Object.values(d.tenants);
  const spend = tenants.reduce((a, t) => a + (t.spend_usd || 0), 0);
  const notOk = r.by_status.rejected + r.by_status.shed + r.by_status.failed;
  const cards = [
    ["Received", num("worker.received", int(d.worker.received)), "records consumed"],
    ["Responses", num("responses.total", int(r.total)), `${num("responses.not_ok", int(notOk))} rejected, shed or failed`],
    ["In flight", num("worker.in_flight", int(d.worker.in_flight)), `${num("worker.pending_acks", int(d.worker.pending_acks))} acks pending`],
    ["Queued", num("worker.queued", int(d.worker.queued)), `fill ${num("worker.fill", pct(d.worker.fill))} of ${num("worker.capacity", int(d.worker.capacity))}`],
    ["Consumer lag", num("queue.lag_total", int(d.queue.lag_total)), d.queue.lag_ok ? "records, all priorities" : "lag unavailable"],
    ["Cache hit rate", num("cache.hit_rate", pct(d.cache.hit_rate)), `${num("cache.served", int(d.cache.served))} served from cache`],
    ["Spend", num("spend.total", usd(spend)), "this worker, since start"],
    ["Breakers open", num("breakers.open", int(d.breakers.filter((b) => b.state !== "closed").length)), `of ${num("breakers.count", int(d.breakers.length))} models called`],
  ];
  document.getElementById("cards").innerHTML = cards
    .map(([label, value, note]) => `<div class="card"><div class="label">${label}</div><div class="value">${value}</div><div class="note">${note}</div></div>`)
    .join("");
}

function renderThroughput() {
  const last = state.history[state.history.length - 1];
  const byStatus = STATUSES.map((s) => {
    const points = rates((h) => h.status[s] || 0);
    return { name: s, color: COLORS[s], points, metric: `rate.status.${s}`, current: rate(points.length ? points[points.length - 1][1] : 0) };
  });
  lineChart(document.getElementById("chart-status"), byStatus, (v) => rate(v));
  const byPriority = PRIORITIES.map((p) => {
    const points = rates((h) => h.priority[p] || 0);
    return { name: p, color: COLORS[p], points, metric: `rate.priority.${p}`, current: rate(points.length ? points[points.length - 1][1] : 0) };
  });
  lineChart(document.getElementById("chart-priority"), byPriority, (v) => rate(v));
  return last;
}

function renderPriorityTable(d) {
  const rows = Object.keys(d.responses.by_priority);
  let html = "<table><tr><th>priority</th>" + STATUSES.map((s) => `<th>${s}</th>`).join("") + "<th>total</th></tr>";
  for (const p of rows) {
    const row = d.responses.by_priority[p];
    html += `<tr><td>${esc(p)}</td>` + STATUSES.map((s) => `<td>${num(`responses.priority.${p}.${s}`, int(row[s]))}</td>`).join("") +
      `<td>${num(`responses.priority.${p}.total`, int(row.total))}</td></tr>`;
  }
  html += "<tr><th>all</th>" + STATUSES.map((s) => `<th>${num(`responses.status.${s}`, int(d.responses.by_status[s]))}</th>`).join("") +
    `<th>${num("responses.table_total", int(d.responses.total))}</th></tr></table>`;
  document.getElementById("table-priority").innerHTML = html;
}

function renderQueue(d) {
  const q = d.queue, cap = d.worker.capacity || 1;
  let html = "";
  for (const p of PRIORITIES) {
    const paused = q.paused.includes(p);
    html += `<div class="bar-row"><span class="name">${p} ${paused ? '<span class="badge paused">paused</span>' : ""}` +
      `<span hidden>${num(`queue.paused.${p}`, paused ? "paused" : "open")}</span></span>` +
      bar(q.depth[p] / cap, COLORS[p]) +
      `<span class="num">${num(`queue.depth.${p}`, int(q.depth[p]))} queued · lag ${num(`queue.lag.${p}`, int(q.lag[p]))}</span></div>`;
  }
  html += `<div class="small">bars: share of the scheduler's capacity (${int(cap)}); lag: records on this worker's partitions not yet committed${q.lag_ok ? "" : " (lookup failed, last known)"}</div>`;
  document.getElementById("queue").innerHTML = html;
}

function renderReasons(d) {
  const reasons = Object.entries(d.reasons).sort((a, b) => b[1] - a[1]);
  if (!reasons.length) {
    document.getElementById("reasons").innerHTML = '<div class="empty">every request answered normally so far</div>';
    return;
  }
  const max = Math.max(...reasons.map(([, n]) => n));
  let html = "";
  for (const [reason, n] of reasons) {
    const split = Object.entries(d.outcomes)
      .filter(([, per]) => per[reason])
      .map(([status, per]) => `${status} ${num(`outcome.${status}.${reason}`, int(per[reason]))}`)
      .join(" · ");
    const status = Object.keys(d.outcomes).find((s) => d.outcomes[s][reason]) || "rejected";
    html += `<div class="bar-row narrow"><span class="name" title="${esc(reason)}">${esc(reason)}</span>${bar(n / max, COLORS[status])}` +
      `<span class="num">${num(`reason.${reason}`, int(n))}</span></div>`;
    if (split) html += `<div class="small" style="margin:-2px 0 4px">${split}</div>`;
  }
  document.getElementById("reasons").innerHTML = html;
}

function renderBreakers(d) {
  let html = "";
  if (!d.breakers.length) html += '<div class="empty">no provider called yet</div>';
  else {
    html += "<table><tr><th>model</th><th>state</th><th>transitions</th></tr>";
    for (const b of d.breakers) {
      html += `<tr><td>${esc(b.model)}</td><td><span class="badge ${esc(b.state)}">${num(`breaker.${b.model}.state`, b.state)}</span></td>` +
        `<td>${num(`breaker.${b.model}.transitions`, int(b.transitions))}</td></tr>`;
    }
    html += "</table>";
  }
  const p = d.providers || {};
  html += '<h2 class="sub">Provider calls</h2><div class="kv">' +
    `<span>calls</span>${num("provider.calls", int(p.calls))}` +
    `<span>retries</span>${num("provider.retries", int(p.retries))}`;
  for (const [kind, n] of Object.entries(p.errors || {})) html += `<span>errors: ${esc(kind)}</span>${num(`provider.errors.${kind}`, int(n))}`;
  html += "</div>";
  if (d.transitions.length) {
    html += '<h2 class="sub">Recent transitions</h2>';
    for (const t of d.transitions.slice().reverse()) {
      const at = new Date(t.at_ms).toLocaleTimeString("en-GB");
      html += `<div class="small">${at} ${esc(t.model)}: ${esc(t.from)} → ${esc(t.to)} <span title="${esc(t.reason)}">(${esc(t.reason)})</span></div>`;
    }
  }
  document.getElementById("breakers").innerHTML = html;
}

function renderCache(d) {
  const c = d.cache;
  let html = `<div class="cache-top">${donut(c.hit_rate, pct(c.hit_rate))}<div class="kv">` +
    `<span>exact hits</span>${num("cache.hits", int(c.hits))}` +
    `<span>misses</span>${num("cache.misses", int(c.misses))}` +
    `<span>served from cache</span>${num("cache.served_total", int(c.served))}` +
    `<span>coalesced</span>${num("cache.coalesced", int(c.coalesced))}` +
    `<span>saved</span>${num("cache.saved_usd", usd(c.saved_usd))}</div></div>`;
  const tenants = Object.entries(c.tenants);
  if (tenants.length) {
    html += "<table><tr><th>tenant</th><th>hits</th><th>misses</th><th>hit rate</th><th>saved</th></tr>";
    for (const [t, v] of tenants) {
      html += `<tr><td>${esc(t)}</td><td>${num(`cache.tenant.${t}.hits`, int(v.hits))}</td><td>${num(`cache.tenant.${t}.misses`, int(v.misses))}</td>` +
        `<td>${num(`cache.tenant.${t}.hit_rate`, pct(v.hit_rate))}</td><td>${num(`cache.tenant.${t}.saved_usd`, usd(v.saved_usd))}</td></tr>`;
    }
    html += "</table>";
  }
  document.getElementById("cache").innerHTML = html;
}

function windowLabel(w) {
  if (w.scope === "tenant_day") return "today";
  if (w.scope === "tenant_month") return "this month";
  if (w.scope === "feature_day") return `${w.feature} today`;
  return `${w.scope} ${w.feature}`.trim();
}

function renderBudgets(d) {
  const tenants = Object.entries(d.tenants);
  if (!tenants.length) {
    document.getElementById("budgets").innerHTML = '<div class="empty">no spend yet</div>';
    return;
  }
  const maxSpend = Math.max(...tenants.map(([, t]) => t.spend_usd || 0)) || 1;
  let html = "";
  tenants.forEach(([tenant, t], i) => {
    const color = colorOf(tenant, i);
    html += `<div style="margin-top:6px"><b>${esc(tenant)}</b> <span class="dim">spent by this worker</span> ${num(`spend.${tenant}`, usd(t.spend_usd))}</div>`;
    // Only capped windows get a bar: an uncapped window has nothing to measure against.
    const capped = t.windows.filter((w) => w.cap_usd !== null && w.cap_usd !== undefined);
    if (!capped.length) {
      html += `<div class="bar-row"><span class="name dim">no budget</span>${bar(t.spend_usd / maxSpend, color)}<span class="num dim">share of top spender</span></div>`;
    }
    for (const w of capped) {
      const key = `budget.${tenant}.${w.scope}${w.feature ? "." + w.feature : ""}`;
      const label = `${num(key + ".spent_usd", usd(w.spent_usd))} / ${num(key + ".cap_usd", usd(w.cap_usd))} · ${num(key + ".percent", (w.percent || 0).toFixed(1) + "%")}`;
      const f = w.cap_usd > 0 ? w.spent_usd / w.cap_usd : 1;
      const r = w.cap_usd > 0 ? w.reserved_usd / w.cap_usd : 0;
      const fill = (w.percent || 0) >= 100 ? COLORS.failed : color;
      html += `<div class="bar-row"><span class="name">${esc(windowLabel(w))}</span>${bar(f, fill, r)}<span class="num">${label}</span></div>`;
    }
  });
  html += '<div class="small">solid: spent; light: reserved by requests in flight; the track is the cap</div>';
  document.getElementById("budgets").innerHTML = html;
}

function renderSpendChart(d) {
  const tenants = Object.keys(d.tenants);
  const series = tenants.map((t, i) => ({
    name: t,
    color: colorOf(t, i),
    points: state.history.map((h) => [h.t, h.spend[t] || 0]),
    metric: `spend.chart.${t}`,
    current: usd(d.tenants[t].spend_usd),
  }));
  lineChart(document.getElementById("chart-spend"), series, (v) => usd(v));
}

function renderLatency(d) {
  const e2e = d.latency.e2e, queue = d.latency.queue;
  const keys = [...PRIORITIES.filter((p) => e2e[p]), "all"];
  let html = "<table><tr><th></th><th>count</th><th>p50</th><th>p95</th><th>p99</th><th>queue p50</th><th>queue p95</th></tr>";
  for (const k of keys) {
    const e = e2e[k] || {}, q = queue[k] || {};
    html += `<tr><td>${k}</td><td>${num(`latency.e2e.${k}.count`, int(e.count))}</td>` +
      ["p50", "p95", "p99"].map((n) => `<td>${num(`latency.e2e.${k}.${n}`, ms(e[n]))}</td>`).join("") +
      ["p50", "p95"].map((n) => `<td>${num(`latency.queue.${k}.${n}`, ms(q[n]))}</td>`).join("") + "</tr>";
  }
  document.getElementById("latency").innerHTML = html + "</table>";
}

// -- the loop ---------------------------------------------------------------------------

function remember(d) {
  const priority = {};
  for (const [p, row] of Object.entries(d.responses.by_priority)) priority[p] = row.total;
  const spend = {};
  for (const [t, row] of Object.entries(d.tenants)) spend[t] = row.spend_usd;
  state.history.push({ t: d.generated_at_ms, status: { ...d.responses.by_status }, priority, spend });
  if (state.history.length > HISTORY) state.history.shift();
}

function render(d) {
  setNum("app-id", d.worker.app_id);
  setNum("uptime", duration(d.worker.uptime_s));
  renderCards(d);
  renderThroughput();
  renderPriorityTable(d);
  renderQueue(d);
  renderReasons(d);
  renderBreakers(d);
  renderCache(d);
  renderBudgets(d);
  renderSpendChart(d);
  renderLatency(d);
}

async function poll() {
  const dot = document.getElementById("live-dot"), text = document.getElementById("live-text");
  try {
    const response = await fetch("/dashboard/data", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const d = await response.json();
    state.last = d;
    remember(d);
    render(d);
    state.updates += 1;
    dot.className = "dot on";
    text.textContent = "live · updated " + new Date(d.generated_at_ms).toLocaleTimeString("en-GB");
  } catch (err) {
    state.failures += 1;
    dot.className = "dot off";
    text.textContent = "disconnected, retrying (" + err.message + ")";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
