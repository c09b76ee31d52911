// Small SVG line charts drawn by hand: a few polylines per chart need no library.

const NS = 'http://www.w3.org/2000/svg';

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/**
 * A line chart over the last `span` ms (at most the last hour).
 * series: [{name, cls, points: [[at_ms, value|null], ...]}]; format: value -> label text.
 */
export function lineChart({ title, series, format, now = Date.now(), span = 3600e3, width = 320, height = 120 }) {
  const pad = { l: 52, r: 8, t: 8, b: 20 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  const t0 = now - span;
  let max = 0;
  for (const sr of series) for (const [, v] of sr.points) if (v !== null && v > max) max = v;
  if (max <= 0) max = 1;
  const x = (t) => pad.l + ((t - t0) / span) * w;
  const y = (v) => pad.t + hgt - (v / max) * hgt;
  const last = series.map((sr) => {
    const vals = sr.points.filter(([, v]) => v !== null);
    return `${sr.name} ${vals.length ? format(vals[vals.length - 1][1]) : 'no data'}`;
  });
  const svg = s('svg', {
    viewBox: `0 0 ${width} ${height}`, width: '100%', height, role: 'img', class: 'chart',
    'aria-label': `${title}, last ${Math.round(span / 60e3)} minutes; latest: ${last.join(', ')}`,
  });
  svg.appendChild(s('title', {}, title));
  svg.appendChild(s('rect', { x: pad.l, y: pad.t, width: w, height: hgt, class: 'plot' }));
  for (const [v, label] of [[max, format(max)], [max / 2, format(max / 2)], [0, format(0)]]) {
    svg.appendChild(s('line', { x1: pad.l, x2: pad.l + w, y1: y(v), y2: y(v), class: 'grid' }));
    svg.appendChild(s('text', { x: pad.l - 4, y: y(v) + 4, class: 'tick', 'text-anchor': 'end' }, label));
  }
  svg.appendChild(s('text', { x: pad.l, y: height - 4, class: 'tick' }, `−${Math.round(span / 60e3)} min`));
  svg.appendChild(s('text', { x: pad.l + w, y: height - 4, class: 'tick', 'text-anchor': 'end' }, 'now'));
  for (const sr of series) {
    // Gaps (no data) split the line.
    let run = [];
    const flush = () => {
      if (run.length === 1) svg.appendChild(s('circle', { cx: run[0][0], cy: run[0][1], r: 2, class: `dot ${sr.cls}` }));
      else if (run.length > 1) svg.appendChild(s('polyline', { points: run.map((p) => p.join(',')).join(' '), class: `line ${sr.cls}` }));
      run = [];
    };
    for (const [t, v] of sr.points) {
      if (t < t0) continue;
      if (v === null) flush();
      else run.push([x(t).toFixed(1), y(v).toFixed(1)]);
    }
    flush();
  }
  return svg;
}
