// Results, alerts, audit log, decision explainer, config.

import { get, AuthError } from './api.js';
import { h, fill, table, row, badge, link, num, pct, fixed, when, enc } from './dom.js';
import { act, authFailed } from './actions.js';

/** `#/results/KEY`: the figures of `GET /admin/flags/{flag}/results`. */
export function resultsPage(key) {
  const body = h('div');
  return {
    title: `Results of ${key}`,
    mount(root) {
      root.append(h('h1', {}, 'Experiment results: ', h('code', {}, key)), h('p', {}, link(`/flag/${enc(key)}`, `Back to flag ${key}`)), body);
    },
    async refresh() {
      const r = await get(`/admin/flags/${enc(key)}/results`);
      fill(body,
        h('p', { id: 'srm' }, 'Sample ratio check: ', r.srm.detected ? badge('mismatch detected', 'critical') : badge('passed', 'ok'),
          ` χ² p = ${fixed(r.srm.p_value, 4)} · control “${r.control}” · α = ${r.alpha}${r.rule ? ` · rule “${r.rule}”` : ''}`),
        r.warnings?.length ? h('ul', { class: 'reasons' }, r.warnings.map((w) => h('li', {}, w))) : null,
        table('Per metric and variation', ['Variation', 'Metric', 'Users', 'Value', 'Interval', 'Lift', 'p-value', 'Verdict'],
          r.variations.map((v) => row([v.variation, v.metric, num(v.users), fixed(v.value, 4),
            v.ci_low === null ? '–' : `${fixed(v.ci_low, 4)} … ${fixed(v.ci_high, 4)}`, pct(v.lift), fixed(v.p_value, 4),
            badge(v.verdict.replace('_', ' '), v.verdict)], { 'data-variation': v.variation, 'data-metric': v.metric })), { id: 'results-table' }));
    },
  };
}

/** `#/alerts`: current level, since when, and the history of level changes (the audit log). */
export function alertsPage() {
  const current = h('div');
  const history = h('div');
  return {
    title: 'Alerts',
    mount(root) {
      root.append(h('h1', {}, 'Alerts'), current, h('h2', {}, 'History of level changes'), history);
    },
    async refresh() {
      const [a, hist] = await Promise.all([get('/admin/alerts'), get('/admin/audit?action=alert&limit=100')]);
      fill(current, table('Current levels', ['Alert', 'Flag', 'Variation', 'Metric', 'Level', 'Since', 'Value', 'Samples', 'Thresholds (info / warning / critical)'],
        a.alerts.map((x) => row([x.alert, link(`/flag/${enc(x.flag)}`, x.flag), x.variation, x.metric, badge(x.level), when(x.since), fixed(x.value, 4),
          `${num(x.samples)} of ${num(x.min_samples)}`, `${x.direction} ${[x.thresholds.info, x.thresholds.warning, x.thresholds.critical].map((t) => t ?? '–').join(' / ')}`])), { id: 'alerts-table' }));
      fill(history, table('Level changes, newest first', ['When', 'Alert', 'Flag', 'Variation', 'Change', 'Summary'],
        hist.entries.map((e) => row([when(e.at), e.after?.alert ?? e.actor, e.flag ?? '–', e.after?.variation ?? '–',
          h('span', {}, badge(e.after?.previous_level), ' → ', badge(e.after?.level)), e.reason ?? '']))));
    },
  };
}

/** `#/audit`: the audit log with filters and paging. */
export function auditPage() {
  const form = h('form', { class: 'filters', id: 'audit-filters' });
  const fields = {};
  for (const [name, label] of [['flag', 'Flag'], ['actor', 'Actor'], ['action', 'Action']]) {
    fields[name] = h('input', { id: `audit-${name}`, name, type: 'text', autocomplete: 'off', list: name === 'action' ? 'audit-actions' : null });
    form.append(h('div', { class: 'field' }, h('label', { for: `audit-${name}` }, label), fields[name]));
  }
  form.append(h('datalist', { id: 'audit-actions' }, ['set_enabled', 'set_forced_fallback', 'set_rollout_stage', 'set_rollout_held', 'reload', 'alert'].map((a) => h('option', { value: a }))),
    h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary' }, 'Apply filters')));
  const body = h('div');
  const pager = h('div', { class: 'buttons' });
  let cursors = [null];
  let next = null;
  const q = () => {
    const p = new URLSearchParams({ limit: '25' });
    for (const k of ['flag', 'actor', 'action']) if (fields[k].value.trim()) p.set(k, fields[k].value.trim());
    const before = cursors[cursors.length - 1];
    if (before) p.set('before', before);
    return p.toString();
  };
  let refresh;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    cursors = [null];
    refresh();
  });
  const newer = h('button', { type: 'button', id: 'audit-newer' }, 'Newer');
  const older = h('button', { type: 'button', id: 'audit-older' }, 'Older');
  newer.addEventListener('click', () => { if (cursors.length > 1) { cursors.pop(); refresh(); } });
  older.addEventListener('click', () => { if (next) { cursors.push(next); refresh(); } });
  pager.append(newer, older);
  return {
    title: 'Audit log',
    mount(root) {
      root.append(h('h1', {}, 'Audit log'), form, body, pager);
    },
    refresh: (refresh = async () => {
      const a = await get(`/admin/audit?${q()}`);
      next = a.next_before;
      newer.disabled = cursors.length <= 1;
      older.disabled = !next;
      fill(body, h('p', { class: 'muted' }, `Page ${cursors.length}${cursors.length === 1 ? ' (live)' : ''}`),
        table('Audit entries, newest first', ['When', 'Actor', 'Action', 'Flag', 'Before', 'After', 'Reason'],
          a.entries.map((e) => row([when(e.at), e.actor, e.action, e.flag ?? '–', h('code', {}, JSON.stringify(e.before)), h('code', {}, JSON.stringify(e.after)), e.reason ?? ''],
            { 'data-id': e.id })), { id: 'audit-table' }));
    }),
    // Older pages do not move: only the first page follows the log live.
    live: () => cursors.length === 1,
  };
}

/** `#/explain`: user id + attributes → the decision and why. */
export function explainPage() {
  const flag = h('select', { id: 'explain-flag', name: 'flag', required: true });
  const user = h('input', { id: 'explain-user', name: 'user', type: 'text', required: true, autocomplete: 'off' });
  const attrs = h('textarea', { id: 'explain-attrs', name: 'attrs', rows: 3, placeholder: 'plan=pro\nemail=ana@acme.example' });
  const out = h('div', { id: 'explain-result', role: 'status', 'aria-live': 'polite' });
  const form = h('form', { class: 'filters', id: 'explain-form' },
    h('div', { class: 'field' }, h('label', { for: 'explain-flag' }, 'Flag'), flag),
    h('div', { class: 'field' }, h('label', { for: 'explain-user' }, 'User id'), user),
    h('div', { class: 'field wide' }, h('label', { for: 'explain-attrs' }, 'Attributes (name=value, one a line)'), attrs),
    h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary' }, 'Explain')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const p = new URLSearchParams({ flag: flag.value, user: user.value });
    for (const line of attrs.value.split('\n')) {
      const i = line.indexOf('=');
      if (i > 0) p.append(`attr.${line.slice(0, i).trim()}`, line.slice(i + 1).trim());
    }
    try {
      const r = await get(`/admin/console/explain?${p}`);
      const d = r.decision;
      fill(out, h('dl', { class: 'facts' },
        h('dt', {}, 'Variation'), h('dd', { id: 'explain-variation' }, d.variation),
        h('dt', {}, 'Rule'), h('dd', {}, d.rule ?? '–'),
        h('dt', {}, 'Bucket'), h('dd', {}, d.bucket ?? '–'),
        h('dt', {}, 'Reason'), h('dd', {}, d.reason)),
      h('h2', {}, 'Why'), h('ol', { id: 'explain-steps' }, r.steps.map((s) => h('li', {}, s.detail))),
      h('h2', {}, 'Variables'), h('pre', {}, JSON.stringify(d.variables, null, 2)));
    } catch (err) {
      if (err instanceof AuthError) return authFailed(err.message);
      fill(out, h('div', { class: 'outcome err' }, h('p', {}, err.message)));
    }
  });
  return {
    title: 'Decision explainer',
    mount(root) {
      root.append(h('h1', {}, 'Decision explainer'), h('p', { class: 'muted' }, 'The same answer as GET /v1/decide, with each rule tried.'), form, out);
    },
    async refresh() {
      const o = await get('/admin/console/overview');
      const keys = o.flags.map((f) => f.flag);
      if ([...flag.options].map((x) => x.value).join() !== keys.join()) {
        const keep = flag.value;
        fill(flag, keys.map((k) => h('option', { value: k }, k)));
        if (keys.includes(keep)) flag.value = keep;
      }
    },
    live: () => false,
  };
}

/** `#/config`: the running config and a reload button. */
export function configPage() {
  const facts = h('dl', { class: 'facts', id: 'config-facts' });
  const status = h('div', { class: 'status', role: 'status', 'aria-live': 'polite', id: 'reload-status' });
  let refresh;
  const reload = h('button', { type: 'button', id: 'reload', class: 'primary' }, 'Reload the config file');
  reload.addEventListener('click', () => act({
    title: 'Reload the configuration file?', message: 'The file is read and validated again; if it is invalid, the running configuration keeps serving and the errors are shown here.',
    confirmLabel: 'Reload', method: 'POST', path: '/admin/reload', status,
    done: (r) => (r.changed ? `Reloaded: the configuration is now ${r.hash}.` : `Reloaded: unchanged (${r.hash}).`), after: () => refresh(),
  }));
  return {
    title: 'Configuration',
    mount(root) {
      root.append(h('h1', {}, 'Configuration'), facts, h('div', { class: 'buttons' }, reload), status);
    },
    refresh: (refresh = async () => {
      const c = await get('/admin/console/config');
      fill(facts,
        h('dt', {}, 'Hash'), h('dd', { id: 'config-hash' }, h('code', {}, c.hash)),
        h('dt', {}, 'Loaded'), h('dd', {}, when(c.loaded_at)),
        h('dt', {}, 'File'), h('dd', {}, c.file ?? '(in memory)'),
        h('dt', {}, 'Flags'), h('dd', {}, num(c.flags)),
        h('dt', {}, 'Alerts'), h('dd', {}, num(c.alerts)),
        h('dt', {}, 'State store'), h('dd', {}, `${c.state_store} (version ${c.state_version})`),
        h('dt', {}, 'Last reload error'), h('dd', {}, c.last_reload_error ? h('pre', {}, c.last_reload_error) : 'none'),
        h('dt', {}, 'Switchyard'), h('dd', {}, c.version));
    }),
  };
}
