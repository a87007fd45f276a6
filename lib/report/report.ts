// `dvemb report`: one self-contained HTML file (inline CSS, SVG, PNG data URIs and a few lines of
// script; nothing from the network) showing when in training the data mattered, which examples
// helped and hurt chosen test points, self-influence, and data value dynamics (docs/REPORT.md).
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { packageRoot } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { npyView, readNpyHeaderFile } from '../trajectory/npy.js';
import { Trajectory } from '../trajectory/trajectory.js';
import { analyze, locateTrajectory, type Analysis, type RankedExample, type ReportProgress } from './analyze.js';
import { imageRange, imageUri } from './images.js';
import { readReportInput, type ReportInput } from './input.js';
import { movingAverage, type PhaseResult, type PhaseRule } from './phases.js';
import { COLORS, esc, fmt, heatmap, logHistogram, magnitudeChart, signedChart, type Band } from './svg.js';

export { prepareReport, readReportInput, dynamicsFromSegments, REPORT_INPUT, REPORT_FILES, type PrepareReportOptions, type ReportInputFile, type ImageSpec, type Dynamics, type SegmentDynamicsLike } from './input.js';
export type { ReportProgress } from './analyze.js';
export { DEFAULT_PHASE_RULE, findPhases, type PhaseRule, type PhaseResult, type Phase } from './phases.js';

export interface ReportOptions {
  /** Output path (default: <dir>/report.html). */
  out?: string;
  backend?: Backend;
  /** Fixed "generated" time, for reproducible files. */
  now?: Date;
  onProgress?: (p: ReportProgress) => void;
}

/** What the report found, for `dvemb report --json` and for programs. */
export interface ReportSummary {
  out: string;
  tests: number;
  steps: number;
  occurrences: number;
  examples: number;
  phases: { name: string; fromStep: number; toStep: number; share: number }[];
  noPhases: string | null;
  phasesPerLr: { name: string; fromStep: number; toStep: number }[];
  reading: string[];
  selfInfluence: { source: string; count: number; top: { id: number; value: number; label: number | null }[] } | { none: string };
  dynamics: { shape: number[] } | null;
  warnings: string[];
}

function version(): string {
  try {
    return (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version?: string }).version ?? '?';
  } catch {
    return '?';
  }
}

function phaseBands(p: PhaseResult): Band[] {
  return p.phases.map((x) => ({ name: x.name, from: x.from, to: x.to }));
}

function shareOf(values: ArrayLike<number>, from: number, to: number): number {
  let a = 0;
  let s = 0;
  for (let i = 0; i < values.length; i++) {
    a += values[i]!;
    if (i >= from && i <= to) s += values[i]!;
  }
  return a > 0 ? s / a : 0;
}

function describePhases(p: PhaseResult, steps: ArrayLike<number>): string {
  if (p.phases.length === 0) return `<p class="no-phases"><strong>No phases found</strong>: ${esc(p.none ?? '')}.</p>`;
  return `<ul class="phases">${p.phases.map((x) => `<li><span class="swatch" style="background:${COLORS.phase[x.name]}"></span><strong>${esc(x.name)}</strong>: steps ${steps[x.from]}–${steps[x.to]}</li>`).join('')}</ul>`;
}

function ruleText(rule: PhaseRule, window: number): string {
  return (
    `Rule (docs/REPORT.md): smooth with a centred moving average of ${window} steps, divide by the maximum; ` +
    `<em>warm-up</em> = from step 0 to the end of the first span ≥ ${rule.high} of the maximum, if it starts in the first ${(100 * rule.warmupStartsBy).toFixed(0)}% of the steps and ends before ${(100 * rule.warmupEndsBy).toFixed(0)}%; ` +
    `<em>basin</em> = the longest later span ≤ ${rule.low}, if it covers ≥ ${(100 * rule.minBasin).toFixed(0)}% of the steps; ` +
    `<em>ascent</em> = everything after the basin, if the last ${(100 * rule.tail).toFixed(0)}% of the steps average above ${rule.low}.`
  );
}

class Pictures {
  // One range for training and test images, so the same pixel value looks the same in both.
  private readonly range: [number, number] | null;
  constructor(private readonly input: ReportInput) {
    const spec = input.image;
    const data = input.trainImages ?? input.testImages;
    this.range = spec && data ? imageRange(spec, data) : null;
  }
  train(id: number, size: number, alt: string): string {
    const { image, trainImages } = this.input;
    if (!image || !trainImages || !this.range || id < 0 || id >= this.input.trainImageCount) return `<div class="noimg" style="width:${size}px;height:${size}px">#${id}</div>`;
    return `<img class="px" width="${size}" height="${Math.round((size * image.height) / image.width)}" alt="${esc(alt)}" src="${imageUri(trainImages, id, image, this.range)}">`;
  }
  test(j: number, size: number, alt: string): string {
    const { image, testImages } = this.input;
    if (!image || !testImages || !this.range) return '';
    return `<img class="px" width="${size}" height="${Math.round((size * image.height) / image.width)}" alt="${esc(alt)}" src="${imageUri(testImages, j, image, this.range)}">`;
  }
}

function labelName(input: ReportInput, label: number | null | undefined): string {
  if (label === null || label === undefined || !Number.isFinite(label)) return '';
  return input.classNames?.[label] ?? String(label);
}

function trainLabel(input: ReportInput, id: number): number | null {
  const v = input.trainLabels?.[id];
  return v === undefined ? null : v;
}

function stepList(steps: number[], strongest: number): string {
  const shown = steps.length <= 6 ? steps : [...steps.slice(0, 5), NaN];
  return shown.map((s) => (Number.isNaN(s) ? `… (${steps.length})` : s === strongest ? `<b>${s}</b>` : String(s))).join(', ');
}

function exampleCard(input: ReportInput, pics: Pictures, e: RankedExample, kind: 'pro' | 'opp', testLabel: number | null): string {
  const label = trainLabel(input, e.id);
  const name = labelName(input, label);
  const differs = label !== null && testLabel !== null && label !== testLabel;
  return (
    `<div class="card ${kind}${differs ? ' differs' : ''}" data-id="${e.id}">` +
    pics.train(e.id, 64, `training example ${e.id}${name ? `, label ${name}` : ''}`) +
    `<div class="cap"><span class="id">#${e.id}</span>${name ? ` <span class="lab" title="${differs ? 'label differs from the test point' : 'same label as the test point'}">${esc(name)}</span>` : ''}` +
    `<br><span class="score ${kind}">${e.score >= 0 ? '+' : ''}${fmt(e.score)}</span>` +
    `<br><span class="steps" title="steps at which this example was used; bold: its strongest occurrence (${fmt(e.strongestScore)})">steps ${stepList(e.steps, e.strongestStep)}</span></div></div>`
  );
}

function influenceSection(input: ReportInput, a: Analysis): string {
  if (!input.tests) {
    return `<section id="influence"><h2>When the data mattered</h2><div class="absent" data-absent="influence">No test points were chosen, so there is no influence to show. Write a <code>report.json</code> with <code>prepareReport(dir, { tests })</code> (docs/REPORT.md).</div></section>`;
  }
  const w = a.phases.window;
  const smooth = movingAverage(a.magnitude, w);
  const smoothLr = movingAverage(a.perLr, a.phasesPerLr.window);
  let mx = 0;
  for (const v of smooth) mx = Math.max(mx, v);
  let mxLr = 0;
  for (const v of smoothLr) mxLr = Math.max(mxLr, v);
  const signedSmooth = new Float64Array(a.signed.length);
  for (let j = 0; j < a.m; j++) {
    const col = movingAverage(Array.from({ length: a.steps.length }, (_, t) => a.signed[t * a.m + j]!), w);
    col.forEach((v, t) => (signedSmooth[t * a.m + j] = v));
  }
  const th = (max: number) => [
    { label: `high ${input.rule.high}`, value: input.rule.high * max },
    { label: `low ${input.rule.low}`, value: input.rule.low * max },
  ];
  const reading = a.reading.lines.map((l) => `<p>${esc(l)}</p>`).join('');
  const quarters = a.reading.quarters.map((q) => `<td>${(100 * q).toFixed(0)}%</td>`).join('');
  return `<section id="influence">
<h2>When the data mattered: influence by training step</h2>
<p class="lede">For each step, the influence of that step's batch on the chosen test points' loss at the end of training:
the mean over the ${a.m} test point${a.m === 1 ? '' : 's'} of Σ |⟨g<sub>test</sub>, DVEmb(z, t)⟩| over the batch's examples (the magnitude; positive and negative contributions both count).
Wang et al. (2024) describe three phases: a <em>high-impact warm-up</em>, a <em>low-impact basin</em> and a <em>late ascent</em>.</p>
<figure class="chart" data-chart="influence-magnitude" data-min="50">${magnitudeChart({ steps: a.steps, lr: a.lr, raw: a.magnitude, smooth, thresholds: th(mx), bands: phaseBands(a.phases), yLabel: 'influence magnitude' })}
<figcaption>${describePhases(a.phases, a.steps)}<p class="rule">${ruleText(input.rule, w)}</p></figcaption></figure>
<div class="reading"><h3>Data-selection timing: when choosing data pays</h3>${reading}
<table class="quarters"><tr><th>quarter of the steps</th><th>1st</th><th>2nd</th><th>3rd</th><th>4th</th></tr><tr><th>share of the influence</th>${quarters}</tr></table></div>
<figure class="chart" data-chart="influence-per-lr" data-min="50">${magnitudeChart({ steps: a.steps, lr: a.lr, raw: a.perLr, smooth: smoothLr, thresholds: th(mxLr), bands: phaseBands(a.phasesPerLr), yLabel: 'magnitude ÷ η', height: 240 })}
<figcaption>The same magnitude per unit of learning rate (÷ η<sub>t</sub>): what a step's data would weigh at equal step size, which separates the trajectory from the schedule. Same rule: ${describePhases(a.phasesPerLr, a.steps).replace(/^<p class="no-phases">|<\/p>$/g, '')}</figcaption></figure>
<figure class="chart" data-chart="influence-signed" data-min="${2 + a.m}">${signedChart({ steps: a.steps, values: signedSmooth, m: a.m, names: input.testNames, bands: phaseBands(a.phases) })}
<figcaption>Signed influence by step (moving average of ${w} steps), per test point and summed: above zero the step's data helped (removing them would raise the test loss), below zero they hurt.</figcaption></figure>
</section>`;
}

function attributionSection(input: ReportInput, a: Analysis, pics: Pictures): string {
  if (!input.tests) return '';
  const cards = a.top
    .map((t, j) => {
      const label = input.testLabels[j] ?? null;
      const name = labelName(input, label);
      let total = 0;
      for (let s = 0; s < a.steps.length; s++) total += a.signed[s * a.m + j]!;
      const row = (list: RankedExample[], kind: 'pro' | 'opp') =>
        list.length > 0 ? list.map((e) => exampleCard(input, pics, e, kind, label)).join('') : `<p class="none">none: no training example ${kind === 'pro' ? 'helped' : 'hurt'} this test point</p>`;
      return `<div class="test" data-test="${j}">
<div class="test-head">${pics.test(j, 96, `${input.testNames[j]}${name ? `, label ${name}` : ''}`)}<div><h3>${esc(input.testNames[j] ?? `test ${j}`)}${name ? ` <span class="lab">label ${esc(name)}</span>` : ''}</h3>
<p>Sum of all training influence: <span class="score ${total >= 0 ? 'pro' : 'opp'}">${total >= 0 ? '+' : ''}${fmt(total)}</span></p></div></div>
<h4 class="pro">Proponents: removing them would raise this test point's loss</h4><div class="cards">${row(t.proponents, 'pro')}</div>
<h4 class="opp">Opponents: removing them would lower it</h4><div class="cards">${row(t.opponents, 'opp')}</div>
</div>`;
    })
    .join('\n');
  return `<section id="attribution">
<h2>Who helped and who hurt: top ${input.top} proponents and opponents</h2>
<p class="lede">Scores are summed over every step an example was used in (all-epoch removal). Under each example: its label (outlined when it differs from the test point's), its score, and the steps it was used at, the strongest occurrence in bold.</p>
<div class="chart tests" data-chart="attribution" data-min="${input.tests.m}">${cards}</div>
</section>`;
}

function selfInfluenceSection(input: ReportInput, a: Analysis, pics: Pictures): string {
  const si = a.selfInfluence;
  if ('none' in si) {
    return `<section id="self-influence"><h2>Self-influence</h2><div class="absent" data-absent="self-influence">Self-influence ${esc(si.none)}.</div></section>`;
  }
  const order = Array.from(si.ids.keys()).sort((x, y) => si.values[y]! - si.values[x]!);
  const top = order.slice(0, 10);
  const zeros = Array.from(si.values).filter((v) => !(v > 0)).length;
  const cards = top
    .map((e) => {
      const id = si.ids[e]!;
      const label = labelName(input, trainLabel(input, id));
      return `<div class="card self" data-id="${id}">${pics.train(id, 64, `training example ${id}${label ? `, label ${label}` : ''}`)}<div class="cap"><span class="id">#${id}</span>${label ? ` <span class="lab">${esc(label)}</span>` : ''}<br><span class="score">${fmt(si.values[e]!)}</span></div></div>`;
    })
    .join('');
  const cut = top.length > 0 ? si.values[top[top.length - 1]!]! : 0;
  return `<section id="self-influence">
<h2>Self-influence</h2>
<p class="lede">Σ<sub>t</sub> η<sub>t</sub> w<sub>z</sub> ‖g<sub>t</sub>(z)‖² over each example's occurrences, in the projected space (TracIn-RP; w<sub>z</sub> carries the 1/|B| of a mean loss). ${esc(si.source)}. Examples the model found hard to fit rank high: the usual first place to look for mislabelled or atypical data.</p>
<figure class="chart" data-chart="self-influence" data-min="20">${logHistogram(si.values, { xLabel: 'self-influence', marks: cut > 0 ? [{ value: cut, label: `top ${top.length}` }] : [] })}
<figcaption>${si.values.length} examples${zeros ? `; ${zeros} with zero self-influence are not drawn` : ''}.</figcaption></figure>
<h3>Highest self-influence</h3><div class="cards">${cards}</div>
</section>`;
}

/** Most targets drawn in the group heatmap; the rest are in attribution.npy. */
const GROUP_TARGETS_SHOWN = 40;

/**
 * The distilled-datamodel attribution matrix (lib/ddm: attribution.npy, K groups × targets, with
 * groups.json) when it lies in the report's directory or the one above it, as `dvemb eval --ddm`
 * leaves it.
 */
function groupAttributionSection(dir: string): string {
  const title = '<h2>Group attribution (distilled datamodel)</h2>';
  const where = [dir, dirname(dir)].find((d) => existsSync(join(d, 'attribution.npy')) && existsSync(join(d, 'groups.json')));
  if (!where) {
    return `<section id="groups">${title}<div class="absent" data-absent="groups"><strong>Not computed.</strong> A distilled datamodel attributes the test losses to groups of training examples: run <code>dvemb eval --ddm</code>, or <code>saveAttribution(dir, …)</code> from the DDM API, into this directory or the one above it (docs/DDM.md).</div></section>`;
  }
  const path = join(where, 'attribution.npy');
  const header = readNpyHeaderFile(path);
  const table = JSON.parse(readFileSync(join(where, 'groups.json'), 'utf8')) as { sizes?: number[]; labels?: number[] };
  const [K, T] = header.shape as [number, number];
  const W = npyView(readFileSync(path), header) as Float32Array;
  const shown = Math.min(T, GROUP_TARGETS_SHOWN);
  const values = new Float64Array(K * shown);
  for (let k = 0; k < K; k++) for (let j = 0; j < shown; j++) values[k * shown + j] = W[k * T + j]!;
  const rowLabels = Array.from({ length: K }, (_, k) => `group ${k}${table.labels ? ` (label ${table.labels[k]})` : ''}${table.sizes ? `, ${table.sizes[k]} ex.` : ''}`);
  const colLabels = Array.from({ length: shown }, (_, j) => String(j));
  return `<section id="groups">
${title}
<p class="lede">W[k, j] from the linear datamodel fitted to online reverse steps on each group's distilled synset: positive (green) means removing group k raises target j's loss, i.e. the group helped. ${T > shown ? `The first ${shown} of ${T} targets are drawn; all are in ` : 'From '}<code>${esc(path)}</code>.</p>
<figure class="chart heat" data-chart="groups" data-min="${K}"><figcaption class="title">${K} groups × ${T} evaluation targets</figcaption>${heatmap(values, K, shown, { rowLabels, colLabels, xLabel: 'evaluation target', yLabel: 'group', maxCell: 24 })}</figure>
</section>`;
}

function dynamicsSection(input: ReportInput): string {
  const d = input.dynamics;
  if (!d) {
    return `<section id="dynamics"><h2>Data value dynamics</h2><div class="absent" data-absent="dynamics"><strong>Not computed.</strong> Data value dynamics need segments: compute them with <code>computeSegments</code> or <code>dvemb compute --segment j/K</code> (docs/SEGMENTS.md), score the test points at every segment boundary with <code>dataValueDynamics(dir, tests, { per: 'occurrence' })</code>, and pass <code>dynamicsFromSegments(result)</code> to <code>prepareReport(dir, { dynamics })</code>.</div></section>`;
  }
  const K = d.shape[d.shape.length - 2]!;
  const B = d.shape[d.shape.length - 1]!;
  const rowLabels = Array.from({ length: K }, (_, j) => (d.segments ? `segment ${j} (steps ${d.segments[j]![0]}–${d.segments[j]![1]})` : `segment ${j}`));
  const colLabels = Array.from({ length: B }, (_, b) => (d.boundaries ? `step ${d.boundaries[b]}` : `boundary ${b}`));
  // The small per-test maps get short labels, so that two fit side by side.
  const shortRows = Array.from({ length: K }, (_, j) => (d.segments ? `seg ${j} (${d.segments[j]![0]}–${d.segments[j]![1]})` : `seg ${j}`));
  const shortCols = Array.from({ length: B }, (_, b) => (d.boundaries ? String(d.boundaries[b]) : String(b)));
  const maps: { title: string; values: Float64Array }[] = [];
  if (d.shape.length === 2) maps.push({ title: 'sum over the test points', values: d.values });
  else {
    const m = d.shape[0];
    const sum = new Float64Array(K * B);
    for (let j = 0; j < m; j++) for (let i = 0; i < K * B; i++) sum[i]! += d.values[j * K * B + i]!;
    maps.push({ title: 'sum over the test points', values: sum });
    for (let j = 0; j < m; j++) maps.push({ title: input.testNames[j] ?? `test ${j}`, values: d.values.subarray(j * K * B, (j + 1) * K * B) });
  }
  return `<section id="dynamics">
<h2>Data value dynamics</h2>
<p class="lede">Row j: the data of segment j; column: a segment-boundary checkpoint. Each cell is that data's influence on the test loss at that checkpoint (REFERENCE §3), summed over the segment's occurrences. Reading along a row shows whether a segment's contribution persists, fades or turns as training goes on.</p>
${maps
  .map((mp, i) => {
    const fig = `<figure class="chart heat" data-chart="dynamics-${i}" data-min="${K}"><figcaption class="title">${esc(mp.title)}</figcaption>${heatmap(mp.values, K, B, i === 0 ? { rowLabels, colLabels, xLabel: 'checkpoint (segment boundary)', yLabel: 'data of segment' } : { rowLabels: shortRows, colLabels: shortCols, xLabel: 'checkpoint (step)', yLabel: 'data of segment', maxCell: 36 })}</figure>`;
    // The sum large; the per-test maps smaller, side by side.
    return i === 0 ? fig + (maps.length > 1 ? '<div class="heat-grid">' : '') : fig;
  })
  .join('\n')}${maps.length > 1 ? '</div>' : ''}
</section>`;
}

const CSS = `
:root{--ink:#1f2328;--muted:#59636e;--line:#d8dee4;--helped:${COLORS.helped};--hurt:${COLORS.hurt};--bg:#fff;--panel:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1000px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 8px;padding-top:12px;border-top:1px solid var(--line)}h3{font-size:16px;margin:16px 0 6px}h4{font-size:14px;margin:12px 0 6px}
.meta{color:var(--muted);font-size:13px;margin:0}
nav{margin:12px 0 0;font-size:14px}nav a{margin-right:14px;color:#0969da;text-decoration:none}
.lede{color:var(--muted);max-width:860px}
figure{margin:12px 0 18px}figure svg{width:100%;height:auto;display:block}
.heat-grid{display:flex;flex-wrap:wrap;gap:8px 24px}.heat-grid figure{margin:4px 0}figcaption.title{font-weight:600;color:var(--ink)}
figcaption{font-size:13px;color:var(--muted)}
svg text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:var(--ink)}
svg .tick{fill:#57606a;font-size:11px}svg .axis-label{fill:#57606a;font-size:12px}svg .phase-label{font-size:12px;font-weight:600;fill:#3d444d}svg .cell-value{font-size:10px}
svg .hover rect:hover{fill:rgba(9,105,218,.08)}
.phases{list-style:none;padding:0;margin:4px 0;display:flex;gap:18px;flex-wrap:wrap;color:var(--ink)}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.no-phases{color:var(--ink)}
.rule{font-size:12px}
.reading{background:var(--panel);border:1px solid var(--line);border-left:4px solid #0969da;border-radius:6px;padding:4px 16px 10px;margin:8px 0 20px}
.reading p{margin:6px 0}
.quarters{border-collapse:collapse;font-size:13px;margin-top:6px}.quarters th,.quarters td{border:1px solid var(--line);padding:2px 10px;text-align:center}.quarters th{background:#fff;font-weight:600}
.test{border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:14px 0}
.test-head{display:flex;gap:16px;align-items:center}.test-head h3{margin:0}.test-head p{margin:2px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{width:112px;border:1px solid var(--line);border-radius:6px;padding:6px;text-align:center;font-size:12px;background:#fff}
.card.pro{border-top:4px solid var(--helped)}.card.opp{border-top:4px solid var(--hurt)}.card.self{border-top:4px solid #0969da}
.card.differs .lab{outline:2px solid #bf8700;border-radius:3px;padding:0 3px}
.cap{margin-top:4px;line-height:1.35}.id{color:var(--muted)}.lab{font-weight:700}
.score.pro{color:var(--helped);font-weight:600}.score.opp{color:var(--hurt);font-weight:600}
.steps{color:var(--muted);font-size:11px}
h4.pro{color:var(--helped)}h4.opp{color:var(--hurt)}
img.px{image-rendering:pixelated;image-rendering:crisp-edges;border:1px solid var(--line);background:#fff}
.noimg{display:flex;align-items:center;justify-content:center;margin:0 auto;background:var(--panel);color:var(--muted);border:1px dashed var(--line)}
.absent{background:var(--panel);border:1px dashed #afb8c1;border-radius:6px;padding:12px 16px;color:var(--ink)}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 14px;font-size:13px}
footer{margin-top:40px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:10px}
code{background:var(--panel);padding:0 4px;border-radius:3px;font-size:13px}
`;

// Marks each chart rendered once the page has laid out: an <svg> with enough marks and a
// non-empty box, or (for the example grids) every image decoded. Tests read data-rendered.
const SCRIPT = `
window.addEventListener('load', function () {
  var charts = document.querySelectorAll('[data-chart]');
  var bad = 0;
  charts.forEach(function (el) {
    var min = Number(el.getAttribute('data-min') || 10);
    var svg = el.querySelector('svg');
    var count = 0, ok = false;
    if (svg) {
      count = svg.querySelectorAll('*').length;
      var box = svg.getBoundingClientRect();
      ok = count >= min && box.width > 0 && box.height > 0;
    } else {
      var imgs = el.querySelectorAll('img');
      var cards = el.querySelectorAll('.test');
      count = cards.length;
      ok = count >= min;
      imgs.forEach(function (img) { if (!img.complete || img.naturalWidth === 0) ok = false; });
    }
    el.setAttribute('data-elements', String(count));
    el.setAttribute('data-rendered', ok ? 'yes' : 'no');
    if (!ok) bad++;
  });
  document.documentElement.setAttribute('data-rendered', bad === 0 ? 'all' : 'incomplete');
});
`;

function renderHtml(input: ReportInput, a: Analysis, when: Date): string {
  const s = input.set.manifest;
  const pics = new Pictures(input);
  let meta: Record<string, unknown> = {};
  const trajDir = locateTrajectory(input.set);
  if (trajDir) {
    try {
      meta = Trajectory.open(trajDir).manifest.meta ?? {};
    } catch {
      // the header just shows less
    }
  }
  const about = ['model', 'dataset', 'optimizer']
    .filter((k) => typeof meta[k] === 'string')
    .map((k) => `${k}: ${esc(String(meta[k]))}`)
    .join(' · ');
  const warnings = input.warnings.length > 0 ? `<div class="warn">${input.warnings.map((w) => esc(w)).join('<br>')}</div>` : '';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>${esc(input.title)} — dvemb report</title>
<style>${CSS}</style>
</head>
<body>
<main>
<h1>${esc(input.title)}</h1>
<p class="meta">${about ? `${about}<br>` : ''}${s.steps} steps (${a.steps[0]}–${a.steps[a.steps.length - 1]}), ${s.occurrences} occurrences of ${a.examples} training examples · embedding dim ${s.dim} (${esc(s.mode)}, ${esc(s.curvature)}, ${esc(s.precision)}) · computed with the ${esc(s.backend)} backend</p>
<nav><a href="#influence">Influence by step</a><a href="#attribution">Proponents &amp; opponents</a><a href="#self-influence">Self-influence</a><a href="#dynamics">Data value dynamics</a><a href="#groups">Group attribution</a></nav>
${warnings}
${influenceSection(input, a)}
${attributionSection(input, a, pics)}
${selfInfluenceSection(input, a, pics)}
${dynamicsSection(input)}
${groupAttributionSection(input.set.dir)}
<footer>Influence is the first-order trajectory-specific leave-one-out estimate ⟨∇ℓ(θ<sub>T</sub>, z<sub>test</sub>), DVEmb⟩ (Wang et al. 2024, docs/MATH.md): positive means the training example helped.
Generated by dvemb ${esc(version())} on ${esc(when.toISOString())} from ${esc(input.set.dir)}. This file is self-contained and loads nothing from the network.</footer>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
}

function summarize(out: string, input: ReportInput, a: Analysis): ReportSummary {
  const si = a.selfInfluence;
  let selfInfluence: ReportSummary['selfInfluence'];
  if ('none' in si) selfInfluence = { none: si.none };
  else {
    const order = Array.from(si.ids.keys()).sort((x, y) => si.values[y]! - si.values[x]!);
    selfInfluence = {
      source: si.source,
      count: si.values.length,
      top: order.slice(0, 10).map((e) => ({ id: si.ids[e]!, value: si.values[e]!, label: trainLabel(input, si.ids[e]!) })),
    };
  }
  return {
    out,
    tests: a.m,
    steps: a.steps.length,
    occurrences: input.set.count,
    examples: a.examples,
    phases: input.tests ? a.phases.phases.map((p) => ({ name: p.name, fromStep: a.steps[p.from]!, toStep: a.steps[p.to]!, share: shareOf(a.magnitude, p.from, p.to) })) : [],
    noPhases: input.tests ? (a.phases.none ?? null) : 'no test points',
    phasesPerLr: input.tests ? a.phasesPerLr.phases.map((p) => ({ name: p.name, fromStep: a.steps[p.from]!, toStep: a.steps[p.to]! })) : [],
    reading: input.tests ? a.reading.lines : [],
    selfInfluence,
    dynamics: input.dynamics ? { shape: [...input.dynamics.shape] } : null,
    warnings: input.warnings,
  };
}

/** Writes the report for `dir` and returns what it found, with the output path. */
export async function buildReport(dir: string, options: ReportOptions = {}): Promise<ReportSummary> {
  const input = readReportInput(dir);
  const a = await analyze(input, { ...(options.backend ? { backend: options.backend } : {}), ...(options.onProgress ? { onProgress: options.onProgress } : {}) });
  const out = options.out ?? join(dir, 'report.html');
  const html = renderHtml(input, a, options.now ?? new Date());
  // Written whole and renamed, so a reader never sees half a report.
  writeFileSync(`${out}.tmp`, html);
  renameSync(`${out}.tmp`, out);
  return summarize(out, input, a);
}

/** Writes one self-contained HTML report for the report directory `dir`; returns its path. */
export async function writeReport(dir: string, options: ReportOptions = {}): Promise<string> {
  return (await buildReport(dir, options)).out;
}
