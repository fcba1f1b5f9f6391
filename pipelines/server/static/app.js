// The mmrag web page: search by text, image or audio clip, ask with a streamed answer, store status.
// Plain DOM code, no framework. Every text from the store is set with textContent or as an
// attribute value, never parsed as HTML. The API key (when the server needs one) lives in
// sessionStorage and travels in the Authorization header; files are then loaded through links
// that POST /links signed for the key (an <img>, <video> or new tab cannot send the header).
'use strict';

(() => {
  const KEY_STORE = 'mmrag.api-key';
  const DEFAULT_K = 20;
  const RUN_LABELS = {text: 'text space (MiniLM)', bm25: 'BM25 keywords', clip_text: 'CLIP text→image',
                      clip_image: 'CLIP image→image'};
  const STOP = new Set(('a an and are as at be by do does did for from how in is it of on or the this that to ' +
                        'was were what when where which who why with about').split(' '));
  const $ = (id) => document.getElementById(id);
  const state = {media: null, previewUrl: null, toSign: [], searchSeq: 0, askSeq: 0, askAbort: null,
                 pending: new Map(), jobTimer: null};

  // ---- DOM helpers ----------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'text') node.textContent = String(value);
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function say(node, text, kind) {
    node.textContent = text || '';
    node.className = node.className.replace(/\s*\b(error|busy)\b/g, '') + (kind ? ` ${kind}` : '');
  }

  // Only same-origin paths are used as links: the API hands out paths under this server.
  function sameOrigin(url) {
    if (typeof url !== 'string' || !url) return null;
    const parsed = new URL(url, document.baseURI);
    return parsed.origin === location.origin ? parsed.href : null;
  }

  const clock = (s) => {
    const t = Math.max(0, Math.floor(Number(s) || 0));
    const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
    const mm = String(m).padStart(2, '0'), ss = String(sec).padStart(2, '0');
    return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
  };

  // ---- the API --------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body, retryAfter, sentKey) {
      super((body && body.error) || `the server answered ${status}`);
      this.status = status;
      this.type = (body && body.type) || '';
      this.retryAfter = retryAfter;
      this.sentKey = sentKey;  // the key the refused call carried ('' for none)
    }
  }

  const apiKey = () => sessionStorage.getItem(KEY_STORE) || '';

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = apiKey();
    if (key) headers.set('Authorization', `Bearer ${key}`);
    const resp = await fetch(new URL(path, document.baseURI), {...options, headers, cache: 'no-store'});
    if (!resp.ok) {
      let body = null;
      try { body = await resp.json(); } catch (_) { body = null; }
      throw new ApiError(resp.status, body, resp.headers.get('Retry-After'), key);
    }
    return resp;
  }

  // What to tell the user about a failed call; a 401 opens the key prompt and retries `retry` after it.
  function explain(err, retry, name) {
    if (!(err instanceof ApiError)) return `Cannot reach the server (${err.message}).`;
    if (err.status === 401) {
      askForKey(err, retry, name);
      return 'An API key is needed.';
    }
    if (err.status === 403) return `Not allowed with this key: ${err.message}`;
    if (err.status === 429 || err.status === 503) {
      return `${err.message}${err.retryAfter ? ` (try again in ${err.retryAfter} s)` : ''}`;
    }
    return err.message;
  }

  function askForKey(err, retry, name) {
    if (retry) state.pending.set(name, retry);
    const dialog = $('key-dialog');
    const wrong = Boolean(err.sentKey);
    if (wrong && apiKey() === err.sentKey) sessionStorage.removeItem(KEY_STORE);
    if (wrong || !dialog.open) {
      say($('key-message'), wrong
        ? `The key was not accepted: ${err.message}. Check it and enter it again.`
        : 'This server needs an API key; its administrator makes one with “mmrag keys create”.',
      wrong ? 'error' : '');
    }
    if (!dialog.open) dialog.showModal();
    $('api-key').focus();
  }

  function useKey(event) {
    event.preventDefault();
    const key = $('api-key').value.trim();
    if (!key) {
      say($('key-message'), 'Enter the key first.', 'error');
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    $('api-key').value = '';
    $('key-dialog').close();
    const retries = [...state.pending.values()];
    state.pending.clear();
    for (const retry of retries) retry();
  }

  // A file of the store as a URL the browser can load: the path itself without a key, or the path
  // signed for the key by POST /links, which the browser then streams with Range requests.
  async function fileUrl(url) {
    if (!apiKey()) return url;
    const parsed = new URL(url, document.baseURI);
    const signed = await signLink(parsed.pathname + parsed.search);
    return parsed.hash ? `${signed}${parsed.hash}` : signed;
  }

  // Links asked for together (the thumbnails of one result list) are signed in one request.
  function signLink(path) {
    return new Promise((resolve, reject) => {
      state.toSign.push({path, resolve, reject});
      if (state.toSign.length === 1) setTimeout(signWaiting, 0);
    });
  }

  async function signWaiting() {
    const batch = state.toSign.splice(0, 100);
    if (state.toSign.length) setTimeout(signWaiting, 0);
    try {
      const resp = await api('links', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                       body: JSON.stringify({urls: batch.map((b) => b.path)})});
      const signed = (await resp.json()).urls;
      batch.forEach((b, i) => b.resolve(signed[i]));
    } catch (err) {
      batch.forEach((b) => b.reject(err));
    }
  }

  // ---- the query in the URL -------------------------------------------------------------------

  function readForm() {
    const k = Number.parseInt($('k').value, 10);
    return {
      q: $('q').value.trim(),
      k: Number.isFinite(k) && k >= 1 ? Math.min(k, 1000) : DEFAULT_K,
      modalities: [...document.querySelectorAll('input[name="modality"]:checked')].map((box) => box.value),
      source: $('source').value.trim(),
    };
  }

  function formFromUrl() {
    const params = new URLSearchParams(location.search);
    $('q').value = params.get('q') || '';
    $('k').value = params.get('k') || String(DEFAULT_K);
    $('source').value = params.get('source') || '';
    const wanted = new Set(params.getAll('modality'));
    for (const box of document.querySelectorAll('input[name="modality"]')) box.checked = wanted.has(box.value);
    return params.get('q') || '';
  }

  function urlOf(query) {
    const params = new URLSearchParams();
    if (query.q) params.set('q', query.q);
    if (query.k !== DEFAULT_K) params.set('k', String(query.k));
    for (const m of query.modalities) params.append('modality', m);
    if (query.source) params.set('source', query.source);
    const text = params.toString();
    return text ? `?${text}` : location.pathname;
  }

  // ---- search ---------------------------------------------------------------------------------

  async function search({push = false} = {}) {
    const query = readForm();
    const status = $('search-status');
    if (!query.q && !state.media) {
      say(status, 'Type some words, or choose an image or an audio clip.', 'error');
      return;
    }
    if (push && urlOf(query) !== location.pathname + location.search) history.pushState(null, '', urlOf(query));
    const seq = ++state.searchSeq;
    say(status, state.media && state.media.kind === 'audio' ? 'Listening to the clip and searching…' : 'Searching…',
        'busy');
    $('search-button').disabled = true;
    try {
      const data = await (await searchRequest(query)).json();
      if (seq !== state.searchSeq) return;
      showResults(data, query);
    } catch (err) {
      if (seq !== state.searchSeq) return;
      say(status, explain(err, () => search(), 'search'), 'error');
    } finally {
      if (seq === state.searchSeq) $('search-button').disabled = false;
    }
  }

  function searchRequest(query) {
    if (!state.media) {
      const body = {text: query.q, k: query.k};
      if (query.modalities.length) body.modalities = query.modalities;
      if (query.source) body.where = {source: query.source};
      return api('search', {method: 'POST', headers: {'Content-Type': 'application/json'},
                            body: JSON.stringify(body)});
    }
    const form = new FormData();
    form.append(state.media.kind, state.media.file, state.media.file.name || `query.${state.media.kind}`);
    if (query.q) form.append('text', query.q);
    form.append('k', String(query.k));
    for (const m of query.modalities) form.append('modality', m);
    if (query.source) form.append('source', query.source);
    return api(`search/${state.media.kind}`, {method: 'POST', body: form});
  }

  function showResults(data, query) {
    const hits = Array.isArray(data.hits) ? data.hits : [];
    const heard = data.query && data.query.audio ? data.query.text : '';
    const terms = termsOf(heard || query.q);
    const list = $('results');
    list.replaceChildren(...hits.map((hit, i) => card(hit, {rank: i + 1, terms})));
    let text = hits.length ? `${hits.length} result${hits.length === 1 ? '' : 's'}` : 'Nothing found.';
    if (heard) text += ` — heard: “${heard}”`;
    say($('search-status'), text);
  }

  // ---- result and evidence cards --------------------------------------------------------------

  function termsOf(text) {
    const words = (text || '').toLowerCase().match(/[\p{L}\p{N}]+/gu) || [];
    return [...new Set(words.filter((w) => w.length > 1 && !STOP.has(w)))];
  }

  function highlighted(text, terms) {
    const out = document.createDocumentFragment();
    if (!terms.length) {
      out.append(text);
      return out;
    }
    const escaped = terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    // whole words, with a plural or verb ending: "document" marks "documents", not "documentary"
    const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(?:${escaped.join('|')})(?:s|es|ed|ing)?(?![\\p{L}\\p{N}])`,
                               'giu');
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      out.append(text.slice(last, match.index), el('mark', {text: match[0]}));
      last = match.index + match[0].length;
    }
    out.append(text.slice(last));
    return out;
  }

  // About `size` characters of `text`, around the first query term it contains.
  function snippet(text, terms, size = 320) {
    const flat = text.replace(/\s+/g, ' ').trim();
    if (flat.length <= size) return flat;
    const lower = flat.toLowerCase();
    const at = Math.min(...terms.map((t) => lower.indexOf(t)).filter((i) => i >= 0), flat.length);
    let start = at === flat.length ? 0 : Math.max(0, at - size / 3);
    if (start > 0) start = flat.indexOf(' ', start) + 1 || start;
    const end = Math.min(flat.length, start + size);
    return `${start > 0 ? '…' : ''}${flat.slice(start, end).trim()}${end < flat.length ? '…' : ''}`;
  }

  function locatorOf(hit) {
    const loc = hit.locator || {};
    if (loc.page !== undefined && loc.page !== null) return {what: 'page', page: loc.page};
    if (loc.t_start !== undefined && loc.t_start !== null) return {what: 'span', start: loc.t_start};
    if (loc.t !== undefined && loc.t !== null) return {what: 'at', start: loc.t};
    return {what: 'file'};
  }

  function card(hit, {rank, n, terms}) {
    const citation = String(hit.citation || hit.source_name || 'evidence');
    const item = el('li', {class: `card modality-${hit.modality}`, id: n ? `ev-${n}` : null, tabindex: '-1',
                           'data-item': hit.item_id, title: scoreSummary(hit)});
    const label = n ? `[${n}]` : `${rank}.`;
    item.append(el('div', {class: 'card-head'},
      el('span', {class: 'rank', text: label}),
      el('span', {class: 'badge', text: hit.kind ? `${hit.modality} · ${hit.kind}` : hit.modality}),
      el('span', {class: 'citation', text: citation})));
    if (hit.thumbnail_url && sameOrigin(hit.thumbnail_url)) item.append(thumbnail(hit, citation));
    if (hit.text) item.append(el('p', {class: 'snippet'}, highlighted(snippet(String(hit.text), terms), terms)));
    if (Array.isArray(hit.copies) && hit.copies.length) {
      item.append(el('p', {class: 'copies', text: `Also in: ${hit.copies.map(String).join('; ')}`}));
    }
    item.append(actions(hit, citation, item), scoreDetails(hit));
    return item;
  }

  function thumbnail(hit, citation) {
    const img = el('img', {alt: citation, loading: 'lazy', decoding: 'async'});
    fileUrl(sameOrigin(hit.thumbnail_url)).then((url) => { img.src = url; }, () => { img.alt = `${citation} (no preview)`; });
    return el('div', {class: 'thumb'}, img);
  }

  function actions(hit, citation, item) {
    const open = sameOrigin(hit.open_url);
    const bar = el('div', {class: 'actions'});
    if (!open) return bar;
    const where = locatorOf(hit);
    if (hit.modality === 'audio' || hit.modality === 'video') {
      const label = `Play from ${clock(where.start || 0)}`;
      bar.append(el('button', {type: 'button', class: 'play', 'aria-label': `${label}: ${citation}`,
                               onclick: () => togglePlayer(hit, open, item, citation)}, label));
    }
    const text = where.what === 'page' ? `Open page ${where.page}`
      : hit.modality === 'image' ? 'Full size' : 'Open file';
    bar.append(el('a', {href: open, target: '_blank', rel: 'noopener', class: 'open',
                        'aria-label': `${text}: ${citation}`, onclick: openWithKey}, text));
    return bar;
  }

  // With a key, links to files open the file through a link signed for the key.
  function openWithKey(event) {
    if (!apiKey()) return;
    event.preventDefault();
    const view = window.open('about:blank', '_blank');
    fileUrl(event.currentTarget.href).then((url) => {
      if (view) view.location.replace(url);
    }, (err) => {
      if (view) view.close();
      say($('search-status'), explain(err, null, 'open'), 'error');
    });
  }

  async function togglePlayer(hit, url, item, citation) {
    const old = item.querySelector('audio, video');
    if (old) {
      old.pause();
      old.remove();
      return;
    }
    const tag = hit.modality === 'video' ? 'video' : 'audio';
    const player = el(tag, {controls: true, preload: 'metadata', class: 'player', 'aria-label': `Player: ${citation}`});
    item.querySelector('.actions').after(player);
    try {
      player.src = await fileUrl(url);
      await player.play();
    } catch (err) {
      if (err instanceof ApiError) say($('search-status'), explain(err, null, 'play'), 'error');
    }
  }

  function scoreSummary(hit) {
    const runs = Object.entries(hit.scores || {}).map(([run, s]) => `${run} ${Number(s).toFixed(3)}`);
    return `fused ${Number(hit.score || 0).toFixed(4)}${runs.length ? `; ${runs.join(', ')}` : ''}`;
  }

  function scoreDetails(hit) {
    const rows = Object.entries(hit.scores || {}).map(([run, s]) => el('tr', {},
      el('th', {scope: 'row', text: RUN_LABELS[run] || run}),
      el('td', {text: Number(s).toFixed(3)}),
      el('td', {text: hit.ranks && hit.ranks[run] ? `#${hit.ranks[run]}` : ''})));
    return el('details', {class: 'scores'},
      el('summary', {}, `Scores (fused ${Number(hit.score || 0).toFixed(4)})`),
      el('table', {}, el('thead', {}, el('tr', {}, el('th', {scope: 'col', text: 'run'}),
                                         el('th', {scope: 'col', text: 'score'}),
                                         el('th', {scope: 'col', text: 'rank'}))),
         el('tbody', {}, ...rows)));
  }

  // ---- ask ------------------------------------------------------------------------------------

  async function ask(event) {
    if (event) event.preventDefault();
    const question = $('question').value.trim();
    if (!question) {
      $('question').focus();
      return;
    }
    const seq = ++state.askSeq;
    if (state.askAbort) state.askAbort.abort();  // a new question replaces the one being answered
    state.askAbort = new AbortController();
    const query = readForm();
    const body = {question};
    if (query.modalities.length) body.modalities = query.modalities;
    if (query.source) body.where = {source: query.source};
    $('answer').hidden = false;
    $('answer').className = 'answer busy';
    $('answer-text').replaceChildren(el('p', {class: 'note', text: 'Looking for evidence…'}));
    say($('answer-note'), '');
    $('ask-button').disabled = true;
    try {
      const resp = await api('ask/stream', {method: 'POST', body: JSON.stringify(body), signal: state.askAbort.signal,
        headers: {'Content-Type': 'application/json', Accept: 'text/event-stream'}});
      let text = '';
      await readEvents(resp, (name, data) => {
        if (seq !== state.askSeq) return;
        if (name === 'evidence') showEvidence(data.evidence || [], question);
        else if (name === 'delta') answerText(text += data.text || '');
        else if (name === 'answer') showAnswer(data);
        else if (name === 'error') failAnswer(data.error || 'the answer failed');
      });
    } catch (err) {
      if (seq === state.askSeq) failAnswer(explain(err, () => ask(), 'ask'));
    } finally {
      if (seq === state.askSeq) $('ask-button').disabled = false;
    }
  }

  // Server-sent events from a fetch response: `event: NAME` and `data: JSON`, separated by a blank line.
  async function readEvents(resp, handle) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const {value, done} = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), {stream: !done});
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, '');
        let name = 'message', data = '';
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(5).trim();
        }
        if (data) handle(name, JSON.parse(data));
      }
      if (done) return;
    }
  }

  // The numbered evidence; once the answer is checked, `cited` says how many of it the answer cites
  // (they come first), and the rest is marked as not cited.
  function showEvidence(evidence, question, cited) {
    const terms = termsOf(question);
    $('evidence-title').hidden = !evidence.length;
    $('evidence').replaceChildren(...evidence.map((ev) => {
      const item = card(ev, {n: ev.n, terms});
      if (cited !== undefined && ev.n > cited) {
        item.classList.add('uncited');
        const head = item.querySelector('.card-head');
        head.insertBefore(el('span', {class: 'badge', text: 'not cited'}), head.querySelector('.citation'));
      }
      return item;
    }));
  }

  // The answer text with each [n] a link to evidence card n.
  function answerText(text) {
    const lines = text.split('\n').filter((line) => line.trim());
    $('answer-text').replaceChildren(...lines.map((line) => {
      const p = el('p');
      let last = 0;
      for (const match of line.matchAll(/\[(\d+(?:\s*[,;–-]\s*\d+)*)\]/g)) {
        p.append(line.slice(last, match.index), '[');
        match[1].split(/(\d+)/).forEach((part) => {
          if (/^\d+$/.test(part)) {
            p.append(el('a', {href: `#ev-${part}`, class: 'cite', 'data-n': part,
                              'aria-label': `evidence ${part}`, onclick: goToEvidence}, part));
          } else p.append(part);
        });
        p.append(']');
        last = match.index + match[0].length;
      }
      p.append(line.slice(last));
      return p;
    }));
  }

  function goToEvidence(event) {
    event.preventDefault();
    const target = $(`ev-${event.currentTarget.dataset.n}`);
    if (!target) return;
    target.scrollIntoView({block: 'nearest', behavior: 'smooth'});
    target.focus({preventScroll: true});
    target.classList.remove('flash');
    void target.offsetWidth;  // restart the highlight
    target.classList.add('flash');
  }

  function showAnswer(data) {
    const found = Boolean(data.found);
    $('answer').className = found ? 'answer' : 'answer not-found';
    showEvidence(data.evidence || [], data.question || '', (data.citations || []).length);
    if (!found) {
      $('answer-text').replaceChildren(el('p', {class: 'not-found-text', text: 'Not found in the indexed data.'}));
      say($('answer-note'), data.evidence && data.evidence.length
        ? 'The evidence below was considered, but it does not answer the question.'
        : 'No indexed evidence is relevant enough to this question.');
      return;
    }
    answerText(String(data.text || ''));
    const cited = (data.citations || []).length;
    const parts = [`Answered by ${data.model || 'the model'}${data.extractive ? ' (sentences quoted from the evidence)' : ''}`,
                   `${cited} cited source${cited === 1 ? '' : 's'}`];
    if (data.unsupported && data.unsupported.length) parts.push(`${data.unsupported.length} sentence(s) without a citation`);
    say($('answer-note'), `${parts.join(' · ')}.`);
  }

  function failAnswer(message) {
    $('answer').hidden = false;
    $('answer').className = 'answer error';
    $('answer-text').replaceChildren(el('p', {text: message}));
    say($('answer-note'), '');
  }

  // ---- store status ---------------------------------------------------------------------------

  async function loadStatus() {
    const box = $('store-status');
    try {
      const stats = await (await api('stats')).json();
      showStats(stats);
    } catch (err) {
      box.replaceChildren(el('p', {class: 'status-line error', text: explain(err, loadStatus, 'status')}));
      return;
    }
    loadJobs();
  }

  function showStats(stats) {
    const byModality = stats.items_by_modality || {};
    const sources = stats.sources || 0, items = stats.items || 0;
    say($('summary'), `${items} item${items === 1 ? '' : 's'} from ${sources} source${sources === 1 ? '' : 's'}`);
    const rows = Object.entries(byModality).sort().map(([m, count]) =>
      el('tr', {}, el('th', {scope: 'row', text: m}), el('td', {text: count})));
    const table = el('table', {class: 'counts'}, el('caption', {text: 'Items by modality'}),
                     el('tbody', {}, ...rows));
    if (!rows.length) table.append(el('tr', {}, el('td', {text: 'The store is empty.'})));
    const byStatus = Object.entries(stats.sources_by_status || {}).map(([s, c]) => `${c} ${s}`).join(', ');
    const parts = [table, el('p', {text: `Sources: ${sources}${byStatus ? ` (${byStatus})` : ''}`})];
    const failed = Array.isArray(stats.failed) ? stats.failed : [];
    if (failed.length) {
      parts.push(el('h3', {text: `Failed sources (${failed.length})`}),
        el('ul', {class: 'failed'}, ...failed.map((f) => el('li', {},
          el('span', {class: 'failed-name', title: f.uri, text: String(f.uri || '').split('/').pop()}),
          el('span', {class: 'failed-reason', text: f.reason || 'no reason recorded'})))));
    }
    parts.push(el('div', {id: 'jobs'}));
    $('store-status').replaceChildren(...parts);
  }

  async function loadJobs() {
    clearTimeout(state.jobTimer);
    let jobs;
    try {
      jobs = (await (await api('jobs')).json()).jobs || [];
    } catch (err) {
      return;  // ingest jobs need the ingest scope: a read key simply does not see them
    }
    const box = $('jobs');
    if (!box) return;
    const running = jobs.find((job) => job.status === 'queued' || job.status === 'running');
    const last = running || jobs[0];
    if (!last) {
      box.replaceChildren();
      return;
    }
    const p = last.progress || {};
    const rows = [el('h3', {text: running ? 'Ingest running' : `Last ingest: ${last.status}`}),
      el('p', {text: `${p.files_done || 0} of ${p.files_seen || 0} files done, ${p.files_failed || 0} failed, ` +
                     `${p.items_added || 0} items added`})];
    if (running) {
      rows.push(el('progress', {max: Math.max(p.files_seen || 0, 1), value: p.files_done || 0,
                                'aria-label': 'Ingest progress'}));
      state.jobTimer = setTimeout(loadStatus, 2000);
    }
    if (last.error) rows.push(el('p', {class: 'error', text: last.error}));
    box.replaceChildren(...rows);
  }

  // ---- query files: picker, drop, paste -------------------------------------------------------

  function setMedia(file, kind) {
    clearMedia();
    if (!file) return;
    state.media = {file, kind};
    $('query-media').hidden = false;
    $('media-name').textContent = `${kind === 'image' ? 'Image' : 'Audio clip'}: ${file.name || 'pasted image'}`;
    if (kind === 'image') {
      state.previewUrl = URL.createObjectURL(file);
      $('media-preview').src = state.previewUrl;
      $('media-preview').alt = `query image ${file.name || ''}`.trim();
      $('media-preview').hidden = false;
    }
  }

  function clearMedia() {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.media = null;
    state.previewUrl = null;
    $('query-media').hidden = true;
    $('media-preview').hidden = true;
    $('media-preview').removeAttribute('src');
  }

  function kindOf(file) {
    if (!file) return null;
    if (file.type.startsWith('image/')) return 'image';
    if (file.type.startsWith('audio/') || file.type.startsWith('video/')) return 'audio';
    return null;
  }

  function takeFile(file, from) {
    const kind = kindOf(file);
    if (!kind) {
      say($('search-status'), `${file ? file.name : 'That'} is neither an image nor an audio clip.`, 'error');
      return;
    }
    setMedia(file, kind);
    if (from !== 'picker') search();
  }

  function wire() {
    $('search-form').addEventListener('submit', (e) => { e.preventDefault(); search({push: true}); });
    $('ask-form').addEventListener('submit', ask);
    $('key-form').addEventListener('submit', useKey);
    $('refresh-status').addEventListener('click', loadStatus);
    $('clear-media').addEventListener('click', () => { clearMedia(); $('q').focus(); });
    for (const [id, kind] of [['image-file', 'image'], ['audio-file', 'audio']]) {
      $(id).addEventListener('change', (e) => {
        const file = e.target.files[0];
        e.target.value = '';
        if (file) { setMedia(file, kind); search(); }
      });
    }
    const form = $('search-form');
    form.addEventListener('dragover', (e) => { e.preventDefault(); form.classList.add('dropping'); });
    form.addEventListener('dragleave', () => form.classList.remove('dropping'));
    form.addEventListener('drop', (e) => {
      e.preventDefault();
      form.classList.remove('dropping');
      takeFile(e.dataTransfer.files[0], 'drop');
    });
    document.addEventListener('paste', (e) => {
      const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith('image/'));
      if (file) { e.preventDefault(); takeFile(file, 'paste'); }
    });
    document.addEventListener('keydown', (e) => {
      const typing = e.target.closest && e.target.closest('input, textarea, select, [contenteditable="true"]');
      if (e.key === '/' && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
        e.preventDefault();
        $('q').focus();
        $('q').select();
      }
    });
    window.addEventListener('popstate', () => {
      clearMedia();
      if (formFromUrl()) search();
      else { $('results').replaceChildren(); say($('search-status'), ''); }
    });
  }

  wire();
  loadStatus();
  if (formFromUrl()) search();
})();
