// Loom dashboard: plain modern JS, no build step, no third-party code (see ARCHITECTURE.md).
// Every string that came from an agent or an event is put in the page with textContent or as an
// SVG text node, never parsed as HTML.
'use strict';

const MAX_EVENT_ROWS = 500;
const HEX32 = /^[0-9a-f]{32}$/;
const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#b07aa1', '#76b7b2', '#edc948', '#9c755f', '#ff9da7', '#bab0ac', '#e15759'];
const SVG = 'http://www.w3.org/2000/svg';

const state = {
  config: { jaeger_ui_url: null, trace_query: false },
  eventCount: 0,
  live: true,          // timeline follows new traces
  traceId: null,       // trace shown in the timeline
  spans: [],
  selected: null,
  serviceColors: new Map(),
};

// ---- small DOM helpers (text only) ----
function el(tag, opts, ...children) {
  const e = document.createElement(tag);
  if (opts) {
    if (opts.cls) e.className = opts.cls;
    if (opts.text !== undefined && opts.text !== null) e.textContent = String(opts.text);
    if (opts.title) e.title = String(opts.title);
    if (opts.href) e.setAttribute('href', opts.href);
    if (opts.data) for (const [k, v] of Object.entries(opts.data)) e.dataset[k] = String(v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
function fmtTime(ms) { return ms ? new Date(ms).toLocaleTimeString() : ''; }
function fmtDur(ns) {
  if (ns >= 1e9) return (ns / 1e9).toFixed(2) + ' s';
  if (ns >= 1e6) return (ns / 1e6).toFixed(2) + ' ms';
  return (ns / 1e3).toFixed(1) + ' µs';
}
function ago(ms) {
  if (!ms) return '—';
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 60 ? s.toFixed(0) + ' s ago' : (s / 60).toFixed(0) + ' min ago';
}
function jaegerHref(traceId) {
  const base = state.config.jaeger_ui_url;
  return base && HEX32.test(traceId) ? base.replace(/\/+$/, '') + '/trace/' + traceId : null;
}
async function getJSON(url) {
  const r = await fetch(url, { credentials: 'same-origin' });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new Error((body && body.error) || (r.status + ' ' + r.statusText));
  return body;
}

// ---- routing: #/events, #/timeline, #/trace/<id>, #/topology ----
function route() {
  const h = location.hash || '#/events';
  let view = 'events';
  const m = h.match(/^#\/trace\/([0-9a-fA-F]{32})$/);
  if (m) {
    view = 'timeline';
    setLive(false);
    showTrace(m[1].toLowerCase());
  } else if (h === '#/timeline') {
    view = 'timeline';
    if (state.live) followNewest();
  } else if (h === '#/topology') {
    view = 'topology';
    refreshTopology();
  }
  for (const v of ['events', 'timeline', 'topology']) {
    document.getElementById('view-' + v).hidden = v !== view;
    document.getElementById('tab-' + v).classList.toggle('active', v === view);
  }
}

// ---- event stream ----
function eventRow(ev) {
  const traceId = ev.trace_id || '';
  const traceCell = el('td', { cls: 'trace' });
  if (HEX32.test(traceId)) {
    traceCell.append(el('a', { cls: 'trace-link', href: '#/trace/' + traceId, text: traceId.slice(0, 12) + '…', title: traceId }));
    const j = jaegerHref(traceId);
    if (j) {
      const a = el('a', { cls: 'jaeger-link', href: j, text: 'Jaeger' });
      a.target = '_blank';
      a.rel = 'noopener noreferrer';
      traceCell.append(' ', a);
    }
  }
  const preview = ev.payload_preview || '';
  const tr = el('tr', { cls: 'event-row', data: { traceId, topic: ev.topic || '', sender: ev.sender || '' } },
    el('td', { cls: 'time', text: fmtTime(ev.published_unix_ms) }),
    el('td', { cls: 'topic', text: ev.topic }),
    el('td', { cls: 'sender', text: ev.sender || '' }),
    el('td', { cls: 'receivers', text: (ev.receivers || []).join(', ') }),
    el('td', { cls: 'etype', text: ev.type || '' }),
    el('td', { cls: 'payload', text: preview.length > 120 ? preview.slice(0, 120) + '…' : preview, title: preview }),
    traceCell);
  if (HEX32.test(traceId)) {
    tr.classList.add('clickable');
    tr.addEventListener('click', (e) => {
      if (e.target.closest('a')) return;
      location.hash = '#/trace/' + traceId;
    });
  }
  return tr;
}
function matchesFilter(tr) {
  const f = document.getElementById('events-filter').value.trim().toLowerCase();
  return !f || tr.dataset.topic.toLowerCase().includes(f) || tr.dataset.sender.toLowerCase().includes(f);
}
function addEvent(ev) {
  const body = document.getElementById('events-body');
  const tr = eventRow(ev);
  tr.hidden = !matchesFilter(tr);
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > MAX_EVENT_ROWS) body.deleteRow(body.rows.length - 1);
  state.eventCount += 1;
  document.getElementById('event-count').textContent = String(body.rows.length);
}
async function loadBacklog() {
  try {
    const flows = await getJSON('/api/flows?limit=100');
    for (const f of flows) addEvent(f);
  } catch (e) { setConn('backlog: ' + e.message, true); }
}
function setConn(text, bad) {
  const c = document.getElementById('conn');
  c.textContent = text;
  c.classList.toggle('bad', !!bad);
}
function connectStream() {
  const es = new EventSource('/api/events/stream');
  es.onopen = () => setConn('live');
  es.onerror = () => setConn('reconnecting…', true);
  es.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (_) { return; }
    if (!document.getElementById('events-pause').checked) addEvent(ev);
    if (ev.trace_id && state.live) scheduleFollow();
  };
  es.addEventListener('lagged', (m) => {
    try { setConn('live (skipped ' + JSON.parse(m.data).skipped + ' events: too slow)', true); } catch (_) { /* ignore */ }
  });
  es.addEventListener('ping', () => setConn('live'));
}

// ---- metrics strip ----
async function refreshMetrics() {
  try {
    const m = await getJSON('/api/metrics');
    const box = document.getElementById('metrics');
    clear(box);
    const items = [['agents', m.active_agents], ['events/s', m.events_per_sec.toFixed(1)], ['published', m.published], ['delivered', m.delivered], ['dropped', m.dropped]];
    for (const [k, v] of items) box.append(el('span', { cls: 'metric' }, el('b', { text: v }), ' ' + k));
  } catch (_) { /* shown by conn */ }
}

// ---- timeline ----
function setLive(on) {
  state.live = on;
  const b = document.getElementById('live-toggle');
  b.textContent = on ? 'Pause' : 'Live';
  b.classList.toggle('paused', !on);
}
let followTimer = null;
function scheduleFollow() {
  if (followTimer || document.getElementById('view-timeline').hidden) return;
  // Spans reach the trace store a moment after the event: let the trace finish first.
  followTimer = setTimeout(() => { followTimer = null; if (state.live) followNewest(); }, 1500);
}
async function refreshPicker() {
  const picker = document.getElementById('trace-picker');
  let traces;
  try { traces = await getJSON('/api/traces?limit=50'); } catch (_) { return []; }
  const keep = state.traceId;
  clear(picker);
  picker.append(el('option', { text: '(recent traces)' }));
  picker.options[0].value = '';
  for (const t of traces) {
    const o = el('option', { text: fmtTime(t.started_unix_ms) + '  ' + t.first_topic + (t.first_sender ? ' from ' + t.first_sender : '') + '  (' + t.events + ' events)  ' + t.trace_id.slice(0, 8) });
    o.value = t.trace_id;
    picker.append(o);
  }
  if (keep && ![...picker.options].some((o) => o.value === keep)) {
    const o = el('option', { text: keep });
    o.value = keep;
    picker.append(o);
  }
  if (keep) picker.value = keep;
  return traces;
}
async function followNewest() {
  const traces = await refreshPicker();
  // Newest trace whose last event is over a second old: its spans should have arrived.
  const now = Date.now();
  const t = traces.find((x) => now - x.last_unix_ms > 1000) || traces[0];
  if (t && state.live) showTrace(t.trace_id);
}
function serviceColor(name) {
  if (!state.serviceColors.has(name)) state.serviceColors.set(name, PALETTE[state.serviceColors.size % PALETTE.length]);
  return state.serviceColors.get(name);
}
async function showTrace(id) {
  state.traceId = id;
  const status = document.getElementById('timeline-status');
  const j = document.getElementById('timeline-jaeger');
  const href = jaegerHref(id);
  j.hidden = !href;
  if (href) j.setAttribute('href', href);
  const picker = document.getElementById('trace-picker');
  if (![...picker.options].some((o) => o.value === id)) {
    const o = el('option', { text: id });
    o.value = id;
    picker.append(o);
  }
  picker.value = id;
  status.textContent = 'loading trace ' + id + '…';
  let spans;
  try {
    spans = await getJSON('/api/traces/' + id);
  } catch (e) {
    if (state.traceId === id) {
      status.textContent = 'trace ' + id + ': ' + e.message;
      renderWaterfall([]);
    }
    return;
  }
  if (state.traceId !== id) return;
  state.spans = spans;
  const services = new Set(spans.map((s) => s.service_name));
  status.textContent = 'trace ' + id + ': ' + spans.length + ' spans, ' + services.size + ' services';
  renderWaterfall(spans);
}
// Depth-first order: each span after its parent, siblings by start time.
function treeOrder(spans) {
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const kids = new Map();
  const roots = [];
  for (const s of spans) {
    if (s.parent_span_id && byId.has(s.parent_span_id)) {
      if (!kids.has(s.parent_span_id)) kids.set(s.parent_span_id, []);
      kids.get(s.parent_span_id).push(s);
    } else roots.push(s);
  }
  const byStart = (a, b) => a.start_time - b.start_time;
  const out = [];
  const seen = new Set();
  const walk = (s, depth) => {
    if (seen.has(s.span_id)) return;
    seen.add(s.span_id);
    out.push([s, depth]);
    for (const c of (kids.get(s.span_id) || []).sort(byStart)) walk(c, depth + 1);
  };
  for (const r of roots.sort(byStart)) walk(r, 0);
  return out;
}
function renderWaterfall(spans) {
  const rows = document.getElementById('span-rows');
  const axis = document.getElementById('axis');
  const legend = document.getElementById('legend');
  clear(rows); clear(axis); clear(legend);
  clear(document.getElementById('link-overlay'));
  if (!spans.length) return;
  const t0 = Math.min(...spans.map((s) => s.start_time));
  const t1 = Math.max(...spans.map((s) => s.end_time || s.start_time + s.duration));
  const total = Math.max(1, t1 - t0);
  for (let i = 0; i <= 4; i++) {
    const tick = el('span', { cls: 'tick', text: fmtDur(total * i / 4) });
    tick.style.left = (i * 25) + '%';
    axis.append(tick);
  }
  const order = treeOrder(spans);
  const rowOf = new Map();
  order.forEach(([s, depth], i) => {
    const label = el('div', { cls: 'label' },
      el('span', { cls: 'svc', text: s.service_name }),
      el('span', { cls: 'name', text: s.name }),
      el('span', { cls: 'kind', text: s.kind }));
    label.style.paddingLeft = (depth * 14 + 4) + 'px';
    if (s.status === 'error') label.append(el('span', { cls: 'err-badge', text: 'error', title: s.error_message || '' }));
    if ((s.links || []).length) label.append(el('span', { cls: 'link-badge', text: '⇠ ' + s.links.length + ' link' + (s.links.length > 1 ? 's' : '') }));
    const bar = el('div', { cls: 'bar' + (s.status === 'error' ? ' error' : ''), title: s.name + ' ' + fmtDur(s.duration) });
    bar.style.left = ((s.start_time - t0) / total * 100) + '%';
    bar.style.width = Math.max(0.4, s.duration / total * 100) + '%';
    bar.style.background = serviceColor(s.service_name);
    const track = el('div', { cls: 'track' }, bar, el('span', { cls: 'dur', text: fmtDur(s.duration) }));
    const row = el('div', { cls: 'span-row', data: { spanId: s.span_id, depth, service: s.service_name, name: s.name, status: s.status, index: i } }, label, track);
    row.addEventListener('click', () => selectSpan(s, row));
    rows.append(row);
    rowOf.set(s.span_id, row);
  });
  for (const name of state.serviceColors.keys()) {
    if (!spans.some((s) => s.service_name === name)) continue;
    const sw = el('span', { cls: 'swatch' });
    sw.style.background = serviceColor(name);
    legend.append(el('span', { cls: 'legend-item' }, sw, name));
  }
  requestAnimationFrame(() => drawLinks(spans, rowOf));
  if (state.selected) {
    const again = spans.find((s) => s.span_id === state.selected);
    if (again) selectSpan(again, rowOf.get(again.span_id));
  }
}
// Span links inside the trace as curves from the linked span's row to the linking span's row.
function drawLinks(spans, rowOf) {
  const overlay = document.getElementById('link-overlay');
  const rows = document.getElementById('span-rows');
  clear(overlay);
  overlay.setAttribute('width', rows.offsetWidth);
  overlay.setAttribute('height', rows.offsetHeight + rows.offsetTop);
  const x = rows.offsetWidth * 0.33;
  for (const s of spans) {
    for (const l of s.links || []) {
      const from = rowOf.get(l.span_id);
      const to = rowOf.get(s.span_id);
      if (!from || !to) continue;
      const y1 = rows.offsetTop + from.offsetTop + from.offsetHeight / 2;
      const y2 = rows.offsetTop + to.offsetTop + to.offsetHeight / 2;
      overlay.append(svg('path', { d: `M ${x} ${y1} C ${x - 40} ${y1}, ${x - 40} ${y2}, ${x} ${y2}`, class: 'span-link', 'data-from': l.span_id, 'data-to': s.span_id }));
    }
  }
}
function kvTable(title, obj) {
  const entries = Object.entries(obj || {});
  const box = el('div', { cls: 'kv' }, el('h3', { text: title + ' (' + entries.length + ')' }));
  if (!entries.length) return box;
  const t = el('table');
  for (const [k, v] of entries) t.append(el('tr', null, el('th', { text: k }), el('td', { text: v })));
  box.append(t);
  return box;
}
function selectSpan(s, row) {
  state.selected = s.span_id;
  for (const r of document.querySelectorAll('.span-row.selected')) r.classList.remove('selected');
  if (row) row.classList.add('selected');
  const t0 = Math.min(...state.spans.map((x) => x.start_time));
  const d = document.getElementById('span-detail');
  clear(d);
  d.append(el('h2', { text: s.name }));
  d.append(kvTable('Span', {
    service: s.service_name, kind: s.kind, status: s.status + (s.error_message ? ': ' + s.error_message : ''),
    'span id': s.span_id, parent: s.parent_span_id || '(root)',
    'starts at': '+' + fmtDur(s.start_time - t0), duration: fmtDur(s.duration),
  }));
  d.append(kvTable('Attributes', s.attributes));
  const evs = el('div', { cls: 'kv' }, el('h3', { text: 'Events (' + (s.events || []).length + ')' }));
  for (const e of s.events || []) {
    evs.append(el('div', { cls: 'span-event' }, el('b', { text: e.name }), ' +' + fmtDur(Math.max(0, e.time - s.start_time))));
    if (Object.keys(e.attributes || {}).length) evs.append(kvTable('', e.attributes));
  }
  d.append(evs);
  const links = el('div', { cls: 'kv' }, el('h3', { text: 'Links (' + (s.links || []).length + ')' }));
  for (const l of s.links || []) {
    const same = l.trace_id === state.traceId;
    const target = same ? (state.spans.find((x) => x.span_id === l.span_id) || {}).name || l.span_id : l.trace_id.slice(0, 12) + '… / ' + l.span_id;
    const a = el('a', { cls: 'span-link-ref', href: '#/trace/' + l.trace_id, text: (same ? 'this trace: ' : 'trace ') + target });
    links.append(el('div', null, a));
    if (Object.keys(l.attributes || {}).length) links.append(kvTable('', l.attributes));
  }
  d.append(links);
  d.append(kvTable('Resource', s.resource));
}

// ---- topology ----
async function refreshTopology() {
  if (document.getElementById('view-topology').hidden) return;
  let topo;
  try { topo = await getJSON('/api/topology'); } catch (e) { setConn('topology: ' + e.message, true); return; }
  const ab = document.getElementById('agents-body');
  clear(ab);
  for (const a of topo.agents) {
    ab.append(el('tr', { cls: 'agent-row', data: { agent: a.id } },
      el('td', { cls: 'agent-id', text: a.id }),
      el('td', { text: a.connected ? 'yes' : 'no' }),
      el('td', { cls: 'agent-topics', text: a.topics.join(', ') }),
      el('td', { text: a.capabilities.join(', ') }),
      el('td', { text: a.published }), el('td', { text: a.delivered }), el('td', { cls: a.dropped ? 'bad' : '', text: a.dropped }),
      el('td', { text: a.queued }), el('td', { text: ago(a.last_activity_ms) })));
  }
  const tb = document.getElementById('topics-body');
  clear(tb);
  for (const t of topo.topics) {
    tb.append(el('tr', { cls: 'topic-row' }, el('td', { cls: 'topic-name', text: t.topic }), el('td', { text: t.published }),
      el('td', { text: t.delivered }), el('td', { cls: t.dropped ? 'bad' : '', text: t.dropped }), el('td', { text: ago(t.last_activity_ms) })));
  }
  drawGraph(topo);
}
function drawGraph(topo) {
  const g = document.getElementById('topo-graph');
  clear(g);
  const caps = [...new Set(topo.agents.flatMap((a) => a.capabilities))];
  // The SDK's per-agent reply topics are noise until a request uses them (the table lists them).
  const shown = topo.topics.filter((t) => !(t.topic.startsWith('_loom.reply.') && !t.published));
  const cols = [topo.agents.map((a) => a.id), shown.map((t) => t.topic), caps];
  const rowH = 38, W = 900, colX = [140, 450, 760];
  const H = Math.max(120, Math.max(...cols.map((c) => c.length)) * rowH + 56);
  g.setAttribute('viewBox', `0 0 ${W} ${H}`);
  g.setAttribute('height', H);
  const pos = [new Map(), new Map(), new Map()];
  cols.forEach((c, i) => c.forEach((name, j) => pos[i].set(name, [colX[i], 44 + j * rowH + (H - 56 - c.length * rowH) / 2])));
  const edges = svg('g', { class: 'edges' });
  g.append(edges);
  const curve = (a, b) => `M ${a[0]} ${a[1]} C ${(a[0] + b[0]) / 2} ${a[1]}, ${(a[0] + b[0]) / 2} ${b[1]}, ${b[0]} ${b[1]}`;
  for (const p of topo.publishes || []) {
    const a = pos[0].get(p.from_agent), b = pos[1].get(p.to_topic);
    if (a && b) { edges.append(svg('path', { d: curve([a[0] + 90, a[1] - 4], [b[0] - 90, b[1] - 4]), class: 'pub' })); edges.append(svg('text', { x: (a[0] + b[0]) / 2, y: (a[1] + b[1]) / 2 - 8, class: 'count' }, p.event_count)); }
  }
  for (const e of topo.edges) {
    const a = pos[1].get(e.from_topic), b = pos[0].get(e.to_agent);
    if (a && b) { edges.append(svg('path', { d: curve([a[0] - 90, a[1] + 4], [b[0] + 90, b[1] + 4]), class: 'sub' })); edges.append(svg('text', { x: (a[0] + b[0]) / 2, y: (a[1] + b[1]) / 2 + 14, class: 'count sub' }, e.event_count)); }
  }
  for (const a of topo.agents) for (const c of a.capabilities) {
    const p = pos[0].get(a.id), q = pos[2].get(c);
    if (p && q) edges.append(svg('path', { d: curve([p[0] + 90, p[1]], [q[0] - 90, q[1]]), class: 'cap' }));
  }
  const kinds = ['agent', 'topic', 'capability'];
  cols.forEach((c, i) => c.forEach((name) => {
    const [x, y] = pos[i].get(name);
    const node = svg('g', { class: 'node ' + kinds[i] });
    node.append(svg('rect', { x: x - 90, y: y - 13, width: 180, height: 26, rx: 6 }));
    const label = name.length > 26 ? name.slice(0, 25) + '…' : name;
    node.append(svg('text', { x, y: y + 4, 'text-anchor': 'middle' }, label));
    node.append(svg('title', {}, name));
    g.append(node);
  }));
  ['agents', 'topics', 'capabilities'].forEach((h, i) => g.append(svg('text', { x: colX[i], y: 14, 'text-anchor': 'middle', class: 'col-head' }, h)));
}

// ---- start ----
async function start() {
  try { state.config = await getJSON('/api/config'); } catch (e) { setConn('config: ' + e.message, true); }
  document.getElementById('live-toggle').addEventListener('click', () => {
    setLive(!state.live);
    if (state.live) {
      if (location.hash !== '#/timeline') location.hash = '#/timeline';
      else followNewest();
    }
  });
  document.getElementById('trace-picker').addEventListener('change', (e) => {
    if (e.target.value) location.hash = '#/trace/' + e.target.value;
  });
  document.getElementById('events-filter').addEventListener('input', () => {
    for (const tr of document.getElementById('events-body').rows) tr.hidden = !matchesFilter(tr);
  });
  window.addEventListener('hashchange', route);
  window.addEventListener('resize', () => {
    const rows = new Map([...document.querySelectorAll('.span-row')].map((r) => [r.dataset.spanId, r]));
    drawLinks(state.spans, rows);
  });
  await loadBacklog();
  connectStream();
  route();
  refreshMetrics();
  setInterval(refreshMetrics, 3000);
  setInterval(refreshTopology, 3000);
  setInterval(() => { if (!document.getElementById('view-timeline').hidden) refreshPicker(); }, 5000);
}
document.addEventListener('DOMContentLoaded', start);
