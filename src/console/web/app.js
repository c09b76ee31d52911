// The console's shell: login, routing (#/...), and the live refresh (every second, start to
// start, so a change made elsewhere shows within about a second).

import { token, get, AuthError, NetworkError } from './api.js';
import { setAuthHandler } from './actions.js';
import { fill } from './dom.js';
import { flagList, flagPage } from './flags.js';
import { resultsPage, alertsPage, auditPage, explainPage, configPage } from './pages.js';

const REFRESH_MS = 1000;
const $ = (id) => document.getElementById(id);

let current = null;
let timer = null;
let generation = 0;

function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#/, '')) || '/';
  const [, page, ...rest] = hash.split('/');
  const key = rest.join('/');
  switch (page) {
    case 'flag': return flagPage(key);
    case 'results': return resultsPage(key);
    case 'alerts': return alertsPage();
    case 'audit': return auditPage();
    case 'explain': return explainPage();
    case 'config': return configPage();
    default: return flagList();
  }
}

function showLogin(message) {
  token.clear();
  clearTimeout(timer);
  current = null;
  generation += 1;
  fill($('view'));
  $('nav').hidden = true;
  $('connection').hidden = true;
  $('login').hidden = false;
  const err = $('login-error');
  err.hidden = !message;
  err.textContent = message || '';
  document.title = 'Switchyard console: log in';
  $('token').value = '';
  $('token').focus();
}

async function tick(gen) {
  if (gen !== generation || !current) return;
  const started = Date.now();
  try {
    await current.refresh();
    $('connection').hidden = true;
  } catch (e) {
    if (gen !== generation) return;
    if (e instanceof AuthError) {
      showLogin('The admin token was refused (wrong or revoked). Paste a valid token.');
      return;
    }
    if (e instanceof NetworkError) {
      $('connection').hidden = false;
    } else {
      $('connection').hidden = true;
      const v = $('view');
      if (!v.querySelector('.load-error')) v.prepend(Object.assign(document.createElement('p'), { className: 'outcome err load-error', textContent: e.message }));
    }
  }
  if (gen !== generation) return;
  const live = current.live ? current.live() : true;
  if (live || !$('connection').hidden) timer = setTimeout(() => tick(gen), Math.max(200, REFRESH_MS - (Date.now() - started)));
}

function show() {
  if (!token.get()) {
    showLogin();
    return;
  }
  clearTimeout(timer);
  generation += 1;
  $('login').hidden = true;
  $('nav').hidden = false;
  current = route();
  const view = fill($('view'));
  current.mount(view);
  document.title = `${current.title} · Switchyard console`;
  const here = location.hash || '#/';
  for (const a of document.querySelectorAll('#nav a')) {
    const on = here === a.getAttribute('href') || (a.getAttribute('href') === '#/' && /^#\/(flag|results)\//.test(here));
    if (on) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  tick(generation);
}

setAuthHandler((message) => showLogin(`The admin token was refused (wrong or revoked): ${message}`));

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const t = $('token').value.trim();
  if (!t) return;
  token.set(t);
  try {
    await get('/admin/console/config');
  } catch (err) {
    if (err instanceof AuthError) {
      showLogin('That token was refused: it is not one of the configured admin tokens (or it was revoked).');
      return;
    }
    token.clear();
    const el = $('login-error');
    el.hidden = false;
    el.textContent = `Cannot check the token: ${err.message}`;
    return;
  }
  show();
  $('main').focus();
});

$('logout').addEventListener('click', () => showLogin('Logged out.'));
window.addEventListener('hashchange', () => {
  show();
  $('main').focus();
});
show();
