// TensorFlow.js adapter (docs/TFJS.md): trains a tf.LayersModel whose trainable layers are Dense
// and records the trajectory while it trains. One forward pass and one backward pass per step
// give both the per-example Kronecker factors and the update:
//   - every trainable Dense layer computes z = a·W + P instead of z = a·W + b, where P is a
//     (rows × dOut) tensor, rows = examples × tokens, holding the bias broadcast over the rows
//     (zeros without a bias). P is the "probe": the gradient of the SUMMED per-example loss w.r.t. P is
//     row by row δ_i = ∂ℓ_i/∂z_i, each example's own output gradient (REFERENCE §1), because
//     example i's loss depends on row i of P only. a_i is captured on the way forward.
//   - the weight gradient of the weighted batch loss is then Σ_i w_i δ_i a_iᵀ = aᵀ·diag(w)·δ, one
//     matmul per layer (what backprop would have spent on it anyway), and the SGD update
//     θ ← (1 − ηλ)θ − η Σ w g is applied here, so the recorded η and λ are exactly those applied.
// The factors go to the TrajectoryRecorder, which projects them in the addon. Recording runs
// asynchronously: step t's projection and disk write overlap step t+1's compute, and step t+1
// waits for step t's record before it applies its update, so order and errors are kept.
import * as tf from '@tensorflow/tfjs';
import type { BackendChoice } from '../backend/loader.js';
import type { Backend, Distribution } from '../backend/surface.js';
import { DvembError } from '../errors.js';
import { Rng } from '../eval/rng.js';
import type { BatchGradients, BlockGradient, BlockSpec } from '../projection.js';
import { TrajectoryRecorder } from '../trajectory/recorder.js';

type Layer = tf.LayersModel['layers'][number];
type Kwargs = Record<string, unknown>;
type CallFn = (inputs: tf.Tensor | tf.Tensor[], kwargs: Kwargs) => tf.Tensor | tf.Tensor[];

/** What the adapter reads of a Dense layer (fields tfjs-layers keeps public at runtime). */
interface DenseInternals {
  name: string;
  kernel: { read(): tf.Variable } | null;
  bias: { read(): tf.Variable } | null;
  activation: { apply(x: tf.Tensor): tf.Tensor; getClassName(): string } | null;
  kernelRegularizer?: unknown;
  biasRegularizer?: unknown;
  activityRegularizer?: unknown;
  kernelConstraint?: unknown;
  biasConstraint?: unknown;
  inboundNodes: unknown[];
  call: CallFn;
}

/** Projected dimensions of one Dense layer's Kronecker block (REFERENCE §4): kIn × kOut. */
export interface KSpec {
  in: number;
  out: number;
}

/** Per-example loss: 'softmaxCrossEntropy' on logits, 'categoricalCrossentropy' on probabilities
 * (Keras semantics: normalised, clipped to [1e-7, 1 − 1e-7]), or a function returning the
 * per-example losses (shape [n]) of a batch. */
export type TfjsLoss = 'softmaxCrossEntropy' | 'categoricalCrossentropy' | ((yTrue: tf.Tensor, yPred: tf.Tensor) => tf.Tensor);

export interface TfjsBlockInfo {
  /** Block name in the trajectory: the layer's path (nested models joined by '/'). */
  name: string;
  /** The tfjs layer's own name. */
  layer: string;
  dIn: number;
  dOut: number;
  bias: boolean;
  /** Decay implied by L2 regularizers (λ = 2·l2: Keras adds l2·‖W‖² to the loss), per weight. */
  l2Decay: { kernel: number; bias: number };
}

export interface TfjsModelPlan {
  blocks: TfjsBlockInfo[];
  /** Frozen (trainable = false) per-example layers, run as fixed functions: 'name (Class)'. */
  frozen: string[];
  /** Weightless per-example layers: 'name (Class)'. */
  passThrough: string[];
}

export interface TfjsRecorderOptions {
  /** Trajectory directory (new or empty). */
  dir: string;
  projection: { seed: number; distribution?: Distribution };
  /** kIn × kOut per Dense layer: one for all, per block name, or a function (default 16 × 16). */
  k?: KSpec | Record<string, KSpec> | ((block: TfjsBlockInfo) => KSpec);
  /** η per step (a number or a schedule of the step index). Default: the SGD optimizer's rate. */
  lr?: number | ((step: number) => number);
  /** Decoupled weight decay λ on every trainable weight: θ ← (1 − ηλ)θ − η Σ w g (default 0). */
  weightDecay?: number;
  loss: TfjsLoss;
  /** How the batch loss is reduced when step() gets no weights (default 'mean': w = 1/n). */
  reduction?: 'mean' | 'sum';
  /** The optimizer to check (default: the one the model was compiled with; none: plain SGD). */
  optimizer?: tf.Optimizer;
  /** Accept momentum, Adam, … and record them as plain SGD with their nominal learning rate,
   * labelled an approximation in the manifest (default false: they are rejected). */
  allowApproximateOptimizer?: boolean;
  /** Sampled-label curvature rows (REFERENCE §3): `draws` labels per example drawn from the
   * model's own softmax with a seeded generator (seed default: the projection seed). */
  curvature?: { draws: number; seed?: number };
  /** Run the forward pass in training mode (Dropout active), as model.fit does (default true). */
  training?: boolean;
  /** Class names of custom weightless layers you vouch treat each example independently. */
  allowLayers?: string[];
  /** First step index (default 0). */
  startStep?: number;
  backend?: Backend | BackendChoice;
  chunkSteps?: number;
  durable?: boolean;
  /** Extra manifest metadata (kept beside the adapter's own). */
  meta?: Record<string, unknown>;
}

export interface TfjsBatch {
  /** The model's input (one tensor per model input), batch on axis 0. */
  x: tf.Tensor | tf.Tensor[];
  /** One-hot (or soft) targets (n × classes), or integer labels (n). */
  y: tf.Tensor | ArrayLike<number>;
  /** Sample id of each example (repeats are separate occurrences). */
  ids: ArrayLike<number>;
  /** Per-example weights w of this step's loss Σ w ℓ (overrides the reduction). */
  weights?: ArrayLike<number>;
}

/** Per-example gradient factors of a batch, ready for projectTests(set, gradients, n). */
export interface TfjsGradients {
  gradients: Record<string, BlockGradient>;
  losses: Float32Array;
  n: number;
}

/** Cumulative milliseconds per phase, to see where a step's time goes. */
export interface TfjsTimings {
  steps: number;
  /** Forward + backward with probes (the main pass). */
  passMs: number;
  /** Copying the factors out of tfjs. */
  readMs: number;
  /** The sampled-label pass. */
  curvatureMs: number;
  /** Applying the update. */
  updateMs: number;
  /** Waiting for the previous step's record (the part of projection + write not overlapped). */
  recordWaitMs: number;
  /** Projection + write, from hand-off to completion (overlaps the next step's compute). */
  recordMs: number;
}

// Weightless layers that act on each example independently (no batch statistics).
const PER_EXAMPLE_WEIGHTLESS = new Set([
  'InputLayer', 'Flatten', 'Reshape', 'Permute', 'RepeatVector', 'Activation', 'ReLU', 'LeakyReLU', 'ELU',
  'ThresholdedReLU', 'Softmax', 'Dropout', 'SpatialDropout1D', 'AlphaDropout', 'GaussianDropout',
  'GaussianNoise', 'Add', 'Subtract', 'Multiply', 'Average', 'Maximum', 'Minimum', 'Concatenate', 'Dot',
  'MaxPooling1D', 'MaxPooling2D', 'MaxPooling3D', 'AveragePooling1D', 'AveragePooling2D', 'AveragePooling3D',
  'GlobalMaxPooling1D', 'GlobalMaxPooling2D', 'GlobalAveragePooling1D', 'GlobalAveragePooling2D',
  'ZeroPadding2D', 'Cropping2D', 'UpSampling2D',
]);
// Layers that are per-example fixed functions once frozen (no batch statistics, no state).
const PER_EXAMPLE_FROZEN = new Set([
  'Dense', 'Conv1D', 'Conv2D', 'Conv3D', 'Conv2DTranspose', 'DepthwiseConv2D', 'SeparableConv2D', 'Embedding',
  'LayerNormalization', 'PReLU',
]);
const SUPPORTED =
  'trainable Dense layers (with or without bias, any activation, inputs of any rank; no constraints, ' +
  'no L1 or activity regularizers, each used once), weightless per-example layers (Flatten, Reshape, ' +
  'Activation, Dropout, pooling, merge layers…), and frozen (trainable = false) per-example layers ' +
  '(Dense, Conv*, Embedding, LayerNormalization)';

const NAME_BAD = /[^A-Za-z0-9_.:/-]/g;

function isContainer(layer: Layer): layer is Layer & { layers: Layer[] } {
  return Array.isArray((layer as { layers?: unknown }).layers);
}

function l2Of(reg: unknown, what: string, problems: string[]): number {
  if (reg == null) return 0;
  const r = reg as { getClassName?: () => string; l1?: number; l2?: number };
  if (r.getClassName?.() !== 'L1L2' || typeof r.l2 !== 'number') {
    problems.push(`${what} (a ${r.getClassName?.() ?? 'custom'} regularizer)`);
    return 0;
  }
  if (r.l1) problems.push(`${what} (L1 regularizer: not a linear decay)`);
  return 2 * r.l2;
}

interface Analysis {
  plan: TfjsModelPlan;
  layers: DenseInternals[]; // one per block, same order
}

function analyse(model: tf.LayersModel, allowLayers: readonly string[] = []): Analysis {
  if (!model || !isContainer(model as unknown as Layer) || typeof (model as { apply?: unknown }).apply !== 'function') {
    throw new DvembError('BAD_INPUT', 'the tfjs adapter takes a tf.LayersModel (tf.sequential or tf.model)');
  }
  if (model.outputs.length !== 1) {
    throw new DvembError('BAD_INPUT', `the model has ${model.outputs.length} outputs`, 'the tfjs adapter supports models with one output');
  }
  const allow = new Set(allowLayers);
  const blocks: TfjsBlockInfo[] = [];
  const layers: DenseInternals[] = [];
  const frozen: string[] = [];
  const passThrough: string[] = [];
  const bad: string[] = [];
  const names = new Set<string>();
  const walk = (container: Layer & { layers: Layer[] }, prefix: string, frozenAbove: boolean): void => {
    for (const layer of container.layers) {
      const cls = layer.getClassName();
      const path = prefix ? `${prefix}/${layer.name}` : layer.name;
      const isFrozen = frozenAbove || !layer.trainable;
      const label = `${path} (${cls})`;
      if (isContainer(layer)) {
        // A nested model has one node of its own plus one per call: more than two is sharing.
        if (layer.inboundNodes.length > 2) bad.push(`${label}: called more than once`);
        walk(layer, path, isFrozen);
        continue;
      }
      if (cls === 'Dense' && !isFrozen && layer.trainableWeights.length > 0) {
        const d = layer as unknown as DenseInternals;
        const problems: string[] = [];
        if (d.inboundNodes.length > 1) problems.push('called more than once (shared weights)');
        if (d.kernelConstraint != null || d.biasConstraint != null) problems.push('has a weight constraint');
        if (d.activityRegularizer != null) problems.push('has an activity regularizer');
        const kernelL2 = l2Of(d.kernelRegularizer, 'kernel', problems);
        const biasL2 = l2Of(d.biasRegularizer, 'bias', problems);
        if (problems.length) {
          bad.push(`${label}: ${problems.join(', ')}`);
          continue;
        }
        const shape = d.kernel!.read().shape;
        let name = path.replace(NAME_BAD, '_').slice(0, 128);
        for (let i = 2; names.has(name); i++) name = `${path.replace(NAME_BAD, '_').slice(0, 120)}_${i}`;
        names.add(name);
        blocks.push({ name, layer: layer.name, dIn: shape[0]!, dOut: shape[1]!, bias: d.bias != null, l2Decay: { kernel: kernelL2, bias: biasL2 } });
        layers.push(d);
      } else if (layer.weights.length === 0 && (PER_EXAMPLE_WEIGHTLESS.has(cls) || allow.has(cls))) {
        if (cls !== 'InputLayer') passThrough.push(label);
      } else if (isFrozen && PER_EXAMPLE_FROZEN.has(cls)) {
        frozen.push(label);
      } else if (cls === 'BatchNormalization') {
        bad.push(`${label}: mixes the examples of a batch (batch statistics)`);
      } else if (layer.trainableWeights.length > 0) {
        bad.push(`${label}: trainable weights`);
      } else {
        bad.push(`${label}: not known to treat each example independently`);
      }
    }
  };
  walk(model as unknown as Layer & { layers: Layer[] }, '', !model.trainable);
  if (bad.length) {
    throw new DvembError(
      'BAD_INPUT',
      `the tfjs adapter cannot capture per-example gradients through ${bad.length === 1 ? 'this layer' : 'these layers'}: ${bad.join('; ')}. Supported: ${SUPPORTED}`,
      'freeze (trainable = false) or replace them; for a custom weightless layer that treats each example on its own, pass allowLayers: [its class name]',
    );
  }
  if (blocks.length === 0) {
    throw new DvembError('BAD_INPUT', 'the model has no trainable Dense layer', 'the tfjs adapter records trainable Dense layers; unfreeze at least one');
  }
  return { plan: { blocks, frozen, passThrough }, layers };
}

/** The blocks a model will be recorded as (throws a DvembError naming unsupported layers). */
export function describeTfjsModel(model: tf.LayersModel, options: { allowLayers?: string[] } = {}): TfjsModelPlan {
  return analyse(model, options.allowLayers).plan;
}

// ---------------------------------------------------------------------------------------------
// Losses

const EPSILON = 1e-7;

function perExampleLoss(loss: TfjsLoss, yTrue: tf.Tensor, yPred: tf.Tensor): tf.Tensor {
  if (typeof loss === 'function') {
    const l = loss(yTrue, yPred);
    if (l.rank !== 1 || l.shape[0] !== yPred.shape[0]) {
      throw new DvembError('SHAPE_MISMATCH', `the loss function returned shape [${l.shape.join(', ')}], expected [${yPred.shape[0]}]`, 'return one loss per example (do not reduce over the batch)');
    }
    return l;
  }
  if (yPred.rank !== 2) {
    throw new DvembError('SHAPE_MISMATCH', `loss '${loss}' needs a model output of shape [n, classes], got [${yPred.shape.join(', ')}]`, 'give a loss function returning per-example losses for other outputs');
  }
  if (yTrue.shape[0] !== yPred.shape[0] || yTrue.shape[1] !== yPred.shape[1]) {
    throw new DvembError('SHAPE_MISMATCH', `targets have shape [${yTrue.shape.join(', ')}], the model output [${yPred.shape.join(', ')}]`, 'pass one-hot targets (n × classes) or integer labels (n)');
  }
  if (loss === 'softmaxCrossEntropy') return tf.neg(tf.sum(tf.mul(yTrue, tf.logSoftmax(yPred)), -1));
  if (loss === 'categoricalCrossentropy') {
    const p = tf.clipByValue(tf.div(yPred, tf.sum(yPred, -1, true)), EPSILON, 1 - EPSILON);
    return tf.neg(tf.sum(tf.mul(yTrue, tf.log(p)), -1));
  }
  throw new DvembError('BAD_INPUT', `unknown loss ${JSON.stringify(loss)}`, "use 'softmaxCrossEntropy' (logits), 'categoricalCrossentropy' (probabilities) or a function returning per-example losses");
}

function toTargets(y: tf.Tensor | ArrayLike<number>, n: number, classes: number | null): { t: tf.Tensor; owned: boolean } {
  if (y instanceof tf.Tensor) {
    if (y.shape[0] !== n) throw new DvembError('SHAPE_MISMATCH', `y has ${y.shape[0]} rows for a batch of ${n}`);
    if (y.rank !== 1) return { t: y, owned: false };
    if (classes === null) return { t: y, owned: false };
    return { t: tf.tidy(() => tf.oneHot(tf.cast(y, 'int32'), classes).toFloat()), owned: true };
  }
  if (!y || typeof y.length !== 'number') throw new DvembError('BAD_INPUT', 'y must be a tf.Tensor or an array of integer labels');
  if (y.length !== n) throw new DvembError('SHAPE_MISMATCH', `y has ${y.length} labels for a batch of ${n}`);
  if (classes === null) return { t: tf.tensor1d(Array.from(y, Number)), owned: true };
  const labels = Int32Array.from(y, (v) => {
    if (!Number.isInteger(v) || v < 0 || v >= classes) throw new DvembError('BAD_INPUT', `label ${v} is not an integer in [0, ${classes})`);
    return v;
  });
  return { t: tf.tidy(() => tf.oneHot(tf.tensor1d(labels, 'int32'), classes).toFloat()), owned: true };
}

// ---------------------------------------------------------------------------------------------
// The probed pass

interface PassResult {
  /** Per block: the layer input (rows × dIn, rows = n·tokens) and δ (rows × dOut). */
  inputs: tf.Tensor2D[];
  deltas: tf.Tensor2D[];
  tokens: number[];
  losses: tf.Tensor1D;
  output: tf.Tensor | null;
}

class Prober {
  private readonly rows = new Map<string, number[]>();

  constructor(
    readonly model: tf.LayersModel,
    readonly layers: DenseInternals[],
    readonly loss: TfjsLoss,
  ) {}

  /** Swaps every block layer's call() for `make(i)` while fn runs. */
  private patched<T>(make: (i: number, layer: DenseInternals) => CallFn, fn: () => T): T {
    const own = this.layers.map((l) => Object.prototype.hasOwnProperty.call(l, 'call'));
    const saved = this.layers.map((l) => l.call);
    this.layers.forEach((l, i) => (l.call = make(i, l)));
    try {
      return fn();
    } finally {
      this.layers.forEach((l, i) => {
        if (own[i]) l.call = saved[i]!;
        else delete (l as Partial<DenseInternals>).call;
      });
    }
  }

  /** Rows (examples × tokens) reaching every block layer for inputs of these shapes: one dry
   * run per distinct input shape, since the probes must exist before the taped pass starts. */
  private probeRows(xs: tf.Tensor[]): number[] {
    const key = xs.map((x) => x.shape.join('x')).join('|');
    let rows = this.rows.get(key);
    if (!rows) {
      const found = this.layers.map(() => 0);
      this.patched(
        (i, l) => (inputs) => {
          const a = Array.isArray(inputs) ? inputs[0]! : inputs;
          found[i] = a.size / a.shape[a.rank - 1]!;
          return tf.zeros([...a.shape.slice(0, -1), l.kernel!.read().shape[1]!]);
        },
        () => tf.tidy(() => void this.model.apply(xs.length === 1 ? xs[0]! : xs, { training: false })),
      );
      if (this.rows.size >= 16) this.rows.delete(this.rows.keys().next().value!);
      this.rows.set(key, (rows = found));
    }
    return rows;
  }

  /**
   * One forward and backward pass of the summed per-example loss. The probe of each block is the
   * bias broadcast to (rows × dOut) (zeros without a bias): z = a·W + P computes what Dense
   * computes, and ∂(Σ ℓ_i)/∂P is δ row by row. Like Dense, relu and linear activations run
   * fused with the matmul.
   */
  run(xs: tf.Tensor[], yTrue: tf.Tensor, training: boolean, keepOutput: boolean): PassResult {
    const n = xs[0]!.shape[0]!;
    const rows = this.probeRows(xs);
    const probes = this.layers.map((l, i) => {
      const dOut = l.kernel!.read().shape[1]!;
      const b = l.bias?.read();
      return b ? tf.broadcastTo(b, [rows[i]!, dOut]) : tf.zeros([rows[i]!, dOut]);
    });
    const inputs: (tf.Tensor2D | null)[] = this.layers.map(() => null);
    const kept: { losses?: tf.Tensor1D; output?: tf.Tensor } = {};
    try {
      const { value, grads } = this.patched(
        (i, l) => (raw) => {
          const a = Array.isArray(raw) ? raw[0]! : raw;
          const W = l.kernel!.read() as tf.Tensor2D;
          // a clone for rank 2: the first layer's input is the caller's own tensor.
          const a2 = (a.rank === 2 ? a.clone() : tf.reshape(a, [-1, W.shape[0]!])) as tf.Tensor2D;
          inputs[i] = tf.keep(a2);
          const act = l.activation?.getClassName();
          let z: tf.Tensor;
          if (act === 'relu' || act === 'linear' || !l.activation) {
            z = tf.fused.matMul({ a: a2, b: W, bias: probes[i]!, activation: act === 'relu' ? 'relu' : 'linear' });
          } else {
            z = l.activation.apply(tf.add(tf.matMul(a2, W), probes[i]!));
          }
          return a.rank === 2 ? z : tf.reshape(z, [...a.shape.slice(0, -1), W.shape[1]!]);
        },
        () =>
          tf.valueAndGrads(() => {
            const out = this.model.apply(xs.length === 1 ? xs[0]! : xs, { training }) as tf.Tensor;
            const l = perExampleLoss(this.loss, yTrue, out) as tf.Tensor1D;
            kept.losses = tf.keep(l);
            if (keepOutput) kept.output = tf.keep(out.clone());
            return tf.sum(l);
          })(probes),
      );
      value.dispose();
      const deltas = grads as tf.Tensor2D[];
      const ins = inputs.map((a) => a!);
      return { inputs: ins, deltas, tokens: ins.map((a) => a.shape[0] / n), losses: kept.losses!, output: kept.output ?? null };
    } catch (err) {
      tf.dispose([...inputs.filter((t): t is tf.Tensor2D => t !== null), ...(kept.losses ? [kept.losses] : []), ...(kept.output ? [kept.output] : [])]);
      throw err;
    } finally {
      tf.dispose(probes);
    }
  }
}

function disposePass(p: PassResult | null): void {
  if (!p) return;
  tf.dispose([...p.inputs, ...p.deltas, p.losses]);
  p.output?.dispose();
}

/** Copies the factors out of tfjs (the CPU backend shares its buffers with tensors built on
 * user arrays, which a training loop may refill while the record is still being written). */
function factorsOf(blocks: TfjsBlockInfo[], p: PassResult): Record<string, BlockGradient> {
  const out: Record<string, BlockGradient> = {};
  blocks.forEach((b, i) => {
    out[b.name] = {
      inputs: (p.inputs[i]!.dataSync() as Float32Array).slice(),
      outputGrads: (p.deltas[i]!.dataSync() as Float32Array).slice(),
      tokens: p.tokens[i]!,
    };
  });
  return out;
}

function inputsOf(x: tf.Tensor | tf.Tensor[], model: tf.LayersModel): tf.Tensor[] {
  const xs = Array.isArray(x) ? x : [x];
  if (xs.length !== model.inputs.length || !xs.every((t) => t instanceof tf.Tensor)) {
    throw new DvembError('BAD_INPUT', `x must be ${model.inputs.length === 1 ? 'a tf.Tensor' : `an array of ${model.inputs.length} tf.Tensors`} (the model's input${model.inputs.length === 1 ? '' : 's'})`);
  }
  const n = xs[0]!.shape[0];
  if (!n || xs.some((t) => t.shape[0] !== n)) throw new DvembError('SHAPE_MISMATCH', 'every input needs the same, non-zero batch size on axis 0');
  return xs;
}

function classesOf(model: tf.LayersModel, loss: TfjsLoss): number | null {
  if (typeof loss === 'function') return null;
  const shape = model.outputs[0]!.shape;
  const c = shape[shape.length - 1];
  return typeof c === 'number' ? c : null;
}

/** Per-example gradient factors of each example's own loss at the model's current weights
 * (no update): the test side of a query, for projectTests(set, result.gradients, result.n). */
export function tfjsGradients(
  model: tf.LayersModel,
  batch: { x: tf.Tensor | tf.Tensor[]; y: tf.Tensor | ArrayLike<number> },
  options: { loss: TfjsLoss; training?: boolean; allowLayers?: string[] },
): TfjsGradients {
  const { plan, layers } = analyse(model, options.allowLayers);
  return gradientsWith(new Prober(model, layers, options.loss), plan.blocks, batch, options.training ?? false);
}

function gradientsWith(prober: Prober, blocks: TfjsBlockInfo[], batch: { x: tf.Tensor | tf.Tensor[]; y: tf.Tensor | ArrayLike<number> }, training: boolean): TfjsGradients {
  const xs = inputsOf(batch.x, prober.model);
  const n = xs[0]!.shape[0]!;
  const y = toTargets(batch.y, n, classesOf(prober.model, prober.loss));
  let pass: PassResult | null = null;
  try {
    pass = prober.run(xs, y.t, training, false);
    return { gradients: factorsOf(blocks, pass), losses: (pass.losses.dataSync() as Float32Array).slice(), n };
  } finally {
    disposePass(pass);
    if (y.owned) y.t.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// The recorder

type OptimizerPlan = { exact: true; className: string } | { exact: false; className: string; optimizer: tf.Optimizer };

function optimizerPlan(opt: tf.Optimizer | undefined, allowApprox: boolean): OptimizerPlan {
  if (!opt) return { exact: true, className: 'SGD (dvemb)' };
  const cls = typeof opt.getClassName === 'function' ? opt.getClassName() : 'unknown';
  const o = opt as unknown as { momentum?: number; useNesterov?: boolean };
  // Momentum 0 without Nesterov is SGD exactly (the accumulator is the gradient itself).
  if (cls === 'SGD' || (cls === 'Momentum' && o.momentum === 0 && !o.useNesterov)) return { exact: true, className: cls };
  if (!allowApprox) {
    throw new DvembError(
      'BAD_INPUT',
      `the optimizer is ${cls}: data value embeddings assume plain SGD (θ ← (1 − ηλ)θ − η Σ w g), and ${cls} is not that update`,
      'train with tf.train.sgd(lr) (exact), or pass allowApproximateOptimizer: true to record it as SGD with its nominal learning rate, labelled an approximation',
    );
  }
  return { exact: false, className: cls, optimizer: opt };
}

function kFor(k: TfjsRecorderOptions['k'], block: TfjsBlockInfo): KSpec {
  if (k === undefined) return { in: 16, out: 16 };
  if (typeof k === 'function') return k(block);
  if (typeof (k as KSpec).in === 'number' && typeof (k as KSpec).out === 'number') return k as KSpec;
  const per = (k as Record<string, KSpec>)[block.name];
  if (!per) {
    throw new DvembError('BAD_INPUT', `k gives no projected size for block "${block.name}"`, `give {in, out} for every block: ${Object.keys(k).length ? 'blocks are named after the Dense layers (describeTfjsModel lists them)' : 'or one {in, out} for all'}`);
  }
  return per;
}

function nonNegative(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new DvembError('BAD_INPUT', `${what} must be a finite number ≥ 0, got ${String(v)}`);
  return v;
}

export class TfjsRecorder {
  readonly blocks: TfjsBlockInfo[];
  /** The λ recorded each step (exact when `decayExact`). */
  readonly weightDecay: number;
  readonly decayExact: boolean;
  readonly optimizerExact: boolean;
  private nextStep: number;
  private pending: Promise<void> = Promise.resolve();
  private busy = false;
  private failed: unknown = null;
  private closed = false;
  private readonly timing: TfjsTimings = { steps: 0, passMs: 0, readMs: 0, curvatureMs: 0, updateMs: 0, recordWaitMs: 0, recordMs: 0 };

  private constructor(
    readonly model: tf.LayersModel,
    readonly recorder: TrajectoryRecorder,
    private readonly prober: Prober,
    private readonly layers: DenseInternals[],
    private readonly opts: TfjsRecorderOptions,
    private readonly lrAt: (step: number) => number,
    private readonly decay: { kernel: number; bias: number }[],
    private readonly optimizer: OptimizerPlan,
    private readonly classes: number | null,
    blocks: TfjsBlockInfo[],
    recorded: { lambda: number; exact: boolean },
  ) {
    this.blocks = blocks;
    this.weightDecay = recorded.lambda;
    this.decayExact = recorded.exact;
    this.optimizerExact = optimizer.exact;
    this.nextStep = opts.startStep ?? 0;
  }

  /** Checks the model and optimizer, and creates the trajectory in options.dir. */
  static async create(model: tf.LayersModel, options: TfjsRecorderOptions): Promise<TfjsRecorder> {
    if (!options || typeof options !== 'object') throw new DvembError('BAD_INPUT', 'TfjsRecorder.create(model, options) needs options {dir, projection, loss, lr, ...}');
    const { plan, layers } = analyse(model, options.allowLayers);
    const opt = optimizerPlan(options.optimizer ?? (model.optimizer as tf.Optimizer | undefined), options.allowApproximateOptimizer ?? false);
    const start = options.startStep ?? 0;
    if (!Number.isSafeInteger(start) || start < 0) throw new DvembError('BAD_INPUT', `startStep must be a non-negative integer, got ${String(start)}`);

    // η: the option, else the optimizer's own (constant) rate.
    let lrAt: (step: number) => number;
    const optLr = (options.optimizer ?? model.optimizer) as unknown as { learningRate?: number } | undefined;
    if (typeof options.lr === 'function') lrAt = options.lr;
    else if (options.lr !== undefined) {
      const v = nonNegative(options.lr, 'lr');
      lrAt = () => v;
    } else if (typeof optLr?.learningRate === 'number') {
      const v = nonNegative(optLr.learningRate, "the optimizer's learning rate");
      lrAt = () => v;
    } else {
      throw new DvembError('BAD_INPUT', 'no learning rate', 'pass lr (a number or a schedule step => η), or a tf.train.sgd(lr) optimizer');
    }
    if (options.loss === undefined) throw new DvembError('BAD_INPUT', 'no loss', "pass loss: 'softmaxCrossEntropy' (logits), 'categoricalCrossentropy' (probabilities) or a per-example loss function");
    if (typeof options.loss !== 'function' && options.loss !== 'softmaxCrossEntropy' && options.loss !== 'categoricalCrossentropy') {
      throw new DvembError('BAD_INPUT', `unknown loss ${JSON.stringify(options.loss)}`, "use 'softmaxCrossEntropy' (logits), 'categoricalCrossentropy' (probabilities) or a function returning per-example losses");
    }
    const reduction = options.reduction ?? 'mean';
    if (reduction !== 'mean' && reduction !== 'sum') throw new DvembError('BAD_INPUT', `reduction must be "mean" or "sum", got ${String(reduction)}`);
    const userDecay = nonNegative(options.weightDecay ?? 0, 'weightDecay');
    if (options.curvature) {
      if (typeof options.loss === 'function') {
        throw new DvembError('BAD_INPUT', 'sampled-label curvature needs a softmax likelihood to draw labels from', "use loss 'softmaxCrossEntropy' or 'categoricalCrossentropy', or drop the curvature option");
      }
      if (!Number.isSafeInteger(options.curvature.draws) || options.curvature.draws < 1) {
        throw new DvembError('BAD_INPUT', `curvature.draws must be a positive integer, got ${String(options.curvature.draws)}`);
      }
      const seed = options.curvature.seed;
      if (seed !== undefined && (!Number.isSafeInteger(seed) || seed < 0)) {
        throw new DvembError('BAD_INPUT', `curvature.seed must be a non-negative integer, got ${String(seed)}`);
      }
    }
    const classes = classesOf(model, options.loss);

    // λ per weight: decoupled decay plus 2·l2 of the Keras regularizers. The engine keeps one λ
    // per step, so it is exact only when all agree; otherwise the kernels' λ is recorded (their
    // parameter-weighted mean if layers differ) and the biases' decay is approximated.
    const decay = plan.blocks.map((b) => ({ kernel: userDecay + b.l2Decay.kernel, bias: userDecay + b.l2Decay.bias }));
    const values = decay.flatMap((d, i) => (plan.blocks[i]!.bias ? [d.kernel, d.bias] : [d.kernel]));
    const exact = values.every((v) => v === values[0]);
    let lambda = values[0]!;
    if (!exact) {
      let num = 0;
      let den = 0;
      plan.blocks.forEach((b, i) => {
        num += decay[i]!.kernel * b.dIn * b.dOut;
        den += b.dIn * b.dOut;
      });
      lambda = num / den;
    }

    const specs: BlockSpec[] = plan.blocks.map((b) => {
      const k = kFor(options.k, b);
      return { name: b.name, kind: 'kronecker', dIn: b.dIn, dOut: b.dOut, bias: b.bias, kIn: k.in, kOut: k.out };
    });
    const recorder = TrajectoryRecorder.create(options.dir, {
      projection: { seed: options.projection?.seed, distribution: options.projection?.distribution ?? 'gaussian' },
      blocks: specs,
      curvature: options.curvature ? { draws: options.curvature.draws, kind: 'sampled-fisher' } : undefined,
      backend: options.backend,
      chunkSteps: options.chunkSteps,
      durable: options.durable,
      meta: {
        ...(options.meta ?? {}),
        adapter: {
          name: 'tfjs',
          tfjs: tf.version.tfjs,
          model: model.name,
          blocks: Object.fromEntries(plan.blocks.map((b) => [b.name, { layer: b.layer, dIn: b.dIn, dOut: b.dOut, bias: b.bias }])),
          frozen: plan.frozen,
          passThrough: plan.passThrough,
          loss: typeof options.loss === 'function' ? 'custom per-example function' : options.loss,
          reduction,
          training: options.training ?? true,
          optimizer: opt.exact
            ? { class: opt.className, exact: true }
            : {
                class: opt.className,
                exact: false,
                approximation: `${opt.className} is recorded as plain SGD with its nominal learning rate; the embeddings are an approximation (REFERENCE §1)`,
              },
          decay: {
            recorded: lambda,
            exact,
            perBlock: Object.fromEntries(plan.blocks.map((b, i) => [b.name, b.bias ? decay[i]! : { kernel: decay[i]!.kernel }])),
            ...(exact ? {} : { approximation: 'decay is not uniform over the weights; the recorded λ is the kernels\' (their parameter-weighted mean where layers differ): biases, and layers with another λ, are approximated' }),
          },
          curvature: options.curvature
            ? { draws: options.curvature.draws, seed: options.curvature.seed ?? options.projection.seed, labels: "drawn from the model's softmax at θ_t, per step from Rng(seed).fork(step)" }
            : null,
        },
      },
    });
    return new TfjsRecorder(model, recorder, new Prober(model, layers, options.loss), layers, { ...options, reduction }, lrAt, decay, opt, classes, plan.blocks, { lambda, exact });
  }

  /** The trajectory directory. */
  get dir(): string {
    return this.recorder.dir;
  }

  /** The index the next step() records. */
  get stepIndex(): number {
    return this.nextStep;
  }

  timings(): TfjsTimings {
    return { ...this.timing };
  }

  /**
   * One training step: forward and backward with capture, the update, and the record (which
   * completes in the background; the next step() or close() reports its errors). Returns the
   * weighted batch loss Σ w ℓ (data loss only, without regularizers).
   */
  async step(batch: TfjsBatch): Promise<number> {
    if (this.closed) throw new DvembError('CLOSED', 'this TfjsRecorder is closed', 'create a new one (or TrajectoryRecorder.open to append)');
    if (this.failed) throw new DvembError('ABORTED', `an earlier step failed to record (${(this.failed as Error).message ?? String(this.failed)}); the trajectory holds every step before it`, 'fix the cause and record into a new directory');
    if (this.busy) throw new DvembError('BAD_INPUT', 'step() was called while another step was running', 'await each step() before the next');
    this.busy = true;
    try {
      return await this.stepNow(batch);
    } finally {
      this.busy = false;
    }
  }

  private async stepNow(batch: TfjsBatch): Promise<number> {
    const t = this.nextStep;
    const xs = inputsOf(batch?.x, this.model);
    const n = xs[0]!.shape[0]!;
    if (!batch.ids || batch.ids.length !== n) throw new DvembError('SHAPE_MISMATCH', `step ${t}: ${batch.ids?.length ?? 0} ids for a batch of ${n}`, 'give one sample id per example');
    // Checked and copied now: the record completes after step() returns.
    const ids = Float64Array.from(batch.ids, Number);
    const badId = ids.findIndex((id) => !Number.isSafeInteger(id) || id < 0);
    if (badId >= 0) throw new DvembError('BAD_INPUT', `step ${t}: sample id at position ${badId} is ${String(batch.ids[badId])}`, 'sample ids must be non-negative integers (e.g. row numbers of the training set)');
    let w: Float64Array;
    if (batch.weights !== undefined) {
      if (batch.weights.length !== n) throw new DvembError('SHAPE_MISMATCH', `step ${t}: ${batch.weights.length} weights for a batch of ${n}`);
      w = Float64Array.from(batch.weights, Number);
      if (!w.every(Number.isFinite)) throw new DvembError('NON_FINITE', `step ${t}: weights must be finite`);
    } else {
      w = new Float64Array(n).fill(this.opts.reduction === 'sum' ? 1 : 1 / n);
    }
    const eta = this.lrAt(t);
    if (typeof eta !== 'number' || !Number.isFinite(eta) || eta < 0) throw new DvembError('NON_FINITE', `step ${t}: the learning rate schedule gave ${String(eta)}`, 'return a finite η ≥ 0 for every step');
    const y = toTargets(batch.y, n, this.classes);
    const curv = this.opts.curvature;
    let pass: PassResult | null = null;
    let cpass: PassResult | null = null;
    try {
      let t0 = performance.now();
      pass = this.prober.run(xs, y.t, this.opts.training ?? true, curv !== undefined);
      let t1 = performance.now();
      this.timing.passMs += t1 - t0;
      const gradients = factorsOf(this.blocks, pass);
      const losses = pass.losses.dataSync();
      let loss = 0;
      for (let i = 0; i < n; i++) loss += w[i]! * losses[i]!;
      t0 = performance.now();
      this.timing.readMs += t0 - t1;

      let curvature: BatchGradients | undefined;
      if (curv) {
        cpass = this.sampledPass(xs, pass.output!, t, curv);
        curvature = factorsOf(this.blocks, cpass);
        t1 = performance.now();
        this.timing.curvatureMs += t1 - t0;
        t0 = t1;
      }

      // The previous step's record had this step's compute to finish; its failure stops here,
      // before this step's update, so the model is never more than one step past the trajectory.
      try {
        await this.pending;
      } catch (err) {
        this.failed = err;
        throw err;
      }
      t1 = performance.now();
      this.timing.recordWaitMs += t1 - t0;

      this.update(pass, w, eta);
      t0 = performance.now();
      this.timing.updateMs += t0 - t1;

      const started = t0;
      const uniform = batch.weights === undefined;
      const rec = this.recorder.record({
        step: t,
        lr: eta,
        weightDecay: this.weightDecay,
        ids,
        ...(uniform ? { reduction: this.opts.reduction } : { weights: w }),
        gradients,
        curvature,
      });
      this.pending = rec.then(() => void (this.timing.recordMs += performance.now() - started));
      this.pending.catch(() => undefined); // reported by the next step() or close()
      this.nextStep = t + 1;
      this.timing.steps++;
      return loss;
    } finally {
      disposePass(pass);
      disposePass(cpass);
      if (y.owned) y.t.dispose();
    }
  }

  /** The sampled-label pass (REFERENCE §3): `draws` labels per example from the model's softmax,
   * δ of each label's loss with the same probes; rows ordered example by example. */
  private sampledPass(xs: tf.Tensor[], output: tf.Tensor, step: number, curv: { draws: number; seed?: number }): PassResult {
    const n = xs[0]!.shape[0]!;
    const m = curv.draws;
    const c = output.shape[1]!;
    const p = tf.tidy(() => (this.opts.loss === 'softmaxCrossEntropy' ? tf.softmax(output) : tf.div(output, tf.sum(output, -1, true))));
    const probs = p.dataSync();
    p.dispose();
    const rng = new Rng(curv.seed ?? this.opts.projection.seed).fork(step);
    const labels = new Int32Array(n * m);
    const rows = new Int32Array(n * m);
    for (let i = 0; i < n; i++) {
      for (let d = 0; d < m; d++) {
        let u = rng.next();
        let label = c - 1;
        for (let j = 0; j < c; j++) {
          u -= probs[i * c + j]!;
          if (u < 0) {
            label = j;
            break;
          }
        }
        labels[i * m + d] = label;
        rows[i * m + d] = i;
      }
    }
    const idx = tf.tensor1d(rows, 'int32');
    const tiled = m === 1 ? xs : xs.map((x) => tf.gather(x, idx));
    const yS = tf.tidy(() => tf.oneHot(tf.tensor1d(labels, 'int32'), c).toFloat());
    try {
      return this.prober.run(tiled, yS, this.opts.training ?? true, false);
    } finally {
      idx.dispose();
      yS.dispose();
      if (tiled !== xs) tf.dispose(tiled);
    }
  }

  /** θ ← (1 − ηλ)θ − η aᵀ·diag(w)·δ per weight (exact SGD), or the optimizer's own update. */
  private update(p: PassResult, w: Float64Array, eta: number): void {
    const uniform = w.every((v) => v === w[0]);
    tf.tidy(() => {
      const opt = this.optimizer;
      const grads: Record<string, tf.Tensor> = {};
      this.layers.forEach((layer, i) => {
        const tokens = p.tokens[i]!;
        const a = p.inputs[i]!;
        // Rows of a and δ are example-major (tokens of one example adjacent): weight per row.
        const scale = opt.exact ? eta : 1;
        let rowW: tf.Tensor;
        if (uniform) rowW = tf.scalar(scale * w[0]!);
        else {
          const r = new Float32Array(w.length * tokens);
          for (let e = 0; e < w.length; e++) r.fill(scale * w[e]!, e * tokens, (e + 1) * tokens);
          rowW = tf.tensor2d(r, [r.length, 1]);
        }
        const wd = tf.mul(p.deltas[i]!, rowW);
        const K = layer.kernel!.read();
        const gK = tf.matMul(a, wd, true, false);
        const d = this.decay[i]!;
        if (opt.exact) {
          K.assign(d.kernel ? tf.sub(tf.mul(K, 1 - eta * d.kernel), gK) : tf.sub(K, gK));
          const B = layer.bias?.read();
          if (B) {
            const gB = tf.sum(wd, 0);
            B.assign(d.bias ? tf.sub(tf.mul(B, 1 - eta * d.bias), gB) : tf.sub(B, gB));
          }
        } else {
          // Keras semantics for the approximate path: L2 regularizers are part of the loss's
          // gradient, the decoupled weightDecay is applied to the weights before the step.
          const user = this.opts.weightDecay ?? 0;
          const l2 = this.blocks[i]!.l2Decay;
          if (user) K.assign(tf.mul(K, 1 - eta * user));
          grads[K.name] = l2.kernel ? tf.add(gK, tf.mul(K, l2.kernel)) : gK;
          const B = layer.bias?.read();
          if (B) {
            if (user) B.assign(tf.mul(B, 1 - eta * user));
            const gB = tf.sum(wd, 0);
            grads[B.name] = l2.bias ? tf.add(gB, tf.mul(B, l2.bias)) : gB;
          }
        }
      });
      if (!opt.exact) {
        const o = opt.optimizer as unknown as { learningRate?: number; setLearningRate?: (lr: number) => void };
        if (this.opts.lr !== undefined) {
          if (typeof o.setLearningRate === 'function') o.setLearningRate(eta);
          else o.learningRate = eta;
        }
        opt.optimizer.applyGradients(grads);
      }
    });
  }

  /** Gradient factors of each example's own loss at the current weights (no update, no record):
   * the test side, for projectTests(set, result.gradients, result.n). Inference mode by default. */
  gradients(batch: { x: tf.Tensor | tf.Tensor[]; y: tf.Tensor | ArrayLike<number> }, options: { training?: boolean } = {}): TfjsGradients {
    return gradientsWith(this.prober, this.blocks, batch, options.training ?? false);
  }

  /** Waits for every record handed off so far (reports a recording error). */
  async flush(): Promise<void> {
    try {
      await this.pending;
    } catch (err) {
      this.failed = err;
      throw err;
    }
  }

  /** Waits for the last record and seals the trajectory (every step recorded so far). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.pending;
    } catch (err) {
      if (!this.failed) throw err; // not reported yet: report it now
    } finally {
      await this.recorder.close();
    }
  }
}
