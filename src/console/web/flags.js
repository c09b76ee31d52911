// The flag list and the flag page.

import { get, ApiError } from './api.js';
import { h, fill, table, row, badge, link, num, pct, secs, fixed, usd, when, enc } from './dom.js';
import { lineChart } from './chart.js';
import { act, showOutcome } from './actions.js';

const RESULTS_EVERY = 5;

function stageText(r) {
  if (!r) return '–';
  return `${r.percent} % (stage ${r.stage} of ${r.last_stage})${r.held ? ', held' : ''}`;
}

/** `#/`: every flag with its state, stage, alert tier and recent traffic. */
export function flagList() {
  const body = h('div');
  return {
    title: 'Flags',
    mount(root) {
      root.append(h('h1', {}, 'Flags'), body);
    },
    async refresh() {
      const o = await get('/admin/console/overview');
      const rows = o.flags.map((f) => row([
        link(`/flag/${enc(f.flag)}`, f.flag),
        h('span', {}, badge(f.enabled ? 'on' : 'off'), f.enabled_source === 'runtime' ? ' (runtime)' : '',
          f.force_fallback ? [' ', badge('forced fallback', 'warn')] : f.forced_variations.length ? [' ', badge(`forced: ${f.forced_variations.join(', ')}`, 'warn')] : null),
        stageText(f.rollout),
        f.alert_level ? badge(f.alert_level) : '–',
        num(f.requests_5m),
        pct(f.error_rate_5m),
        f.warning ? h('span', { class: 'warnmark', title: 'needs attention' }, '⚠ ',
          [f.srm_detected ? 'sample ratio mismatch' : null, f.alert_level === 'critical' ? 'critical alert' : null].filter(Boolean).join(', ')) : '',
      ], { 'data-flag': f.flag }));
      fill(body,
        h('p', { class: 'muted' }, `${o.flags.length} flags · config ${o.config.slice(0, 12)} · traffic over the last ${o.window_seconds / 60} minutes`),
        table('Flags', ['Flag', 'State', 'Rollout stage', 'Alert tier', 'Requests (5 min)', 'Error rate (5 min)', 'Warning'], rows, { id: 'flag-table' }));
    },
  };
}

function gateRows(r) {
  const g = r.gate;
  const f = r.figures;
  const out = [];
  const add = (name, limit, measured, met) => out.push(row([name, limit, measured, badge(met ? 'met' : 'not met', met ? 'ok' : 'critical')]));
  add('Requests in this stage', `≥ ${num(g.min_requests)}`, num(f.requests), f.requests >= g.min_requests);
  add('Time in this stage', `≥ ${g.hold_seconds} s`, `${Math.floor(f.stage_age_seconds)} s`, f.stage_age_seconds >= g.hold_seconds);
  if (g.max_error_rate !== null) add('Error rate', `≤ ${pct(g.max_error_rate, 2)}`, pct(f.error_rate, 2), f.error_rate <= g.max_error_rate);
  if (g.max_fallback_rate !== null) add('Fallback rate', `≤ ${pct(g.max_fallback_rate, 2)}`, pct(f.fallback_rate, 2), f.fallback_rate <= g.max_fallback_rate);
  if (g.max_p95_seconds !== null) add('p95 latency', `≤ ${secs(g.max_p95_seconds)}`, secs(f.p95_seconds), f.p95_seconds !== null && f.p95_seconds <= g.max_p95_seconds);
  if (g.max_p95_ratio !== null) {
    const ratio = f.p95_seconds !== null && f.stable_p95_seconds ? f.p95_seconds / f.stable_p95_seconds : null;
    add('p95 vs stable variation', `≤ ${g.max_p95_ratio}×`, ratio === null ? '–' : `${ratio.toFixed(2)}×`, ratio !== null && ratio <= g.max_p95_ratio);
  }
  return out;
}

/** `#/flag/KEY`: one flag, live, with its actions. */
export function flagPage(key) {
  const path = `/admin/flags/${enc(key)}`;
  const status = h('div', { class: 'status', role: 'status', 'aria-live': 'polite', id: 'action-status' });
  const summary = h('p', { class: 'summary', id: 'flag-summary' });
  const sections = {};
  for (const s of ['figures', 'business', 'bandit', 'charts', 'rollout', 'alerts', 'config']) sections[s] = h('div', { id: `flag-${s}` });
  let last = null;
  let lastResults = null;
  let lastBandit = null;
  let resultsAge = 0;
  let refresh = async () => {};

  const killBtn = h('button', { type: 'button', id: 'kill-switch', class: 'danger' }, 'Kill switch');
  const scope = h('select', { id: 'fallback-scope' }, h('option', { value: '' }, 'the whole flag'));
  const forceBtn = h('button', { type: 'button', id: 'force-fallback' }, 'Force rule-based answers');
  const liftBtn = h('button', { type: 'button', id: 'lift-fallback' }, 'Lift forced fallback');
  const ruleSel = h('select', { id: 'rollout-rule' });
  const stageSel = h('select', { id: 'rollout-stage' });
  const advanceBtn = h('button', { type: 'button', id: 'rollout-advance', class: 'primary' }, 'Advance');
  const forceAdvanceBtn = h('button', { type: 'button', id: 'rollout-force-advance', class: 'danger' }, 'Force advance');
  const rollbackBtn = h('button', { type: 'button', id: 'rollout-rollback' }, 'Roll back one stage');
  const setStageBtn = h('button', { type: 'button', id: 'rollout-set-stage' }, 'Set stage');
  const holdBtn = h('button', { type: 'button', id: 'rollout-hold' }, 'Hold');
  const rolloutBox = h('fieldset', { class: 'actions', hidden: true },
    h('legend', {}, 'Rollout'),
    h('label', { for: 'rollout-rule' }, 'Rule'), ruleSel,
    h('div', { class: 'buttons' }, advanceBtn, forceAdvanceBtn, rollbackBtn, holdBtn),
    h('div', { class: 'inline' }, h('label', { for: 'rollout-stage' }, 'Stage'), stageSel, setStageBtn));

  const rolloutOf = () => last?.state.rollouts.find((r) => r.rule === ruleSel.value) || last?.state.rollouts[0];
  const run = (spec) => act({ status, after: () => { resultsAge = 0; return refresh(); }, ...spec });

  killBtn.addEventListener('click', () => {
    const on = last?.state.enabled;
    run(on ? {
      title: `Turn off flag “${key}”?`,
      message: `Kill switch: everyone asking for “${key}” gets its off variation “${last.state.off_variation}” until the flag is turned on again.`,
      confirmLabel: `Turn off ${key}`, danger: true, method: 'PUT', path: `${path}/enabled`, body: { enabled: false },
      done: `Flag “${key}” is off.`,
    } : {
      title: `Turn on flag “${key}”?`, message: `Rules and rollouts of “${key}” decide again.`,
      confirmLabel: `Turn on ${key}`, method: 'PUT', path: `${path}/enabled`, body: { enabled: true }, done: `Flag “${key}” is on.`,
    });
  });
  const fallback = (forced) => {
    const v = scope.value || null;
    const what = v ? `variation “${v}” of “${key}”` : `every variation of “${key}”`;
    run({
      title: forced ? `Force rule-based answers for ${what}?` : `Lift forced fallback for ${what}?`,
      message: forced ? `Requests decided to ${what} get the rule-based responder's answer instead of the provider's.` : `Requests for ${what} go to their provider again.`,
      confirmLabel: forced ? 'Force rule-based answers' : 'Lift forced fallback', danger: forced,
      method: 'PUT', path: `${path}/fallback`, body: { forced, variation: v },
      done: forced ? `Rule-based answers forced for ${what}.` : `Forced fallback lifted for ${what}.`,
    });
  };
  forceBtn.addEventListener('click', () => fallback(true));
  liftBtn.addEventListener('click', () => fallback(false));
  const stageDone = (r) => `Rollout “${r.rollout.rule}” is at stage ${r.rollout.stage} (${r.rollout.percent} %).`;
  advanceBtn.addEventListener('click', () => {
    const r = rolloutOf();
    run({
      title: `Advance rollout “${r.rule}” of “${key}”?`,
      message: `From stage ${r.stage} (${r.percent} %) to stage ${r.stage + 1} (${r.stages[r.stage + 1] ?? '–'} %), if the gate is met.`,
      confirmLabel: 'Advance', method: 'POST', path: `${path}/rollout/advance`, body: { rule: r.rule }, done: stageDone,
    });
  });
  forceAdvanceBtn.addEventListener('click', () => {
    const r = rolloutOf();
    run({
      title: `Force rollout “${r.rule}” of “${key}” past its gate?`,
      message: `Stage ${r.stage + 1} (${r.stages[r.stage + 1] ?? '–'} %) even though the gate is not met; the audit log says so.`,
      confirmLabel: 'Force advance', danger: true, method: 'POST', path: `${path}/rollout/advance`, body: { rule: r.rule, force: true }, done: stageDone,
    });
  });
  rollbackBtn.addEventListener('click', () => {
    const r = rolloutOf();
    run({
      title: `Roll back rollout “${r.rule}” of “${key}”?`, message: `From stage ${r.stage} (${r.percent} %) to stage ${r.stage - 1} (${r.stages[r.stage - 1] ?? '–'} %).`,
      confirmLabel: 'Roll back', danger: true, method: 'POST', path: `${path}/rollout/rollback`, body: { rule: r.rule }, done: stageDone,
    });
  });
  setStageBtn.addEventListener('click', () => {
    const r = rolloutOf();
    const stage = Number(stageSel.value);
    run({
      title: `Set rollout “${r.rule}” of “${key}” to stage ${stage}?`, message: `${r.stages[stage]} % of the rule's users get “${r.variation}”.`,
      confirmLabel: 'Set stage', danger: true, method: 'PUT', path: `${path}/rollout`, body: { rule: r.rule, stage }, done: stageDone,
    });
  });
  holdBtn.addEventListener('click', () => {
    const r = rolloutOf();
    const held = !r.held;
    run({
      title: held ? `Hold rollout “${r.rule}” of “${key}”?` : `Release rollout “${r.rule}” of “${key}”?`,
      message: held ? 'No automatic advance while held.' : 'It may advance on its own again when its gate is met.',
      confirmLabel: held ? 'Hold' : 'Release', method: 'PUT', path: `${path}/rollout/hold`, body: { rule: r.rule, held },
      done: held ? 'Rollout held.' : 'Rollout released.',
    });
  });

  // Options change only when the set does, so a choice being made is kept; a fresh list
  // starts at `initial`.
  function setOptions(select, values, labels, initial) {
    const now = [...select.options].map((o) => `${o.value}=${o.textContent}`).join('\n');
    if (now === values.map((v, i) => `${v}=${labels ? labels[i] : v}`).join('\n')) return;
    const keep = select.options.length ? select.value : initial;
    fill(select, values.map((v, i) => h('option', { value: v }, labels ? labels[i] : v)));
    if (values.includes(keep)) select.value = keep;
  }

  function render(v, results, bandit) {
    last = v;
    const s = v.state;
    fill(summary, badge(s.enabled ? 'on' : 'off'), ` ${s.enabled ? 'Serving' : 'Off: everyone gets'} ${s.enabled ? '' : `“${s.off_variation}”`}`,
      s.force_fallback ? [' · ', badge('forced fallback', 'warn'), ' rule-based answers for every variation'] : '',
      s.description ? [' · ', s.description] : '', ' · ', link(`/results/${enc(key)}`, 'Experiment results'));
    fill(killBtn, s.enabled ? 'Turn off (kill switch)' : 'Turn on');
    killBtn.className = s.enabled ? 'danger' : 'primary';
    setOptions(scope, ['', ...s.variations.map((x) => x.variation)], ['the whole flag', ...s.variations.map((x) => `variation ${x.variation}`)]);

    const total = s.variations.reduce((a, x) => a + x.requests, 0);
    const cfg = Object.fromEntries(v.config.map((c) => [c.variation, c]));
    fill(sections.figures, h('h2', {}, 'Variations'), table('Live figures per variation (since start; latency over the last minute)',
      ['Variation', 'Traffic share', 'Requests', 'Error rate', 'Fallback rate', 'p50', 'p95', 'Time to first token (mean)', 'Tokens / request', 'Cost / request', 'Forced fallback'],
      s.variations.map((x) => row([
        x.variation, pct(total ? x.requests / total : null), num(x.requests), pct(x.error_rate, 2), pct(x.fallback_rate, 2),
        secs(x.latency_seconds?.p50), secs(x.latency_seconds?.p95), secs(cfg[x.variation]?.ttft_mean_seconds),
        x.requests ? fixed((x.tokens_in + x.tokens_out) / x.requests, 1) : '–', x.requests ? usd(x.cost_per_request_usd) : '–',
        x.forced_fallback ? badge('forced', 'warn') : 'no',
      ], { 'data-variation': x.variation })), { id: 'variation-table' }));

    if (results) {
      fill(sections.business, h('h2', {}, 'Business metrics'),
        h('p', {}, results.srm.detected ? badge('sample ratio mismatch', 'critical') : badge('SRM check passed', 'ok'),
          ` control “${results.control}” · p = ${fixed(results.srm.p_value, 4)} · `, link(`/results/${enc(key)}`, 'all figures')),
        table('Business metrics and verdicts', ['Variation', 'Metric', 'Users', 'Value', 'Lift', 'Verdict'],
          results.variations.map((r) => row([r.variation, r.metric, num(r.users), fixed(r.value, 4), pct(r.lift), badge(r.verdict.replace('_', ' '), r.verdict)]))));
    } else {
      fill(sections.business, h('h2', {}, 'Business metrics'), h('p', { class: 'muted' }, 'No experiment results for this flag.'));
    }

    if (bandit) {
      const ws = (w) => Object.entries(w || {}).map(([k, n]) => `${k} ${fixed(n / 100, 1)} %`).join(' · ');
      fill(sections.bandit, h('h2', {}, 'Bandit'),
        h('p', { id: 'bandit-summary' }, badge(bandit.status.replace('_', ' '), bandit.status === 'running' ? 'ok' : 'warn'),
          bandit.paused ? [' ', badge('paused', 'warn')] : '', bandit.overridden_by ? [' ', badge(`overridden by ${bandit.overridden_by}`, 'warn')] : '',
          ` ${bandit.algorithm} on “${bandit.metric}” · rule “${bandit.rule}” · epoch ${bandit.epoch} · floor ${pct(bandit.settings.floor)} · every ${bandit.settings.cadence} · now: ${ws(bandit.weights)}`),
        bandit.epochs.length
          ? table('Bandit epochs, newest first', ['Epoch', 'At', 'Why', 'P(best)', 'Weights after'],
            bandit.epochs.map((e) => row([String(e.epoch), when(e.at), badge(e.why.replace(/_/g, ' '), e.why === 'srm' ? 'critical' : e.why === 'moved' ? 'ok' : 'warn'),
              Object.entries(e.p_best).map(([k, p]) => `${k} ${fixed(p, 3)}`).join(' · '), ws(e.weights_after)], { 'data-epoch': String(e.epoch) })), { id: 'bandit-epochs' })
          : h('p', { class: 'muted' }, 'No epoch yet: the rule\'s configured allocation is served.'));
    } else {
      fill(sections.bandit);
    }

    const now = Date.now();
    // The last hour, or since the history began (at least 5 minutes) on a young process.
    const first = Math.min(...v.series.variations.map((sv) => (sv.points.length ? sv.points[0][0] : now)));
    const span = Math.min(3600e3, Math.max(300e3, now - first));
    fill(sections.charts, h('h2', {}, `Last ${Math.round(span / 60e3)} minutes`), h('div', { class: 'charts' }, v.series.variations.map((sv) => {
      const p = sv.points;
      return h('figure', { class: 'chart-box' }, h('figcaption', {}, sv.variation),
        lineChart({ title: `${sv.variation}: p50 and p95 latency`, now, span, format: secs,
          series: [{ name: 'p50', cls: 's1', points: p.map((x) => [x[0], x[1]]) }, { name: 'p95', cls: 's2', points: p.map((x) => [x[0], x[2]]) }] }),
        lineChart({ title: `${sv.variation}: error rate`, now, span, height: 90, format: (x) => pct(x, 1),
          series: [{ name: 'error rate', cls: 's3', points: p.map((x) => [x[0], x[3]]) }] }),
        h('p', { class: 'legend' }, h('span', { class: 'key s1' }, 'p50'), ' ', h('span', { class: 'key s2' }, 'p95'), ' ', h('span', { class: 'key s3' }, 'error rate')));
    })));

    if (s.rollouts.length) {
      rolloutBox.hidden = false;
      setOptions(ruleSel, s.rollouts.map((r) => r.rule));
      const r = rolloutOf();
      setOptions(stageSel, r.stages.map((_, i) => String(i)), r.stages.map((p, i) => `${i}: ${p} %${i === r.stage ? ' (current)' : ''}`), String(r.stage));
      fill(holdBtn, r.held ? 'Release' : 'Hold');
      fill(sections.rollout, h('h2', {}, 'Rollout'), s.rollouts.map((ro) => h('div', { class: 'rollout' },
        h('p', {}, `Rule “${ro.rule}” rolls out “${ro.variation}”: `, h('strong', {}, `${ro.percent} %`), ` (stage ${ro.stage} of ${ro.last_stage}: ${ro.stages.join(' → ')} %)`,
          ro.held ? [' · ', badge('held', 'warn')] : '', ro.auto_advance ? ' · advances on its own' : '', ' · gate ', badge(ro.gate_met ? 'met' : 'not met', ro.gate_met ? 'ok' : 'critical')),
        table(`Gate of stage ${ro.stage}`, ['Threshold', 'Needs', 'Measured', 'Status'], gateRows(ro)),
        ro.reasons.length ? h('ul', { class: 'reasons' }, ro.reasons.map((x) => h('li', {}, x))) : null)));
    } else {
      rolloutBox.hidden = true;
      fill(sections.rollout, h('h2', {}, 'Rollout'), h('p', { class: 'muted' }, 'No rollout rule.'));
    }

    fill(sections.alerts, h('h2', {}, 'Alerts'), table('Alerts of this flag', ['Alert', 'Variation', 'Metric', 'Level', 'Value', 'Since'],
      v.alerts.map((a) => row([a.alert, a.variation, a.metric, badge(a.level), fixed(a.value, 4), when(a.since)]))));

    fill(sections.config, h('h2', {}, 'Effective configuration'),
      v.overrides.length ? h('div', {}, h('p', {}, 'Runtime overrides (differ from the file):'),
        h('ul', { id: 'overrides' }, v.overrides.map((o) => h('li', {}, h('code', {}, o.what), `: file ${JSON.stringify(o.config)}, running ${JSON.stringify(o.runtime)}`))))
        : h('p', { class: 'muted' }, 'Running as the file says (no runtime override).'),
      table('Effective configuration per variation', ['Variation', 'Provider', 'Model', 'Prompt', 'Prompt text', 'Temperature', 'Token budget', 'Tool policy', 'Fallback', 'Forced fallback'],
        v.config.map((c) => row([c.variation, c.provider, c.model_id, c.prompt?.name ?? '–', c.prompt ? h('pre', { class: 'prompt' }, c.prompt.text) : '–',
          c.temperature ?? '–', num(c.token_budget), c.tools ? `${c.tool_policy} (${c.tools.join(', ')})` : c.tool_policy, c.fallback_behavior,
          c.forced_fallback === c.forced_fallback_config ? String(c.forced_fallback) : `${c.forced_fallback} (file: ${c.forced_fallback_config})`])), { id: 'config-table' }));
  }

  return {
    title: `Flag ${key}`,
    mount(root) {
      root.append(
        h('h1', {}, 'Flag ', h('code', {}, key)), summary,
        h('section', { class: 'panel', 'aria-label': 'Actions' },
          h('h2', {}, 'Actions'),
          h('div', { class: 'buttons' }, killBtn),
          h('fieldset', { class: 'actions' }, h('legend', {}, 'Forced fallback'),
            h('label', { for: 'fallback-scope' }, 'For'), scope, h('div', { class: 'buttons' }, forceBtn, liftBtn)),
          rolloutBox, status),
        sections.figures, sections.business, sections.bandit, sections.charts, sections.rollout, sections.alerts, sections.config);
    },
    refresh: (refresh = async () => {
      // Business metrics move slowly and cost the store more: every fifth refresh.
      const fetchResults = resultsAge++ % RESULTS_EVERY === 0;
      const [v, results, bandit] = await Promise.all([
        get(`/admin/console/flags/${enc(key)}`),
        fetchResults ? get(`${path}/results`).catch((e) => { if (e instanceof ApiError) return null; throw e; }) : lastResults,
        fetchResults ? get(`${path}/bandit?limit=10`).catch((e) => { if (e instanceof ApiError) return null; throw e; }) : lastBandit,
      ]);
      lastResults = results;
      lastBandit = bandit;
      render(v, results, bandit);
    }),
  };
}

export { showOutcome };
