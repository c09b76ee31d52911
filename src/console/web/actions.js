// Actions: every one asks for confirmation with a reason, goes through the admin API (so it is
// audited with the token's name) and shows its result, including a refused gate's reasons.

import { api, ApiError, AuthError } from './api.js';
import { h, fill } from './dom.js';

let onAuthError = () => {};

/** Where a refused token sends the page (the login). */
export function setAuthHandler(fn) {
  onAuthError = fn;
}

/** Sends the page back to the login with `message`. */
export function authFailed(message) {
  onAuthError(message);
}

/** Asks for confirmation: resolves to the reason typed ('' if none), or null if cancelled. */
export function confirmDialog({ title, message, confirmLabel = 'Confirm', danger = false }) {
  const dialog = document.getElementById('confirm');
  const reason = document.getElementById('confirm-reason');
  const ok = document.getElementById('confirm-ok');
  const cancel = document.getElementById('confirm-cancel');
  fill(document.getElementById('confirm-title'), title);
  fill(document.getElementById('confirm-message'), message);
  fill(ok, confirmLabel);
  ok.className = danger ? 'danger' : 'primary';
  reason.value = '';
  return new Promise((resolve) => {
    const done = (value) => {
      ok.removeEventListener('click', onOk);
      cancel.removeEventListener('click', onCancel);
      dialog.removeEventListener('cancel', onEsc);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onOk = () => done(reason.value.trim());
    const onCancel = () => done(null);
    const onEsc = (e) => {
      e.preventDefault();
      done(null);
    };
    ok.addEventListener('click', onOk);
    cancel.addEventListener('click', onCancel);
    dialog.addEventListener('cancel', onEsc);
    dialog.showModal();
    reason.focus();
  });
}

/** Shows an action's outcome in a status region. */
export function showOutcome(status, kind, text, list = []) {
  fill(status, h('div', { class: `outcome ${kind}` }, h('p', {}, text),
    list.length ? h('ul', {}, list.map((r) => h('li', {}, r))) : null));
}

/**
 * Confirms, then calls the admin API. `spec`: {title, message, confirmLabel, danger, method,
 * path, body, status (element), done (text on success), after (callback)}.
 */
export async function act(spec) {
  const reason = await confirmDialog(spec);
  if (reason === null) {
    showOutcome(spec.status, 'info', 'Cancelled: nothing changed.');
    return null;
  }
  const body = { ...(spec.body || {}) };
  if (reason) body.reason = reason;
  showOutcome(spec.status, 'info', 'Sending…');
  try {
    const result = await api(spec.method, spec.path, body);
    const who = result?.audit ? ` Audited as “${result.audit.action}” by ${result.audit.actor}.` : '';
    showOutcome(spec.status, 'ok', `${typeof spec.done === 'function' ? spec.done(result) : spec.done}${who}`);
    if (spec.after) await spec.after(result);
    return result;
  } catch (e) {
    if (e instanceof AuthError) {
      onAuthError(e.message);
      return null;
    }
    if (e instanceof ApiError) {
      const list = e.reasons.length ? e.reasons : e.errors;
      showOutcome(spec.status, 'err', `Refused (${e.status}): ${e.message.split('\n')[0]}`, list);
      if (spec.refused) spec.refused(e);
      return null;
    }
    showOutcome(spec.status, 'err', `Not done: ${e.message}`);
    return null;
  }
}
