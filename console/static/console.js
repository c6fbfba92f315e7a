// relay console: keeps the page live over server-sent events and asks
// before every action. No build step, no dependencies; the page works the
// same behind a proxy's path prefix because every URL here is relative.
'use strict';

(function () {
  const body = document.body;
  const base = body.dataset.base || './';
  const live = document.getElementById('live');
  const outcome = document.getElementById('outcome');
  const dialog = document.getElementById('confirm');

  // refresh fetches this page again and swaps in its live regions; events
  // that arrive meanwhile cause one more refresh, never a pile of them.
  let busy = false;
  let again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const res = await fetch(location.href, { headers: { Accept: 'text/html' }, cache: 'no-store' });
      if (res.ok) swap(new DOMParser().parseFromString(await res.text(), 'text/html'));
    } catch (e) {
      // The stream reconnects and the next event refreshes again.
    } finally {
      busy = false;
    }
    if (again) { again = false; refresh(); }
  }

  function rowTexts() {
    const m = new Map();
    for (const el of document.querySelectorAll('[data-key]')) m.set(el.dataset.key, el.textContent);
    return m;
  }

  // rendered holds the server's HTML of each live region on the page, so
  // that a refresh replaces only the regions that changed: a button being
  // clicked is not swapped away under the pointer for nothing.
  const rendered = new WeakMap();
  for (const el of document.querySelectorAll('[data-live][id]')) rendered.set(el, el.outerHTML);

  function swap(doc) {
    const before = rowTexts();
    for (const fresh of doc.querySelectorAll('[data-live][id]')) {
      const old = document.getElementById(fresh.id);
      const html = fresh.outerHTML;
      if (!old || rendered.get(old) === html) continue;
      const el = document.adoptNode(fresh);
      rendered.set(el, html);
      old.replaceWith(el);
    }
    for (const el of document.querySelectorAll('[data-key]')) {
      if (before.get(el.dataset.key) !== el.textContent) el.classList.add('changed');
    }
  }

  function setLive(on, text) {
    live.classList.toggle('on', on);
    live.classList.toggle('off', !on);
    live.textContent = text;
  }

  function connect() {
    const es = new EventSource(base + 'api/stream');
    es.addEventListener('ready', () => setLive(true, 'live'));
    es.addEventListener('error', () => setLive(false, 'reconnecting…'));
    es.addEventListener('reset', refresh);
    es.addEventListener('delivery', (ev) => {
      // A delivery's page changes only with its own delivery.
      const only = body.dataset.webhook;
      if (only) {
        try {
          if (JSON.parse(ev.data).webhook_id !== only) return;
        } catch (e) { /* refresh anyway */ }
      }
      refresh();
    });
  }

  function show(message, isError) {
    outcome.textContent = message;
    outcome.className = isError ? 'error' : 'ok';
    outcome.hidden = false;
  }

  function ask(question) {
    return new Promise((resolve) => {
      document.getElementById('confirm-question').textContent = question;
      dialog.returnValue = '';
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.showModal();
    });
  }

  async function answer(res) {
    try {
      return await res.json();
    } catch (e) {
      return { error: res.status + ' ' + res.statusText };
    }
  }

  // Buttons with data-action POST there after a confirmation; with
  // data-preview they first ask the server what the action would do.
  document.addEventListener('click', async (ev) => {
    const btn = ev.target.closest('button[data-action]');
    if (!btn) return;
    ev.preventDefault();
    let question = btn.dataset.confirm;
    if (btn.dataset.preview) {
      const res = await fetch(btn.dataset.preview, { headers: { Accept: 'application/json' }, cache: 'no-store' });
      const preview = await answer(res);
      if (!res.ok) { show(preview.error, true); return; }
      if (preview.count === 0) { show('Nothing to retry.', false); return; }
      question = preview.question;
    }
    if (!(await ask(question))) return;
    btn.disabled = true;
    try {
      const res = await fetch(btn.dataset.action, {
        method: 'POST',
        headers: { 'X-Relay-Console': '1', 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
        body: btn.dataset.body || '',
      });
      const out = await answer(res);
      show(res.ok ? out.message : out.error, !res.ok);
    } catch (e) {
      show('The request failed: ' + e.message, true);
    } finally {
      btn.disabled = false;
    }
    refresh();
  });

  connect();
  // Until here a click on a button did nothing: the page says it is ready.
  body.dataset.ready = 'true';
})();
