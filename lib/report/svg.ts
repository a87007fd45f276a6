// Inline SVG charts for the report, drawn here rather than in the browser so the page needs no
// script to show its figures and nothing from the network. Every mark carries a <title>, which
// browsers show on hover.

export const COLORS = {
  helped: '#1b7837',
  hurt: '#c2352b',
  ink: '#1f2328',
  muted: '#6e7781',
  grid: '#d8dee4',
  lr: '#8250df',
  phase: { 'warm-up': '#f6c177', basin: '#9ecae1', ascent: '#c5a3ff' } as Record<string, string>,
  series: ['#0969da', '#bf3989', '#1a7f37', '#bc4c00', '#8250df', '#0a7f8f', '#9a6700', '#cf222e', '#57606a', '#6639ba'],
};

export function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** Short numbers for axes and tooltips. */
export function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(3)));
  // 5e-4 rather than 5.00e-4: trailing zeros say nothing on an axis.
  return v.toExponential(2).replace(/\.?0+e/, 'e').replace('e+', 'e');
}

/** About `count` round tick values covering [lo, hi]. */
export function ticks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  return out;
}

/** Column c of `cols` covers positions [from[c], to[c]] of a length-n series. */
export function columns(n: number, cols: number): { from: number[]; to: number[] } {
  const k = Math.max(1, Math.min(n, cols));
  const from: number[] = [];
  const to: number[] = [];
  for (let c = 0; c < k; c++) {
    from.push(Math.floor((c * n) / k));
    to.push(Math.max(Math.floor((c * n) / k), Math.floor(((c + 1) * n) / k) - 1));
  }
  return { from, to };
}

function meanOver(values: ArrayLike<number>, from: number, to: number, stride = 1, offset = 0): number {
  let s = 0;
  for (let i = from; i <= to; i++) s += values[i * stride + offset]!;
  return s / (to - from + 1);
}

const W = 920;
const PAD = { left: 64, right: 56, top: 44, bottom: 40 };

interface Frame {
  x: (pos: number) => number;
  y: (v: number) => number;
  plotW: number;
  plotH: number;
  H: number;
  top: number;
}

function frame(n: number, lo: number, hi: number, H: number, top = PAD.top): Frame {
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - top - PAD.bottom;
  return {
    x: (pos) => PAD.left + (n <= 1 ? plotW / 2 : (pos / (n - 1)) * plotW),
    y: (v) => top + plotH - ((v - lo) / (hi - lo || 1)) * plotH,
    plotW,
    plotH,
    H,
    top,
  };
}

function yAxis(f: Frame, lo: number, hi: number, label: string): string {
  return (
    ticks(lo, hi, 5)
      .map((t) => `<line x1="${PAD.left}" x2="${W - PAD.right}" y1="${f.y(t).toFixed(1)}" y2="${f.y(t).toFixed(1)}" stroke="${t === 0 ? COLORS.muted : COLORS.grid}" stroke-width="1"/><text x="${PAD.left - 6}" y="${(f.y(t) + 4).toFixed(1)}" text-anchor="end" class="tick">${fmt(t)}</text>`)
      .join('') + `<text transform="translate(14 ${f.top + f.plotH / 2}) rotate(-90)" text-anchor="middle" class="axis-label">${esc(label)}</text>`
  );
}

function xAxis(f: Frame, steps: ArrayLike<number>): string {
  const n = steps.length;
  const first = steps[0] ?? 0;
  const last = steps[n - 1] ?? 0;
  const base = f.top + f.plotH;
  const stepTicks = ticks(first, last, 8).filter((s) => s >= first && s <= last);
  // Positions are step-table indices; map a step number to the nearest one.
  const posOf = (s: number) => {
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (steps[mid]! < s) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  return (
    `<line x1="${PAD.left}" x2="${W - PAD.right}" y1="${base}" y2="${base}" stroke="${COLORS.muted}"/>` +
    stepTicks.map((s) => `<line x1="${f.x(posOf(s)).toFixed(1)}" x2="${f.x(posOf(s)).toFixed(1)}" y1="${base}" y2="${base + 4}" stroke="${COLORS.muted}"/><text x="${f.x(posOf(s)).toFixed(1)}" y="${base + 17}" text-anchor="middle" class="tick">${fmt(s)}</text>`).join('') +
    `<text x="${PAD.left + f.plotW / 2}" y="${f.H - 4}" text-anchor="middle" class="axis-label">training step</text>`
  );
}

function polyline(points: [number, number][], color: string, width: number, extra = ''): string {
  return `<polyline fill="none" stroke="${color}" stroke-width="${width}" stroke-linejoin="round" ${extra} points="${points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ')}"/>`;
}

export interface Band {
  name: string;
  from: number;
  to: number;
}

function bands(f: Frame, list: Band[], n: number): string {
  const half = n > 1 ? f.plotW / (n - 1) / 2 : f.plotW / 2;
  return list
    .map((b) => {
      const x0 = Math.max(PAD.left, f.x(b.from) - half);
      const x1 = Math.min(W - PAD.right, f.x(b.to) + half);
      return `<rect class="phase" data-phase="${esc(b.name)}" x="${x0.toFixed(1)}" y="${f.top}" width="${(x1 - x0).toFixed(1)}" height="${f.plotH}" fill="${COLORS.phase[b.name] ?? COLORS.grid}" fill-opacity="0.45"><title>${esc(b.name)}</title></rect><text x="${((x0 + x1) / 2).toFixed(1)}" y="${f.top - 8}" text-anchor="middle" class="phase-label">${esc(b.name)}</text>`;
    })
    .join('');
}

export interface MagnitudeChart {
  steps: ArrayLike<number>;
  lr: ArrayLike<number>;
  /** Per-step signal, its smoothed version, and the rule's thresholds (absolute units). */
  raw: ArrayLike<number>;
  smooth: ArrayLike<number>;
  thresholds: { label: string; value: number }[];
  bands: Band[];
  yLabel: string;
  height?: number;
}

/** Per-step influence magnitude: faint raw bars, the smoothed curve, thresholds, η and phases. */
export function magnitudeChart(c: MagnitudeChart): string {
  const n = c.raw.length;
  const H = c.height ?? 300;
  const col = columns(n, 460);
  const rawCol = col.from.map((a, i) => meanOver(c.raw, a, col.to[i]!));
  const smoothCol = col.from.map((a, i) => meanOver(c.smooth, a, col.to[i]!));
  const hi = Math.max(...rawCol, ...smoothCol, ...c.thresholds.map((t) => t.value), 0) * 1.05 || 1;
  const f = frame(n, 0, hi, H);
  const mid = (i: number) => (col.from[i]! + col.to[i]!) / 2;
  const colW = Math.max(1, f.plotW / col.from.length);
  let lrMax = 0;
  for (let i = 0; i < n; i++) lrMax = Math.max(lrMax, c.lr[i]!);
  const yLr = (v: number) => f.top + f.plotH - (lrMax > 0 ? v / lrMax : 0) * f.plotH;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(c.yLabel)} by training step">`,
    bands(f, c.bands, n),
    yAxis(f, 0, hi, c.yLabel),
    rawCol.map((v, i) => `<rect x="${(f.x(mid(i)) - colW / 2).toFixed(1)}" y="${f.y(v).toFixed(1)}" width="${colW.toFixed(2)}" height="${(f.y(0) - f.y(v)).toFixed(1)}" fill="${COLORS.series[0]}" fill-opacity="0.28"/>`).join(''),
    c.thresholds.map((t) => `<line x1="${PAD.left}" x2="${W - PAD.right}" y1="${f.y(t.value).toFixed(1)}" y2="${f.y(t.value).toFixed(1)}" stroke="${COLORS.muted}" stroke-dasharray="2 3"/><text x="${W - PAD.right + 4}" y="${(f.y(t.value) + 4).toFixed(1)}" class="tick">${esc(t.label)}</text>`).join(''),
    lrMax > 0 ? polyline(col.from.map((a, i) => [f.x(mid(i)), yLr(meanOver(c.lr, a, col.to[i]!))]), COLORS.lr, 1.2, 'stroke-dasharray="5 4" class="lr"') : '',
    polyline(smoothCol.map((v, i) => [f.x(mid(i)), f.y(v)]), COLORS.ink, 2.2, 'class="smooth"'),
    xAxis(f, c.steps),
    hoverColumns(f, col, (i) => `steps ${c.steps[col.from[i]!]}–${c.steps[col.to[i]!]}: ${esc(c.yLabel)} ${fmt(rawCol[i]!)} (smoothed ${fmt(smoothCol[i]!)}), η ${fmt(meanOver(c.lr, col.from[i]!, col.to[i]!))}`),
    `<g class="legend" transform="translate(${PAD.left} 14)"><rect width="12" height="10" y="-9" fill="${COLORS.series[0]}" fill-opacity="0.28"/><text x="16" class="tick">per step</text>` +
      `<line x1="84" x2="104" y1="-4" y2="-4" stroke="${COLORS.ink}" stroke-width="2.2"/><text x="108" class="tick">smoothed</text>` +
      (lrMax > 0 ? `<line x1="176" x2="196" y1="-4" y2="-4" stroke="${COLORS.lr}" stroke-dasharray="5 4"/><text x="200" class="tick">η (scaled, max ${fmt(lrMax)})</text>` : '') +
      '</g>',
    '</svg>',
  ];
  return parts.join('');
}

function hoverColumns(f: Frame, col: { from: number[]; to: number[] }, title: (i: number) => string): string {
  const n = col.to[col.to.length - 1]! + 1;
  const half = n > 1 ? f.plotW / (n - 1) / 2 : f.plotW / 2;
  return (
    '<g class="hover">' +
    col.from
      .map((a, i) => {
        const x0 = Math.max(PAD.left, f.x(a) - half);
        const x1 = Math.min(W - PAD.right, f.x(col.to[i]!) + half);
        return `<rect x="${x0.toFixed(1)}" y="${f.top}" width="${Math.max(0.5, x1 - x0).toFixed(2)}" height="${f.plotH}" fill="transparent"><title>${title(i)}</title></rect>`;
      })
      .join('') +
    '</g>'
  );
}

export interface SignedChart {
  steps: ArrayLike<number>;
  /** (n × m) per test, already smoothed or not; `sum` the sum over tests. */
  values: ArrayLike<number>;
  m: number;
  names: string[];
  bands: Band[];
  height?: number;
}

/** Signed influence by step: one thin line per test and a bold line for their sum. */
export function signedChart(c: SignedChart): string {
  const n = c.steps.length;
  const H = c.height ?? 300;
  const col = columns(n, 460);
  const series = Array.from({ length: c.m }, (_, j) => col.from.map((a, i) => meanOver(c.values, a, col.to[i]!, c.m, j)));
  const sum = col.from.map((_, i) => series.reduce((s, ser) => s + ser[i]!, 0));
  let lo = Math.min(0, ...sum, ...series.flat());
  let hi = Math.max(0, ...sum, ...series.flat());
  if (hi === lo) hi = lo + 1;
  const padY = (hi - lo) * 0.05;
  lo -= padY;
  hi += padY;
  // The legend sits above the plot, five entries a row, so it never covers a line.
  const legendRows = Math.ceil((c.m + 1) / 5);
  const f = frame(n, lo, hi, H + 14 * (legendRows - 1), PAD.top + 14 * (legendRows - 1));
  const mid = (i: number) => (col.from[i]! + col.to[i]!) / 2;
  const legend = ['sum over tests', ...c.names]
    .map((name, k) => {
      const color = k === 0 ? COLORS.ink : COLORS.series[(k - 1) % COLORS.series.length]!;
      return `<g transform="translate(${(k % 5) * 168} ${Math.floor(k / 5) * 14})"><line x1="0" x2="18" y1="-4" y2="-4" stroke="${color}" stroke-width="${k === 0 ? 2.4 : 1.4}"/><text x="22" class="tick">${esc(name.length > 22 ? name.slice(0, 21) + '…' : name)}</text></g>`;
    })
    .join('');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${f.H}" role="img" aria-label="signed influence by training step">`,
    bands(f, c.bands, n),
    yAxis(f, lo, hi, 'influence per step (signed)'),
    ...series.map((s, j) => polyline(s.map((v, i) => [f.x(mid(i)), f.y(v)]), COLORS.series[j % COLORS.series.length]!, 1.3, 'stroke-opacity="0.85"')),
    polyline(sum.map((v, i) => [f.x(mid(i)), f.y(v)]), COLORS.ink, 2.4, 'class="sum"'),
    xAxis(f, c.steps),
    hoverColumns(f, col, (i) => `steps ${c.steps[col.from[i]!]}–${c.steps[col.to[i]!]}: sum ${fmt(sum[i]!)}; ${c.names.map((nm, j) => `${esc(nm)} ${fmt(series[j]![i]!)}`).join(', ')}`),
    `<g class="legend" transform="translate(${PAD.left} 14)">${legend}</g>`,
    '</svg>',
  ].join('');
}

/** 10^d as 0.01, 0.1, 1, 10, 100 near 1 and as 1e-5 further out. */
function powerLabel(d: number): string {
  if (Number.isInteger(d)) return d >= -2 && d <= 3 ? String(10 ** d) : `1e${d}`;
  return fmt(10 ** d);
}

/** Histogram of log10(values) for the positive values; zeros are counted in the caption. */
export function logHistogram(values: ArrayLike<number>, opts: { bins?: number; xLabel: string; marks?: { value: number; label: string }[] }): string {
  const pos: number[] = [];
  for (let i = 0; i < values.length; i++) if (values[i]! > 0) pos.push(Math.log10(values[i]!));
  const H = 260;
  const bins = opts.bins ?? 40;
  let lo = Math.min(...pos);
  let hi = Math.max(...pos);
  if (!(hi > lo)) {
    lo -= 0.5;
    hi += 0.5;
  }
  const counts = new Array<number>(bins).fill(0);
  for (const v of pos) counts[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))]!++;
  const cmax = Math.max(...counts, 1);
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const x = (v: number) => PAD.left + ((v - lo) / (hi - lo)) * plotW;
  const y = (c: number) => PAD.top + plotH - (c / cmax) * plotH;
  const bw = plotW / bins;
  const decades = ticks(lo, hi, 6);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" role="img" aria-label="histogram of ${esc(opts.xLabel)}">`,
    ticks(0, cmax, 4).map((t) => `<line x1="${PAD.left}" x2="${W - PAD.right}" y1="${y(t).toFixed(1)}" y2="${y(t).toFixed(1)}" stroke="${COLORS.grid}"/><text x="${PAD.left - 6}" y="${(y(t) + 4).toFixed(1)}" text-anchor="end" class="tick">${fmt(t)}</text>`).join(''),
    `<text transform="translate(14 ${PAD.top + plotH / 2}) rotate(-90)" text-anchor="middle" class="axis-label">examples</text>`,
    counts
      .map((c, b) => {
        const a = lo + (b / bins) * (hi - lo);
        return `<rect class="bar" x="${(PAD.left + b * bw + 0.5).toFixed(1)}" y="${y(c).toFixed(1)}" width="${Math.max(0.5, bw - 1).toFixed(2)}" height="${(PAD.top + plotH - y(c)).toFixed(1)}" fill="${COLORS.series[0]}" fill-opacity="0.75"><title>${c} examples with ${esc(opts.xLabel)} in [${fmt(10 ** a)}, ${fmt(10 ** (a + (hi - lo) / bins))})</title></rect>`;
      })
      .join(''),
    `<line x1="${PAD.left}" x2="${W - PAD.right}" y1="${PAD.top + plotH}" y2="${PAD.top + plotH}" stroke="${COLORS.muted}"/>`,
    decades.map((d) => `<text x="${x(d).toFixed(1)}" y="${PAD.top + plotH + 17}" text-anchor="middle" class="tick">${powerLabel(d)}</text>`).join(''),
    (opts.marks ?? []).map((mk) => `<line x1="${x(Math.log10(mk.value)).toFixed(1)}" x2="${x(Math.log10(mk.value)).toFixed(1)}" y1="${PAD.top}" y2="${PAD.top + plotH}" stroke="${COLORS.hurt}" stroke-dasharray="3 3"/><text x="${(x(Math.log10(mk.value)) - 4).toFixed(1)}" y="${PAD.top + 10}" text-anchor="end" class="tick">${esc(mk.label)}</text>`).join(''),
    `<text x="${PAD.left + plotW / 2}" y="${H - 4}" text-anchor="middle" class="axis-label">${esc(opts.xLabel)} (log scale)</text>`,
    '</svg>',
  ].join('');
}

/** Diverging colour: green for helped (positive), red for hurt (negative), white at zero. */
export function diverging(v: number, max: number): string {
  if (!Number.isFinite(v)) return '#eef1f4';
  const t = Math.min(1, Math.abs(v) / (max || 1)) ** 0.7;
  const [r, g, b] = v >= 0 ? [27, 120, 55] : [194, 53, 43];
  const mix = (c: number) => Math.round(255 + (c - 255) * t);
  return `rgb(${mix(r)},${mix(g)},${mix(b)})`;
}

/** A (rows × cols) heatmap with labelled axes; NaN cells are drawn blank. */
export function heatmap(values: ArrayLike<number>, rows: number, cols: number, opts: { rowLabels: string[]; colLabels: string[]; xLabel: string; yLabel: string; maxCell?: number }): string {
  const cell = Math.max(14, Math.min(opts.maxCell ?? 64, Math.floor(640 / Math.max(rows, cols))));
  // Room for the longest row label (about 6.5 px a character at 11 px) and the rotated axis title.
  const left = 34 + Math.ceil(6.5 * Math.max(0, ...opts.rowLabels.map((l) => l.length)));
  const top = 24;
  const Wd = left + cols * cell + 150;
  const Hd = top + rows * cell + 56;
  let max = 0;
  for (let i = 0; i < rows * cols; i++) if (Number.isFinite(values[i]!)) max = Math.max(max, Math.abs(values[i]!));
  const showValues = cell >= 44;
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${Wd} ${Hd}" style="width:${Wd}px;max-width:100%;height:auto" role="img" aria-label="heatmap: ${esc(opts.yLabel)} by ${esc(opts.xLabel)}">`];
  for (let r = 0; r < rows; r++) {
    out.push(`<text x="${left - 6}" y="${top + r * cell + cell / 2 + 4}" text-anchor="end" class="tick">${esc(opts.rowLabels[r] ?? String(r))}</text>`);
    for (let c = 0; c < cols; c++) {
      const v = values[r * cols + c]!;
      out.push(`<rect class="cell" x="${left + c * cell}" y="${top + r * cell}" width="${cell - 1}" height="${cell - 1}" fill="${diverging(v, max)}"><title>${esc(opts.rowLabels[r] ?? String(r))} → ${esc(opts.colLabels[c] ?? String(c))}: ${Number.isFinite(v) ? fmt(v) : 'not defined (boundary before the segment)'}</title></rect>`);
      if (showValues && Number.isFinite(v)) out.push(`<text x="${left + c * cell + cell / 2}" y="${top + r * cell + cell / 2 + 4}" text-anchor="middle" class="cell-value" style="fill:${Math.abs(v) > 0.6 * max ? "#fff" : COLORS.ink}">${fmt(v)}</text>`);
    }
  }
  for (let c = 0; c < cols; c++) out.push(`<text x="${left + c * cell + cell / 2}" y="${top + rows * cell + 16}" text-anchor="middle" class="tick">${esc(opts.colLabels[c] ?? String(c))}</text>`);
  out.push(`<text x="${left + (cols * cell) / 2}" y="${Hd - 8}" text-anchor="middle" class="axis-label">${esc(opts.xLabel)}</text>`);
  out.push(`<text transform="translate(12 ${top + (rows * cell) / 2}) rotate(-90)" text-anchor="middle" class="axis-label">${esc(opts.yLabel)}</text>`);
  // Colour key.
  const kx = left + cols * cell + 24;
  for (let i = 0; i <= 20; i++) {
    const v = max * (1 - i / 10);
    out.push(`<rect x="${kx}" y="${top + (i * rows * cell) / 21}" width="14" height="${(rows * cell) / 21 + 0.5}" fill="${diverging(v, max)}"/>`);
  }
  out.push(`<rect x="${kx}" y="${top}" width="14" height="${rows * cell}" fill="none" stroke="${COLORS.grid}"/>`);
  out.push(`<text x="${kx + 18}" y="${top + 8}" class="tick">+${fmt(max)} helped</text><text x="${kx + 18}" y="${top + rows * cell}" class="tick">−${fmt(max)} hurt</text>`);
  out.push('</svg>');
  return out.join('');
}
