// The fidelity experiment behind `dvemb eval` (REFERENCE §8): train a small MLP on a shipped
// dataset with the reference trainer while recording trajectories like a harness would, compute
// the exact TSLOO of chosen removals by replay, run every estimator on the same run, and measure
// how well each one agrees with the truth — for occurrences from the FIRST epoch, from the LAST
// epoch, and for all-occurrence removals — plus an error decomposition (which approximation costs
// how much), a mislabel-detection run, the LDS, and the data for the figures.

import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBackend } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { loadBreastCancer, loadDigits, split, type Dataset } from './datasets.js';
import { dvemb, exampleScores, influenceFunction, occurrenceTable, predict, removalOf, tracinCP, tracinStep, gradDot, unrolled, type EvalContext, type OccurrenceTable, type Target } from './estimators.js';
import { agreement, detectionCurve, flipLabels, lds, meanAgreement, spearman, type Agreement, type DetectionCurve } from './metrics.js';
import type { Activation } from './mlp.js';
import { Replayer, type ReplayResult, type TestSet } from './replay.js';
import { Rng } from './rng.js';
import { lineChart, scatterChart, type Series } from './svg.js';
import { Trainer, type RecordingSpec, type TrainerConfig } from './trainer.js';

export const SETTINGS = ['first-epoch', 'last-epoch', 'all-epochs'] as const;
export type Setting = (typeof SETTINGS)[number];

export interface Preset {
  hidden: number[];
  batchSize: number;
  epochs: number;
  /** Warm-up + cosine: peak η, warm-up as a fraction of the run, floor as a fraction of the peak. */
  peak: number;
  warmupFraction: number;
  floorFraction: number;
  weightDecay: number;
  /** Test points (each its own target function). */
  tests: number;
  /** Occurrence removals drawn from the first and from the last epoch, each. */
  targetsFirstLast: number;
  /** Occurrence removals from every other epoch (the by-epoch curve). */
  targetsMiddle: number;
  /** All-occurrence removals. */
  targetsAll: number;
  /** Kronecker projection sizes k (kIn = kOut = k, capped at the layer sizes). */
  projection: number[];
  /** Sampled labels per example for the sampled Fisher (the first is `dvemb-sampled-fisher`). */
  draws: number[];
  ldsSubsets: number;
  mislabelFraction: number;
  /** Targets per setting replayed with w scaled by 1 − ε (the derivative check), and ε. */
  infinitesimalTargets: number;
  epsilon: number;
  /** Damping δ of the influence function (the MLP's Hessian at θ_T is indefinite: δ must dominate its negative eigenvalues). */
  damping: number;
}

export const PRESETS: Record<'quick' | 'full', Preset> = {
  quick: { hidden: [16], batchSize: 32, epochs: 6, peak: 0.5, warmupFraction: 0.08, floorFraction: 0.05, weightDecay: 1e-3, tests: 8, targetsFirstLast: 60, targetsMiddle: 20, targetsAll: 60, projection: [4, 8, 16, 32], draws: [1, 4], ldsSubsets: 32, mislabelFraction: 0.1, damping: 0.1, infinitesimalTargets: 24, epsilon: 1e-5 },
  full: { hidden: [32], batchSize: 32, epochs: 8, peak: 0.5, warmupFraction: 0.08, floorFraction: 0.05, weightDecay: 1e-3, tests: 16, targetsFirstLast: 150, targetsMiddle: 40, targetsAll: 150, projection: [4, 8, 16, 32, 64], draws: [1, 4, 16], ldsSubsets: 100, mislabelFraction: 0.1, damping: 0.1, infinitesimalTargets: 60, epsilon: 1e-5 },
};

export interface ExperimentOptions {
  preset?: 'quick' | 'full';
  dataset?: 'digits' | 'breast-cancer';
  activation?: Activation;
  /** Replay worker threads (default: one per core). */
  workers?: number;
  backend?: Backend;
  /** Where trajectories and embeddings go while the experiment runs (default: a temp dir, removed after). */
  workDir?: string;
  onProgress?: (stage: string, done: number, total: number) => void;
  log?: (line: string) => void;
  /** Override parts of the preset (tests use this to make it tiny). */
  overrides?: Partial<Preset>;
}

export interface DecompositionRow {
  stage: string;
  estimator: string;
  baseline: string;
  settings: Record<Setting, { spearman: number; baselineSpearman: number; relativeChange: number }>;
}

export interface ExperimentResult {
  settings: Record<Setting, Record<string, Agreement>>;
  decomposition: DecompositionRow[];
  /**
   * The derivative check: the exact-Hessian unrolling against replays that scale the removed
   * weights by 1 − ε instead of 0 (Δ/ε). It is ≈ 1 whenever the unrolling is right; where the full
   * removal disagrees and this does not, the SGD map is non-linear over the removal (ReLU kinks).
   */
  infinitesimal: { epsilon: number; targets: number; settings: Record<Setting, Agreement> };
  /** Spearman against replay for occurrences of each epoch (the "Spearman vs removal step" figure). */
  byEpoch: { epochs: number[]; steps: number[]; estimators: Record<string, number[]> };
  /** Spearman against replay vs projected dimension, per setting. */
  projection: { dims: number[]; k: number[]; perBlockFp32: Record<Setting, number[]>; globalFp64: Record<Setting, number[]> };
  /** Seconds per estimator (engine variants include the backward pass; recording is counted once under `record`). */
  costs: Record<string, number>;
  /** Exact replays of the removal targets: how many, how long, and the SGD steps they re-ran. */
  replay: { count: number; seconds: number; perSecond: number; workers: number; steps: number; stepsPerSecond: number };
  mislabel: { fraction: number; selfInfluence: DetectionCurve; finalLoss: DetectionCurve };
  lds: { subsets: number; removedFraction: number; estimators: Record<string, number> };
  model: { dataset: string; widths: number[]; activation: Activation; steps: number; epochs: number; batchSize: number; trainExamples: number; testAccuracy: number; testLoss: number; parameters: number };
  config: { preset: string; values: Preset; backend: string };
  wallSeconds: number;
  figures: Record<string, string>;
}

function loadDataset(name: 'digits' | 'breast-cancer'): Dataset {
  if (name === 'digits') return loadDigits();
  if (name === 'breast-cancer') return loadBreastCancer();
  throw new RangeError(`unknown dataset ${String(name)}; use 'digits' or 'breast-cancer'`);
}

/** Distinct (example, step) occurrences from the given steps (η > 0), chosen by a seeded stream. */
function occurrenceTargets(trainer: Trainer, steps: number[], count: number, rng: Rng): Target[] {
  const usable = steps.filter((t) => trainer.lr(t) > 0);
  const pool: Target[] = usable.flatMap((t) => Array.from(trainer.batch(t), (example) => ({ example, step: t })));
  rng.shuffle(pool);
  return pool.slice(0, Math.min(count, pool.length));
}

/** Per test point j, the j-th column of a (targets × m) matrix. */
function column(values: Float64Array | readonly Float64Array[], m: number, j: number, rows: number): Float64Array {
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) out[r] = Array.isArray(values) ? ((values as Float64Array[])[r] as Float64Array)[j] as number : (values as Float64Array)[r * m + j] as number;
  return out;
}

function relNorm(a: Float64Array, b: Float64Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += ((a[i] as number) - (b[i] as number)) ** 2;
    den += (b[i] as number) ** 2;
  }
  return den > 0 ? Math.sqrt(num / den) : NaN;
}

export async function runExperiment(options: ExperimentOptions = {}): Promise<ExperimentResult> {
  const started = performance.now();
  const presetName = options.preset ?? 'quick';
  const preset: Preset = { ...PRESETS[presetName], ...options.overrides };
  const datasetName = options.dataset ?? 'digits';
  const activation: Activation = options.activation ?? 'tanh';
  const log = options.log ?? (() => undefined);
  const progress = options.onProgress ?? (() => undefined);
  const loaded = options.backend ? { backend: options.backend, name: options.backend.info().backend } : loadBackend();
  const backend = loaded.backend;
  const work = options.workDir ?? mkdtempSync(join(tmpdir(), 'dvemb-eval-'));
  const ownsWork = options.workDir === undefined;
  const costs: Record<string, number> = {};
  const timed = async <T>(name: string, f: () => T | Promise<T>): Promise<T> => {
    const t0 = performance.now();
    const out = await f();
    costs[name] = (performance.now() - t0) / 1000;
    return out;
  };

  try {
    // ---- data, model, training with recordings ----
    const ds = loadDataset(datasetName);
    const { train, test } = split(ds, 0.2, 0);
    const widths = [ds.d, ...preset.hidden, ds.classes];
    const stepsPerEpoch = Math.floor(train.n / preset.batchSize);
    const total = stepsPerEpoch * preset.epochs;
    const config: TrainerConfig = {
      widths,
      activation,
      initSeed: 1,
      data: { x: train.x, y: train.y, n: train.n, d: train.d },
      batchSize: preset.batchSize,
      epochs: preset.epochs,
      orderSeed: 7,
      schedule: { kind: 'warmup-cosine', peak: preset.peak, warmupSteps: Math.round(preset.warmupFraction * total), floor: preset.peak * preset.floorFraction },
      weightDecay: preset.weightDecay,
      checkpointEvery: stepsPerEpoch,
      keepEveryStep: true,
    };
    const trainer = new Trainer(config);
    const record: RecordingSpec[] = [
      ...preset.draws.map((d) => ({ dir: join(work, `full-m${d}`), blocks: 'full' as const, curvature: d, backend })),
      ...preset.projection.map((k) => ({ dir: join(work, `kron-k${k}`), blocks: 'kronecker' as const, kIn: k, kOut: k, backend })),
    ];
    const run = await timed('record', () => trainer.train({ record, onStep: (d, t) => progress('train + record', d, t) }));
    const final = trainer.modelAt(run.theta);
    const testRng = new Rng('tests');
    const picks = Array.from(testRng.permutation(test.n).subarray(0, preset.tests)).sort((a, b) => a - b);
    const tests: TestSet = { x: new Float64Array(picks.length * test.d), y: picks.map((i) => test.y[i] as number), n: picks.length };
    picks.forEach((i, r) => tests.x.set(test.x.subarray(i * test.d, (i + 1) * test.d), r * test.d));
    const m = tests.n;
    const model = {
      dataset: ds.name,
      widths,
      activation,
      steps: trainer.steps,
      epochs: preset.epochs,
      batchSize: preset.batchSize,
      trainExamples: train.n,
      testAccuracy: final.accuracy(test.x, test.y, test.n),
      testLoss: final.loss(test.x, test.y, test.n),
      parameters: final.numParams,
    };
    log(`trained MLP ${widths.join('-')} (${activation}) on ${ds.name}: ${trainer.steps} steps, test accuracy ${(100 * model.testAccuracy).toFixed(1)}%`);

    // ---- targets and exact TSLOO ----
    const rng = new Rng('targets');
    const epochSteps = (e: number) => Array.from({ length: stepsPerEpoch }, (_, i) => e * stepsPerEpoch + i);
    const byEpochTargets: Target[][] = Array.from({ length: preset.epochs }, (_, e) =>
      occurrenceTargets(trainer, epochSteps(e), e === 0 || e === preset.epochs - 1 ? preset.targetsFirstLast : preset.targetsMiddle, rng.fork(`epoch${e}`)),
    );
    const examples = rng.fork('all').permutation(train.n);
    const allTargets: Target[] = Array.from(examples.subarray(0, preset.targetsAll), (example) => ({ example, step: null }));
    const settingTargets: Record<Setting, Target[]> = {
      'first-epoch': byEpochTargets[0] as Target[],
      'last-epoch': byEpochTargets[preset.epochs - 1] as Target[],
      'all-epochs': allTargets,
    };
    const everyTarget = [...byEpochTargets.flat(), ...allTargets];
    const replayer = new Replayer(trainer, run, tests);
    const workers = options.workers ?? undefined;
    const t0 = performance.now();
    const replays = await replayer.replayMany(everyTarget.map(removalOf), { ...(workers !== undefined ? { workers } : {}), onProgress: (d, t) => progress('replays', d, t) });
    const replaySeconds = (performance.now() - t0) / 1000;
    const replayedSteps = replays.reduce((a, r) => a + trainer.steps - r.fromStep, 0);
    const truthOf = new Map<Target, ReplayResult>();
    everyTarget.forEach((t, i) => truthOf.set(t, replays[i] as ReplayResult));
    log(`${everyTarget.length} replays in ${replaySeconds.toFixed(1)} s`);
    const eps = preset.epsilon;
    const smallTargets = SETTINGS.flatMap((s) => settingTargets[s].slice(0, preset.infinitesimalTargets));
    const scaled = (t: Target) => ({ occurrences: (t.step === null ? trainer.occurrences(t.example) : [t.step]).map((step) => ({ example: t.example, step, scale: 1 - eps })) });
    const smallReplays = await timed('infinitesimal-replays', () => replayer.replayMany(smallTargets.map(scaled), { ...(workers !== undefined ? { workers } : {}), onProgress: (d, t) => progress('derivative check', d, t) }));

    // ---- estimators (occurrence scores, occurrences × m) ----
    const ctx: EvalContext = { trainer, run, tests, table: occurrenceTable(trainer) };
    const table = ctx.table as OccurrenceTable;
    const scores = new Map<string, Float64Array>();
    const engine = async (name: string, dir: string, opts: Parameters<typeof dvemb>[3]) => {
      const res = await timed(name, () => dvemb(ctx, join(work, dir), join(work, `emb-${name}`), { ...opts, backend }));
      scores.set(name, res.scores);
      rmSync(join(work, `emb-${name}`), { recursive: true, force: true });
    };
    const steps: [string, () => Promise<void>][] = [
      ['dvemb-empirical-fisher', () => engine('dvemb-empirical-fisher', `full-m${preset.draws[0]}`, { mode: 'global', precision: 'fp64', curvature: 'empirical-fisher' })],
      ['dvemb-empirical-fisher-per-block', () => engine('dvemb-empirical-fisher-per-block', `full-m${preset.draws[0]}`, { mode: 'per-block', precision: 'fp64', curvature: 'empirical-fisher' })],
      ['dvemb-empirical-fisher-fp32', () => engine('dvemb-empirical-fisher-fp32', `full-m${preset.draws[0]}`, { mode: 'global', precision: 'fp32', curvature: 'empirical-fisher' })],
      ['dvemb-empirical-fisher-per-block-fp32', () => engine('dvemb-empirical-fisher-per-block-fp32', `full-m${preset.draws[0]}`, { mode: 'per-block', precision: 'fp32', curvature: 'empirical-fisher' })],
      ...preset.draws.map((d, i): [string, () => Promise<void>] => {
        const name = i === 0 ? 'dvemb-sampled-fisher' : `dvemb-sampled-fisher-m${d}`;
        return [name, () => engine(name, `full-m${d}`, { mode: 'global', precision: 'fp64', curvature: 'recorded' })];
      }),
      ['dvemb-sampled-fisher-per-block', () => engine('dvemb-sampled-fisher-per-block', `full-m${preset.draws[0]}`, { mode: 'per-block', precision: 'fp64', curvature: 'recorded' })],
      ...preset.projection.flatMap((k): [string, () => Promise<void>][] => [
        [`dvemb-kron-k${k}`, () => engine(`dvemb-kron-k${k}`, `kron-k${k}`, { mode: 'per-block', precision: 'fp32', curvature: 'empirical-fisher' })],
        [`dvemb-kron-k${k}-global`, () => engine(`dvemb-kron-k${k}-global`, `kron-k${k}`, { mode: 'global', precision: 'fp64', curvature: 'empirical-fisher' })],
      ]),
      ['unrolled-exact-hessian', async () => void scores.set('unrolled-exact-hessian', await timed('unrolled-exact-hessian', () => unrolled(ctx, { curvature: 'hessian' })))],
      ['unrolled-exact-ggn', async () => void scores.set('unrolled-exact-ggn', await timed('unrolled-exact-ggn', () => unrolled(ctx, { curvature: 'ggn' })))],
      ['unrolled-empirical-fisher', async () => void scores.set('unrolled-empirical-fisher', await timed('unrolled-empirical-fisher', () => unrolled(ctx, { curvature: 'empirical-fisher' })))],
      ['tracin-step', async () => void scores.set('tracin-step', await timed('tracin-step', () => tracinStep(ctx)))],
      ['tracin-cp', async () => void scores.set('tracin-cp', await timed('tracin-cp', () => tracinCP(ctx)))],
      ['tracin-rp', async () => void scores.set('tracin-rp', await timed('tracin-rp', () => tracinCP(ctx, { form: 'projected', kIn: 8, kOut: 8, backend })))],
      ['tracin-last-layer', async () => void scores.set('tracin-last-layer', await timed('tracin-last-layer', () => tracinCP(ctx, { form: 'last-layer' })))],
      ['grad-dot', async () => void scores.set('grad-dot', await timed('grad-dot', () => gradDot(ctx)))],
      ['influence-function', async () => void scores.set('influence-function', (await timed('influence-function', () => influenceFunction(ctx, { solver: 'cg', damping: preset.damping, tolerance: 1e-6 }))).scores)],
    ];
    for (let i = 0; i < steps.length; i++) {
      progress('estimators', i, steps.length);
      await (steps[i] as [string, () => Promise<void>])[1]();
    }
    progress('estimators', steps.length, steps.length);
    const selfScores = await timed('self-influence', () => tracinCP(ctx, { self: true }));

    // ---- agreement per setting ----
    const predictions = new Map<string, Map<Setting, Float64Array>>();
    const predictionOf = (name: string, setting: Setting): Float64Array => {
      let bySetting = predictions.get(name);
      if (!bySetting) predictions.set(name, (bySetting = new Map()));
      let p = bySetting.get(setting);
      if (!p) bySetting.set(setting, (p = predict(table, scores.get(name) as Float64Array, m, settingTargets[setting])));
      return p;
    };
    const truthMatrix = (targets: Target[]) => targets.map((t) => (truthOf.get(t) as ReplayResult).deltas);
    const settings = {} as Record<Setting, Record<string, Agreement>>;
    for (const setting of SETTINGS) {
      const targets = settingTargets[setting];
      const truth = truthMatrix(targets);
      settings[setting] = {};
      for (const name of scores.keys()) {
        const pred = predictionOf(name, setting);
        settings[setting][name] = meanAgreement(Array.from({ length: m }, (_, j) => agreement(column(pred, m, j, targets.length), column(truth, m, j, targets.length))));
      }
      const selfTruth = Float64Array.from(targets, (t) => (truthOf.get(t) as ReplayResult).self as number);
      settings[setting]['self-influence'] = agreement(predict(table, selfScores, 1, targets), selfTruth);
    }

    // ---- error decomposition ----
    const stages: [string, string, string][] = [
      ['first-order (Taylor) error: exact Hessian unrolling vs replay', 'unrolled-exact-hessian', 'replay'],
      ['Hessian → Gauss–Newton', 'unrolled-exact-ggn', 'unrolled-exact-hessian'],
      [`Gauss–Newton → sampled Fisher (m = ${preset.draws[0]}, engine)`, 'dvemb-sampled-fisher', 'unrolled-exact-ggn'],
      ...preset.draws.slice(1).map((d): [string, string, string] => [`sampled Fisher m = ${preset.draws[0]} → m = ${d}`, `dvemb-sampled-fisher-m${d}`, 'dvemb-sampled-fisher']),
      ['Hessian → empirical Fisher (float64 adjoint)', 'unrolled-empirical-fisher', 'unrolled-exact-hessian'],
      ['float64 gradients → engine (float32 storage, fp64 P)', 'dvemb-empirical-fisher', 'unrolled-empirical-fisher'],
      ['global P → per-block P (empirical Fisher)', 'dvemb-empirical-fisher-per-block', 'dvemb-empirical-fisher'],
      ['global P → per-block P (sampled Fisher)', 'dvemb-sampled-fisher-per-block', 'dvemb-sampled-fisher'],
      ['fp64 → fp32 propagator', 'dvemb-empirical-fisher-fp32', 'dvemb-empirical-fisher'],
      ...preset.projection.map((k): [string, string, string] => [`unprojected → Kronecker k = ${k} (global, fp64)`, `dvemb-kron-k${k}-global`, 'dvemb-empirical-fisher']),
      ...preset.projection.map((k): [string, string, string] => [`unprojected → the paper's setting: Kronecker k = ${k}, per-block, fp32`, `dvemb-kron-k${k}`, 'dvemb-empirical-fisher']),
    ];
    const decomposition: DecompositionRow[] = stages.map(([stage, estimator, baseline]) => {
      const row = { stage, estimator, baseline, settings: {} as DecompositionRow['settings'] };
      for (const setting of SETTINGS) {
        const targets = settingTargets[setting];
        const est = predictionOf(estimator, setting);
        const base = baseline === 'replay' ? null : predictionOf(baseline, setting);
        const truth = truthMatrix(targets);
        let rel = 0;
        for (let j = 0; j < m; j++) rel += relNorm(column(est, m, j, targets.length), base ? column(base, m, j, targets.length) : column(truth, m, j, targets.length)) / m;
        row.settings[setting] = {
          spearman: settings[setting][estimator]?.spearman ?? NaN,
          baselineSpearman: baseline === 'replay' ? 1 : (settings[setting][baseline]?.spearman ?? NaN),
          relativeChange: rel,
        };
      }
      return row;
    });

    // ---- derivative check: Δ/ε of infinitesimal removals against the exact-Hessian unrolling ----
    const infinitesimal = { epsilon: eps, targets: preset.infinitesimalTargets, settings: {} as Record<Setting, Agreement> };
    let at = 0;
    for (const setting of SETTINGS) {
      const targets = settingTargets[setting].slice(0, preset.infinitesimalTargets);
      const pred = predict(table, scores.get('unrolled-exact-hessian') as Float64Array, m, targets);
      const truth = smallReplays.slice(at, at + targets.length).map((r) => r.deltas.map((d) => d / eps));
      at += targets.length;
      infinitesimal.settings[setting] = meanAgreement(Array.from({ length: m }, (_, j) => agreement(column(pred, m, j, targets.length), column(truth, m, j, targets.length))));
    }

    // ---- Spearman by removal epoch ----
    const curveEstimators = ['unrolled-exact-hessian', 'unrolled-exact-ggn', 'dvemb-sampled-fisher', 'dvemb-empirical-fisher', `dvemb-kron-k${preset.projection[Math.min(1, preset.projection.length - 1)]}`, 'tracin-step', 'tracin-cp', 'influence-function'];
    const byEpoch = { epochs: byEpochTargets.map((_, e) => e), steps: byEpochTargets.map((_, e) => (e + 0.5) * stepsPerEpoch), estimators: {} as Record<string, number[]> };
    for (const name of curveEstimators) {
      byEpoch.estimators[name] = byEpochTargets.map((targets) => {
        const pred = predict(table, scores.get(name) as Float64Array, m, targets);
        const truth = truthMatrix(targets);
        return meanAgreement(Array.from({ length: m }, (_, j) => agreement(column(pred, m, j, targets.length), column(truth, m, j, targets.length)))).spearman;
      });
    }

    // ---- projection dimension ----
    const layers = final.layers;
    const dimOf = (k: number) => layers.reduce((a, { dIn, dOut }) => a + Math.min(k, dIn + 1) * Math.min(k, dOut), 0);
    const projection = { dims: preset.projection.map(dimOf), k: preset.projection, perBlockFp32: {} as Record<Setting, number[]>, globalFp64: {} as Record<Setting, number[]> };
    for (const setting of SETTINGS) {
      projection.perBlockFp32[setting] = preset.projection.map((k) => settings[setting][`dvemb-kron-k${k}`]?.spearman ?? NaN);
      projection.globalFp64[setting] = preset.projection.map((k) => settings[setting][`dvemb-kron-k${k}-global`]?.spearman ?? NaN);
    }

    // ---- LDS: random halves removed, retrained by replay ----
    const ldsRng = rng.fork('lds');
    const removedSets: number[][] = Array.from({ length: preset.ldsSubsets }, () => Array.from(ldsRng.permutation(train.n).subarray(0, Math.floor(train.n / 2))).sort((a, b) => a - b));
    const ldsRuns = await timed('lds-retraining', () => replayer.replayMany(removedSets.map((examples) => ({ examples })), { ...(workers !== undefined ? { workers } : {}), onProgress: (d, t) => progress('LDS retraining', d, t) }));
    const ldsEstimators: Record<string, number> = {};
    for (const name of ['unrolled-exact-hessian', 'dvemb-sampled-fisher', 'dvemb-empirical-fisher', `dvemb-kron-k${preset.projection.at(-1)}`, 'tracin-step', 'tracin-cp', 'grad-dot', 'influence-function']) {
      const ex = exampleScores(table, scores.get(name) as Float64Array, m, train.n);
      let sum = 0;
      for (let j = 0; j < m; j++) sum += lds(column(ex, m, j, train.n), removedSets, ldsRuns.map((r) => r.deltas[j] as number)) / m;
      ldsEstimators[name] = sum;
    }

    // ---- mislabel detection ----
    const { y: noisy, flipped } = flipLabels(train.y, ds.classes, preset.mislabelFraction, (() => {
      const r = rng.fork('flip');
      return () => r.next();
    })());
    const noisyTrainer = new Trainer({ ...config, data: { ...config.data, y: noisy }, keepEveryStep: false });
    const noisyRun = await timed('mislabel-training', () => noisyTrainer.train({ onStep: (d, t) => progress('mislabel run', d, t) }));
    const noisyCtx: EvalContext = { trainer: noisyTrainer, run: noisyRun, tests };
    const selfEx = exampleScores(occurrenceTable(noisyTrainer), await tracinCP(noisyCtx, { self: true }), 1, train.n);
    const finalLosses = noisyTrainer.modelAt(noisyRun.theta).losses(train.x, noisy, train.n);
    const mislabel = { fraction: preset.mislabelFraction, selfInfluence: detectionCurve(selfEx, flipped), finalLoss: detectionCurve(finalLosses, flipped) };

    const result: ExperimentResult = {
      settings,
      decomposition,
      infinitesimal,
      byEpoch,
      projection,
      costs,
      replay: { count: everyTarget.length, seconds: replaySeconds, perSecond: everyTarget.length / replaySeconds, workers: Math.min(workers ?? availableParallelism(), everyTarget.length), steps: replayedSteps, stepsPerSecond: replayedSteps / replaySeconds },
      mislabel,
      lds: { subsets: preset.ldsSubsets, removedFraction: 0.5, estimators: ldsEstimators },
      model,
      config: { preset: presetName, values: preset, backend: loaded.name },
      wallSeconds: 0,
      figures: {},
    };
    result.figures = figures(result, table, scores, settingTargets, truthOf, m);
    result.wallSeconds = (performance.now() - started) / 1000;
    return result;
  } finally {
    if (ownsWork) rmSync(work, { recursive: true, force: true });
  }
}

const SCATTER = ['unrolled-exact-hessian', 'dvemb-sampled-fisher', 'dvemb-empirical-fisher', 'tracin-cp', 'influence-function'];

/** The SVG figures: estimate vs truth scatters, Spearman vs projection dimension, Spearman vs removal epoch, mislabel detection. */
function figures(r: ExperimentResult, table: OccurrenceTable, scores: Map<string, Float64Array>, targets: Record<Setting, Target[]>, truthOf: Map<Target, ReplayResult>, m: number): Record<string, string> {
  const out: Record<string, string> = {};
  const what = `${r.model.dataset}, MLP ${r.model.widths.join('-')} ${r.model.activation}`;
  for (const name of SCATTER) {
    const s = scores.get(name);
    if (!s) continue;
    const series: Series[] = SETTINGS.map((setting) => {
      const tg = targets[setting];
      const pred = predict(table, s, m, tg);
      const x: number[] = [];
      const y: number[] = [];
      tg.forEach((t, i) => {
        const truth = (truthOf.get(t) as ReplayResult).deltas;
        for (let j = 0; j < m; j++) {
          x.push(truth[j] as number);
          y.push(pred[i * m + j] as number);
        }
      });
      return { name: `${setting} (ρ=${r.settings[setting][name]?.spearman.toFixed(3)})`, x, y };
    });
    out[`scatter-${name}.svg`] = scatterChart(series, { title: `${name} vs exact TSLOO (${what})`, xLabel: 'exact Δ test loss (replay)', yLabel: 'predicted Δ', diagonal: true });
  }
  const proj: Series[] = SETTINGS.flatMap((setting) => [
    { name: `${setting}, per-block fp32`, x: r.projection.dims, y: r.projection.perBlockFp32[setting] },
    { name: `${setting}, global fp64`, x: r.projection.dims, y: r.projection.globalFp64[setting] },
  ]);
  out['spearman-vs-dimension.svg'] = lineChart(proj, { title: `DVEmb (Kronecker projection) vs replay, ${what}`, xLabel: 'projected dimension (sum over layers)', yLabel: 'Spearman ρ', yRange: [-0.2, 1], logX: true });
  out['spearman-vs-step.svg'] = lineChart(
    Object.entries(r.byEpoch.estimators).map(([name, y]) => ({ name, x: r.byEpoch.steps, y })),
    { title: `Spearman vs removal step (occurrences per epoch), ${what}`, xLabel: 'removal step (epoch midpoints)', yLabel: 'Spearman ρ', yRange: [-0.2, 1] },
  );
  out['mislabel-detection.svg'] = lineChart(
    [
      { name: `self-influence (AUC ${r.mislabel.selfInfluence.auc.toFixed(3)})`, x: r.mislabel.selfInfluence.inspected, y: r.mislabel.selfInfluence.found },
      { name: `final loss (AUC ${r.mislabel.finalLoss.auc.toFixed(3)})`, x: r.mislabel.finalLoss.inspected, y: r.mislabel.finalLoss.found },
    ],
    { title: `Mislabel detection (${Math.round(100 * r.mislabel.fraction)}% flipped), ${what}`, xLabel: 'fraction of training data inspected', yLabel: 'fraction of flipped labels found', yRange: [0, 1] },
  );
  return out;
}

/** The fixed-width table of `dvemb eval`: estimator × setting → Spearman, Pearson, top-10% overlap. */
export function formatTable(r: ExperimentResult): string {
  const names = Object.keys(r.settings['first-epoch']);
  const w = Math.max(...names.map((n) => n.length), 9);
  const cell = (a: Agreement | undefined) => (a ? `${fmt(a.spearman)} ${fmt(a.pearson)} ${fmt(a.topOverlap)}` : '').padEnd(20);
  const lines = [
    `${'estimator'.padEnd(w)}  ${SETTINGS.map((s) => s.padEnd(20)).join('  ')}  cost (s)`,
    `${''.padEnd(w)}  ${SETTINGS.map(() => 'ρ_s    r      top10'.padEnd(20)).join('  ')}`,
  ];
  for (const n of names) lines.push(`${n.padEnd(w)}  ${SETTINGS.map((s) => cell(r.settings[s][n])).join('  ')}  ${r.costs[n] !== undefined ? (r.costs[n] as number).toFixed(2) : ''}`);
  return lines.join('\n');
}

function fmt(v: number): string {
  return Number.isFinite(v) ? (v >= 0 ? ' ' : '') + v.toFixed(3) : '   —  ';
}

export function formatDecomposition(r: ExperimentResult): string {
  const lines = ['stage (estimator vs baseline): Spearman vs replay per setting [baseline → this], relative change of the prediction'];
  for (const row of r.decomposition) {
    lines.push(`  ${row.stage}`);
    lines.push(
      '    ' +
        SETTINGS.map((s) => {
          const v = row.settings[s];
          return `${s}: ${v.baselineSpearman.toFixed(3)} → ${v.spearman.toFixed(3)} (Δrel ${v.relativeChange < 100 ? v.relativeChange.toFixed(3) : v.relativeChange.toExponential(1)})`;
        }).join('   '),
    );
  }
  const inf = r.infinitesimal;
  lines.push(`  derivative check: exact Hessian unrolling vs infinitesimal replay (Δ/ε, ε = ${inf.epsilon}, ${inf.targets} targets per setting)`);
  lines.push('    ' + SETTINGS.map((s) => `${s}: ρ_s ${inf.settings[s].spearman.toFixed(4)}, r ${inf.settings[s].pearson.toFixed(4)}`).join('   '));
  return lines.join('\n');
}
