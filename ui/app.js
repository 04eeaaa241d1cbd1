// The nixfleet status page. Read-only: it only sends GET requests, to the
// JSON API and to the event stream, with the API key the operator enters
// (kept in this tab's sessionStorage). Everything is built with DOM calls
// and textContent; no string ever becomes markup.
'use strict';

(() => {
  const KEY = 'nixfleet.apiKey';
  const LIFECYCLES = ['pending', 'provisioning', 'active', 'maintenance', 'decommissioned'];
  const STATES = ['ok', 'error', 'unknown'];
  const ROLLOUTS = 20; // rollouts shown, newest first
  const SEGMENTS = 120; // at most this many segments per batch bar

  const $ = (id) => document.getElementById(id);
  const state = { key: '', machines: [], rollouts: new Map(), lastId: '', ctrl: null, timers: new Map() };

  class AuthError extends Error {}

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: 'Bearer ' + state.key }, cache: 'no-store' });
    if (r.status === 401) throw new AuthError((await errorText(r)) || 'API key rejected');
    if (r.status === 404) return null;
    if (!r.ok) throw new Error(path + ': ' + r.status + ' ' + (await errorText(r)));
    return r.json();
  }

  async function errorText(r) {
    try { return (await r.json()).error || ''; } catch { return ''; }
  }

  // --- loading -------------------------------------------------------------

  async function loadMachines() {
    const all = [];
    for (let after = ''; ;) {
      const page = await api('/api/v1/machines?limit=1000' + (after ? '&after=' + encodeURIComponent(after) : ''));
      all.push(...page);
      if (page.length < 1000) break;
      after = page[page.length - 1].machine_id;
    }
    state.machines = all;
  }

  async function loadRollouts() {
    const list = await api('/api/v1/rollouts?limit=' + ROLLOUTS);
    state.rollouts = new Map(list.map((r) => [r.id, r]));
  }

  async function loadRollout(id) {
    const r = await api('/api/v1/rollouts/' + encodeURIComponent(id));
    if (r) state.rollouts.set(id, r); else state.rollouts.delete(id);
  }

  async function loadAll() {
    await Promise.all([loadMachines(), loadRollouts()]);
    render();
  }

  // schedule coalesces refreshes: the events for one thing within delay ms
  // cause one fetch. The machine list waits longest: in a large fleet it is
  // the most expensive read, and reports arrive all the time.
  function schedule(what, fn, delay = 150) {
    if (state.timers.has(what)) return;
    state.timers.set(what, setTimeout(async () => {
      state.timers.delete(what);
      try { await fn(); render(); } catch (e) { failed(e); }
    }, delay));
  }

  // --- the event stream ------------------------------------------------------

  // stream reads GET /api/v1/events with fetch (EventSource cannot send the
  // Authorization header) and reconnects with the last id it saw, so the
  // server replays whatever was missed.
  async function stream() {
    let backoff = 1000;
    let first = true;
    while (state.key) {
      const ctrl = new AbortController();
      state.ctrl = ctrl;
      try {
        const headers = { Authorization: 'Bearer ' + state.key, Accept: 'text/event-stream' };
        if (state.lastId) headers['Last-Event-ID'] = state.lastId;
        const r = await fetch('/api/v1/events', { headers, cache: 'no-store', signal: ctrl.signal });
        if (r.status === 401) throw new AuthError((await errorText(r)) || 'API key rejected');
        if (!r.ok) throw new Error('event stream: ' + r.status + ' ' + (await errorText(r)));
        setConn('live', 'live');
        backoff = 1000;
        if (!first) schedule('all', () => Promise.all([loadMachines(), loadRollouts()]));
        first = false;
        await readEvents(r.body);
      } catch (e) {
        if (e instanceof AuthError) { failed(e); return; }
        if (ctrl.signal.aborted) return;
      }
      if (!state.key) return;
      setConn('retry', 'reconnecting');
      await new Promise((res) => setTimeout(res, backoff));
      backoff = Math.min(backoff * 2, 30000);
    }
  }

  async function readEvents(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, '\n');
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        parseBlock(block);
      }
    }
  }

  // parseBlock handles one SSE message (id, event and data fields; comment
  // lines such as the heartbeat start with ":").
  function parseBlock(block) {
    let id = null, event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let value = c < 0 ? '' : line.slice(c + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') id = value;
      else if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (id !== null) state.lastId = id;
    if (data.length === 0) return;
    let msg;
    try { msg = JSON.parse(data.join('\n')); } catch { return; }
    onEvent(event, msg);
  }

  const machineActions = new Set(['report', 'register', 'update_lifecycle', 'tags.update', 'clear_desired',
    'notify_deploy', 'machine.reverted']);

  function onEvent(kind, msg) {
    if (kind === 'rollout') {
      schedule('r:' + msg.rollout_id, () => loadRollout(msg.rollout_id));
      return;
    }
    if (kind !== 'audit') return;
    const a = msg.action || '';
    if (a.startsWith('rollout.') || a.startsWith('batch.')) {
      const rid = a.startsWith('batch.') ? msg.target.replace(/-b\d+$/, '') : msg.target;
      schedule('r:' + rid, () => loadRollout(rid));
    }
    if (machineActions.has(a)) {
      schedule('machines', loadMachines, 1000);
      // A report may change a machine's health in a running rollout: the
      // executor classifies it just after the report commits.
      for (const r of state.rollouts.values()) {
        if (r.status === 'running' && r.batches.some((b) => b.machine_ids.includes(msg.target))) {
          setTimeout(() => schedule('r:' + r.id, () => loadRollout(r.id)), 1000);
        }
      }
    }
  }

  // --- rendering -------------------------------------------------------------

  function render() {
    renderFleet();
    renderAttention();
    renderRollouts();
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  }

  function countTable(table, keys, counts) {
    table.replaceChildren();
    for (const k of keys) {
      const tr = el('tr');
      tr.dataset.key = k;
      tr.append(el('td', null, k), el('td', 'n', counts[k] || 0));
      table.append(tr);
    }
  }

  function renderFleet() {
    const byL = {}, byS = {};
    for (const m of state.machines) {
      byL[m.lifecycle] = (byL[m.lifecycle] || 0) + 1;
      if (m.lifecycle !== 'decommissioned') byS[m.system_state] = (byS[m.system_state] || 0) + 1;
    }
    const extra = (keys, counts) => keys.concat(Object.keys(counts).filter((k) => !keys.includes(k)).sort());
    countTable($('by-lifecycle'), extra(LIFECYCLES, byL), byL);
    countTable($('by-state'), extra(STATES, byS), byS);
  }

  // attention lists machines with a reason to look at them: from the machine
  // list (a failed last report; stale, drifted or an attention reason when
  // the server provides them) and from the rollouts (unhealthy in a batch).
  function renderAttention() {
    const rows = new Map();
    const add = (id, reason, where) => {
      if (!rows.has(id)) rows.set(id, []);
      rows.get(id).push([reason, where]);
    };
    for (const m of state.machines) {
      if (m.lifecycle === 'decommissioned') continue;
      if (m.attention) add(m.machine_id, m.attention, m.lifecycle);
      else {
        // A server without the attention field (older versions).
        if (m.stale) add(m.machine_id, 'stale: no report for ' + duration(m.seconds_since_last_report), m.lifecycle);
        if (m.drifted) add(m.machine_id, 'drifted: running generation is not the desired one', m.lifecycle);
        if (m.system_state === 'error') add(m.machine_id, 'last report failed', m.lifecycle);
      }
    }
    for (const r of state.rollouts.values()) {
      if (r.status === 'completed' || r.status === 'cancelled') continue;
      for (const b of r.batches) {
        for (const [id, h] of Object.entries(b.machine_health || {})) {
          if (h && typeof h === 'object' && h.unhealthy && !h.unhealthy.startsWith('skipped:')) {
            add(id, h.unhealthy, 'rollout ' + r.id + ' batch ' + b.batch_index);
          }
        }
      }
    }
    const table = $('attention');
    table.replaceChildren();
    for (const id of [...rows.keys()].sort()) {
      for (const [reason, where] of rows.get(id)) {
        const tr = el('tr');
        tr.dataset.machine = id;
        tr.append(el('td', null, id), el('td', 'reason', reason), el('td', 'muted', where));
        table.append(tr);
      }
    }
    $('attention-none').hidden = rows.size > 0;
    $('attention-count').textContent = rows.size ? '(' + rows.size + ')' : '';
  }

  function renderRollouts() {
    const box = $('rollouts');
    box.replaceChildren();
    const list = [...state.rollouts.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1)).slice(0, ROLLOUTS);
    for (const r of list) box.append(rolloutCard(r));
    $('rollouts-none').hidden = list.length > 0;
  }

  function rolloutCard(r) {
    const card = el('div', 'rollout');
    card.dataset.rollout = r.id;
    const head = el('div', 'head');
    const done = r.batches.filter((b) => b.status === 'succeeded').length;
    head.append(el('span', 'id', r.id), el('span', 'status ' + r.status, r.status),
      el('span', 'muted', r.strategy + ' · release ' + r.release_id + ' · ' + done + '/' + r.batches.length +
        ' batches done · by ' + r.created_by));
    card.append(head);
    for (const b of r.batches) card.append(...batchRow(b));
    return card;
  }

  function batchRow(b) {
    const counts = { healthy: 0, unhealthy: 0, pending: 0, skipped: 0 };
    const failures = [];
    for (const id of b.machine_ids) {
      const h = (b.machine_health || {})[id];
      if (h === 'healthy') counts.healthy++;
      else if (h && typeof h === 'object' && h.unhealthy) {
        if (h.unhealthy.startsWith('skipped:')) counts.skipped++;
        else { counts.unhealthy++; failures.push([id, h.unhealthy]); }
      } else counts.pending++;
    }
    const n = b.machine_ids.length;
    const row = el('div', 'batch ' + b.status);
    row.dataset.batch = String(b.batch_index);
    row.dataset.status = b.status;
    row.append(el('span', 'status ' + b.status, 'batch ' + b.batch_index));
    const bar = el('div', 'bar');
    bar.setAttribute('role', 'img');
    bar.setAttribute('aria-label', counts.healthy + ' of ' + n + ' healthy');
    const segs = Math.min(n, SEGMENTS);
    let left = segs;
    for (const cls of ['healthy', 'unhealthy', 'skipped', 'pending']) {
      let k = n === 0 ? 0 : Math.round((counts[cls] * segs) / n);
      if (cls === 'pending') k = left;
      k = Math.min(k, left);
      left -= k;
      for (let i = 0; i < k; i++) bar.append(el('span', cls));
    }
    row.append(bar);
    let label = b.status.replace('_', ' ') + ' · ' + counts.healthy + '/' + n + ' healthy';
    if (counts.unhealthy) label += ' · ' + counts.unhealthy + ' unhealthy';
    if (counts.skipped) label += ' · ' + counts.skipped + ' skipped';
    row.append(el('span', 'label', label));
    const out = [row];
    if (failures.length) {
      const ul = el('ul', 'failures');
      for (const [id, why] of failures) {
        const li = el('li');
        li.append(el('span', null, id + ': '), el('span', 'reason', why));
        ul.append(li);
      }
      out.push(ul);
    }
    return out;
  }

  function duration(s) {
    if (s === null || s === undefined) return 'ever';
    if (s < 120) return s + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    if (s < 172800) return Math.round(s / 3600) + ' h';
    return Math.round(s / 86400) + ' days';
  }

  // --- session ---------------------------------------------------------------

  function setConn(st, text) {
    const c = $('conn');
    c.dataset.state = st;
    c.textContent = text;
  }

  function failed(e) {
    if (e instanceof AuthError) {
      logout(e.message);
      return;
    }
    setConn('retry', 'error: ' + e.message);
  }

  function logout(msg) {
    state.key = '';
    sessionStorage.removeItem(KEY);
    if (state.ctrl) state.ctrl.abort();
    state.lastId = '';
    $('dash').hidden = true;
    $('forget').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = msg || '';
    setConn('off', 'not connected');
    $('key').focus();
  }

  async function start(key) {
    state.key = key;
    $('login-error').textContent = '';
    setConn('retry', 'connecting');
    try {
      await loadAll();
    } catch (e) {
      failed(e);
      if (e instanceof AuthError) return;
    }
    sessionStorage.setItem(KEY, key);
    $('login').hidden = true;
    $('dash').hidden = false;
    $('forget').hidden = false;
    stream();
    if (!state.poller) {
      // Some changes are not events: a machine falling silent, or the
      // executor classifying one machine of a batch (only the batch's verdict
      // is an event). Refresh the running rollouts often and the rest slowly.
      state.poller = setInterval(() => {
        if (state.key) schedule('all', () => Promise.all([loadMachines(), loadRollouts()]));
      }, 30000);
      setInterval(() => {
        if (!state.key) return;
        for (const r of state.rollouts.values()) {
          if (r.status === 'running') schedule('r:' + r.id, () => loadRollout(r.id));
        }
      }, 5000);
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const key = $('key').value.trim();
      $('key').value = '';
      if (key) start(key);
    });
    $('forget').addEventListener('click', () => logout(''));
    const saved = sessionStorage.getItem(KEY);
    if (saved) start(saved); else logout('');
  });
})();
