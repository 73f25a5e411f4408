// The inspector page: the last exchanges from /_proxy/requests, new ones from /_proxy/events,
// the proxy's state from /_proxy/status. Everything that came from a caller or from UEM is
// inserted as text (textContent, attributes of known names), never parsed as HTML.
'use strict';

(() => {
  const MAX_ROWS = 5000;
  const SVG = 'http://www.w3.org/2000/svg';
  const CREDENTIALS = ['authorization', 'proxy-authorization', 'cookie', 'set-cookie', 'aw-tenant-code'];
  // Headers that curl sets itself, or that describe one connection.
  const NOT_COPIED = ['host', 'content-length', 'connection', 'transfer-encoding', 'keep-alive', 'te', 'upgrade', 'x-request-id'];

  let entries = []; // newest first
  let selected = null;
  let tokenLeft = null; // seconds, at tokenAt
  let tokenAt = 0;

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function statusClass(status) {
    return 's' + Math.min(5, Math.max(1, Math.floor(status / 100)));
  }

  function clock(time) {
    const date = new Date(time);
    return isNaN(date) ? '' : date.toLocaleTimeString([], { hour12: false }) + '.' + String(date.getMilliseconds()).padStart(3, '0');
  }

  function target(entry) {
    return entry.query === null || entry.query === undefined ? entry.path : entry.path + '?' + entry.query;
  }

  // --- filters --------------------------------------------------------------------------------

  function matches(entry) {
    const status = $('f-status').value;
    if (status && String(Math.floor(entry.status / 100)) !== status) return false;
    const method = $('f-method').value;
    if (method && entry.method !== method) return false;
    const text = $('f-text').value.trim().toLowerCase();
    if (!text) return true;
    const haystack = [
      entry.method, target(entry), String(entry.status), entry.request_id, entry.caller, entry.tenant,
      entry.permission, entry.activity_id, entry.hint,
      ...entry.request_headers.flat(), ...entry.response_headers.flat(),
      entry.request_body && entry.request_body.text, entry.response_body && entry.response_body.text,
    ];
    return haystack.some((part) => typeof part === 'string' && part.toLowerCase().includes(text));
  }

  // --- the table ------------------------------------------------------------------------------

  function row(entry) {
    const tr = el('tr');
    tr.dataset.seq = String(entry.seq);
    if (selected && selected.seq === entry.seq) tr.classList.add('selected');
    tr.append(
      el('td', 'num', clock(entry.time)),
      el('td', 'method', entry.method),
      el('td', 'path', target(entry)),
      el('td', 'status ' + statusClass(entry.status), entry.status),
      el('td', 'num', Math.round(entry.total_ms)),
      el('td', 'tenant', entry.tenant || ''),
      el('td', 'caller', entry.caller || ''),
    );
    tr.addEventListener('click', () => show(entry));
    return tr;
  }

  function render() {
    const shown = entries.filter(matches);
    $('rows').replaceChildren(...shown.map(row));
    $('empty').hidden = entries.length > 0;
    $('count').textContent = shown.length === entries.length ? entries.length + ' exchanges' : shown.length + ' of ' + entries.length;
  }

  function add(list) {
    const known = new Set(entries.map((e) => e.seq));
    const fresh = list.filter((e) => !known.has(e.seq));
    if (fresh.length === 0) return;
    entries = entries.concat(fresh).sort((a, b) => b.seq - a.seq).slice(0, MAX_ROWS);
    render();
  }

  // --- the detail pane ------------------------------------------------------------------------

  function headerTable(headers) {
    const table = el('table', 'headers');
    for (const [name, value] of headers) {
      const tr = el('tr');
      tr.append(el('td', null, name), el('td', null, value));
      table.append(tr);
    }
    return table;
  }

  function bodyBlock(kept) {
    const block = el('div');
    if (!kept) {
      block.append(el('p', 'note', 'not kept (UEM_PROXY_INSPECT=bodies keeps the first 64 KiB)'));
      return block;
    }
    if (kept.text === null) {
      block.append(el('p', 'note', kept.kept + ' bytes, not text'));
      return block;
    }
    let text = kept.text;
    if (!kept.truncated) {
      try {
        text = JSON.stringify(JSON.parse(text), null, 2);
      } catch (_) { /* not JSON: shown as it came */ }
    }
    if (text === '') block.append(el('p', 'note', 'empty'));
    else block.append(el('pre', 'body', text));
    if (kept.truncated) block.append(el('p', 'note', 'the first ' + kept.kept + ' bytes of a longer body'));
    return block;
  }

  function quote(word) {
    return "'" + String(word).replace(/'/g, "'\\''") + "'";
  }

  // The request again, against this proxy, without any credential: the proxy adds its own.
  // Every word single-quoted; `-g`: brackets and braces in the URL are not curl's globs (one
  // request, as sent); `--data-raw`: a body that starts with `@` is not a file to read.
  function curl(entry) {
    const parts = ['curl', '-sS', '-g'];
    if (entry.method !== 'GET') parts.push('-X', quote(entry.method));
    parts.push(quote(location.origin + target(entry)));
    for (const [name, value] of entry.request_headers) {
      const lower = name.toLowerCase();
      if (CREDENTIALS.includes(lower) || NOT_COPIED.includes(lower) || value === '***') continue;
      parts.push('-H', quote(name + ': ' + value));
    }
    const body = entry.request_body;
    if (body && body.text !== null && !body.truncated && body.text !== '') parts.push('--data-raw', quote(body.text));
    else if (entry.bytes_in > 0) parts.push('--data-binary', '@body');
    return parts.join(' ');
  }

  function fact(list, name, value) {
    if (value === null || value === undefined || value === '') return;
    list.append(el('dt', null, name), el('dd', null, value));
  }

  function show(entry) {
    selected = entry;
    for (const tr of $('rows').children) tr.classList.toggle('selected', tr.dataset.seq === String(entry.seq));
    const pane = $('detail');
    pane.hidden = false;
    const title = el('h2');
    title.append(el('span', null, entry.method + ' ' + target(entry) + ' → '), el('span', 'status ' + statusClass(entry.status), entry.status));
    const nodes = [title];
    if (entry.hint) nodes.push(el('p', 'hint', entry.hint));
    const facts = el('dl');
    fact(facts, 'time', entry.time);
    fact(facts, 'request id', entry.request_id);
    fact(facts, 'permission', entry.permission || 'none the catalogue maps');
    fact(facts, 'activityId', entry.activity_id);
    fact(facts, 'upstream', entry.upstream_ms === null ? 'not reached' : entry.upstream_ms + ' ms to the response headers');
    fact(facts, 'total', entry.total_ms + ' ms to the last byte');
    fact(facts, 'bytes', entry.bytes_in + ' in, ' + entry.bytes_out + ' out' + (entry.complete ? '' : ' (answer incomplete)'));
    fact(facts, 'tenant', entry.tenant);
    fact(facts, 'caller', entry.caller);
    nodes.push(facts);
    nodes.push(el('h3', null, 'request headers'), headerTable(entry.request_headers));
    if (entry.bytes_in > 0 || entry.request_body) nodes.push(el('h3', null, 'request body'), bodyBlock(entry.request_body));
    nodes.push(el('h3', null, 'response headers'), headerTable(entry.response_headers));
    nodes.push(el('h3', null, 'response body'), bodyBlock(entry.response_body));
    const command = curl(entry);
    const copy = el('button', null, 'copy as curl');
    copy.type = 'button';
    copy.addEventListener('click', () => {
      if (navigator.clipboard) navigator.clipboard.writeText(command).then(() => { copy.textContent = 'copied'; }, () => {});
    });
    nodes.push(el('h3', null, 'curl (no credentials: the proxy adds them)'), el('pre', 'curl', command), copy);
    pane.replaceChildren(...nodes);
  }

  // --- the header strip -----------------------------------------------------------------------

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const rest = String(s % 60).padStart(2, '0');
    return h > 0 ? h + ':' + String(m).padStart(2, '0') + ':' + rest : m + ':' + rest;
  }

  function tick() {
    const token = $('token');
    if (tokenLeft === null) return;
    const left = tokenLeft - (Date.now() - tokenAt) / 1000;
    token.textContent = left > 0 ? 'valid for ' + duration(left) : 'expired';
    token.className = left > 300 ? '' : left > 0 ? 'expiring' : 'none';
  }

  function sparkline(minutes) {
    const svg = $('sparkline');
    const width = 150;
    const height = 28;
    const most = Math.max(1, ...minutes.map((m) => m.requests));
    const step = width / Math.max(1, minutes.length);
    const bars = [];
    minutes.forEach((minute, i) => {
      for (const [count, cls] of [[minute.requests, 'req'], [minute.errors, 'err']]) {
        if (count === 0) continue;
        const rect = document.createElementNS(SVG, 'rect');
        const h = Math.max(1, Math.round((count / most) * (height - 2)));
        rect.setAttribute('class', cls);
        rect.setAttribute('data-count', String(count));
        rect.setAttribute('x', String(i * step + 1));
        rect.setAttribute('y', String(height - h));
        rect.setAttribute('width', String(Math.max(1, step - 2)));
        rect.setAttribute('height', String(h));
        const title = document.createElementNS(SVG, 'title');
        title.textContent = new Date(minute.start * 1000).toLocaleTimeString([], { hour12: false }) + ': ' + minute.requests + ' requests, ' + minute.errors + ' errors';
        rect.append(title);
        bars.push(rect);
      }
    });
    svg.replaceChildren(...bars);
    const last = minutes[minutes.length - 1] || { requests: 0, errors: 0 };
    $('spark-text').textContent = last.requests + '/min, ' + last.errors + ' errors';
  }

  function strip(status) {
    const token = status.token || {};
    const current = token.current;
    if (current) {
      tokenLeft = current.usable ? current.usable_for_s : 0;
      tokenAt = Date.now();
      $('generation').textContent = current.generation;
    } else {
      tokenLeft = null;
      $('token').textContent = 'none yet';
      $('token').className = 'none';
      $('generation').textContent = '–';
    }
    tick();
    const error = token.last_error;
    $('token-error').textContent = error ? error.error + ' (' + error.at + ')' : 'none';
    $('token-error').className = error && token.consecutive_failures > 0 ? 'bad' : '';
    const pacer = status.pacer || {};
    const limits = [];
    if (pacer.max_concurrent) limits.push(pacer.max_concurrent + ' at once');
    if (pacer.rate_per_s) limits.push(pacer.rate_per_s + '/s');
    const held = pacer.held_after_429_s > 0 ? ', held ' + pacer.held_after_429_s.toFixed(1) + ' s after a 429' : '';
    $('pacer').textContent = (limits.length ? limits.join(', ') : 'no limits') + ', ' + (pacer.waiting || 0) + ' waiting' + held;
    const inspector = status.inspector || {};
    $('mode').textContent = inspector.mode === 'off' ? 'nothing (UEM_PROXY_INSPECT=off)' : inspector.mode + ', last ' + inspector.entries;
    sparkline(inspector.per_minute || []);
  }

  async function json(path) {
    const response = await fetch(path, { cache: 'no-store' });
    if (!response.ok) throw new Error(path + ': ' + response.status);
    return response.json();
  }

  async function refreshStatus() {
    try {
      strip(await json('/_proxy/status'));
    } catch (_) {
      $('token').textContent = 'proxy unreachable';
      $('token').className = 'none';
    }
  }

  // The strip follows new exchanges closely, at most a few times a second.
  let statusSoon = null;
  function refreshSoon() {
    if (statusSoon === null) statusSoon = setTimeout(() => { statusSoon = null; refreshStatus(); }, 300);
  }

  function listen() {
    const events = new EventSource('/_proxy/events');
    events.addEventListener('request', (event) => {
      add([JSON.parse(event.data)]);
      refreshSoon();
    });
    // On every (re)connection: whatever finished while the page was not listening.
    events.addEventListener('open', () => json('/_proxy/requests').then(add, () => {}));
  }

  document.addEventListener('DOMContentLoaded', () => {
    for (const id of ['f-status', 'f-method', 'f-text']) $(id).addEventListener('input', render);
    $('clear').addEventListener('click', () => {
      entries = [];
      selected = null;
      $('detail').hidden = true;
      render();
    });
    render();
    listen();
    refreshStatus();
    setInterval(refreshStatus, 5000);
    setInterval(tick, 1000);
  });
})();
