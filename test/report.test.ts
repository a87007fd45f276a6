// The HTML report: the phase rule on curves with known shape, the report input's checks, and a
// real run (an MLP on the digits: record → compute → prepareReport → report) opened in headless
// Chromium over the DevTools protocol (--remote-debugging-pipe, so no WebSocket client is
// needed): every chart rendered, nothing logged as an error, nothing fetched, a screenshot saved.
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { cmdReport } from '../lib/cli/report.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { influenceProfile, projectTests } from '../lib/embeddings/query.js';
import { computeSegments, dataValueDynamics } from '../lib/embeddings/segments.js';
import { EmbeddingSet } from '../lib/embeddings/store.js';
import { DvembError } from '../lib/errors.js';
import { loadDigits, split } from '../lib/eval/datasets.js';
import { MLP, type LayerFactors } from '../lib/eval/mlp.js';
import { Rng } from '../lib/eval/rng.js';
import { warmupCosine } from '../lib/eval/schedule.js';
import { analyze } from '../lib/report/analyze.js';
import { encodePng } from '../lib/report/images.js';
import { dynamicsFromSegments, readReportInput } from '../lib/report/input.js';
import { DEFAULT_PHASE_RULE, findPhases, movingAverage, selectionReading } from '../lib/report/phases.js';
import { buildReport, prepareReport, writeReport } from '../lib/report/report.js';
import { Trajectory } from '../lib/trajectory/trajectory.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { tempDir } from './helpers.js';

const CHROMIUM = process.env.DVEMB_CHROMIUM ?? '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`report.test: SKIPPING the browser checks: no Chromium at ${CHROMIUM} (install it: apt-get install -y chromium)`);

describe('phase rule', () => {
  const T = 400;
  // High early, a long low middle, rising at the end: the paper's three phases.
  const threePhase = Float64Array.from({ length: T }, (_, t) => (t < 60 ? 1 : t < 320 ? 0.05 : 0.05 + ((t - 320) / 80) * 0.6));

  it('finds warm-up, basin and ascent where the curve has them', () => {
    const r = findPhases(threePhase);
    expect(r.phases.map((p) => p.name)).toEqual(['warm-up', 'basin', 'ascent']);
    const [w, b, a] = r.phases;
    expect(w!.from).toBe(0);
    expect(Math.abs(w!.to - 60)).toBeLessThanOrEqual(r.window);
    expect(b!.from).toBeGreaterThan(w!.to);
    expect(b!.to).toBeGreaterThan(300);
    expect(a!.to).toBe(T - 1);
    const reading = selectionReading(threePhase, r, Float64Array.from({ length: T }, (_, t) => t));
    expect(reading.lines).toHaveLength(3);
    expect(reading.lines[0]).toMatch(/^High-impact warm-up \(steps 0–\d+\).*Selection pays most here/);
    expect(reading.quarters.reduce((s, q) => s + q, 0)).toBeCloseTo(1, 12);
  });

  it('says "no phases found" for a flat or a too short curve, and finds no ascent that is not there', () => {
    const flat = findPhases(new Float64Array(T).fill(2));
    expect(flat.phases).toEqual([]);
    expect(flat.none).toMatch(/no phases found/);
    expect(selectionReading(new Float64Array(T).fill(2), flat, new Float64Array(T)).lines[0]).toMatch(/^No phases found/);
    expect(findPhases([1, 0, 0, 0, 0]).none).toMatch(/too few steps/);
    expect(findPhases(new Float64Array(T)).none).toMatch(/zero at every step/);
    const decaying = Float64Array.from({ length: T }, (_, t) => (t < 60 ? 1 : 0.05));
    expect(findPhases(decaying).phases.map((p) => p.name)).toEqual(['warm-up', 'basin']);
    // A warm-up, then a level that never gets low: no basin, and the reading says selection keeps paying.
    const plateau = Float64Array.from({ length: T }, (_, t) => (t < 60 ? 1 : 0.4));
    const rp = findPhases(plateau);
    expect(rp.phases.map((p) => p.name)).toEqual(['warm-up']);
    expect(selectionReading(plateau, rp, Float64Array.from({ length: T }, (_, t) => t)).lines[1]).toMatch(/^No low-impact basin: .*selection keeps paying/);
    // High everywhere but at the end: a warm-up must end before half the run.
    const late = Float64Array.from({ length: T }, (_, t) => (t < 300 ? 1 : 0));
    expect(findPhases(late).phases.map((p) => p.name)).toEqual(['basin']);
  });

  it('smooths with a centred window that shrinks at the ends', () => {
    expect(Array.from(movingAverage([3, 0, 0, 0, 3], 3))).toEqual([1.5, 1, 0, 1, 1.5]);
  });
});

// ---------------------------------------------------------------------------------------------
// A real run: MLP 64-32-10 (tanh) on the shipped digits, 4 epochs of SGD with warm-up + cosine.

const BATCH = 32;
const EPOCHS = 4;
const run = { dir: '', traj: '', emb: '', trainN: 0, m: 0 };
/** θ after each step, for test gradients at the segment-boundary checkpoints. */
const snapshots: Float64Array[] = [];
let model: MLP;
let digits: ReturnType<typeof split>;

function rowsOf(x: Float64Array, d: number, idx: ArrayLike<number>): Float64Array {
  const out = new Float64Array(idx.length * d);
  for (let i = 0; i < idx.length; i++) out.set(x.subarray(idx[i]! * d, (idx[i]! + 1) * d), i * d);
  return out;
}
const factors = (layers: LayerFactors[]) => Object.fromEntries(layers.map((l, i) => [`fc${i + 1}`, { inputs: l.inputs, outputGrads: l.outputGrads }]));

beforeAll(async () => {
  run.dir = tempDir('dvemb-report-');
  run.traj = join(run.dir, 'trajectory');
  run.emb = join(run.dir, 'embeddings');
  digits = split(loadDigits(), 0.2, 0);
  const { train } = digits;
  run.trainN = train.n;
  model = new MLP({ widths: [64, 32, 10], activation: 'tanh', seed: 1 });
  const perEpoch = Math.floor(train.n / BATCH);
  const total = EPOCHS * perEpoch;
  const schedule = warmupCosine({ peak: 0.8, warmupSteps: Math.round(total * 0.1), totalSteps: total, floor: 0.05 });
  const rec = TrajectoryRecorder.create(run.traj, {
    projection: { seed: 2024, distribution: 'gaussian' },
    blocks: [
      { name: 'fc1', kind: 'kronecker', dIn: 64, dOut: 32, bias: true, kIn: 16, kOut: 16 },
      { name: 'fc2', kind: 'kronecker', dIn: 32, dOut: 10, bias: true, kIn: 16, kOut: 10 },
    ],
    meta: { model: 'MLP 64-32-10 tanh', dataset: 'digits (UCI, CC BY 4.0)', optimizer: 'SGD, warm-up + cosine' },
  });
  const rng = new Rng(7);
  let step = 0;
  for (let e = 0; e < EPOCHS; e++) {
    const order = rng.permutation(train.n);
    for (let b = 0; b < perEpoch; b++, step++) {
      const ids = order.subarray(b * BATCH, (b + 1) * BATCH);
      const lr = schedule(step);
      const res = model.sgdStep({ x: rowsOf(train.x, train.d, ids), y: Array.from(ids, (i) => train.y[i]!), n: ids.length, weights: 1 / ids.length, lr });
      await rec.record({ step, lr, ids, reduction: 'mean', gradients: factors(res.layers) });
      snapshots.push(model.parameters().slice());
    }
  }
  await rec.close();
  await computeEmbeddings(run.traj, { out: run.emb });
}, 120_000);

/** Test points: the first test image of a few classes, projected with the embeddings' projection. */
async function chosenTests(classes: number[]) {
  const { test } = digits;
  const set = EmbeddingSet.open(run.emb);
  const picks = classes.map((c) => Array.from(test.y).indexOf(c));
  const x = rowsOf(test.x, test.d, picks);
  const y = picks.map((i) => test.y[i]!);
  const g = model.perExample(x, y, picks.length);
  return { set, picks, x, y, tests: await projectTests(set, factors(g.layers), picks.length) };
}

describe('report input', () => {
  it('a directory without embeddings is a clear error, from the API and the CLI', async () => {
    const empty = tempDir('dvemb-noemb-');
    const check = (err: unknown) => {
      expect(err).toBeInstanceOf(DvembError);
      expect((err as DvembError).code).toBe('NOT_EMBEDDINGS');
      expect((err as Error).message).toMatch(/holds no embeddings for a report \(there is no embeddings\.json\)\. Fix: run `dvemb compute <trajectory> --out /);
    };
    await writeReport(empty).then(() => expect.unreachable(), check);
    await cmdReport([empty]).then(() => expect.unreachable(), check);
    await cmdReport([join(empty, 'missing')]).then(
      () => expect.unreachable(),
      (err) => expect((err as Error).message).toMatch(/the directory does not exist/),
    );
    // A trajectory is not an embeddings set either.
    await cmdReport([run.traj]).then(() => expect.unreachable(), check);
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(await cmdReport([])).toBe(1);
      const said = String(stderr.mock.calls[0]?.[0]);
      expect(said).toMatch(/report needs a directory/);
    } finally {
      stderr.mockRestore();
    }
  });

  it('refuses test gradients from another projection, and files of the wrong shape', async () => {
    const { tests } = await chosenTests([1]);
    const dir = tempDir('dvemb-badin-');
    expect(() => prepareReport(dir, { embeddings: run.emb, tests: { ...tests, fingerprint: '0123456789abcdef' } })).toThrow(/PROJECTION_MISMATCH|projected for layout 0123456789abcdef/);
    expect(() => prepareReport(dir, { embeddings: run.emb, tests, images: new Float32Array(10), image: { height: 8, width: 8 } })).toThrow(/not a whole number of 64-value images/);
    prepareReport(dir, { embeddings: run.emb, tests });
    // tests.npy replaced by rows of the wrong width.
    const bad = Buffer.from(readFileSync(join(dir, 'tests.npy')));
    const header = bad.subarray(0, 128).toString('latin1').replace(/\(1, 416\)/, '(2, 208)');
    writeFileSync(join(dir, 'tests.npy'), Buffer.concat([Buffer.from(header, 'latin1'), bad.subarray(128)]));
    expect(() => readReportInput(dir)).toThrow(/need \(m, 416\) float32 rows/);
  });

  it('computes TracIn-RP self-influence from the trajectory: Σ η w ‖g‖² per example', async () => {
    const { tests } = await chosenTests([2]);
    const dir = tempDir('dvemb-self-');
    prepareReport(dir, { embeddings: run.emb, tests });
    const a = await analyze(readReportInput(dir));
    if ('none' in a.selfInfluence) throw new Error(a.selfInfluence.none);
    // Independently: the first chunk's rows of one example, summed by hand.
    const traj = Trajectory.open(run.traj);
    const want = new Map<number, number>();
    for (let c = 0; c < traj.chunks.length; c++) {
      const ch = await traj.readChunk(c);
      for (let s = 0; s < ch.steps; s++) {
        for (let r = ch.stepRows[s]!; r < ch.stepRows[s + 1]!; r++) {
          let sq = 0;
          for (let k = 0; k < traj.layout.dim; k++) sq += ch.rows[r * traj.layout.dim + k]! ** 2;
          want.set(ch.ids[r]!, (want.get(ch.ids[r]!) ?? 0) + ch.lr[s]! * ch.weights[r]! * sq);
        }
      }
    }
    const si = a.selfInfluence;
    expect(si.values.length).toBe(want.size);
    for (const e of [0, 17, si.ids.length - 1]) expect(si.values[e]).toBeCloseTo(want.get(si.ids[e]!)!, 10);
    // The report's per-step sums are the query's influence profile.
    const profile = await influenceProfile(EmbeddingSet.open(run.emb), tests);
    for (let t = 0; t < a.steps.length; t++) expect(a.signed[t]).toBeCloseTo(profile.values[t]!, 6);
  });

  it('without report.json, or without the trajectory, says what is missing instead of failing', async () => {
    const copy = tempDir('dvemb-bare-');
    cpSync(run.emb, copy, { recursive: true, filter: (src) => !/report\.json|tests\.npy|images|labels|\.html$/.test(src) });
    const bare = await buildReport(copy);
    expect(bare.tests).toBe(0);
    expect(bare.warnings.join()).toMatch(/has no report\.json, so no test points are shown; write one with prepareReport/);
    expect('count' in bare.selfInfluence).toBe(true);
    const html = readFileSync(bare.out, 'utf8');
    expect(html).toContain('data-absent="influence"');
    expect(html).toMatch(/<strong>Not computed\.<\/strong> Data value dynamics need segments/);
    // The trajectory named in embeddings.json is gone: self-influence says so, the rest is drawn.
    const manifest = JSON.parse(readFileSync(join(copy, 'embeddings.json'), 'utf8')) as { trajectory: string };
    writeFileSync(join(copy, 'embeddings.json'), JSON.stringify({ ...manifest, trajectory: join(copy, 'no-such-trajectory') }));
    const noTraj = await buildReport(copy);
    expect('none' in noTraj.selfInfluence && noTraj.selfInfluence.none).toMatch(/^not computed: the trajectory .*no-such-trajectory .* was not found/);
  });
});

// ---------------------------------------------------------------------------------------------
// Chromium over the DevTools protocol on a pipe: fd 3 carries commands in, fd 4 replies out,
// each message JSON followed by a NUL byte.

class Browser {
  private readonly proc: ChildProcess;
  private buffer = '';
  private next = 1;
  private readonly waiting = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  readonly events: { method: string; params: Record<string, unknown>; sessionId?: string }[] = [];
  private readonly listeners: ((e: { method: string; params: Record<string, unknown> }) => void)[] = [];

  constructor(userDataDir: string) {
    this.proc = spawn(
      CHROMIUM,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--hide-scrollbars',
        `--user-data-dir=${userDataDir}`,
        '--remote-debugging-pipe',
        'about:blank',
      ],
      { stdio: ['ignore', 'ignore', 'ignore', 'pipe', 'pipe'] },
    );
    // A browser that cannot start fails every pending call instead of leaving it to time out.
    this.proc.on('error', (err) => {
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    });
    (this.proc.stdio[4] as Readable).on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString('utf8');
      let end;
      while ((end = this.buffer.indexOf('\0')) >= 0) {
        const msg = JSON.parse(this.buffer.slice(0, end)) as { id?: number; result?: Record<string, unknown>; error?: { message: string }; method?: string; params?: Record<string, unknown>; sessionId?: string };
        this.buffer = this.buffer.slice(end + 1);
        if (msg.id !== undefined) {
          const w = this.waiting.get(msg.id);
          this.waiting.delete(msg.id);
          if (msg.error) w?.reject(new Error(msg.error.message));
          else w?.resolve(msg.result ?? {});
        } else if (msg.method) {
          const e = { method: msg.method, params: msg.params ?? {}, ...(msg.sessionId ? { sessionId: msg.sessionId } : {}) };
          this.events.push(e);
          for (const l of this.listeners) l(e);
        }
      }
    });
  }

  send(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Record<string, unknown>> {
    const id = this.next++;
    (this.proc.stdio[3] as Writable).write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + '\0');
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      setTimeout(() => this.waiting.has(id) && (this.waiting.delete(id), reject(new Error(`${method}: no reply in 30 s`))), 30_000).unref();
    });
  }

  waitFor(method: string, timeoutMs = 30_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${method} in ${timeoutMs} ms`)), timeoutMs);
      this.listeners.push((e) => {
        if (e.method === method) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  async close(): Promise<void> {
    await this.send('Browser.close').catch(() => undefined);
    await new Promise<void>((resolve) => {
      if (this.proc.exitCode !== null) return resolve();
      const t = setTimeout(() => (this.proc.kill('SIGKILL'), resolve()), 5_000);
      this.proc.once('exit', () => (clearTimeout(t), resolve()));
    });
  }
}

describe.skipIf(!haveChromium)('the report in headless Chromium', () => {
  let browser: Browser;
  beforeAll(() => {
    browser = new Browser(tempDir('dvemb-chromium-'));
  });
  afterAll(async () => {
    await browser?.close();
  });

  /** Opens `file`, waits for the page's own render check, and returns what the page reports. */
  async function open(file: string) {
    const { targetId } = (await browser.send('Target.createTarget', { url: 'about:blank' })) as { targetId: string };
    const { sessionId } = (await browser.send('Target.attachToTarget', { targetId, flatten: true })) as { sessionId: string };
    const s = (method: string, params: Record<string, unknown> = {}) => browser.send(method, params, sessionId);
    await s('Runtime.enable');
    await s('Log.enable');
    await s('Network.enable');
    await s('Page.enable');
    await s('Emulation.setDeviceMetricsOverride', { width: 1100, height: 900, deviceScaleFactor: 1, mobile: false });
    const loaded = browser.waitFor('Page.loadEventFired');
    await s('Page.navigate', { url: pathToFileURL(file).href });
    await loaded;
    const evaluate = async (expression: string) => ((await s('Runtime.evaluate', { expression, returnByValue: true })) as { result: { value: unknown } }).result.value;
    let state: unknown = null;
    for (let i = 0; i < 100 && !state; i++) {
      state = await evaluate('document.documentElement.getAttribute("data-rendered")');
      if (!state) await new Promise((r) => setTimeout(r, 50));
    }
    const charts = (await evaluate(
      `[...document.querySelectorAll('[data-chart]')].map(el => ({ name: el.dataset.chart, rendered: el.dataset.rendered, elements: Number(el.dataset.elements), svgMarks: el.querySelector('svg') ? el.querySelectorAll('svg *').length : 0, images: el.querySelectorAll('img').length }))`,
    )) as { name: string; rendered: string; elements: number; svgMarks: number; images: number }[];
    const absent = (await evaluate(`Object.fromEntries([...document.querySelectorAll('[data-absent]')].map(el => [el.dataset.absent, el.textContent]))`)) as Record<string, string>;
    const height = (await evaluate('document.documentElement.scrollHeight')) as number;
    const shot = (await s('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true, clip: { x: 0, y: 0, width: 1100, height, scale: 1 } })) as { data: string };
    const mine = (m: string) => browser.events.filter((e) => e.sessionId === sessionId && e.method === m);
    const errors = [
      ...mine('Runtime.exceptionThrown').map((e) => JSON.stringify(e.params)),
      ...mine('Runtime.consoleAPICalled').filter((e) => e.params.type === 'error' || e.params.type === 'assert').map((e) => JSON.stringify(e.params.args)),
      ...mine('Log.entryAdded').filter((e) => (e.params.entry as { level: string }).level === 'error').map((e) => JSON.stringify(e.params.entry)),
    ];
    const requests = mine('Network.requestWillBeSent').map((e) => (e.params.request as { url: string }).url);
    await browser.send('Target.closeTarget', { targetId });
    return { state, charts, absent, errors, requests, png: Buffer.from(shot.data, 'base64'), height };
  }

  it('renders every chart of a real run, logs no error, fetches nothing, and saves a screenshot', async () => {
    const { picks, x, y, tests } = await chosenTests([0, 3, 8]);
    const { train } = digits;
    // Report A: in the embeddings directory itself, no dynamics (the section says "not computed").
    prepareReport(run.emb, {
      tests,
      testNames: picks.map((p) => `test digit #${p}`),
      testLabels: y,
      testImages: x,
      images: train.x,
      image: { height: 8, width: 8, range: [0, 1], invert: true },
      labels: train.y,
      classNames: train.classNames!,
      title: 'Digits: MLP 64-32-10 (tanh), 4 epochs',
    });
    const a = await buildReport(run.emb);
    expect(a.tests).toBe(3);
    expect(a.dynamics).toBeNull();
    expect('count' in a.selfInfluence && a.selfInfluence.count).toBe(run.trainN);
    const html = readFileSync(a.out, 'utf8');
    // Self-contained: no external reference anywhere (the SVG namespace is an identifier, not a fetch).
    expect(html.replaceAll('xmlns="http://www.w3.org/2000/svg"', '')).not.toMatch(/https?:\/\/|\/\/[a-z0-9.-]+\.[a-z]{2,}\//i);
    expect(html).toContain("default-src 'none'");

    const pageA = await open(a.out);
    expect(pageA.errors).toEqual([]);
    expect(pageA.requests.filter((u) => !u.startsWith('file:') && !u.startsWith('data:'))).toEqual([]);
    expect(pageA.state).toBe('all');
    expect(pageA.charts.map((c) => c.name)).toEqual(['influence-magnitude', 'influence-per-lr', 'influence-signed', 'attribution', 'self-influence']);
    for (const c of pageA.charts) expect(c.rendered, `${c.name} rendered`).toBe('yes');
    for (const c of pageA.charts.filter((c) => c.name !== 'attribution')) expect(c.svgMarks, c.name).toBeGreaterThan(60);
    // Three tests × (6 proponents + 6 opponents) training digits plus the three test digits.
    expect(pageA.charts.find((c) => c.name === 'attribution')!.images).toBe(3 * 12 + 3);
    expect(pageA.absent.dynamics).toMatch(/^Not computed\./);

    // Report B: in a directory of its own, with data value dynamics from K = 4 segments: each
    // segment's local embeddings scored against the test gradients at every later boundary.
    const dirB = join(run.dir, 'report-b');
    mkdirSync(dirB);
    const K = 4;
    const segDir = join(run.dir, 'segments');
    const { segments } = await computeSegments(run.traj, { K, out: segDir, parallel: false });
    const seg0 = EmbeddingSet.open(segments[0]!.dir);
    const atBoundary = await Promise.all(
      segments.map(async (sg) => {
        const at = model.clone();
        at.setParameters(snapshots[sg.manifest.segment!.lastStep]!);
        return projectTests(seg0, factors(at.perExample(x, y, picks.length).layers), picks.length);
      }),
    );
    const dyn = await dataValueDynamics(segDir, atBoundary, { per: 'occurrence' });
    const dynamics = dynamicsFromSegments(dyn);
    expect(dynamics.shape).toEqual([3, K, K]);
    // The last boundary is the final model: its column is the ordinary influence, segment by segment.
    const last = (t: number) => Array.from({ length: K }, (_, j) => dynamics.values[(t * K + j) * K + K - 1]!).reduce((p, q) => p + q, 0);
    const profile = await influenceProfile(EmbeddingSet.open(run.emb), tests);
    const total = (t: number) => Array.from({ length: profile.steps.length }, (_, s) => profile.values[s * 3 + t]!).reduce((p, q) => p + q, 0);
    for (let t = 0; t < 3; t++) expect(last(t)).toBeCloseTo(total(t), 4);
    prepareReport(dirB, {
      embeddings: run.emb,
      tests,
      testNames: picks.map((p) => `test digit #${p}`),
      testLabels: y,
      testImages: x,
      images: train.x,
      image: { height: 8, width: 8, range: [0, 1], invert: true },
      labels: train.y,
      classNames: train.classNames!,
      title: 'Digits: MLP 64-32-10 (tanh), 4 epochs, with data value dynamics',
      dynamics,
    });
    // Kept after the run (not a tempDir), so the printed paths can be opened.
    const out = mkdtempSync(join(tmpdir(), 'dvemb-report-shots-'));
    const stdout = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    let code: number;
    let printed: string;
    try {
      code = await cmdReport([dirB, '--out', join(dirB, 'b.html'), '--json']);
      printed = stdout.mock.calls.map((c) => String(c[0])).join('');
    } finally {
      stdout.mockRestore();
    }
    expect(code).toBe(0);
    const summary = JSON.parse(printed) as { out: string; dynamics: { shape: number[] } };
    expect(summary.dynamics.shape).toEqual([3, K, K]);
    const pageB = await open(summary.out);
    expect(pageB.errors).toEqual([]);
    expect(pageB.state).toBe('all');
    const heat = pageB.charts.filter((c) => c.name.startsWith('dynamics-'));
    expect(heat).toHaveLength(4); // the sum and one per test
    for (const c of heat) expect(c.rendered).toBe('yes');
    expect(pageB.absent.dynamics).toBeUndefined();

    const shotA = join(out, 'report-a.png');
    const shotB = join(out, 'report-b.png');
    writeFileSync(shotA, pageA.png);
    writeFileSync(shotB, pageB.png);
    copyFileSync(a.out, join(out, 'report-a.html'));
    copyFileSync(summary.out, join(out, 'report-b.html'));
    expect(pageB.png.subarray(1, 4).toString()).toBe('PNG');
    expect(pageB.height).toBeGreaterThan(2000);
    console.log(`report.test: screenshots ${shotA} and ${shotB}, with the reports beside them`);
  }, 120_000);
});

describe('inline images', () => {
  it('encodes a valid PNG', () => {
    const png = encodePng(2, 2, 1, Uint8Array.from([0, 255, 255, 0]));
    expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    expect(png.subarray(12, 16).toString()).toBe('IHDR');
    expect(DEFAULT_PHASE_RULE.high).toBeGreaterThan(DEFAULT_PHASE_RULE.low);
  });
});
