// Tiny dependency-free SVG charts for `dvemb eval`: a scatter plot (estimate against truth) and a
// line chart (a metric against projection dimension or removal step). Plain SVG 1.1 text, fixed
// palette, no scripts, so the files render anywhere and diff cleanly.

export interface Series {
  name: string;
  x: readonly number[];
  y: readonly number[];
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  width?: number;
  height?: number;
  /** Draw the line y = x (scatter of estimate vs truth). */
  diagonal?: boolean;
  /** Fixed y range, e.g. [−1, 1] for correlations. */
  yRange?: [number, number];
  /** Logarithmic x axis (projection dimensions). */
  logX?: boolean;
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];
const M = { left: 70, right: 160, top: 36, bottom: 50 };

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e-2 && a < 1e4 ? String(Number(v.toPrecision(3))) : v.toExponential(1);
}

/** About `count` round tick values covering [lo, hi]. */
function ticks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].find((f) => f * mag >= raw) ?? 10) * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

function extent(values: number[], pad = 0.05): [number, number] {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return [0, 1];
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (lo === hi) {
    lo -= Math.abs(lo) || 1;
    hi += Math.abs(hi) || 1;
  }
  const d = (hi - lo) * pad;
  return [lo - d, hi + d];
}

function frame(o: ChartOptions, xr: [number, number], yr: [number, number], body: string[], legend: string[]): string {
  const W = o.width ?? 640;
  const H = o.height ?? 420;
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const tx = (v: number) => (o.logX ? Math.log10(v) : v);
  const sx = (v: number) => M.left + ((tx(v) - tx(xr[0])) / (tx(xr[1]) - tx(xr[0]))) * pw;
  const sy = (v: number) => M.top + ph - ((v - yr[0]) / (yr[1] - yr[0])) * ph;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${M.left + pw / 2}" y="20" text-anchor="middle" font-size="14">${esc(o.title)}</text>`,
    `<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`,
  ];
  const xt = o.logX ? ticks(Math.log10(xr[0]), Math.log10(xr[1])).map((e) => 10 ** e) : ticks(xr[0], xr[1]);
  for (const v of xt) {
    const x = sx(v).toFixed(1);
    parts.push(`<line x1="${x}" y1="${M.top}" x2="${x}" y2="${M.top + ph}" stroke="#eee"/>`, `<text x="${x}" y="${M.top + ph + 15}" text-anchor="middle">${fmt(v)}</text>`);
  }
  for (const v of ticks(yr[0], yr[1])) {
    const y = sy(v).toFixed(1);
    parts.push(`<line x1="${M.left}" y1="${y}" x2="${M.left + pw}" y2="${y}" stroke="#eee"/>`, `<text x="${M.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${fmt(v)}</text>`);
  }
  parts.push(
    `<text x="${M.left + pw / 2}" y="${H - 12}" text-anchor="middle">${esc(o.xLabel)}</text>`,
    `<text transform="translate(16 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`,
  );
  if (o.diagonal) {
    const lo = Math.max(xr[0], yr[0]);
    const hi = Math.min(xr[1], yr[1]);
    if (hi > lo) parts.push(`<line x1="${sx(lo).toFixed(1)}" y1="${sy(lo).toFixed(1)}" x2="${sx(hi).toFixed(1)}" y2="${sy(hi).toFixed(1)}" stroke="#999" stroke-dasharray="4 3"/>`);
  }
  parts.push(...body.map((b) => b.replace(/__SX\(([^)]*)\)/g, (_, v: string) => sx(Number(v)).toFixed(1)).replace(/__SY\(([^)]*)\)/g, (_, v: string) => sy(Number(v)).toFixed(1))));
  legend.forEach((l, i) => {
    const y = M.top + 10 + i * 16;
    parts.push(`<rect x="${M.left + pw + 12}" y="${y - 5}" width="10" height="10" fill="${PALETTE[i % PALETTE.length]}"/>`, `<text x="${M.left + pw + 28}" y="${y}" dominant-baseline="middle">${esc(l)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

/** Points (x, y) per series; with `diagonal`, the line y = x for estimate-vs-truth plots. */
export function scatterChart(series: readonly Series[], options: ChartOptions): string {
  const xs = series.flatMap((s) => [...s.x]);
  const ys = series.flatMap((s) => [...s.y]);
  let xr = extent(xs);
  let yr = options.yRange ?? extent(ys);
  if (options.diagonal) xr = yr = extent([...xs, ...ys]);
  const body = series.flatMap((s, i) =>
    s.x.flatMap((x, k) => {
      const y = s.y[k] as number;
      return Number.isFinite(x) && Number.isFinite(y) ? [`<circle cx="__SX(${x})" cy="__SY(${y})" r="2.5" fill="${PALETTE[i % PALETTE.length]}" fill-opacity="0.6"/>`] : [];
    }),
  );
  return frame(options, xr, yr, body, series.map((s) => s.name));
}

/** One polyline with markers per series (NaN points are skipped). */
export function lineChart(series: readonly Series[], options: ChartOptions): string {
  const xs = series.flatMap((s) => [...s.x]).filter((v) => !options.logX || v > 0);
  let xr = extent(xs, 0.03);
  if (options.logX) xr = [Math.min(...xs) / 1.2, Math.max(...xs) * 1.2];
  const yr = options.yRange ?? extent(series.flatMap((s) => [...s.y]));
  const body = series.flatMap((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const pts = s.x.map((x, k) => [x, s.y[k] as number] as const).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    return [
      `<polyline fill="none" stroke="${color}" stroke-width="1.8" points="${pts.map(([x, y]) => `__SX(${x}),__SY(${y})`).join(' ')}"/>`,
      ...pts.map(([x, y]) => `<circle cx="__SX(${x})" cy="__SY(${y})" r="3" fill="${color}"/>`),
    ];
  });
  return frame(options, xr, yr, body, series.map((s) => s.name));
}
