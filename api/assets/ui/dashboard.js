// Tidemark's dashboard: a client of the GraphQL API like any other. Every refresh is one
// request (DASHBOARD below); the log's live tail is an `events` subscription over WebSocket
// (graphql-transport-ws); admin actions are the API's own mutations, which the server
// refuses to keys without the admin role whatever this page shows.
'use strict';

(() => {
  const KEY_STORAGE = 'tidemark.apiKey';
  const REFRESH_MS = 2000;
  const TAIL_MAX = 50;
  const TAIL_HISTORY = 20;
  const PAGE = 100;

  const DASHBOARD = `query Dashboard {
    whoami { role keyName keyId insecureDev refused }
    logStats { head partitions appendRate rateWindowSeconds }
    projections {
      name version liveVersion status head checkpoint lagEvents lagSeconds eventsPerSecond parked
      partitions { partition checkpoint lagEvents lagSeconds eventsPerSecond updatedAt }
      unownedPartitions { partition unownedSeconds }
      lastBuild { id kind status fraction eventsDone eventsTotal rate etaSeconds startedAt finishedAt error }
    }
    workers {
      id host pid address pool version alive current concurrency desiredWorkers lagEvents
      leases projections heartbeatAt stoppedAt
    }
    scaling { pool liveWorkers desiredWorkers lagEvents }
    schemaSubjects { eventType versions latestVersion effectiveCompatibility effectiveValidation }
  }`;
  const WHOAMI = '{ whoami { role keyName keyId insecureDev refused } }';

  const $ = (id) => document.getElementById(id);
  const endpoint = new URL('graphql', location.href);

  const state = {
    key: sessionStorage.getItem(KEY_STORAGE) || '',
    whoami: null,
    head: null,
    expanded: new Set(),
    timer: null,
    refreshing: null,
    again: false,
    tail: [],
    tailAfter: null,
    socket: null,
    socketRetry: 500,
    categoriesAfter: null,
    streamsCategory: null,
    streamsAfter: null,
    stream: null,
    streamAfter: null,
  };

  // ------------------------------------------------------------------ formatting

  function esc(value) {
    return String(value ?? '')
      .replace(/&/g, '&amp;')
      .replace(/</g, '&lt;')
      .replace(/>/g, '&gt;')
      .replace(/"/g, '&quot;')
      .replace(/'/g, '&#39;');
  }

  const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });

  function int(n) {
    return n === null || n === undefined ? '–' : integer.format(n);
  }

  function rate(n) {
    return n === null || n === undefined ? '–' : decimal.format(n);
  }

  function seconds(s) {
    if (s === null || s === undefined) return '–';
    if (s < 1) return s === 0 ? '0 s' : `${decimal.format(s)} s`;
    if (s < 60) return `${decimal.format(s)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${Math.round(s % 60)} s`;
    const h = Math.floor(m / 60);
    return `${h} h ${m % 60} m`;
  }

  function ago(timestamp) {
    if (!timestamp) return '–';
    return `${seconds(Math.max(0, (Date.now() - Date.parse(timestamp)) / 1000))} ago`;
  }

  function time(timestamp) {
    if (!timestamp) return '–';
    const date = new Date(timestamp);
    return date.toLocaleTimeString('en-GB', { hour12: false }) + '.' + String(date.getMilliseconds()).padStart(3, '0');
  }

  /** Replaces an element's content only when it changed: focus and hover survive refreshes. */
  function setHTML(element, html) {
    if (element.dataset.rendered !== html) {
      element.innerHTML = html;
      element.dataset.rendered = html;
    }
  }

  function setFigure(id, value, text) {
    const element = $(id).querySelector('.value');
    element.textContent = text;
    element.dataset.value = value === null || value === undefined ? '' : String(value);
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  function firstError(body) {
    const error = (body.errors || [])[0];
    if (!error) return null;
    const code = (error.extensions && error.extensions.code) || 'ERROR';
    return new ApiError(code, error.message);
  }

  /** POSTs one GraphQL request; resolves to the body (data and errors). */
  async function post(query, variables) {
    const headers = { 'Content-Type': 'application/json' };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    let response;
    try {
      response = await fetch(endpoint, {
        method: 'POST',
        headers,
        body: JSON.stringify({ query, variables: variables || {} }),
      });
    } catch (cause) {
      throw new ApiError('UNREACHABLE', `the server did not answer (${cause.message})`);
    }
    let body;
    try {
      body = await response.json();
    } catch (cause) {
      throw new ApiError('BAD_RESPONSE', `the server answered ${response.status} without JSON`);
    }
    return body;
  }

  /** POSTs a request and returns its data, or throws its first error. */
  async function gql(query, variables) {
    const body = await post(query, variables);
    const error = firstError(body);
    if (error) throw error;
    return body.data;
  }

  function errorText(error) {
    return error.code ? `${error.code}: ${error.message}` : String(error.message || error);
  }

  // ------------------------------------------------------------------ notices and the key

  function notify(text, kind) {
    const notice = $('notice');
    $('notice-text').textContent = text;
    notice.className = kind || 'info';
    notice.hidden = false;
  }

  function showIdentity(whoami) {
    state.whoami = whoami;
    const badge = $('identity');
    if (!whoami) {
      badge.textContent = 'no key';
      badge.className = 'badge';
      return;
    }
    if (whoami.insecureDev) {
      badge.textContent = 'insecure dev: everything allowed';
      badge.className = 'badge warn';
    } else if (whoami.role) {
      const role = whoami.role.toLowerCase();
      badge.textContent = `${role} key${whoami.keyName ? ` “${whoami.keyName}”` : ''}`;
      badge.className = `badge role-${role}`;
    } else {
      badge.textContent = whoami.refused ? 'key refused' : 'no key';
      badge.className = 'badge bad';
    }
    badge.dataset.role = whoami.role || '';
  }

  function isAdmin() {
    return !!state.whoami && state.whoami.role === 'ADMIN';
  }

  function askForKey(problem) {
    $('key-panel').hidden = false;
    const element = $('key-problem');
    element.textContent = problem || '';
    element.hidden = !problem;
    $('key-input').focus();
  }

  function useKey(key) {
    state.key = key.trim();
    if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key);
    else sessionStorage.removeItem(KEY_STORAGE);
    $('key-input').value = '';
    $('key-panel').hidden = true;
    $('notice').hidden = true;
    restartTail();
    refresh();
    loadCategories(false);
  }

  // ------------------------------------------------------------------ refresh

  /** Refreshes now (or right after the refresh in flight), then every REFRESH_MS. */
  function refresh() {
    if (state.refreshing) {
      state.again = true;
      return state.refreshing;
    }
    clearTimeout(state.timer);
    state.refreshing = refreshOnce().finally(() => {
      state.refreshing = null;
      state.timer = setTimeout(refresh, state.again ? 0 : REFRESH_MS);
      state.again = false;
    });
    return state.refreshing;
  }

  async function refreshOnce() {
    const connection = $('connection');
    const key = state.key;
    let body;
    try {
      body = await post(DASHBOARD);
    } catch (error) {
      connection.textContent = errorText(error);
      connection.className = 'badge bad';
      return;
    }
    // The key changed while this was in flight: its answer is about another key.
    if (key !== state.key) return;
    const error = firstError(body);
    if (error && (!body.data || error.code === 'UNAUTHENTICATED')) {
      connection.textContent = error.code === 'UNAUTHENTICATED' ? 'needs a key' : errorText(error);
      connection.className = 'badge bad';
      if (error.code === 'UNAUTHENTICATED') {
        let whoami = null;
        try {
          whoami = (await gql(WHOAMI)).whoami;
        } catch (ignored) {
          // The reason below is enough.
        }
        if (key !== state.key) return;
        showIdentity(whoami);
        askForKey(whoami && whoami.refused
          ? `The key was refused: ${whoami.refused}`
          : 'This server needs an API key.');
      }
      return;
    }
    connection.textContent = `live · ${time(new Date().toISOString())}`;
    connection.className = 'badge ok';
    const data = body.data;
    showIdentity(data.whoami);
    render(data);
    if (error) notify(errorText(error), 'error');
    if (state.tailAfter === null && data.logStats) {
      state.tailAfter = Math.max(0, data.logStats.head - TAIL_HISTORY);
      follow();
    }
  }

  function render(data) {
    const log = data.logStats;
    state.head = log.head;
    setFigure('fig-head', log.head, int(log.head));
    setFigure('fig-rate', log.appendRate, rate(log.appendRate));
    setFigure('fig-partitions', log.partitions, int(log.partitions));
    const projections = data.projections || [];
    const running = projections.filter((p) => p.status === 'running').length;
    setFigure('fig-projections', running, `${running} / ${projections.length}`);
    const worst = projections.reduce((max, p) => Math.max(max, p.lagSeconds), 0);
    setFigure('fig-lag', worst, seconds(worst));
    const parked = projections.reduce((sum, p) => sum + p.parked, 0);
    setFigure('fig-parked', parked, int(parked));
    $('fig-parked').classList.toggle('alert', parked > 0);
    const workers = data.workers || [];
    const alive = workers.filter((w) => w.alive).length;
    setFigure('fig-workers', alive, `${alive} / ${workers.length}`);
    renderProjections(projections);
    renderWorkers(workers);
    renderPools(data.scaling || []);
    renderSchemas(data.schemaSubjects || []);
  }

  function buildCell(build) {
    if (!build) return '<span class="muted">none</span>';
    const percent = Math.round(build.fraction * 100);
    const kind = build.kind.replace('_', '-');
    let html = `<div class="build build-${esc(build.status)}">`
      + `<span class="build-what">${esc(kind)} · <span class="build-status">${esc(build.status)}</span></span>`
      + `<progress max="1" value="${build.fraction}"></progress>`
      + `<span class="build-figures">${percent}% · ${int(build.eventsDone)} / ${int(build.eventsTotal)}`;
    if (build.status === 'running') {
      html += ` · ${rate(build.rate)}/s · ETA ${build.etaSeconds === null ? '–' : seconds(build.etaSeconds)}`;
    } else if (build.finishedAt) {
      html += ` · ${esc(ago(build.finishedAt))}`;
    }
    html += '</span>';
    if (build.error) html += `<span class="problem">${esc(build.error)}</span>`;
    return html + '</div>';
  }

  function renderProjections(projections) {
    if (projections.length === 0) {
      setHTML($('projections'), '<p class="empty">No projections are registered.</p>');
      return;
    }
    const admin = isAdmin();
    const needsAdmin = admin ? '' : ' disabled title="needs an API key with the admin role"';
    let html = '<table class="grid projections"><thead><tr>'
      + '<th>Projection</th><th>Status</th><th class="num">Checkpoint</th><th class="num">Lag (events)</th>'
      + '<th class="num" title="age of the oldest event not yet applied">Lag</th><th class="num" title="the rate of the lanes&#39; last batches, while recent (10 s); 0 when idle">Events/s</th><th class="num">Parked</th><th>Last build</th><th>Actions</th>'
      + '</tr></thead><tbody>';
    for (const p of projections) {
      const open = state.expanded.has(p.name);
      const version = p.liveVersion !== null && p.liveVersion !== p.version
        ? `v${p.liveVersion} → v${p.version}` : `v${p.version}`;
      const unowned = p.unownedPartitions.length
        ? ` <span class="chip bad" title="no live worker owns these partitions">${p.unownedPartitions.length} unowned</span>` : '';
      const replayDisabled = admin && p.parked === 0 ? ' disabled title="nothing is parked"' : needsAdmin;
      html += `<tr data-projection="${esc(p.name)}">`
        + `<td><button type="button" class="expand" data-expand="${esc(p.name)}" aria-expanded="${open}">${open ? '▾' : '▸'}</button>`
        + ` <strong>${esc(p.name)}</strong> <span class="muted">${esc(version)}</span></td>`
        + `<td><span class="status status-${esc(p.status.replace(' ', '-'))}">${esc(p.status)}</span>${unowned}</td>`
        + `<td class="num checkpoint" data-value="${p.checkpoint}">${int(p.checkpoint)}</td>`
        + `<td class="num lag-events" data-value="${p.lagEvents}">${int(p.lagEvents)}</td>`
        + `<td class="num lag-seconds">${seconds(p.lagSeconds)}</td>`
        + `<td class="num events-per-second">${rate(p.eventsPerSecond)}</td>`
        + `<td class="num parked${p.parked ? ' alert' : ''}" data-value="${p.parked}">${int(p.parked)}</td>`
        + `<td class="last-build">${buildCell(p.lastBuild)}</td>`
        + '<td class="actions">'
        + `<button type="button" class="admin" data-action="rebuild" data-name="${esc(p.name)}"${needsAdmin}>Rebuild</button> `
        + `<button type="button" class="admin" data-action="replay" data-name="${esc(p.name)}" data-parked="${p.parked}"${replayDisabled}>Replay parked</button>`
        + '</td></tr>';
      if (open) {
        html += `<tr class="partitions-row"><td colspan="9"><table class="grid inner"><thead><tr>`
          + '<th class="num">Partition</th><th class="num">Checkpoint</th><th class="num">Lag (events)</th>'
          + '<th class="num">Lag</th><th class="num">Events/s</th><th>Updated</th></tr></thead><tbody>';
        for (const part of p.partitions) {
          html += `<tr data-partition="${part.partition}"><td class="num">${part.partition}</td>`
            + `<td class="num">${int(part.checkpoint)}</td><td class="num">${int(part.lagEvents)}</td>`
            + `<td class="num">${seconds(part.lagSeconds)}</td><td class="num">${rate(part.eventsPerSecond)}</td>`
            + `<td>${esc(ago(part.updatedAt))}</td></tr>`;
        }
        html += '</tbody></table></td></tr>';
      }
    }
    setHTML($('projections'), html + '</tbody></table>');
  }

  function renderWorkers(workers) {
    if (workers.length === 0) {
      setHTML($('workers'), '<p class="empty">No worker is registered (projections run nowhere).</p>');
      return;
    }
    let html = '<table class="grid workers"><thead><tr><th>Worker</th><th>Pool</th><th>State</th>'
      + '<th class="num">Concurrency</th><th class="num">Desired</th><th class="num">Lag</th><th>Leases</th><th>Heartbeat</th>'
      + '</tr></thead><tbody>';
    for (const w of workers) {
      const stateText = w.stoppedAt ? 'stopped' : w.alive ? 'alive' : 'silent';
      const leases = w.leases.length ? leaseChips(w.leases) : '<span class="muted">none</span>';
      html += `<tr data-worker="${esc(w.id)}"><td><code title="${esc(w.id)}">${esc(w.id.slice(0, 8))}</code>`
        + `${w.current ? ' <span class="chip ok">this node</span>' : ''}<div class="muted">${esc(w.host)}:${w.pid}${w.address ? ` · ${esc(w.address)}` : ''}</div></td>`
        + `<td>${esc(w.pool)}</td><td><span class="status status-${stateText}">${stateText}</span></td>`
        + `<td class="num">${int(w.concurrency)}</td><td class="num">${int(w.desiredWorkers)}</td>`
        + `<td class="num">${int(w.lagEvents)}</td><td class="leases">${leases}</td><td>${esc(ago(w.heartbeatAt))}</td></tr>`;
    }
    setHTML($('workers'), html + '</tbody></table>');
  }

  /** `projection#partition` leases as one chip per projection: `balances 0 1 2 3`. */
  function leaseChips(leases) {
    const byProjection = new Map();
    for (const lease of leases) {
      const cut = lease.lastIndexOf('#');
      const projection = cut < 0 ? lease : lease.slice(0, cut);
      const partition = cut < 0 ? '' : lease.slice(cut + 1);
      if (!byProjection.has(projection)) byProjection.set(projection, []);
      byProjection.get(projection).push(partition);
    }
    return [...byProjection].map(([projection, partitions]) =>
      `<span class="chip lease" title="${esc(partitions.map((p) => `${projection}#${p}`).join(', '))}">`
      + `${esc(projection)} <span class="muted">${esc(partitions.join(' '))}</span></span>`).join(' ');
  }

  function renderPools(pools) {
    if (pools.length === 0) {
      setHTML($('pools'), '<p class="empty">No pool has a live worker.</p>');
      return;
    }
    let html = '<table class="grid pools"><thead><tr><th>Pool</th><th class="num">Live</th>'
      + '<th class="num">Desired workers</th><th class="num">Lag</th></tr></thead><tbody>';
    for (const pool of pools) {
      const short = pool.desiredWorkers > pool.liveWorkers;
      html += `<tr data-pool="${esc(pool.pool)}"><td>${esc(pool.pool)}</td><td class="num">${int(pool.liveWorkers)}</td>`
        + `<td class="num${short ? ' alert' : ''}">${int(pool.desiredWorkers)}</td><td class="num">${int(pool.lagEvents)}</td></tr>`;
    }
    setHTML($('pools'), html + '</tbody></table>');
  }

  function renderSchemas(subjects) {
    if (subjects.length === 0) {
      setHTML($('schemas'), '<p class="empty">No event type has a registered schema.</p>');
      return;
    }
    let html = '<table class="grid schemas"><thead><tr><th>Event type</th><th>Versions</th>'
      + '<th>Compatibility</th><th>Validation</th></tr></thead><tbody>';
    for (const s of subjects) {
      html += `<tr data-event-type="${esc(s.eventType)}"><td>${esc(s.eventType)}</td>`
        + `<td>${s.versions.map((v) => `v${v}`).join(', ')}</td>`
        + `<td>${esc(s.effectiveCompatibility.toLowerCase())}</td><td>${esc(s.effectiveValidation.toLowerCase())}</td></tr>`;
    }
    setHTML($('schemas'), html + '</tbody></table>');
  }

  // ------------------------------------------------------------------ admin actions

  let confirmResolve = null;

  function confirmAction(title, text, label) {
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = label;
    $('confirm').hidden = false;
    $('confirm-cancel').focus();
    return new Promise((resolve) => {
      confirmResolve = resolve;
    });
  }

  function closeConfirm(answer) {
    $('confirm').hidden = true;
    if (confirmResolve) confirmResolve(answer);
    confirmResolve = null;
  }

  /** `1 parked event`, `3 parked events`. */
  function events(n) {
    return `${int(n)} parked event${n === 1 ? '' : 's'}`;
  }

  async function projectionAction(button) {
    const name = button.dataset.name;
    const rebuild = button.dataset.action === 'rebuild';
    const confirmed = rebuild
      ? await confirmAction(`Rebuild ${name}?`,
        `${name} is rebuilt in the background from the whole log; the current read model keeps serving until the new one has caught up and is swapped in.`,
        'Rebuild')
      : await confirmAction(`Replay the parked events of ${name}?`,
        `${events(Number(button.dataset.parked))} of ${name} will be applied again (after a fix); a projection stopped on one resumes.`,
        'Replay');
    if (!confirmed) return;
    try {
      if (rebuild) {
        const data = await gql('mutation($name: String!) { rebuildProjection(name: $name) { projection kind schema } }', { name });
        notify(`Rebuild of ${data.rebuildProjection.projection} started; its progress shows under Last build.`, 'ok');
      } else {
        const data = await gql('mutation($name: String!) { replayParked(name: $name) { projection replayed } }', { name });
        notify(`Replayed ${events(data.replayParked.replayed)} of ${data.replayParked.projection}.`, 'ok');
      }
    } catch (error) {
      notify(errorText(error), 'error');
    }
    refresh();
  }

  // ------------------------------------------------------------------ the live tail

  function wsUrl() {
    const url = new URL('graphql', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
  }

  function follow() {
    if (!$('follow').checked || state.socket || state.tailAfter === null) return;
    const socket = new WebSocket(wsUrl(), 'graphql-transport-ws');
    state.socket = socket;
    socket.addEventListener('open', () => {
      const payload = state.key ? { Authorization: `Bearer ${state.key}` } : {};
      socket.send(JSON.stringify({ type: 'connection_init', payload }));
    });
    socket.addEventListener('message', (message) => {
      let msg;
      try {
        msg = JSON.parse(message.data);
      } catch (ignored) {
        return;
      }
      if (msg.type === 'connection_ack') {
        state.socketRetry = 500;
        socket.send(JSON.stringify({
          id: 'tail',
          type: 'subscribe',
          payload: { query: `subscription { events(after: ${Number(state.tailAfter)}) { position streamId type recordedAt } }` },
        }));
      } else if (msg.type === 'ping') {
        socket.send(JSON.stringify({ type: 'pong' }));
      } else if (msg.type === 'next') {
        const error = firstError(msg.payload || {});
        if (error) {
          tailProblem(errorText(error));
          return;
        }
        addToTail(msg.payload.data.events);
      } else if (msg.type === 'error') {
        tailProblem(errorText(firstError({ errors: msg.payload }) || new ApiError('ERROR', 'subscription refused')));
      }
    });
    socket.addEventListener('close', () => {
      if (state.socket !== socket) return;
      state.socket = null;
      // Resume after the last event seen: nothing is missed, nothing repeated.
      setTimeout(follow, state.socketRetry);
      state.socketRetry = Math.min(state.socketRetry * 2, 10000);
    });
  }

  function stopFollowing() {
    const socket = state.socket;
    state.socket = null;
    if (socket) socket.close();
  }

  function restartTail() {
    stopFollowing();
    state.tail = [];
    state.tailAfter = null;
    renderTail();
  }

  function tailProblem(text) {
    setHTML($('tail'), `<p class="problem">${esc(text)}</p>`);
  }

  function addToTail(event) {
    state.tailAfter = Math.max(state.tailAfter || 0, event.position);
    state.tail.unshift(event);
    if (state.tail.length > TAIL_MAX) state.tail.length = TAIL_MAX;
    renderTail();
  }

  function renderTail() {
    if (state.tail.length === 0) {
      setHTML($('tail'), '<p class="empty">Waiting for the first events…</p>');
      return;
    }
    let html = '<table class="grid tail-events"><thead><tr><th class="num">Position</th><th>Recorded</th>'
      + '<th>Stream</th><th>Type</th></tr></thead><tbody>';
    for (const e of state.tail) {
      html += `<tr data-position="${e.position}"><td class="num">${int(e.position)}</td><td>${esc(time(e.recordedAt))}</td>`
        + `<td><a href="#" data-stream="${esc(e.streamId)}">${esc(e.streamId)}</a></td><td>${esc(e.type)}</td></tr>`;
    }
    setHTML($('tail'), html + '</tbody></table>');
  }

  // ------------------------------------------------------------------ the stream browser

  async function loadCategories(more) {
    const list = $('categories');
    if (!more) {
      state.categoriesAfter = null;
      list.innerHTML = '';
    }
    try {
      const data = await gql(`query($after: String) { categories(after: $after, first: ${PAGE}) { categories endCursor hasNextPage } }`,
        { after: state.categoriesAfter });
      const page = data.categories;
      for (const category of page.categories) {
        const item = document.createElement('li');
        item.innerHTML = `<button type="button" class="pick" data-category="${esc(category)}">${esc(category)}</button>`;
        list.appendChild(item);
      }
      if (!more && page.categories.length === 0) list.innerHTML = '<li class="empty">The log is empty.</li>';
      state.categoriesAfter = page.endCursor;
      $('categories-more').hidden = !page.hasNextPage;
    } catch (error) {
      list.innerHTML = `<li class="problem">${esc(errorText(error))}</li>`;
    }
  }

  async function loadStreams(category, more) {
    const list = $('streams');
    if (!more) {
      state.streamsCategory = category;
      state.streamsAfter = null;
      list.innerHTML = '';
      $('streams-category').textContent = `of ${category}`;
      for (const button of document.querySelectorAll('#categories .pick')) {
        button.classList.toggle('selected', button.dataset.category === category);
      }
    }
    try {
      const data = await gql(`query($category: String, $after: String) { streams(category: $category, after: $after, first: ${PAGE}) { streams { streamId events updatedAt } endCursor hasNextPage } }`,
        { category: state.streamsCategory, after: state.streamsAfter });
      const page = data.streams;
      for (const stream of page.streams) {
        const item = document.createElement('li');
        item.innerHTML = `<button type="button" class="pick" data-stream="${esc(stream.streamId)}">${esc(stream.streamId)}`
          + ` <span class="muted">${int(stream.events)} ev</span></button>`;
        list.appendChild(item);
      }
      state.streamsAfter = page.endCursor;
      $('streams-more').hidden = !page.hasNextPage;
    } catch (error) {
      list.innerHTML = `<li class="problem">${esc(errorText(error))}</li>`;
    }
  }

  async function readStream(id, more) {
    const view = $('stream-events');
    if (!more) {
      state.stream = id;
      state.streamAfter = null;
      $('stream-input').value = id;
      view.innerHTML = '<p class="empty">Reading…</p>';
      for (const button of document.querySelectorAll('#streams .pick')) {
        button.classList.toggle('selected', button.dataset.stream === id);
      }
    }
    try {
      // Numbers are written into the query rather than passed as variables, so the page
      // does not depend on how the schema types cursors (Int or Int64).
      const after = state.streamAfter === null ? '' : `, after: ${Number(state.streamAfter)}`;
      const data = await gql(`query($id: String!) {
          stream(id: $id, first: ${PAGE}${after}) {
            streamId version
            events { position streamVersion type schemaVersion recordedAt data metadata }
            pageInfo { endCursor hasNextPage }
          } }`, { id });
      const page = data.stream;
      if (!more) {
        view.innerHTML = page.events.length === 0
          ? `<p class="empty">${esc(id)} has no events.</p>`
          : `<p class="stream-head"><strong>${esc(page.streamId)}</strong> · version ${int(page.version)}</p>`;
      }
      for (const e of page.events) {
        const item = document.createElement('div');
        item.className = 'event';
        item.dataset.version = e.streamVersion;
        item.innerHTML = `<div class="event-head"><span class="chip">v${e.streamVersion}</span> <strong>${esc(e.type)}</strong>`
          + `${e.schemaVersion !== 1 ? ` <span class="muted">schema v${e.schemaVersion}</span>` : ''}`
          + ` <span class="muted">#${int(e.position)} · ${esc(new Date(e.recordedAt).toISOString())}</span></div>`
          + `<pre class="data">${esc(JSON.stringify(e.data, null, 2))}</pre>`
          + (Object.keys(e.metadata || {}).length ? `<pre class="metadata">${esc(JSON.stringify(e.metadata))}</pre>` : '');
        view.appendChild(item);
      }
      state.streamAfter = page.pageInfo.endCursor;
      $('stream-more').hidden = !page.pageInfo.hasNextPage;
    } catch (error) {
      view.innerHTML = `<p class="problem">${esc(errorText(error))}</p>`;
      $('stream-more').hidden = true;
    }
  }

  // ------------------------------------------------------------------ wiring

  $('key-button').addEventListener('click', () => {
    const panel = $('key-panel');
    panel.hidden = !panel.hidden;
    if (!panel.hidden) $('key-input').focus();
  });
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    useKey($('key-input').value);
  });
  $('key-forget').addEventListener('click', () => useKey(''));
  $('notice-close').addEventListener('click', () => {
    $('notice').hidden = true;
  });
  $('confirm-ok').addEventListener('click', () => closeConfirm(true));
  $('confirm-cancel').addEventListener('click', () => closeConfirm(false));
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !$('confirm').hidden) closeConfirm(false);
  });
  $('projections').addEventListener('click', (event) => {
    const expand = event.target.closest('[data-expand]');
    if (expand) {
      const name = expand.dataset.expand;
      if (state.expanded.has(name)) state.expanded.delete(name);
      else state.expanded.add(name);
      refresh();
      return;
    }
    const button = event.target.closest('button[data-action]');
    // A disabled button sends no click; one enabled by hand still reaches the server,
    // which decides.
    if (button) projectionAction(button);
  });
  $('follow').addEventListener('change', () => {
    if ($('follow').checked) follow();
    else stopFollowing();
  });
  $('tail').addEventListener('click', (event) => {
    const link = event.target.closest('[data-stream]');
    if (!link) return;
    event.preventDefault();
    readStream(link.dataset.stream, false);
    $('stream-form').scrollIntoView({ behavior: 'smooth', block: 'start' });
  });
  $('categories').addEventListener('click', (event) => {
    const button = event.target.closest('[data-category]');
    if (button) loadStreams(button.dataset.category, false);
  });
  $('categories-refresh').addEventListener('click', () => loadCategories(false));
  $('categories-more').addEventListener('click', () => loadCategories(true));
  $('streams').addEventListener('click', (event) => {
    const button = event.target.closest('[data-stream]');
    if (button) readStream(button.dataset.stream, false);
  });
  $('streams-more').addEventListener('click', () => loadStreams(state.streamsCategory, true));
  $('stream-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const id = $('stream-input').value.trim();
    if (id) readStream(id, false);
  });
  $('stream-more').addEventListener('click', () => readStream(state.stream, true));

  // For tests and the curious: the page's state and an immediate refresh.
  window.tidemarkDashboard = { state, refresh };

  refresh();
  loadCategories(false);
})();
