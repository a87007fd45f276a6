// Distilled datamodels (REFERENCE §7) on a user's reference-model run: group the training set,
// distil one synset per group at the recorded checkpoints (offline), then attribute any targets by
// reverse steps over random removal masks and a ridge datamodel (online). The attribution matrix
// W (K × targets, W > 0 = the group helped) is saved as .npy beside the group table.
//
//   const run = referenceRun(trainer, trainRun);           // or build a ReferenceRun by hand
//   const groups = classKMeansGroups(x, y, n, d, 20);       // or groupsFromIds(ids)
//   const synsets = distill(run, groups);
//   saveSynsets('synsets', synsets);                        // reusable for any later targets
//   const result = attribute(run, synsets, targets);
//   saveAttribution('ddm-out', result, groups, y);

import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DvembError } from '../errors.js';
import { MLP, type Activation } from '../eval/mlp.js';
import type { Trainer, TrainRun } from '../eval/trainer.js';
import { bytesOf, int64Bytes, npyHeader, npyView, readNpyHeaderFile } from '../trajectory/npy.js';
import { Trajectory } from '../trajectory/trajectory.js';
import { groupClasses, type Groups } from './groups.js';
import { OnlineEvaluator, fitDatamodel, masksFrom, randomMasks, reverseSchedule, type DatamodelResult, type ReverseAnchor, type ReverseSchedule, type ReverseScheduleOptions, type RidgeOptions } from './online.js';
import { checkSynsetsFit, distillSynsets, type Checkpoint, type DistillOptions, type Examples, type Synsets } from './synset.js';

export * from './groups.js';
export * from './synset.js';
export * from './online.js';
export * from './compare.js';

/** What DDM needs from a recorded reference-model run. */
export interface ReferenceRun {
  /** The model at θ_T (its widths and activation fix the shape synsets are made for). */
  model: MLP;
  /** The training set; example i is row i (the ids the trajectory recorded). */
  train: Examples;
  /** Recorded θ_t to match at; those with step > 0 are used (each ends a segment of the run). */
  checkpoints: Checkpoint[];
  /** η_t for every step t = 0 … T−1. */
  lr: ArrayLike<number>;
  /** Σ_{z∈B_t} w_z for every step (default: 1 at every step, a mean loss). */
  weightSum?: ArrayLike<number>;
}

/** A ReferenceRun from the reference trainer and its run (the trainer's checkpoints). */
export function referenceRun(trainer: Trainer, run: TrainRun): ReferenceRun {
  const T = trainer.steps;
  const lr = new Float64Array(T);
  const weightSum = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    lr[t] = trainer.lr(t);
    const w = trainer.weights(t, trainer.batch(t));
    let s = 0;
    for (const v of w) s += v;
    weightSum[t] = s;
  }
  const { data } = trainer.config;
  return {
    model: trainer.modelAt(run.theta),
    train: { x: data.x, y: data.y, n: data.n },
    checkpoints: run.checkpoints.steps.map((step, i) => ({ step, theta: run.checkpoints.thetas[i]! })),
    lr,
    weightSum,
  };
}

/** η_t and Σ w_z per step, read from a recorded trajectory (steps never recorded get 0). */
export async function stepsFromTrajectory(dir: string): Promise<{ lr: Float64Array; weightSum: Float64Array }> {
  const traj = Trajectory.open(dir);
  const T = (traj.chunks.at(-1)?.lastStep ?? -1) + 1;
  const lr = new Float64Array(T);
  const weightSum = new Float64Array(T);
  for (let i = 0; i < traj.chunks.length; i++) {
    const c = await traj.readChunk(i, false);
    for (let s = 0; s < c.steps; s++) {
      const t = c.step[s] as number;
      lr[t] = c.lr[s] as number;
      let w = 0;
      for (let r = c.stepRows[s] as number; r < (c.stepRows[s + 1] as number); r++) w += c.weights[r] as number;
      weightSum[t] = w;
    }
  }
  return { lr, weightSum };
}

function matchCheckpoints(run: ReferenceRun): Checkpoint[] {
  const cps = run.checkpoints.filter((c) => c.step > 0).sort((a, b) => a.step - b.step);
  if (cps.length === 0) throw new DvembError('BAD_INPUT', 'DDM needs at least one recorded checkpoint after step 0', 'keep θ every K steps while training (e.g. once per epoch), θ_T included');
  for (const c of cps) {
    if (c.theta.length !== run.model.numParams) {
      throw new DvembError('SHAPE_MISMATCH', `checkpoint at step ${c.step} has ${c.theta.length} parameters; the model ${run.model.widths.join('-')} has ${run.model.numParams}`);
    }
  }
  return cps;
}

function checkGroups(run: ReferenceRun, groups: Groups): void {
  if (groups.n !== run.train.n) throw new DvembError('SHAPE_MISMATCH', `the groups cover ${groups.n} examples, the training set has ${run.train.n}`, 'make one group assignment per training example');
  for (let k = 0; k < groups.K; k++) if (!groups.members[k]?.length) throw new DvembError('BAD_INPUT', `group ${k} is empty`);
}

/** The offline stage: one synset per group, matched at the run's checkpoints (step > 0). */
export function distill(run: ReferenceRun, groups: Groups, options: DistillOptions = {}): Synsets {
  checkGroups(run, groups);
  return distillSynsets(run.model, matchCheckpoints(run), run.train, groups, options);
}

/** The reverse steps of the run for synsets matched at `synsets.checkpointSteps`. */
export function runReverseSchedule(run: ReferenceRun, synsets: Synsets, options: ReverseScheduleOptions = {}): ReverseSchedule {
  const weightSum = run.weightSum ?? new Float64Array(run.lr.length).fill(1);
  return reverseSchedule(run.lr, weightSum, synsets.checkpointSteps, run.train.n, options);
}

export interface OnlineOptions extends ReverseScheduleOptions {
  /** Where each reverse step takes its synset gradient (default 'checkpoint'; see online.ts). */
  anchor?: ReverseAnchor;
}

/** The online evaluator of a run: its reverse schedule, anchored at the run's checkpoints. */
export function onlineEvaluator(run: ReferenceRun, synsets: Synsets, targets: Examples, options: OnlineOptions = {}): OnlineEvaluator {
  checkSynsetsFit(synsets, run.model);
  const schedule = runReverseSchedule(run, synsets, options);
  return new OnlineEvaluator(run.model, { synsets, schedule, anchor: options.anchor ?? 'checkpoint', checkpoints: run.checkpoints }, targets);
}

export interface AttributeOptions extends RidgeOptions, OnlineOptions {
  /** Explicit masks (lists of removed group ids, or 0/1 rows of width K); else random ones. */
  masks?: readonly (readonly number[])[] | Uint8Array;
  /** Number of random masks (default 1000) and each group's removal probability (default 0.25). */
  count?: number;
  removeProbability?: number;
  seed?: number | string;
  onProgress?: (done: number, total: number) => void;
}

export interface DdmAttribution extends DatamodelResult {
  schedule: ReverseSchedule;
  K: number;
  T: number;
}

/** The online stage: f(m) for every mask by reverse steps, then the ridge datamodel W (K × T). */
export function attribute(run: ReferenceRun, synsets: Synsets, targets: Examples, options: AttributeOptions = {}): DdmAttribution {
  const evaluator = onlineEvaluator(run, synsets, targets, options);
  const schedule = runReverseSchedule(run, synsets, options);
  const K = synsets.K;
  const masks = options.masks !== undefined ? masksFrom(options.masks, K).masks : randomMasks(K, options.count ?? 1000, options.removeProbability ?? 0.25, options.seed ?? 0);
  const fit = fitDatamodel(evaluator, masks, options);
  return { ...fit, schedule, K, T: targets.n };
}

/** f(m) for given masks only (no fit): count × T. Unknown groups in a mask are an error. */
export function evaluateMasks(run: ReferenceRun, synsets: Synsets, targets: Examples, masks: readonly (readonly number[])[] | Uint8Array, options: OnlineOptions = {}): Float64Array {
  checkSynsetsFit(synsets, run.model);
  const { masks: rows } = masksFrom(masks, synsets.K);
  return onlineEvaluator(run, synsets, targets, options).evaluateMany(rows);
}

// ---- files --------------------------------------------------------------------------------------

function writeAtomic(path: string, data: Buffer | string): void {
  const tmp = `${path}.partial`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

function npy(dtype: '<f4' | '<f8' | '<i8', shape: number[], body: Buffer): Buffer {
  return Buffer.concat([npyHeader(dtype, shape), body]);
}

export const SYNSETS_FORMAT = 'dvemb-ddm-synsets';

interface SynsetsJson {
  format: typeof SYNSETS_FORMAT;
  version: 1;
  widths: number[];
  activation: Activation;
  K: number;
  perGroup: number;
  distance: Synsets['distance'];
  checkpointSteps: number[];
  groupSizes: number[];
  scale: number[];
  weights: number[];
  initialLoss: number[];
  finalLoss: number[];
  cosine: number[];
  relativeError: number[];
  seconds: number;
}

/** Writes synsets.json (shape, labels' meaning, diagnostics) and synsets-x.npy / synsets-y.npy. */
export function saveSynsets(dir: string, s: Synsets): void {
  mkdirSync(dir, { recursive: true });
  const d = s.widths[0]!;
  writeAtomic(join(dir, 'synsets-x.npy'), npy('<f8', [s.K * s.perGroup, d], bytesOf(s.x)));
  writeAtomic(join(dir, 'synsets-y.npy'), npy('<i8', [s.K * s.perGroup], int64Bytes(s.y)));
  const meta: SynsetsJson = {
    format: SYNSETS_FORMAT,
    version: 1,
    widths: s.widths,
    activation: s.activation,
    K: s.K,
    perGroup: s.perGroup,
    distance: s.distance,
    checkpointSteps: s.checkpointSteps,
    groupSizes: Array.from(s.groupSizes),
    scale: Array.from(s.scale),
    weights: Array.from(s.weights),
    initialLoss: Array.from(s.initialLoss),
    finalLoss: Array.from(s.finalLoss),
    cosine: Array.from(s.cosine),
    relativeError: Array.from(s.relativeError),
    seconds: s.seconds,
  };
  writeAtomic(join(dir, 'synsets.json'), JSON.stringify(meta, null, 2) + '\n');
}

/** Reads synsets written by saveSynsets; with `model`, checks they were made for its shape. */
export function loadSynsets(dir: string, model?: MLP): Synsets {
  const path = join(dir, 'synsets.json');
  if (!existsSync(path)) throw new DvembError('BAD_INPUT', `${dir} holds no synsets (no synsets.json)`, 'distil them first (distill + saveSynsets)');
  let meta: SynsetsJson;
  try {
    meta = JSON.parse(readFileSync(path, 'utf8')) as SynsetsJson;
  } catch (err) {
    throw new DvembError('CORRUPT', `${path} is not valid JSON (${(err as Error).message})`);
  }
  if (meta.format !== SYNSETS_FORMAT) throw new DvembError('BAD_INPUT', `${path} has format ${JSON.stringify(meta.format)}, not ${SYNSETS_FORMAT}`);
  const rows = meta.K * meta.perGroup;
  const d = meta.widths[0]!;
  const read = (file: string, dtype: string, shape: number[]) => {
    const p = join(dir, file);
    const h = readNpyHeaderFile(p);
    if (h.dtype !== dtype || h.shape.join(',') !== shape.join(',')) {
      throw new DvembError('SHAPE_MISMATCH', `${p} holds ${h.dtype} (${h.shape.join(', ')}), synsets.json promises ${dtype} (${shape.join(', ')})`);
    }
    return npyView(readFileSync(p), h);
  };
  const x = Float64Array.from(read('synsets-x.npy', '<f8', [rows, d]) as Float64Array);
  const y = Int32Array.from(read('synsets-y.npy', '<i8', [rows]) as BigInt64Array, (v) => Number(v));
  const s: Synsets = {
    widths: meta.widths,
    activation: meta.activation,
    K: meta.K,
    perGroup: meta.perGroup,
    x,
    y,
    groupSizes: Int32Array.from(meta.groupSizes),
    scale: Float64Array.from(meta.scale),
    weights: Float64Array.from(meta.weights),
    distance: meta.distance,
    checkpointSteps: meta.checkpointSteps,
    initialLoss: Float64Array.from(meta.initialLoss),
    finalLoss: Float64Array.from(meta.finalLoss),
    cosine: Float64Array.from(meta.cosine),
    relativeError: Float64Array.from(meta.relativeError),
    seconds: meta.seconds,
  };
  if (model) checkSynsetsFit(s, model);
  return s;
}

export interface SavedAttribution {
  attribution: string;
  groups: string;
  table: string;
}

/**
 * Writes the attribution matrix `attribution.npy` (float32, K × T: W_kj > 0 = group k helped target
 * j), `groups.npy` (int64, example → group) and `groups.json` (sizes, majority labels, class
 * histograms, the fit's λ and intercepts, and `meta` under the key "meta").
 */
export function saveAttribution(dir: string, result: { W: Float64Array; b?: Float64Array; lambda?: number; K: number; T: number }, groups: Groups, y?: ArrayLike<number>, classes?: number, meta: Record<string, unknown> = {}): SavedAttribution {
  if (result.W.length !== result.K * result.T) throw new DvembError('SHAPE_MISMATCH', `W has ${result.W.length} values, not K·T = ${result.K}·${result.T}`);
  if (groups.K !== result.K) throw new DvembError('SHAPE_MISMATCH', `the attribution has ${result.K} groups, the group table ${groups.K}`);
  mkdirSync(dir, { recursive: true });
  const files = { attribution: join(dir, 'attribution.npy'), groups: join(dir, 'groups.npy'), table: join(dir, 'groups.json') };
  writeAtomic(files.attribution, npy('<f4', [result.K, result.T], bytesOf(Float32Array.from(result.W))));
  writeAtomic(files.groups, npy('<i8', [groups.n], int64Bytes(groups.assignment)));
  const table: Record<string, unknown> = {
    format: 'dvemb-ddm-groups',
    version: 1,
    K: groups.K,
    n: groups.n,
    targets: result.T,
    method: groups.method,
    sign: 'W[k, j] > 0: removing group k raises target j loss (k helped j)',
    sizes: Array.from(groups.sizes),
  };
  if (y && classes) {
    const { histogram, majority } = groupClasses(groups, y, classes);
    table.labels = Array.from(majority);
    table.classHistogram = Array.from({ length: groups.K }, (_, k) => Array.from(histogram.subarray(k * classes, (k + 1) * classes)));
  }
  if (result.lambda !== undefined) table.lambda = result.lambda;
  if (result.b) table.intercept = Array.from(result.b);
  if (Object.keys(meta).length) table.meta = meta;
  writeAtomic(files.table, JSON.stringify(table, null, 2) + '\n');
  return files;
}
