// Impeller's dashboard: plain JavaScript over the hub's /api/v1, no framework, no build step.
// Pages are rendered from the API on every hash change and again when the hub's event stream
// says something changed (polling every few seconds while the stream is down); charts are SVG
// drawn here. Event handlers are delegated (the page's CSP forbids inline ones).
'use strict';

const REFRESH_MS = 5000;
// With the event stream up: at most one re-render per this, and one anyway after the slow
// interval (for what no event announces, like "2 min ago" or drift judgements).
const RENDER_GAP_MS = 2000;
const SLOW_REFRESH_MS = 30000;
const OFFLINE_AFTER_MS = 120000;
const TOKEN_KEY = 'impeller-token';
const ui = { site: '', manufacturer: '', health: '', auditAction: '', auditSubject: '', auditAfter: null, driftDevice: '', driftSeq: null };
let refreshing = false;

// ---------- helpers ----------
const $ = (sel) => document.querySelector(sel);
function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
const enc = encodeURIComponent;
function pad(n) { return String(n).padStart(2, '0'); }
function fmtTime(ms) {
  if (ms == null) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function ago(ms) {
  if (ms == null) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
function short(sha) { return sha ? String(sha).slice(0, 12) : '—'; }
function num(v, digits = 3) { return v == null || !isFinite(v) ? '—' : Number(v).toFixed(digits); }
function badge(kind, text) { return `<span class="badge ${kind}">${esc(text)}</span>`; }

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${token()}` }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 204) return null;
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401) { sessionStorage.removeItem(TOKEN_KEY); }
    throw new ApiError(res.status, (body && body.detail) || `${res.status} ${res.statusText}`);
  }
  return body;
}

/// Every page of a paginated list.
async function allPages(path, max = 20) {
  let items = [];
  let after = null;
  for (let i = 0; i < max; i++) {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api(`${path}${sep}limit=1000${after ? `&after=${enc(after)}` : ''}`);
    items = items.concat(page.items);
    if (!page.next_after) break;
    after = page.next_after;
  }
  return items;
}

// ---------- charts ----------
const W = 560, H = 150, PAD = { l: 44, r: 10, t: 8, b: 20 };

function scaler(d0, d1, r0, r1) {
  const span = d1 - d0 || 1;
  return (v) => r0 + ((v - d0) / span) * (r1 - r0);
}

function timeTicks(x0, x1, n = 4) {
  const out = [];
  for (let i = 0; i <= n; i++) out.push(x0 + ((x1 - x0) * i) / n);
  return out;
}

function tickLabel(ms, span) {
  const d = new Date(ms);
  if (span > 2 * 86400000) return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}h`;
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/// A path through points, broken where consecutive points are further apart than `gap`.
function pathOf(pts, gap) {
  let d = '';
  let prev = null;
  for (const [x, y, t] of pts) {
    d += `${prev == null || t - prev > gap ? 'M' : 'L'}${x.toFixed(1)},${y.toFixed(1)}`;
    prev = t;
  }
  return d;
}

/// A time chart: `points` [{start_ms,end_ms,mean,min,max}] as a mean line over a min–max band,
/// optional horizontal `threshold`, vertical `markers` (times), and x range [x0, x1].
function timeChart({ title, points, x0, x1, threshold, markers = [], marker = null, unit = '' }) {
  const ys = points.flatMap((p) => [p.min, p.max]).filter(isFinite);
  if (threshold != null) ys.push(threshold);
  if (!ys.length) {
    return `<div class="chart"><div class="title">${esc(title)}</div><p class="muted">no data in this range</p></div>`;
  }
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const margin = (y1 - y0) * 0.06;
  y0 -= margin; y1 += margin;
  const sx = scaler(x0, x1, PAD.l, W - PAD.r);
  const sy = scaler(y0, y1, H - PAD.b, PAD.t);
  const mid = (p) => (p.start_ms + p.end_ms) / 2;
  const spacing = points.length > 1 ? (mid(points[points.length - 1]) - mid(points[0])) / (points.length - 1) : 0;
  const gap = Math.max(spacing * 2.5, 1);
  const line = pathOf(points.map((p) => [sx(mid(p)), sy(p.mean), mid(p)]), gap);
  let band = '';
  let run = [];
  const flush = () => {
    if (run.length) {
      const top = run.map((p) => `${sx(mid(p)).toFixed(1)},${sy(p.max).toFixed(1)}`);
      const bottom = run.slice().reverse().map((p) => `${sx(mid(p)).toFixed(1)},${sy(p.min).toFixed(1)}`);
      band += `<polygon class="band" points="${top.concat(bottom).join(' ')}"/>`;
    }
    run = [];
  };
  for (const p of points) {
    if (run.length && mid(p) - mid(run[run.length - 1]) > gap) flush();
    run.push(p);
  }
  flush();
  const span = x1 - x0;
  const xt = timeTicks(x0, x1).map((t) => `<text x="${sx(t).toFixed(1)}" y="${H - 6}" text-anchor="middle">${tickLabel(t, span)}</text>`).join('');
  const range = y1 - y0 - 2 * margin;
  const digits = range < 1 ? 3 : range < 10 ? 2 : range < 100 ? 1 : 0;
  const yt = [y0 + margin, y1 - margin].map((v) => `<text x="${PAD.l - 4}" y="${(sy(v) + 3).toFixed(1)}" text-anchor="end">${num(v, digits)}</text>`).join('');
  const th = threshold != null ? `<line class="threshold" x1="${PAD.l}" x2="${W - PAD.r}" y1="${sy(threshold).toFixed(1)}" y2="${sy(threshold).toFixed(1)}"><title>threshold ${num(threshold, 2)}</title></line>` : '';
  const mk = markers.filter((t) => t >= x0 && t <= x1).map((t) => `<line class="marker" x1="${sx(t).toFixed(1)}" x2="${sx(t).toFixed(1)}" y1="${PAD.t}" y2="${H - PAD.b}"><title>alert ${fmtTime(t)}</title></line>`).join('');
  const now = marker != null ? `<line class="now" x1="${sx(marker).toFixed(1)}" x2="${sx(marker).toFixed(1)}" y1="${PAD.t}" y2="${H - PAD.b}"/>` : '';
  return `<div class="chart"><div class="title">${esc(title)}${unit ? ` <span class="muted">(${esc(unit)})</span>` : ''}</div>
<svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${esc(title)}">
<line class="axis" x1="${PAD.l}" x2="${W - PAD.r}" y1="${H - PAD.b}" y2="${H - PAD.b}"/>
${band}<path class="line" d="${line}"/>${th}${mk}${now}${xt}${yt}</svg></div>`;
}

/// Readings (one value per frame) as chart points.
function framesToPoints(frames, i) {
  return frames.filter((f) => f.values[i] != null).map((f) => ({ start_ms: f.ts_ms, end_ms: f.ts_ms, mean: f.values[i], min: f.values[i], max: f.values[i] }));
}

/// Two histograms over the same bins, as proportions: reference (grey) and current (blue).
function histogramChart(title, reference, current, low, width) {
  const total = (a) => a.reduce((s, v) => s + v, 0) || 1;
  const r = reference.map((v) => v / total(reference));
  const c = current.map((v) => v / total(current));
  const top = Math.max(...r, ...c, 1e-9);
  const n = r.length;
  const bw = (W - PAD.l - PAD.r) / n;
  const sy = scaler(0, top, H - PAD.b, PAD.t);
  const bars = r.map((v, i) => `<rect class="bar-ref" x="${(PAD.l + i * bw).toFixed(1)}" y="${sy(v).toFixed(1)}" width="${(bw - 1).toFixed(1)}" height="${(H - PAD.b - sy(v)).toFixed(1)}"/>`).join('')
    + c.map((v, i) => `<rect class="bar-cur" x="${(PAD.l + i * bw + bw * 0.25).toFixed(1)}" y="${sy(v).toFixed(1)}" width="${(bw * 0.5).toFixed(1)}" height="${(H - PAD.b - sy(v)).toFixed(1)}"/>`).join('');
  const labels = [1, Math.floor(n / 2), n - 1].map((i) => `<text x="${(PAD.l + i * bw).toFixed(1)}" y="${H - 6}" text-anchor="middle">${num(low + (i - 1) * width, 0)}σ</text>`).join('');
  return `<div class="chart"><div class="title">${esc(title)} <span class="muted">grey: training reference · blue: this interval</span></div>
<svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${esc(title)}"><line class="axis" x1="${PAD.l}" x2="${W - PAD.r}" y1="${H - PAD.b}" y2="${H - PAD.b}"/>${bars}${labels}</svg></div>`;
}

/// A horizontal bar split by state counts.
function stackedBar(counts, total) {
  const order = ['active', 'shadow', 'verifying', 'downloading', 'pending', 'failed', 'rolled_back'];
  const cls = (s) => (s === 'active' ? 'seg-active' : s === 'pending' ? 'seg-pending' : s === 'failed' ? 'seg-failed' : s === 'rolled_back' ? 'seg-rolled_back' : 'seg-progress');
  let x = 0;
  const sum = total || Object.values(counts).reduce((s, v) => s + v, 0) || 1;
  const segs = order.concat(Object.keys(counts).filter((k) => !order.includes(k))).filter((s) => counts[s]).map((s) => {
    const w = (counts[s] / sum) * 100;
    const r = `<rect class="${cls(s)}" x="${x.toFixed(2)}%" y="0" width="${w.toFixed(2)}%" height="14"><title>${esc(s)}: ${counts[s]}</title></rect>`;
    x += w;
    return r;
  }).join('');
  return `<svg width="100%" height="14" role="img" aria-label="devices by state">${segs}</svg>`;
}

// ---------- pages ----------
function health(d) {
  if (d.revoked) return ['off', 'revoked'];
  if (d.update_state === 'failed' || d.update_state === 'rolled_back') return ['bad', d.update_state.replace('_', ' ')];
  if (d.last_contact_ms == null) return ['off', 'never seen'];
  if (Date.now() - d.last_contact_ms > OFFLINE_AFTER_MS) return ['off', 'offline'];
  if (d.drift_state === 'drift') return ['warn', 'drift'];
  if (d.drift_state === 'warning') return ['warn', 'drift warning'];
  if (d.alert_rate === 'elevated') return ['warn', 'alert rate high'];
  return ['ok', 'ok'];
}

function options(values, selected, all) {
  return `<option value="">${esc(all)}</option>` + values.map((v) => `<option value="${esc(v)}"${v === selected ? ' selected' : ''}>${esc(v)}</option>`).join('');
}

async function pageFleet() {
  const rows = await allPages('/api/v1/fleet');
  const tag = (d, k) => d.tags[k] || '—';
  const sites = [...new Set(rows.map((d) => tag(d, 'site')))].sort();
  const makers = [...new Set(rows.map((d) => tag(d, 'manufacturer')))].sort();
  const shown = rows.filter((d) => (!ui.site || tag(d, 'site') === ui.site)
    && (!ui.manufacturer || tag(d, 'manufacturer') === ui.manufacturer)
    && (!ui.health || health(d)[1] === ui.health));
  const count = (f) => rows.filter(f).length;
  const models = new Set(rows.filter((d) => d.model).map((d) => `${d.model}@${d.model_version}`));
  const tiles = [
    [rows.length, 'devices'],
    [count((d) => !d.revoked && d.last_contact_ms != null && Date.now() - d.last_contact_ms <= OFFLINE_AFTER_MS), 'online'],
    [count((d) => d.drift_state === 'drift'), 'in drift'],
    [count((d) => d.alert_rate === 'elevated'), 'alerting above validation'],
    [count((d) => d.update_state === 'failed' || d.update_state === 'rolled_back'), 'failed or rolled back'],
    [rows.reduce((s, d) => s + d.alerts, 0), 'alerts'],
    [models.size, 'model versions running'],
  ].map(([n, l]) => `<div class="tile"><div class="n">${n}</div><div class="l">${l}</div></div>`).join('');
  const siteCards = sites.filter((s) => !ui.site || s === ui.site).map((site) => {
    const here = shown.filter((d) => tag(d, 'site') === site);
    if (!here.length) return '';
    const byMaker = [...new Set(here.map((d) => tag(d, 'manufacturer')))].sort().map((m) => `${esc(m)} ${here.filter((d) => tag(d, 'manufacturer') === m).length}`).join(' · ');
    const cells = here.map((d) => {
      const [k, h] = health(d);
      return `<a class="cell ${k}" href="#/device/${enc(d.id)}" title="${esc(d.id)}: ${esc(h)}"></a>`;
    }).join('');
    return `<div class="panel site"><h3>${esc(site)}</h3><div class="muted">${byMaker}</div><div class="cells">${cells}</div></div>`;
  }).join('');
  const healths = ['ok', 'drift warning', 'drift', 'alert rate high', 'offline', 'never seen', 'failed', 'rolled back', 'revoked'];
  const table = shown.map((d) => {
    const [k, h] = health(d);
    return `<tr class="click" data-href="#/device/${enc(d.id)}"><td><a href="#/device/${enc(d.id)}">${esc(d.id)}</a></td>
<td>${esc(tag(d, 'site'))}</td><td>${esc(tag(d, 'manufacturer'))}</td><td>${esc(d.profile || '—')}</td><td>${badge(k, h)}</td>
<td>${d.model ? `${esc(d.model)} ${esc(d.model_version)}${d.registry_version ? ` <span class="muted">v${d.registry_version}</span>` : ''}` : '—'}</td>
<td>${d.update_state ? esc(d.update_state) : '—'}</td><td title="${fmtTime(d.last_contact_ms)}">${ago(d.last_contact_ms)}</td>
<td>${fmtTime(d.data_through_ms)}</td><td>${d.alerts}</td></tr>`;
  }).join('');
  return `<h1>Fleet</h1><div class="tiles">${tiles}</div>
<div class="filters"><label>Site <select data-filter="site">${options(sites, ui.site, 'all')}</select></label>
<label>Manufacturer <select data-filter="manufacturer">${options(makers, ui.manufacturer, 'all')}</select></label>
<label>Health <select data-filter="health">${options(healths, ui.health, 'any')}</select></label></div>
<div class="legend"><span><i class="cell ok"></i>ok</span><span><i class="cell warn"></i>drift</span><span><i class="cell bad"></i>update failed</span><span><i class="cell off"></i>offline or revoked</span></div>
<div class="sites">${siteCards || '<p class="muted">No devices match.</p>'}</div>
<table><thead><tr><th>Device</th><th>Site</th><th>Manufacturer</th><th>Profile</th><th>Health</th><th>Model</th><th>Update</th><th>Last contact</th><th>Data through</th><th>Alerts</th></tr></thead>
<tbody>${table}</tbody></table>`;
}

function verdictBadge(f) {
  if (!f) return badge('off', 'no verdict');
  return f.verdict === 'confirmed' ? badge('bad', 'confirmed fault') : badge('ok', 'false alarm');
}

async function pageDevice(id) {
  const [fleet, series] = await Promise.all([allPages('/api/v1/fleet'), api(`/api/v1/devices/${enc(id)}/series?points=240`)]);
  const d = fleet.find((x) => x.id === id);
  if (!d) throw new ApiError(404, `no device ${id}`);
  const alerts = await allPages(`/api/v1/alerts?device=${enc(id)}`, 5);
  const recent = alerts.slice(-50).reverse();
  const [k, h] = health(d);
  const markers = alerts.map((a) => a.started_ms);
  const charts = [timeChart({ title: 'anomaly score (max band, mean line; dashed: threshold; red: alerts)', points: series.score, x0: series.since_ms, x1: series.until_ms, threshold: series.threshold, markers })]
    .concat(series.channels.map((c) => timeChart({ title: c.name, unit: c.unit, points: c.points, x0: series.since_ms, x1: series.until_ms, markers })))
    .join('');
  const rows = recent.map((a) => `<tr class="click" data-action="open-alert" data-device="${esc(id)}" data-seq="${a.seq}">
<td>${fmtTime(a.started_ms)}</td><td>${num(a.score, 2)}</td><td>${num(a.threshold, 2)}</td>
<td>${a.top_features.map(([n, v]) => `${esc(n)} ${num(v, 1)}σ`).join(', ')}</td><td>${esc(a.model)} ${esc(a.model_version)}</td><td>${verdictBadge(a.verdict && { verdict: a.verdict })}</td></tr>`).join('');
  const tags = Object.entries(d.tags).map(([k2, v]) => badge('info', `${k2}=${v}`)).join(' ');
  return `<p><a href="#/fleet">← Fleet</a></p><h1>${esc(id)} ${badge(k, h)}</h1>
<div class="panel"><dl class="kv"><dt>Tags</dt><dd>${tags || '—'}</dd><dt>Profile</dt><dd>${esc(d.profile || '—')}</dd>
<dt>Model</dt><dd>${d.model ? `${esc(d.model)} ${esc(d.model_version)} (release ${d.release})` : '—'}${d.registry_version ? ` · registry v${d.registry_version}` : ''}</dd>
<dt>Update</dt><dd>${esc(d.update_state || '—')}${d.update_reason ? ` — ${esc(d.update_reason)}` : ''}</dd>
<dt>Drift</dt><dd>${esc(d.drift_state || '—')}</dd><dt>Alert rate</dt><dd>${esc(d.alert_rate || '—')}</dd><dt>Last contact</dt><dd>${ago(d.last_contact_ms)} (${fmtTime(d.last_contact_ms)})</dd>
<dt>Data through</dt><dd>${fmtTime(d.data_through_ms)}</dd></dl></div>
<h2>Sensors and anomaly score <span class="muted">(newest day of aggregates, device clock: ${fmtTime(series.since_ms)} to ${fmtTime(series.until_ms)})</span></h2><div class="charts">${charts}</div>
<h2>Alerts <span class="muted">(${alerts.length}; newest 50; click one for its readings and a verdict)</span></h2>
${rows ? `<table><thead><tr><th>Started</th><th>Score</th><th>Threshold</th><th>Top features</th><th>Model</th><th>Verdict</th></tr></thead><tbody>${rows}</tbody></table>` : '<p class="muted">No alerts in this range.</p>'}`;
}

async function openAlert(device, seq, message = '') {
  const x = await api(`/api/v1/alerts/${enc(device)}/${seq}`);
  const a = x.alert;
  const first = a.window.length ? a.window[0].ts_ms : a.started_ms;
  const last = a.window.length ? a.window[a.window.length - 1].ts_ms : a.started_ms + 1;
  const charts = a.channels.map((c, i) => timeChart({ title: c, points: framesToPoints(a.window, i), x0: first, x1: Math.max(last, first + 1), marker: a.started_ms })).join('');
  const f = x.feedback;
  $('#modal-box').innerHTML = `<div class="row"><h1>Alert ${esc(device)} #${seq}</h1><span class="spacer"></span><button class="btn" type="button" data-action="close-modal">Close</button></div>
<dl class="kv"><dt>Started</dt><dd>${fmtTime(a.started_ms)}</dd><dt>Model</dt><dd>${esc(a.model.name)} ${esc(a.model.version)} (release ${a.model.release})</dd>
<dt>Score</dt><dd>${num(a.score, 2)} (threshold ${num(a.threshold, 2)})</dd>
<dt>Top features</dt><dd>${a.top_features.map(([n, v]) => `${esc(n)} ${num(v, 1)}σ`).join(', ') || '—'}</dd>
<dt>Verdict</dt><dd id="verdict">${verdictBadge(f)}${f ? ` by ${esc(f.created_by)} ${fmtTime(f.created_ms)}${f.work_order ? `, work order ${esc(f.work_order)}` : ''}` : ''}</dd></dl>
<h2>Readings around the alarm <span class="muted">(dotted line: the alarm's start)</span></h2><div class="charts">${charts}</div>
<h2>Technician's verdict</h2>
<div class="row"><input type="text" id="work-order" placeholder="work order (optional)" maxlength="200">
<input type="text" id="note" placeholder="note (optional)" maxlength="2000">
<button class="btn danger" type="button" data-action="feedback" data-verdict="confirmed" data-device="${esc(device)}" data-seq="${seq}">Confirm fault</button>
<button class="btn good" type="button" data-action="feedback" data-verdict="false_alarm" data-device="${esc(device)}" data-seq="${seq}">False alarm</button></div>
<p id="feedback-message" class="${message.startsWith('error') ? 'error' : 'muted'}">${esc(message)}</p>`;
  $('#modal').hidden = false;
}

async function sendFeedback(device, seq, verdict) {
  const body = { verdict, work_order: $('#work-order').value, note: $('#note').value };
  try {
    await api(`/api/v1/alerts/${enc(device)}/${seq}/feedback`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    await openAlert(device, seq, verdict === 'confirmed' ? 'Recorded: confirmed fault (it labels the next training snapshot).' : 'Recorded: false alarm.');
    render(true);
  } catch (e) {
    $('#feedback-message').textContent = `error: ${e.message}`;
    $('#feedback-message').className = 'error';
  }
}

function metricCells(m) {
  const keys = ['f1', 'far', 'mar', 'precision', 'recall'].filter((k) => k in m);
  return keys.length ? keys.map((k) => `${k} ${num(m[k], 3)}`).join(' · ') : Object.entries(m).slice(0, 4).map(([k, v]) => `${esc(k)} ${num(v, 3)}`).join(' · ');
}

async function pageModels() {
  const models = await allPages('/api/v1/models', 5);
  if (!models.length) return '<h1>Models</h1><p class="muted">No registered models yet: <span class="mono">impeller pipeline run SPEC</span> registers one.</p>';
  const [precision, policies] = await Promise.all([api('/api/v1/feedback'), api('/api/v1/policies')]);
  const cards = await Promise.all(models.map(async (m) => {
    const versions = await allPages(`/api/v1/models/${enc(m.name)}/versions`, 5);
    const policy = policies.items.find((x) => x.model === m.name);
    const newest = versions.slice().reverse();
    const rows = newest.map((v) => {
      const p = precision.items.find((x) => x.model === m.name && x.model_version === String(v.version));
      const st = v.status === 'ready' ? 'ok' : v.status === 'failed' ? 'bad' : 'warn';
      return `<tr><td>v${v.version}</td><td>${badge(st, v.status)}${v.reason ? ` <span class="muted">${esc(v.reason)}</span>` : ''}</td><td>${v.aliases.map((a) => badge('info', a)).join(' ')}</td>
<td>${metricCells(v.metrics)}</td><td>${p ? `${num(p.precision, 2)} <span class="muted">(${p.confirmed}/${p.confirmed + p.false_alarms})</span>` : '—'}</td>
<td class="mono">${short(v.dataset_sha256)}</td><td>${v.parent_version ? `v${v.parent_version}` : '—'}</td><td>${v.packages.length}</td><td class="mono">${esc(short(v.code_version))}</td><td>${fmtTime(v.created_ms)}</td></tr>`;
    }).join('');
    // Lineage of the champion (else the newest ready version): data → version → devices.
    const chosen = newest.find((v) => v.aliases.includes('champion')) || newest.find((v) => v.status === 'ready');
    let lineage = '';
    if (chosen) {
      const l = await api(`/api/v1/lineage/datasets/${chosen.dataset_sha256}`);
      const devices = l.devices.filter((d) => d.model === m.name);
      const byVersion = {};
      for (const d of devices) (byVersion[d.version ?? '?'] = byVersion[d.version ?? '?'] || []).push(d.device);
      const runs = Object.entries(byVersion).map(([v, ds]) => `<div class="node">v${esc(v)} runs on ${ds.length} device${ds.length === 1 ? '' : 's'}<br><span class="muted">${ds.slice(0, 8).map(esc).join(', ')}${ds.length > 8 ? ', …' : ''}</span></div>`).join('') || '<div class="node muted">no device runs it yet</div>';
      lineage = `<h3>Lineage of v${chosen.version}</h3><div class="lineage"><div class="node">dataset <span class="mono">${short(chosen.dataset_sha256)}</span></div><span class="arrow">→</span>
<div class="node">built ${l.versions.length} version${l.versions.length === 1 ? '' : 's'}: ${l.versions.map((v) => `${esc(v.model)} v${v.version}`).join(', ')}</div><span class="arrow">→</span>${runs}</div>`;
    }
    const aliases = Object.entries(m.aliases).map(([a, v]) => badge('info', `${a} → v${v}`)).join(' ');
    let pol = '';
    if (policy) {
      const st = policy.state || {};
      const stage = st.stage || 'idle';
      const approve = stage.startsWith('awaiting_')
        ? ` <button class="btn primary" type="button" data-action="approve" data-model="${esc(m.name)}">Approve the ${stage === 'awaiting_promotion' ? 'promotion' : 'rollout'} of v${st.version}</button>` : '';
      pol = `<h3>Retraining policy</h3><p>Stage: ${badge(stage === 'idle' ? 'off' : 'info', stage.replace('_', ' '))}${approve}${st.reason ? ` <span class="muted">last trigger: ${esc(st.reason)}</span>` : ''}</p>
${st.note ? `<p class="muted">${esc(st.note)}</p>` : ''}<details><summary>Policy and pipeline spec</summary><pre class="mono">${esc(policy.policy)}</pre><pre class="mono">${esc(policy.spec)}</pre></details>`;
    }
    return `<div class="panel"><h2>${esc(m.name)} ${aliases}</h2><p class="muted">${m.versions} version${m.versions === 1 ? '' : 's'}, registered ${fmtTime(m.created_ms)}</p>
<table><thead><tr><th>Version</th><th>Status</th><th>Aliases</th><th>Validation metrics</th><th>Alert precision</th><th>Dataset</th><th>Parent</th><th>Packages</th><th>Code</th><th>Created</th></tr></thead><tbody>${rows}</tbody></table>${lineage}${pol}</div>`;
  }));
  return `<h1>Models</h1>${cards.join('')}`;
}

async function pageDeployments() {
  const list = await allPages('/api/v1/deployments', 5);
  if (!list.length) return '<h1>Deployments</h1><p class="muted">No deployments yet.</p>';
  const packages = await allPages('/api/v1/packages', 5);
  const statuses = await Promise.all(list.map((d) => api(`/api/v1/deployments/${enc(d.name)}`)));
  statuses.sort((a, b) => b.deployment.created_ms - a.deployment.created_ms);
  const cards = statuses.map((s) => {
    const d = s.deployment;
    const p = packages.find((x) => x.sha256 === d.package_sha256);
    const r = s.rollout;
    const phase = r ? r.phase : d.stopped_ms ? 'stopped' : 'applied';
    const kind = phase === 'complete' || phase === 'applied' ? 'ok' : phase === 'aborted' ? 'bad' : phase === 'stopped' ? 'off' : 'info';
    const waves = r ? `<div class="waves">${r.waves.map((w) => {
      const cls = phase === 'aborted' && w.wave === r.wave ? 'aborted' : w.wave < r.wave || phase === 'complete' ? 'done' : w.wave === r.wave ? 'current' : '';
      return `<div class="wave ${cls}">wave ${w.wave}: ${num(w.percent, 0)} % · ${w.devices.length} device${w.devices.length === 1 ? '' : 's'}</div>`;
    }).join('')}</div>` : '';
    const gates = d.rollout ? `<details><summary>Soak and health gates</summary><pre class="mono">${esc(JSON.stringify(d.rollout, null, 2))}</pre></details>` : '';
    const devices = s.devices.map((x) => `<tr><td><a href="#/device/${enc(x.device)}">${esc(x.device)}</a></td><td>${esc(x.state)}</td><td>${x.running_release ?? '—'}</td><td>${esc(x.reason || '')}</td></tr>`).join('');
    const counts = Object.entries(s.counts).map(([k, v]) => `${esc(k)} ${v}`).join(' · ');
    const abort = !d.stopped_ms && !d.aborted_ms
      ? `<button class="btn danger" type="button" data-action="abort" data-name="${esc(d.name)}">Abort and roll back</button>` : '';
    return `<div class="panel"><div class="row"><h2>${esc(d.name)}</h2>${badge(kind, phase)}<span class="spacer"></span>${abort}<span class="muted">created ${fmtTime(d.created_ms)}</span></div>
<p>${p ? `${esc(p.model)} ${esc(p.version)} (release ${p.release}, ${esc(p.target)})` : ''} <span class="mono">${short(d.package_sha256)}</span> · target <span class="mono">${esc(d.target_condition)}</span> · priority ${d.priority}</p>
${waves}${r && r.note ? `<p class="muted">${esc(r.note)}</p>` : ''}${d.abort_reason ? `<p class="error">Aborted: ${esc(d.abort_reason)}</p>` : ''}
${stackedBar(s.counts)}<p class="muted">${counts || 'no devices'}</p>${gates}
<details><summary>${s.devices.length} device${s.devices.length === 1 ? '' : 's'}</summary><table><thead><tr><th>Device</th><th>State</th><th>Release</th><th>Reason</th></tr></thead><tbody>${devices}</tbody></table></details></div>`;
  });
  return `<h1>Deployments</h1>${cards.join('')}`;
}

/// Drift over time across the fleet: per model, the worst-feature distance's mean over its
/// devices with the min–max band, against the monitor's alarm threshold.
async function fleetDriftCharts() {
  const f = await api('/api/v1/drift/fleet?points=120');
  if (!f.buckets.length) return '';
  const models = [...new Set(f.buckets.map((b) => b.model))].sort();
  const x0 = Math.min(...f.buckets.map((b) => b.start_ms));
  const x1 = Math.max(...f.buckets.map((b) => b.end_ms), x0 + 1);
  const charts = models.map((m) => {
    const bs = f.buckets.filter((b) => b.model === m);
    const last = bs[bs.length - 1];
    const points = bs.map((b) => ({ start_ms: b.start_ms, end_ms: b.end_ms, mean: b.mean_wasserstein, min: b.min_wasserstein, max: b.max_wasserstein }));
    return timeChart({ title: `${m}: ${last.drifting} of ${last.devices} devices in drift at the end`, points, x0, x1, threshold: f.alarm_sigma, unit: 'σ' });
  }).join('');
  return `<h2>Fleet: worst feature's distance from training per model <span class="muted">(mean over devices, band min–max; line: drift at ${num(f.alarm_sigma, 1)} σ)</span></h2>
<div class="charts">${charts}</div>`;
}

async function pageDrift() {
  const fleet = await allPages('/api/v1/fleet');
  const order = { drift: 0, warning: 1, stable: 2, unknown: 3 };
  const rows = fleet.filter((d) => d.drift_state).sort((a, b) => (order[a.drift_state] ?? 4) - (order[b.drift_state] ?? 4) || a.id.localeCompare(b.id));
  if (!rows.length) return '<h1>Drift</h1><p class="muted">No drift reports yet: agents send a sketch of their features every sketch interval.</p>';
  const device = ui.driftDevice && rows.some((d) => d.id === ui.driftDevice) ? ui.driftDevice : rows[0].id;
  const reports = await allPages(`/api/v1/drift?device=${enc(device)}`, 10);
  const pts = (key) => reports.map((r) => ({ start_ms: r.end_ms, end_ms: r.end_ms, mean: r[key], min: r[key], max: r[key] }));
  const x0 = reports.length ? reports[0].end_ms : 0;
  const x1 = reports.length ? Math.max(reports[reports.length - 1].end_ms, x0 + 1) : 1;
  const chosen = reports.find((r) => r.seq === ui.driftSeq) || reports[reports.length - 1];
  let detail = '';
  if (chosen) {
    const s = await api(`/api/v1/drift/${enc(device)}/${chosen.seq}`);
    const worst = chosen.features.map((f) => f.feature);
    const hist = s.features ? s.features.filter((f) => worst.includes(f.feature)).sort((a, b) => worst.indexOf(a.feature) - worst.indexOf(b.feature))
      .map((f) => histogramChart(f.feature, f.reference, f.current, s.low, s.width)).join('') : '<p class="muted">The hub holds no package for this model, so no reference.</p>';
    const feats = chosen.features.map((f) => `<tr><td>${esc(f.feature)}</td><td>${num(f.wasserstein)}</td><td>${num(f.psi)}</td><td>${num(f.ks)}</td></tr>`).join('');
    detail = `<h2>Interval ${fmtTime(chosen.start_ms)} – ${fmtTime(chosen.end_ms)} ${badge(chosen.state === 'drift' ? 'bad' : chosen.state === 'warning' ? 'warn' : 'ok', chosen.state)}</h2>
<table><thead><tr><th>Feature (worst first)</th><th>Wasserstein (σ)</th><th>PSI</th><th>KS</th></tr></thead><tbody>${feats}</tbody></table>
<h3>Reference vs. current distributions</h3><div class="charts">${hist}</div>`;
  }
  const list = rows.map((d) => `<option value="${esc(d.id)}"${d.id === device ? ' selected' : ''}>${esc(d.id)} — ${esc(d.drift_state)}</option>`).join('');
  const recent = reports.slice(-30).reverse().map((r) => `<tr class="click" data-action="drift-seq" data-seq="${r.seq}"><td>${fmtTime(r.end_ms)}</td><td>${esc(r.model)} ${esc(r.model_version)}</td><td>${num(r.max_wasserstein)}</td><td>${num(r.max_psi)}</td><td>${num(r.page_hinkley)}</td><td>${esc(r.state)}</td></tr>`).join('');
  const counts = ['drift', 'warning', 'stable'].map((s) => `${s} ${rows.filter((d) => d.drift_state === s).length}`).join(' · ');
  return `<h1>Drift</h1><p class="muted">Devices by their monitor's state: ${counts}</p>
${await fleetDriftCharts()}<h2>One device</h2>
<div class="filters"><label>Device <select data-filter="driftDevice">${list}</select></label></div>
<div class="charts">${timeChart({ title: `${device}: worst feature's Wasserstein distance per interval (σ)`, points: pts('max_wasserstein'), x0, x1 })}
${timeChart({ title: `${device}: Page–Hinkley statistic`, points: pts('page_hinkley'), x0, x1 })}</div>
${detail}<h2>Recent intervals <span class="muted">(click one)</span></h2><table><thead><tr><th>Interval end</th><th>Model</th><th>Max Wasserstein</th><th>Max PSI</th><th>Page–Hinkley</th><th>State</th></tr></thead><tbody>${recent}</tbody></table>`;
}

async function pageAudit() {
  const status = await api('/api/v1/audit/status');
  const filtered = ui.auditAction || ui.auditSubject;
  let after = ui.auditAfter;
  if (after == null) after = filtered ? 0 : Math.max(0, (status.last_seq || 0) - 100);
  const q = `after=${after}&limit=100${ui.auditAction ? `&action=${enc(ui.auditAction)}` : ''}${ui.auditSubject ? `&subject=${enc(ui.auditSubject)}` : ''}`;
  const page = await api(`/api/v1/audit?${q}`);
  const banner = status.intact
    ? `<div class="banner ok">Chain intact: ${status.records} records${status.last_verified_seq ? `, checkpoints signed by ${esc(status.audit_key)} cover records up to ${status.last_verified_seq}` : ''} (checked by the hub ${fmtTime(status.checked_ms)}; <span class="mono">impeller audit verify</span> checks it independently).</div>`
    : `<div class="banner bad">Chain broken: ${esc(status.problem)}</div>`;
  const rows = page.items.slice().reverse().map((r) => `<tr><td>${r.seq}</td><td>${fmtTime(r.time_ms)}</td><td>${esc(r.actor)}</td><td>${esc(r.action)}</td><td>${esc(r.subject)}</td>
<td class="mono">${r.artifacts.map(short).join(' ')}</td><td class="mono"><details><summary>${esc(JSON.stringify(r.details).slice(0, 60))}</summary><pre>${esc(JSON.stringify(r.details, null, 2))}</pre></details></td></tr>`).join('');
  const older = filtered ? '' : `<button class="btn" type="button" data-action="audit-page" data-after="${Math.max(0, after - 100)}"${after === 0 ? ' disabled' : ''}>Older</button>`;
  const newer = page.next_after ? `<button class="btn" type="button" data-action="audit-page" data-after="${page.next_after}">${filtered ? 'Next' : 'Newer'}</button>` : '';
  return `<h1>Audit trail</h1>${banner}
<div class="filters"><input type="text" id="audit-action" placeholder="action, or prefix like deployment." value="${esc(ui.auditAction)}">
<input type="text" id="audit-subject" placeholder="subject" value="${esc(ui.auditSubject)}"><button class="btn primary" type="button" data-action="audit-filter">Filter</button>
<span class="spacer"></span>${older}${newer}</div>
<table><thead><tr><th>Seq</th><th>Time</th><th>Actor</th><th>Action</th><th>Subject</th><th>Artifacts</th><th>Details</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// ---------- routing, live refresh, events ----------
function loginPage(message) {
  return `<div class="panel login"><h1>Sign in</h1><p>Paste an operator API token (<span class="mono">impeller token create NAME --role read</span> makes one;
<span class="mono">impeller demo</span> prints a link that carries one).</p>
<input type="password" id="token" placeholder="API token" autocomplete="off"><button class="btn primary" type="button" data-action="login">Sign in</button>
${message ? `<p class="error">${esc(message)}</p>` : ''}</div>`;
}

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  return { page: parts[0] || 'fleet', arg: parts[1] };
}

async function render(live = false) {
  if (refreshing) return;
  if (!token()) { $('#main').innerHTML = loginPage(''); return; }
  const { page, arg } = route();
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.page === (page === 'device' ? 'fleet' : page)));
  const pages = { fleet: pageFleet, device: () => pageDevice(arg), models: pageModels, deployments: pageDeployments, drift: pageDrift, audit: pageAudit };
  const f = pages[page] || pageFleet;
  refreshing = true;
  try {
    const html = await f();
    // A live refresh keeps the reader's place and leaves an open form alone (also one opened
    // or armed while this refresh was loading).
    if (live && (editing() || !$('#modal').hidden)) return;
    const y = window.scrollY;
    const open = [...document.querySelectorAll('#main details[open] summary')].map((s) => s.textContent);
    $('#main').innerHTML = html;
    document.querySelectorAll('#main details summary').forEach((s) => { if (open.includes(s.textContent)) s.parentElement.open = true; });
    if (live) window.scrollTo(0, y);
    lastRender = Date.now();
    $('#live').classList.remove('stale');
    $('#live').textContent = `${events.up ? 'live' : 'polling'} · ${fmtTime(Date.now()).slice(11)}`;
  } catch (e) {
    if (e.status === 401) { $('#main').innerHTML = loginPage(e.message); }
    else if (live) { $('#live').classList.add('stale'); $('#live').textContent = `stale: ${e.message}`; }
    else { $('#main').innerHTML = `<p class="error">${esc(e.message)}</p>`; }
  } finally {
    refreshing = false;
  }
}

/// An operator's action from a button: POST, then show the new state (or the refusal beside it).
async function post(path, body, button) {
  try {
    await api(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body ? JSON.stringify(body) : undefined });
    render();
  } catch (e) {
    button.insertAdjacentHTML('afterend', `<span class="error"> ${esc(e.message)}</span>`);
  }
}

/// A form in use or a button armed for its second click: a live refresh would lose it.
function editing() {
  const a = document.activeElement;
  return (a && (a.tagName === 'INPUT' || a.tagName === 'SELECT')) || document.querySelector('[data-armed]') !== null;
}

document.addEventListener('click', (e) => {
  const t = e.target.closest('[data-action], tr[data-href]');
  if (!t) return;
  if (t.dataset.href && !e.target.closest('a')) { location.hash = t.dataset.href; return; }
  const act = t.dataset.action;
  if (act === 'open-alert') openAlert(t.dataset.device, t.dataset.seq).catch((err) => alert(err.message));
  else if (act === 'close-modal') { $('#modal').hidden = true; }
  else if (act === 'feedback') sendFeedback(t.dataset.device, t.dataset.seq, t.dataset.verdict);
  else if (act === 'drift-seq') { ui.driftSeq = Number(t.dataset.seq); render(); }
  else if (act === 'audit-page') { ui.auditAfter = Number(t.dataset.after); render(); }
  else if (act === 'audit-filter') { ui.auditAction = $('#audit-action').value.trim(); ui.auditSubject = $('#audit-subject').value.trim(); ui.auditAfter = null; render(); }
  else if (act === 'approve') post(`/api/v1/models/${enc(t.dataset.model)}/policy/approve`, null, t);
  else if (act === 'abort') {
    // Two clicks: a rollback of every device the deployment took is not a misclick.
    if (t.dataset.armed) post(`/api/v1/deployments/${enc(t.dataset.name)}/abort`, { reason: 'aborted from the dashboard' }, t);
    else { t.dataset.armed = '1'; t.textContent = 'Click again to abort'; }
  }
  else if (act === 'login') { sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim()); render(); listen(); }
});
document.addEventListener('change', (e) => {
  const f = e.target.dataset && e.target.dataset.filter;
  if (!f) return;
  ui[f] = e.target.value;
  if (f === 'driftDevice') ui.driftSeq = null;
  e.target.blur();
  render();
});
$('#modal').addEventListener('click', (e) => { if (e.target.id === 'modal') $('#modal').hidden = true; });
$('#logout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (events.controller) events.controller.abort();
  render();
});
window.addEventListener('hashchange', () => { $('#modal').hidden = true; ui.auditAfter = null; ui.driftSeq = null; render(); });

// `/#token=…` (the link `impeller demo` prints): keep the token for this tab, drop it from the URL.
const fromLink = location.hash.match(/^#token=([^&]+)/);
if (fromLink) {
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(fromLink[1]));
  history.replaceState(null, '', `${location.pathname}#/fleet`);
}
// ---------- live updates: the hub's server-sent events ----------
// Read with fetch rather than EventSource, which cannot send the Authorization header (a token
// in the URL would end up in logs).
const events = { up: false, lastSeq: null, last: '', controller: null, timer: null };
let lastRender = 0;

function liveRender() {
  if (document.visibilityState === 'visible' && $('#modal').hidden && !editing()) render(true);
}

/// Something changed: re-render now, or once the gap since the last render has passed.
function changed() {
  if (events.timer) return;
  const wait = Math.max(0, lastRender + RENDER_GAP_MS - Date.now());
  events.timer = setTimeout(() => { events.timer = null; liveRender(); }, wait);
}

function showStream() {
  const live = $('#live');
  live.dataset.mode = events.up ? 'stream' : 'poll';
  live.title = events.up
    ? `updates as the hub records them${events.last ? `; last: ${events.last}` : ''}`
    : `the hub's event stream is down: refreshing every ${REFRESH_MS / 1000} s`;
}

function onEvent(name, data) {
  if (name === 'hello') {
    const reconnected = events.lastSeq !== null;
    events.up = true;
    if (events.lastSeq === null) events.lastSeq = data.audit_seq;
    if (reconnected) changed();
  } else if (name === 'audit') {
    events.lastSeq = data.seq;
    events.last = `${data.action} ${data.subject}`;
    changed();
  } else if (name === 'ingest') {
    changed();
  }
  showStream();
}

async function listen() {
  if (events.controller || !token()) return;
  const controller = new AbortController();
  events.controller = controller;
  try {
    const headers = { Authorization: `Bearer ${token()}`, Accept: 'text/event-stream' };
    if (events.lastSeq !== null) headers['Last-Event-ID'] = String(events.lastSeq);
    const res = await fetch('/api/v1/events', { headers, signal: controller.signal, cache: 'no-store' });
    if (!res.ok || !res.body) throw new Error(`${res.status}`);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let name = 'message';
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(5).trim();
        }
        if (data) onEvent(name, JSON.parse(data));
      }
    }
  } catch (e) {
    // Down, refused or ended: poll meanwhile and try again below.
  } finally {
    events.controller = null;
    events.up = false;
    showStream();
  }
}

render();
listen();
setInterval(() => {
  if (!events.up || Date.now() - lastRender >= SLOW_REFRESH_MS) liveRender();
  if (!events.controller) listen();
}, REFRESH_MS);
