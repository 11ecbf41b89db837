// The Eddy console: one page, five views, each read from the console's /api routes.
'use strict';

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem('eddy-token') || '';
let role = null;
let view = 'overview';
let timer = null;

// A token given in the address (?token=...) signs in, and leaves the address bar.
(function tokenFromAddress() {
  const params = new URLSearchParams(location.search);
  if (params.has('token')) {
    token = params.get('token');
    sessionStorage.setItem('eddy-token', token);
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
  }
})();

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers['Authorization'] = 'Bearer ' + token;
  const res = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await res.json(); } catch (_) { body = { error: 'the console answered ' + res.status }; }
  if (res.status === 401) { showSignIn(body.error); throw new Error(body.error); }
  if (!res.ok) throw new Error(body.error || ('HTTP ' + res.status));
  return body;
}

function showSignIn(message) {
  $('signin').hidden = false;
  document.querySelector('main').hidden = true;
  $('signin-error').textContent = token ? (message || '') : '';
}

$('signin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  token = $('token').value;
  sessionStorage.setItem('eddy-token', token);
  await start();
});

const fmt = {
  rate: (v) => v == null ? '–' : (v >= 100 ? Math.round(v).toLocaleString('en') : v.toFixed(1)),
  int: (v) => v == null ? '–' : Number(v).toLocaleString('en'),
  ms: (v) => v == null ? '–' : (v < 1 ? v.toFixed(2) : Math.round(v).toString()) + ' ms',
  bytes: (v) => v == null ? '–' : v < 1024 ? v + ' B' : v < 1048576 ? (v / 1024).toFixed(1) + ' KiB' : (v / 1048576).toFixed(1) + ' MiB',
  time: (ms) => ms ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '–',
  ago: (ms) => {
    if (!ms) return '–';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    return s < 120 ? s + ' s ago' : s < 7200 ? Math.round(s / 60) + ' min ago' : Math.round(s / 3600) + ' h ago';
  },
};

// Table rows from cells: text only, never HTML from the pipeline.
function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement('tr');
    if (cells.className) tr.className = cells.className;
    for (const c of cells) {
      const td = document.createElement('td');
      if (c instanceof Node) td.appendChild(c); else td.textContent = c == null ? '' : String(c);
      tr.appendChild(td);
    }
    return tr;
  }));
}

function plot(svg, series) {
  const w = 600, h = 140, pad = 4;
  const all = series.flatMap((s) => s.values.filter((v) => v != null));
  const max = Math.max(1, ...all);
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const lines = series.map((s) => {
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    line.setAttribute('stroke', s.color);
    line.setAttribute('points', s.values.map((v, i) =>
      `${(i / (n - 1)) * w},${h - pad - ((v || 0) / max) * (h - 2 * pad)}`).join(' '));
    return line;
  });
  svg.replaceChildren(...lines);
  // The scale: the top of the plot is the largest value shown.
  const scale = svg.parentElement.querySelector('.scale');
  if (scale) scale.textContent = ' (top: ' + fmt.rate(max) + ')';
  svg.dataset.max = String(max);
}

async function overview() {
  const o = await api('/api/overview');
  $('pipeline').textContent = o.pipeline;
  const last = o.series[o.series.length - 1] || {};
  $('in-rate').textContent = fmt.rate(last.in_per_s);
  $('out-rate').textContent = fmt.rate(last.out_per_s);
  $('dlq-rate').textContent = fmt.rate(last.dlq_per_s);
  $('lag').textContent = fmt.int(last.lag);
  $('latency').textContent = fmt.ms(last.p50_ms) + ' / ' + fmt.ms(last.p99_ms);
  plot($('plot-rates'), [
    { color: '#2563eb', values: o.series.map((p) => p.in_per_s) },
    { color: '#16a34a', values: o.series.map((p) => p.out_per_s) },
    { color: '#dc2626', values: o.series.map((p) => p.dlq_per_s) },
  ]);
  plot($('plot-lag'), [{ color: '#7c3aed', values: o.series.map((p) => p.lag) }]);
  plot($('plot-latency'), [{ color: '#ea580c', values: o.series.map((p) => p.p99_ms) }]);
  fill($('hosts').tBodies[0], o.hosts.map((h) => {
    const s = h.status;
    const state = document.createElement('span');
    state.className = h.alive ? 'alive' : 'dead';
    state.textContent = h.alive ? 'running' : 'gone (last seen ' + fmt.ago(h.seen_ms) + ')';
    const row = [
      h.host, state,
      s.partitions.owned.length + ' of ' + s.partitions.count + ': ' + s.partitions.owned.join(', '),
      s.plugin ? s.plugin.name + ' ' + s.plugin.version : 'none',
      fmt.int(s.events_in), fmt.int(s.outputs), fmt.int(s.dead_lettered),
      s.quota ? `${fmt.int(s.quota.rejected)} refused, ${fmt.int(s.quota.evicted)} evicted` : '',
      fmt.rate(h.in_per_s), fmt.int(s.lag), fmt.ms(h.p50_ms) + ' / ' + fmt.ms(h.p99_ms),
      s.last_checkpoint ? s.last_checkpoint.id + ' (' + fmt.ago(s.last_checkpoint.created_ms) + ')' : 'none yet',
    ];
    row.className = h.alive ? 'alive-host' : 'gone';
    return row;
  }));
  const notice = $('notice');
  notice.hidden = !o.problem && o.hosts.length > 0;
  notice.textContent = o.problem || (o.hosts.length ? '' : 'No host of this pipeline has answered yet: is `eddy run` running against this NATS?');
}

async function checkpoints() {
  const c = await api('/api/checkpoints');
  const rows = [];
  for (const h of c.hosts) {
    for (const cp of [...h.checkpoints].reverse()) {
      rows.push([h.host, cp.id, fmt.time(cp.created_ms), fmt.ms(cp.cut_ms), fmt.ms(cp.complete_ms),
        fmt.bytes(cp.total_bytes), fmt.bytes(cp.new_bytes), cp.files, cp.plugin_version]);
    }
  }
  fill($('checkpoints').tBodies[0], rows);
  $('savepoints').textContent = c.savepoints_here.length ? c.savepoints_here.join('\n') : 'none';
  $('jobs').replaceChildren(...c.jobs.slice(-5).reverse().map((j) => {
    const p = document.createElement('p');
    p.className = 'job';
    p.dataset.state = j.state;
    const progress = j.progress ? ` ${j.progress.done}/${j.progress.total} files, ${j.progress.entries} entries` : '';
    const result = j.state === 'done' && j.result ? ': ' + j.result.map((r) => r.savepoint).join(', ') : '';
    p.textContent = `${j.what}: ${j.state}${progress}${result}${j.error ? ': ' + j.error : ''}`;
    return p;
  }));
}

async function deployments() {
  const d = await api('/api/deployments');
  fill($('running').tBodies[0], d.hosts.map((h) => [
    h.host, h.plugin ? h.plugin.name : 'none', h.plugin ? h.plugin.version : '',
    h.probation ? `${h.probation.events} events, ${h.probation.failures} failed (falls back to ${h.probation.previous})` : 'no',
  ]));
  const shadows = d.hosts.filter((h) => h.shadow);
  $('shadow').hidden = shadows.length === 0;
  $('shadow-summary').textContent = shadows.map((h) => {
    const r = h.shadow;
    const stopped = r.stopped ? ` Stopped: ${r.stopped}.` : '';
    return `${h.host}: ${r.version} beside ${r.live_version} since ${fmt.time(r.since_ms)}: ${r.events} events, ${r.events - r.differing_events} the same, ${r.differing_events} differ, ${r.shadow_failures} failed in the shadow.${stopped}`;
  }).join(' ');
  $('shadow-promote').disabled = $('shadow-discard').disabled = role !== 'operator';
  fill($('shadow-subjects').tBodies[0], shadows.flatMap((h) => Object.entries(h.shadow.subjects).map(([subject, c]) =>
    [h.host, subject, c.same, c.different, c.only_live, c.only_shadow])));
  const sent = (m) => m ? m.payload : '(nothing)';
  fill($('shadow-samples').tBodies[0], shadows.flatMap((h) => h.shadow.samples.map((s) =>
    [h.host, s.input.seq, s.input.key, s.subject, sent(s.live), sent(s.shadow)])));
  const rows = [];
  for (const h of d.hosts) {
    for (const dep of h.deployments) {
      let action = '';
      const current = h.plugin && h.plugin.version === dep.version;
      if (!current && (dep.status === 'live' || dep.status === 'superseded') && d.kept.includes(dep.version)) {
        action = document.createElement('button');
        action.textContent = 'Roll back to this';
        action.className = 'act rollback';
        action.disabled = role !== 'operator';
        action.addEventListener('click', () => act($('deploy-result'), 'rolled back: now deploying ',
          () => api('/api/rollback', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ version: dep.version }) }),
          (r) => r.version));
      }
      rows.push({ at: dep.at_ms, cells: [fmt.time(dep.at_ms), h.host, dep.version, dep.status, dep.source, dep.reason || '', action] });
    }
  }
  rows.sort((a, b) => b.at - a.at);
  fill($('deployments').tBodies[0], rows.map((r) => r.cells));
}

let dlqSelected = new Set();

async function dlq() {
  const kind = $('dlq-kind').value;
  const d = await api('/api/dlq?limit=200' + (kind ? '&kind=' + encodeURIComponent(kind) : ''));
  const select = $('dlq-kind');
  const known = new Set([...select.options].map((o) => o.value));
  for (const k of Object.keys(d.kinds)) {
    if (!known.has(k)) select.add(new Option(k, k));
  }
  $('dlq-kinds').textContent = Object.keys(d.kinds).length
    ? 'On ' + d.subject + ': ' + Object.entries(d.kinds).map(([k, n]) => `${n} ${k}`).join(', ')
    : 'No dead letters on ' + d.subject + '.';
  dlqSelected = new Set([...dlqSelected].filter((s) => d.letters.some((l) => l.sequence === s)));
  fill($('dlq').tBodies[0], d.letters.map((l) => {
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.className = 'pick';
    box.dataset.sequence = l.sequence;
    box.checked = dlqSelected.has(l.sequence);
    box.addEventListener('change', () => box.checked ? dlqSelected.add(l.sequence) : dlqSelected.delete(l.sequence));
    const seq = document.createElement('a');
    seq.href = '#dlq';
    seq.textContent = l.sequence;
    seq.addEventListener('click', (e) => { e.preventDefault(); showLetter(l.sequence); });
    return [box, seq, fmt.time(l.stored_ms), l.kind || '?', l.error || '', l.payload];
  }));
}

async function showLetter(sequence) {
  const l = await api('/api/dlq/' + sequence);
  $('dlq-detail').hidden = false;
  $('dlq-detail-seq').textContent = sequence;
  fill($('dlq-headers').tBodies[0], l.headers.map(([n, v]) => [n, v]));
  $('dlq-payload').textContent = l.payload;
}

async function stateView() {
  const d = await api('/api/describe');
  const states = $('state-name');
  if (!states.options.length) {
    for (const s of d.states) states.add(new Option(`${s.name} (${s.kind})`, s.name + '|' + s.kind));
    for (const m of d.broadcast_maps) $('broadcast-name').add(new Option(m, m));
  }
}

$('state-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const [name, kind] = $('state-name').value.split('|');
  const op = kind === 'map' ? 'map' : kind === 'list' ? 'list' : 'get';
  const q = new URLSearchParams({ state: name, key: $('state-key').value, op, freshness: $('state-freshness').value });
  if ($('state-as-of').value.trim()) q.set('as_of', $('state-as-of').value.trim());
  try {
    $('state-answer').textContent = JSON.stringify(await api('/api/state?' + q), null, 2);
  } catch (err) {
    $('state-answer').textContent = 'error: ' + err.message;
  }
});

$('broadcast-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const q = new URLSearchParams({ map: $('broadcast-name').value, limit: '100' });
  if ($('broadcast-after').value) q.set('start_after', $('broadcast-after').value);
  try {
    const b = await api('/api/broadcast?' + q);
    fill($('broadcast').tBodies[0], b.entries.map((e) => [e.key, JSON.stringify(e.value)]));
  } catch (err) {
    fill($('broadcast').tBodies[0], [['error', err.message]]);
  }
});

// Runs an action, showing what it did (or why not) in `out`.
async function act(out, prefix, call, describe) {
  out.textContent = 'working…';
  out.className = '';
  try {
    const r = await call();
    out.textContent = prefix + describe(r);
  } catch (err) {
    out.textContent = err.message;
    out.className = 'error';
  }
  refresh();
}

$('take-checkpoint').addEventListener('click', () => act($('checkpoint-result'), 'checkpoint taken: ',
  () => api('/api/checkpoint', { method: 'POST' }),
  (r) => r.checkpoints.map((c) => `${c.id} (${fmt.bytes(c.total_bytes)}, ${fmt.bytes(c.new_bytes)} new)`).join(', ')));

$('take-savepoint').addEventListener('click', () => act($('checkpoint-result'), 'savepoint started: job ',
  () => api('/api/savepoint', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' }),
  (r) => r.job));

$('deploy').addEventListener('click', () => {
  const file = $('deploy-file').files[0];
  if (!file) { $('deploy-result').textContent = 'choose a .wasm file first'; return; }
  const shadow = $('deploy-shadow').checked;
  act($('deploy-result'), shadow ? 'deployed as shadow, version ' : 'deployed as version ',
    () => api('/api/deploy' + (shadow ? '?shadow=true' : ''), { method: 'POST', headers: { 'Content-Type': 'application/wasm', 'X-Eddy-File-Name': file.name }, body: file }),
    (r) => r.version);
});

for (const action of ['promote', 'discard']) {
  $('shadow-' + action).addEventListener('click', () => act($('shadow-result'), action === 'promote' ? 'promoting ' : 'discarding ',
    () => api('/api/shadow/' + action, { method: 'POST' }),
    (r) => r.version));
}

$('dlq-refresh').addEventListener('click', () => refresh());
$('dlq-kind').addEventListener('change', () => { dlqSelected.clear(); refresh(); });
$('dlq-replay-selected').addEventListener('click', () => {
  if (!dlqSelected.size) { $('dlq-result').textContent = 'select dead letters first'; return; }
  act($('dlq-result'), 'replayed: ',
    () => api('/api/dlq/replay', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sequences: [...dlqSelected] }) }),
    (r) => { dlqSelected.clear(); return `${r.published} published, ${r.duplicates} already there, ${r.skipped.length} skipped`; });
});
$('dlq-replay-kind').addEventListener('click', () => {
  const kind = $('dlq-kind').value;
  if (!kind) { $('dlq-result').textContent = 'choose a kind first'; return; }
  act($('dlq-result'), 'replayed: ',
    () => api('/api/dlq/replay', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ kind }) }),
    (r) => `${r.published} published, ${r.duplicates} already there, ${r.skipped.length} skipped`);
});

const views = { overview, checkpoints, deployments, dlq, state: stateView };
const periods = { overview: 1000, checkpoints: 2000, deployments: 2000, dlq: 5000, state: 0 };

async function refresh() {
  try {
    await views[view]();
    document.body.dataset.updated = String(Date.now());
  } catch (err) {
    const notice = $('notice');
    notice.hidden = false;
    notice.textContent = 'The console cannot be reached or answered an error: ' + err.message;
  }
}

function show(name) {
  view = views[name] ? name : 'overview';
  for (const v of Object.keys(views)) $('view-' + v).hidden = v !== view;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('current', a.dataset.view === view);
  clearTimeout(timer);
  const loop = async () => {
    await refresh();
    if (periods[view]) timer = setTimeout(loop, periods[view]);
  };
  loop();
}

window.addEventListener('hashchange', () => show(location.hash.slice(1)));

async function start() {
  let me;
  try {
    me = await api('/api/whoami');
  } catch (_) {
    return;
  }
  $('signin').hidden = true;
  document.querySelector('main').hidden = false;
  role = me.role;
  $('role').textContent = me.role === 'operator' ? 'operator: may act' : 'read-only';
  document.body.dataset.role = me.role;
  for (const b of document.querySelectorAll('.act, .act input')) b.disabled = me.role !== 'operator';
  for (const b of document.querySelectorAll('button.act')) {
    if (me.role !== 'operator') b.title = 'actions need console.operator_token';
  }
  show(location.hash.slice(1) || 'overview');
}

start();
