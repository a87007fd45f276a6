// A deterministic float64 SGD trainer for the reference MLP (REFERENCE §1): seeded batch order,
// learning-rate schedules, weight decay, mean or sum reduction, checkpoints of θ in memory, and
// recording into a TrajectoryRecorder exactly as a user's harness would. The whole run is a pure
// function of a plain, structured-cloneable TrainerConfig, so a worker thread handed the config
// and a checkpoint replays the very same arithmetic (lib/eval/replay.ts).
//
// Removal (TSLOO, REFERENCE §2): an occurrence (example, step) is removed by setting its weight to
// 0 at that step only, with every other weight unchanged (no renormalisation); an example is
// removed by doing that at every step it occurs in.

import type { Backend } from '../backend/surface.js';
import { DvembError } from '../errors.js';
import type { BatchGradients, BlockGradient, BlockSpec, ProjectionSpec } from '../projection.js';
import { TrajectoryRecorder } from '../trajectory/recorder.js';
import { sampledLabelFactors } from './curvature.js';
import { MLP, type Activation, type LayerFactors, type LayerInfo } from './mlp.js';
import { Rng, type Seed } from './rng.js';
import { constant, stepDecay, warmupCosine, type Schedule } from './schedule.js';

export type ScheduleSpec =
  | { kind: 'constant'; lr: number }
  | { kind: 'step'; initial: number; factor: number; every: number }
  /** totalSteps defaults to the run's length. */
  | { kind: 'warmup-cosine'; peak: number; warmupSteps: number; totalSteps?: number; floor?: number };

/** The training set: n rows of d features and labels in 0..classes−1. */
export interface TrainData {
  x: Float64Array;
  y: Int32Array;
  n: number;
  d: number;
}

export interface TrainerConfig {
  /** Layer widths, input first and classes last; [d, C] is multinomial logistic regression. */
  widths: number[];
  activation?: Activation;
  /** Initialisation seed of the MLP (default 0). */
  initSeed?: Seed;
  data: TrainData;
  batchSize: number;
  epochs: number;
  /** Seed of the batch order: epoch e uses permutation Rng(orderSeed).fork(`epoch${e}`). */
  orderSeed: Seed;
  /** Drop each epoch's last partial batch (default true: every step has batchSize examples). */
  dropLast?: boolean;
  schedule: ScheduleSpec;
  /** λ in θ ← (1 − ηλ)θ − η Σ w g (default 0). */
  weightDecay?: number;
  /** 'mean': w = 1/|B| (|B| counts removed examples too: no renormalisation); 'sum': w = 1. */
  reduction?: 'mean' | 'sum';
  /** Keep θ every K steps (θ_0, θ_K, ..., θ_T); K must divide the number of steps. */
  checkpointEvery: number;
  /** Also keep θ_t at every step (per-step TracIn, exact unrolling, replays that start at t_s). */
  keepEveryStep?: boolean;
  /** Seed of the sampled labels for curvature rows (default 'curvature'); step t forks `step${t}`. */
  curvatureSeed?: Seed;
}

/** What to remove in a replay. Occurrences and examples may be combined. */
export interface Removal {
  /**
   * Single occurrences: w = 0 for `example` at `step` only. With `scale`, w is multiplied by it
   * instead (1 − ε: an infinitesimal removal, whose Δ/ε is the derivative the first-order
   * estimators compute).
   */
  occurrences?: { example: number; step: number; scale?: number }[];
  /** Examples dropped from every step they occur in (all-epoch removal). */
  examples?: number[];
}

/** How a recorded trajectory describes each layer (block names fc1, fc2, ...). */
export interface RecordingSpec {
  dir: string;
  /**
   * 'kronecker': projected factors (a, δ) per layer with kIn × kOut (capped at the layer's sizes);
   * 'dense': the layer's full gradient projected densely to k; 'full': a 'projected' block holding
   * the layer's FULL per-example gradient, unprojected (the engine takes it as-is: "DVEmb
   * unprojected"), in the MLP's flat layout (W row-major, then b).
   */
  blocks: 'kronecker' | 'dense' | 'full';
  kIn?: number;
  kOut?: number;
  k?: number;
  /** Record sampled-label curvature rows: true for RunOptions.curvatureDraws per example, or a number of draws. */
  curvature?: boolean | number;
  projection?: ProjectionSpec;
  backend?: Backend;
  chunkSteps?: number;
  meta?: Record<string, unknown>;
}

export interface RunOptions {
  record?: RecordingSpec[];
  /** Sampled labels per example for curvature rows (default 1). */
  curvatureDraws?: number;
  onStep?: (step: number, total: number) => void;
}

/** θ at steps 0, K, 2K, ..., T. */
export interface Checkpoints {
  every: number;
  steps: number[];
  thetas: Float64Array[];
}

export interface TrainRun {
  /** θ_T. */
  theta: Float64Array;
  checkpoints: Checkpoints;
  /** θ_0 .. θ_T when keepEveryStep (θ_t is the parameter vector step t starts from). */
  thetas: Float64Array[] | null;
  /** Mean training loss of each step's batch, at θ_t. */
  losses: Float64Array;
}

function scheduleOf(spec: ScheduleSpec, totalSteps: number): Schedule {
  switch (spec.kind) {
    case 'constant':
      return constant(spec.lr);
    case 'step':
      return stepDecay({ initial: spec.initial, factor: spec.factor, every: spec.every });
    case 'warmup-cosine':
      return warmupCosine({ peak: spec.peak, warmupSteps: spec.warmupSteps, totalSteps: spec.totalSteps ?? totalSteps, floor: spec.floor ?? 0 });
    default:
      throw new RangeError(`unknown schedule kind ${JSON.stringify((spec as { kind: unknown }).kind)}; use 'constant', 'step' or 'warmup-cosine'`);
  }
}

function positiveInt(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 1) throw new DvembError('BAD_INPUT', `${name} must be a positive integer, got ${String(v)}`);
}

/** Rows `ids` of a row-major matrix with `d` columns. */
export function gatherRows(x: Float64Array, d: number, ids: ArrayLike<number>): Float64Array {
  const out = new Float64Array(ids.length * d);
  for (let i = 0; i < ids.length; i++) out.set(x.subarray((ids[i] as number) * d, ((ids[i] as number) + 1) * d), i * d);
  return out;
}

/** The full per-example gradient of one layer (n × dOut·(dIn + 1)): W row-major, then b. */
export function layerGradientRows({ dIn, dOut }: LayerInfo, { inputs, outputGrads }: LayerFactors, n: number): Float64Array {
  const width = dOut * (dIn + 1);
  const out = new Float64Array(n * width);
  for (let i = 0; i < n; i++) {
    for (let o = 0; o < dOut; o++) {
      const d = outputGrads[i * dOut + o] as number;
      for (let k = 0; k < dIn; k++) out[i * width + o * dIn + k] = d * (inputs[i * dIn + k] as number);
      out[i * width + dOut * dIn + o] = d;
    }
  }
  return out;
}

/** The trajectory blocks of a recording: one per linear layer, named fc1, fc2, .... */
export function recordingBlocks(model: { layers: readonly LayerInfo[] }, spec: RecordingSpec): BlockSpec[] {
  return model.layers.map(({ dIn, dOut }, l) => {
    const name = `fc${l + 1}`;
    const size = dOut * (dIn + 1);
    if (spec.blocks === 'kronecker') {
      const kIn = Math.min(spec.kIn ?? 16, dIn + 1);
      const kOut = Math.min(spec.kOut ?? 16, dOut);
      return { name, kind: 'kronecker', dIn, dOut, bias: true, kIn, kOut };
    }
    if (spec.blocks === 'dense') return { name, kind: 'dense', d: size, k: Math.min(spec.k ?? 64, size) };
    if (spec.blocks === 'full') return { name, kind: 'projected', k: size };
    throw new DvembError('BAD_INPUT', `recording blocks must be 'kronecker', 'dense' or 'full', got ${JSON.stringify(spec.blocks)}`);
  });
}

/** Block gradients of n examples (or n·draws curvature rows) in the form the recording needs. */
function blockGradients(model: MLP, spec: RecordingSpec, layers: LayerFactors[], n: number): BatchGradients {
  const out: Record<string, BlockGradient> = {};
  model.layers.forEach((info, l) => {
    const f = layers[l] as LayerFactors;
    const name = `fc${l + 1}`;
    if (spec.blocks === 'kronecker') out[name] = { inputs: f.inputs, outputGrads: f.outputGrads };
    else if (spec.blocks === 'dense') out[name] = { gradient: layerGradientRows(info, f, n) };
    else out[name] = { projected: Float32Array.from(layerGradientRows(info, f, n)) };
  });
  return out;
}

export class Trainer {
  readonly config: TrainerConfig;
  readonly stepsPerEpoch: number;
  /** T, the number of optimisation steps. */
  readonly steps: number;
  readonly weightDecay: number;
  readonly reduction: 'mean' | 'sum';
  private readonly schedule: Schedule;
  private readonly orders = new Map<number, Int32Array>();
  private occurrenceIndex: Map<number, number[]> | null = null;

  constructor(config: TrainerConfig) {
    const { data, batchSize, epochs, checkpointEvery } = config;
    if (!data || !(data.x instanceof Float64Array) || !(data.y instanceof Int32Array)) {
      throw new DvembError('BAD_INPUT', 'config.data must be {x: Float64Array, y: Int32Array, n, d}');
    }
    positiveInt('data.n', data.n);
    if (data.x.length !== data.n * data.d || data.y.length !== data.n) {
      throw new DvembError('SHAPE_MISMATCH', `config.data: x has ${data.x.length} values and y ${data.y.length} labels for n = ${data.n}, d = ${data.d}`);
    }
    if (config.widths[0] !== data.d) throw new DvembError('SHAPE_MISMATCH', `widths[0] = ${config.widths[0]} but the data have d = ${data.d} features`);
    positiveInt('batchSize', batchSize);
    positiveInt('epochs', epochs);
    positiveInt('checkpointEvery', checkpointEvery);
    if (batchSize > data.n) throw new DvembError('BAD_INPUT', `batchSize ${batchSize} exceeds the ${data.n} training examples`);
    this.config = config;
    const dropLast = config.dropLast ?? true;
    this.stepsPerEpoch = dropLast ? Math.floor(data.n / batchSize) : Math.ceil(data.n / batchSize);
    this.steps = this.stepsPerEpoch * epochs;
    if (this.steps % checkpointEvery !== 0) {
      throw new DvembError(
        'BAD_INPUT',
        `checkpointEvery = ${checkpointEvery} does not divide the ${this.steps} steps of the run (${epochs} epochs × ${this.stepsPerEpoch} steps)`,
        `choose a divisor of ${this.steps}, e.g. ${this.stepsPerEpoch} (one checkpoint per epoch) or 1`,
      );
    }
    this.weightDecay = config.weightDecay ?? 0;
    this.reduction = config.reduction ?? 'mean';
    if (this.reduction !== 'mean' && this.reduction !== 'sum') throw new DvembError('BAD_INPUT', `reduction must be 'mean' or 'sum', got ${String(this.reduction)}`);
    this.schedule = scheduleOf(config.schedule, this.steps);
    for (let t = 0; t < this.steps; t += Math.max(1, Math.floor(this.steps / 16))) this.lr(t); // validates the schedule early
  }

  /** A fresh model at θ_0 (the seeded initialisation). */
  initialModel(): MLP {
    return new MLP({ widths: this.config.widths, activation: this.config.activation ?? 'tanh', seed: this.config.initSeed ?? 0 });
  }

  /** A model at the given parameters. */
  modelAt(theta: ArrayLike<number>): MLP {
    const m = this.initialModel();
    m.setParameters(theta);
    return m;
  }

  /** η_t. */
  lr(step: number): number {
    return this.schedule(step);
  }

  /** The sample ids of step t's batch: a pure function of (orderSeed, t). */
  batch(step: number): Int32Array {
    if (!Number.isSafeInteger(step) || step < 0 || step >= this.steps) throw new RangeError(`step ${step} is outside 0..${this.steps - 1}`);
    const epoch = Math.floor(step / this.stepsPerEpoch);
    let order = this.orders.get(epoch);
    if (!order) {
      order = new Rng(this.config.orderSeed).fork(`epoch${epoch}`).permutation(this.config.data.n);
      if (this.orders.size > 64) this.orders.clear();
      this.orders.set(epoch, order);
    }
    const b = step % this.stepsPerEpoch;
    const B = this.config.batchSize;
    return order.slice(b * B, Math.min((b + 1) * B, order.length));
  }

  /** The steps at which each example occurs, in increasing order. */
  occurrences(example: number): number[] {
    if (!this.occurrenceIndex) {
      const index = new Map<number, number[]>();
      for (let t = 0; t < this.steps; t++) {
        for (const id of this.batch(t)) {
          const list = index.get(id);
          if (list) list.push(t);
          else index.set(id, [t]);
        }
      }
      this.occurrenceIndex = index;
    }
    return this.occurrenceIndex.get(example) ?? [];
  }

  /** Checks a removal against the batch schedule; returns the first step it changes. */
  firstRemovalStep(removal: Removal): number {
    let first = this.steps;
    for (const { example, step, scale } of removal.occurrences ?? []) {
      if (scale !== undefined && !Number.isFinite(scale)) throw new DvembError('BAD_INPUT', `the scale of example ${example} at step ${step} must be a finite number, got ${scale}`);
      if (!Number.isSafeInteger(step) || step < 0 || step >= this.steps) {
        throw new DvembError('UNKNOWN_ID', `cannot remove example ${example} at step ${step}: the run has steps 0..${this.steps - 1}`);
      }
      if (!this.batch(step).includes(example)) {
        const at = this.occurrences(example);
        throw new DvembError('UNKNOWN_ID', `example ${example} does not occur at step ${step}`, at.length ? `it occurs at steps ${at.slice(0, 12).join(', ')}${at.length > 12 ? ', ...' : ''}` : `example ${example} never occurs in this run`);
      }
      first = Math.min(first, step);
    }
    for (const example of removal.examples ?? []) {
      const at = this.occurrences(example);
      if (at.length === 0) throw new DvembError('UNKNOWN_ID', `example ${example} never occurs in this run (training ids are 0..${this.config.data.n - 1})`, 'remove an example that is in some batch');
      first = Math.min(first, at[0] as number);
    }
    return first;
  }

  /** w_z of step t's batch, with the removed occurrences set to 0 (no renormalisation). */
  weights(step: number, ids: Int32Array, removal?: Removal): Float64Array {
    const w = new Float64Array(ids.length).fill(this.reduction === 'mean' ? 1 / ids.length : 1);
    if (!removal) return w;
    for (const { example, step: s, scale } of removal.occurrences ?? []) {
      if (s === step) ids.forEach((id, i) => id === example && (w[i] = scale === undefined ? 0 : (w[i] as number) * scale));
    }
    if (removal.examples?.length) {
      const drop = new Set(removal.examples);
      ids.forEach((id, i) => drop.has(id) && (w[i] = 0));
    }
    return w;
  }

  /** One SGD step of the schedule on `model` (mutated); returns the per-example factors at θ_t. */
  step(model: MLP, t: number, removal?: Removal) {
    const ids = this.batch(t);
    const { data } = this.config;
    const x = gatherRows(data.x, data.d, ids);
    const y = Array.from(ids, (i) => data.y[i] as number);
    const w = this.weights(t, ids, removal);
    return { ids, x, y, ...model.sgdStep({ x, y, n: ids.length, weights: w, lr: this.lr(t), weightDecay: this.weightDecay }) };
  }

  /** Replays steps [start, T) from θ_start with `removal` applied; returns θ'_T. Synchronous, exact. */
  runFrom(start: number, theta: ArrayLike<number>, removal?: Removal): Float64Array {
    if (!Number.isSafeInteger(start) || start < 0 || start > this.steps) throw new RangeError(`start step ${start} is outside 0..${this.steps}`);
    const model = this.modelAt(theta);
    for (let t = start; t < this.steps; t++) this.step(model, t, removal);
    return model.parameters();
  }

  /** Trains from θ_0 to θ_T, keeping checkpoints and recording every step into the given trajectories. */
  async train(options: RunOptions = {}): Promise<TrainRun> {
    const model = this.initialModel();
    const K = this.config.checkpointEvery;
    const checkpoints: Checkpoints = { every: K, steps: [0], thetas: [model.parameters()] };
    const thetas = this.config.keepEveryStep ? [model.parameters()] : null;
    const specs = options.record ?? [];
    const defaultDraws = options.curvatureDraws ?? 1;
    positiveInt('curvatureDraws', defaultDraws);
    const drawsOf = specs.map((s) => (s.curvature === true ? defaultDraws : typeof s.curvature === 'number' ? s.curvature : 0));
    drawsOf.forEach((d, i) => specs[i]!.curvature !== undefined && specs[i]!.curvature !== false && positiveInt(`record[${i}].curvature draws`, d));
    const recorders = specs.map((spec, i) =>
      TrajectoryRecorder.create(spec.dir, {
        projection: spec.projection ?? { seed: 0, distribution: 'gaussian' },
        blocks: recordingBlocks(model, spec),
        ...(drawsOf[i] ? { curvature: { draws: drawsOf[i] as number } } : {}),
        ...(spec.backend ? { backend: spec.backend } : {}),
        ...(spec.chunkSteps ? { chunkSteps: spec.chunkSteps } : {}),
        meta: { model: `MLP ${this.config.widths.join('-')} ${this.config.activation ?? 'tanh'}`, optimizer: 'SGD', reduction: this.reduction, ...spec.meta },
      }),
    );
    const curvatureRng = new Rng(this.config.curvatureSeed ?? 'curvature');
    const losses = new Float64Array(this.steps);
    try {
      for (let t = 0; t < this.steps; t++) {
        // Sampled labels at θ_t, before the step moves θ: one set per distinct number of draws,
        // each from the stream forked for this step (a pure function of the seed and t).
        const sampled = new Map<number, LayerFactors[]>();
        for (const d of new Set(drawsOf.filter((v) => v > 0))) {
          const ids = this.batch(t);
          sampled.set(d, sampledLabelFactors(model, gatherRows(this.config.data.x, this.config.data.d, ids), ids.length, d, curvatureRng.fork(`step${t}`)).layers);
        }
        const res = this.step(model, t);
        const n = res.ids.length;
        let loss = 0;
        for (let i = 0; i < n; i++) loss += res.losses[i] as number;
        losses[t] = loss / n;
        for (let r = 0; r < recorders.length; r++) {
          const spec = specs[r] as RecordingSpec;
          await (recorders[r] as TrajectoryRecorder).record({
            step: t,
            lr: res.lr,
            weightDecay: res.weightDecay,
            ids: res.ids,
            reduction: this.reduction,
            gradients: blockGradients(model, spec, res.layers, n),
            ...(drawsOf[r] ? { curvature: blockGradients(model, spec, sampled.get(drawsOf[r] as number) as LayerFactors[], n * (drawsOf[r] as number)) } : {}),
          });
        }
        if (thetas) thetas.push(model.parameters());
        if ((t + 1) % K === 0) {
          checkpoints.steps.push(t + 1);
          checkpoints.thetas.push(model.parameters());
        }
        options.onStep?.(t + 1, this.steps);
      }
    } finally {
      for (const r of recorders) await r.close();
    }
    return { theta: model.parameters(), checkpoints, thetas, losses };
  }
}
