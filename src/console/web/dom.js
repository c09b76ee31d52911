// DOM helpers: every piece of text goes in as a text node, never as HTML.

/** Creates an element: h('a', {href: '#/'}, 'text', child, [more]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table in a focusable scroll region (wide tables scroll on a phone). */
export function table(caption, headers, rows, attrs = {}) {
  return h('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': caption },
    h('table', attrs,
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length }, 'Nothing yet.')))));
}

/** A row: the first cell is a row header. */
export function row(cells, attrs = {}) {
  return h('tr', attrs, cells.map((c, i) => (i === 0 ? h('th', { scope: 'row' }, c) : h('td', {}, c))));
}

export const num = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));
export const pct = (x, digits = 1) => (x === null || x === undefined ? '–' : `${(x * 100).toFixed(digits)} %`);
export const secs = (s) => {
  if (s === null || s === undefined) return '–';
  return s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms` : `${s.toFixed(2)} s`;
};
export const fixed = (x, d = 3) => (x === null || x === undefined ? '–' : Number(x).toFixed(d));
export const usd = (x) => (x === null || x === undefined ? '–' : `$${Number(x).toFixed(x < 0.01 ? 5 : 3)}`);
export const when = (t) => (t ? new Date(t).toLocaleString('en-GB', { hour12: false }) : '–');

/** A level or state badge: text plus a class for its colour. */
export function badge(text, kind) {
  return h('span', { class: `badge ${kind || text || ''}` }, text ?? '–');
}

/** The link to a route. */
export function link(route, text, attrs = {}) {
  return h('a', { href: `#${route}`, ...attrs }, text);
}

export const enc = encodeURIComponent;
