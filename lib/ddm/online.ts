// Online stage of the distilled datamodel (REFERENCE §7): for a removal mask m ∈ {0,1}^K (1 =
// the group is removed), start from θ_T and take R "reverse" steps — gradient ASCENT on the
// synsets of the removed groups, with the recorded step sizes —
//
//     θ ← θ + ν_r Σ_{k: m_k = 1} β_k ω_k Σ_{s∈S_k} ∇ℓ(θ_{c_r}; x_s, y_s),      r = 0 … R−1
//
// then evaluate the target function f_j(m) = ℓ(θ, z_j) (the per-target loss) on each evaluation
// target, and fit the linear datamodel f ≈ m·W + b by ridge regression. W (K × targets) is the
// attribution matrix; since m_k = 1 means "k removed", W_kj > 0 ⇔ removing k raises target j's loss
// ⇔ group k helped j (the project-wide sign convention).
//
// Which step sizes. Group k's pull on the trajectory over a segment [t_{c−1}, t_c) between two
// recorded checkpoints is Σ_{t in the segment} η_t Σ_{z∈B_t∩D_k} w_z g_t(z); when every example is
// visited about equally often, that is ≈ ν_c G_k(θ_{t_c}) with
//
//     ν_c = scale · (Σ_{t=t_{c−1}}^{t_c−1} η_t Σ_{z∈B_t} w_z) / n          (step-size mass per example)
//
// (for one epoch of a mean-loss run, ν_c = scale · mean η / |B|). The reverse walk undoes the
// segments last first: step r uses ν of segment C−1−r and (anchor 'checkpoint', the default) the
// synset gradient at that segment's own checkpoint θ_{c_r}, where the synsets were matched. R
// defaults to every segment. `scale` defaults to 0.1: the un-propagated sum of the recorded pulls
// overshoots what retraining does (later steps partly undo an early removal, which these steps do
// not model), and f evaluated that far from θ_T stops being informative; docs/DDM.md has the
// measured sweep. Weight decay is not reversed: it acts on every mask alike.

import { DvembError } from '../errors.js';
import type { MLP } from '../eval/mlp.js';
import { Rng, type Seed } from '../eval/rng.js';
import type { Groups } from './groups.js';
import { checkSynsetsFit, groupGradients, type Checkpoint, type Examples, type Synsets } from './synset.js';

export interface ReverseSchedule {
  /** ν_r, in the order the reverse steps apply them (the last recorded segment first). */
  sizes: Float64Array;
  /** The recorded segment [from, to) each step stands for. */
  segments: { from: number; to: number }[];
}

/** The default multiplier of the recorded step sizes (see the file comment and docs/DDM.md). */
export const DEFAULT_REVERSE_SCALE = 0.1;

export interface ReverseScheduleOptions {
  /** Take only the last R segments (default: all). */
  steps?: number;
  /** Multiplies every ν (default DEFAULT_REVERSE_SCALE = 0.1; 1 = the full recorded step mass). */
  scale?: number;
}

/**
 * The reverse steps of a recorded run: `lr[t]` = η_t and `weightSum[t]` = Σ_{z∈B_t} w_z for every
 * step t (1 for a mean loss, |B| for a sum); `checkpointSteps` the steps the synsets were matched
 * at (segment ends); `n` the number of training examples.
 */
export function reverseSchedule(lr: ArrayLike<number>, weightSum: ArrayLike<number>, checkpointSteps: readonly number[], n: number, options: ReverseScheduleOptions = {}): ReverseSchedule {
  const T = lr.length;
  if (weightSum.length !== T) throw new DvembError('SHAPE_MISMATCH', `${T} learning rates but ${weightSum.length} batch weight sums`);
  if (!Number.isSafeInteger(n) || n < 1) throw new DvembError('BAD_INPUT', `n must be a positive integer, got ${String(n)}`);
  const scale = options.scale ?? DEFAULT_REVERSE_SCALE;
  if (!Number.isFinite(scale) || scale < 0) throw new DvembError('BAD_INPUT', `scale must be a finite number ≥ 0, got ${String(scale)}`);
  const ends = [...new Set(checkpointSteps)].sort((a, b) => a - b).filter((t) => t > 0);
  for (const t of ends) {
    if (!Number.isSafeInteger(t) || t > T) throw new DvembError('BAD_INPUT', `checkpoint step ${t} is outside the recorded run 0..${T}`);
  }
  if (ends.length === 0) throw new DvembError('BAD_INPUT', 'the reverse steps need at least one checkpoint after step 0');
  const segments: { from: number; to: number }[] = [];
  const sizes: number[] = [];
  let from = 0;
  for (const to of ends) {
    let mass = 0;
    for (let t = from; t < to; t++) {
      const eta = lr[t] as number;
      const ws = weightSum[t] as number;
      if (!Number.isFinite(eta) || !Number.isFinite(ws)) throw new DvembError('NON_FINITE', `step ${t}: learning rate ${eta}, weight sum ${ws}`);
      mass += eta * ws;
    }
    segments.push({ from, to });
    sizes.push((scale * mass) / n);
    from = to;
  }
  segments.reverse();
  sizes.reverse();
  const R = options.steps ?? segments.length;
  if (!Number.isSafeInteger(R) || R < 1) throw new DvembError('BAD_INPUT', `steps must be a positive integer, got ${String(options.steps)}`);
  return { sizes: Float64Array.from(sizes.slice(0, R)), segments: segments.slice(0, R) };
}

/** `count` random removal masks (count × K, row-major): each group removed independently with `probability`. */
export function randomMasks(K: number, count: number, probability: number, seed: Seed): Uint8Array {
  if (!Number.isSafeInteger(K) || K < 1) throw new DvembError('BAD_INPUT', `K must be a positive integer, got ${String(K)}`);
  if (!Number.isSafeInteger(count) || count < 1) throw new DvembError('BAD_INPUT', `the number of masks must be a positive integer, got ${String(count)}`);
  if (!(probability > 0 && probability < 1)) throw new DvembError('BAD_INPUT', `the removal probability must be in (0, 1), got ${String(probability)}`);
  const rng = new Rng(seed).fork('masks');
  const out = new Uint8Array(count * K);
  for (let i = 0; i < out.length; i++) out[i] = rng.next() < probability ? 1 : 0;
  return out;
}

/**
 * Masks from lists of removed group ids, or a flat 0/1 array of rows of width K. Stops with
 * UNKNOWN_ID on a group outside 0..K−1 and SHAPE_MISMATCH on a row of the wrong width.
 */
export function masksFrom(input: readonly (readonly number[])[] | Uint8Array, K: number): { masks: Uint8Array; count: number } {
  if (input instanceof Uint8Array) {
    if (input.length === 0 || input.length % K !== 0) {
      throw new DvembError('SHAPE_MISMATCH', `a mask array of ${input.length} entries is not a whole number of rows over ${K} groups`, `give rows of exactly ${K} entries, one per group`);
    }
    for (let i = 0; i < input.length; i++) {
      if (input[i] !== 0 && input[i] !== 1) throw new DvembError('BAD_INPUT', `mask ${Math.floor(i / K)}, group ${i % K}: ${input[i]} is not 0 or 1`);
    }
    return { masks: input, count: input.length / K };
  }
  const masks = new Uint8Array(input.length * K);
  input.forEach((list, r) => {
    for (const k of list) {
      if (!Number.isSafeInteger(k) || k < 0 || k >= K) {
        throw new DvembError('UNKNOWN_ID', `mask ${r} removes group ${String(k)}, but there are only ${K} groups (0..${K - 1})`, 'remove groups by their ids from the group table');
      }
      masks[r * K + k] = 1;
    }
  });
  return { masks, count: input.length };
}

/** The removed group ids of each mask row. */
export function removedLists(masks: Uint8Array, K: number): number[][] {
  const out: number[][] = [];
  for (let r = 0; r * K < masks.length; r++) {
    const list: number[] = [];
    for (let k = 0; k < K; k++) if (masks[r * K + k]) list.push(k);
    out.push(list);
  }
  return out;
}

/** Where each reverse step takes its synset gradient (see the file comment). */
export type ReverseAnchor = 'checkpoint' | 'current';

/** Where the reverse steps come from: synsets and a schedule, or precomputed per-group displacements. */
export type OnlineSource =
  | { synsets: Synsets; schedule: ReverseSchedule; anchor?: ReverseAnchor; checkpoints?: readonly Checkpoint[] }
  | { displacements: Float64Array; K: number };

/**
 * Evaluates f(m) by reverse steps on the removed groups' synsets.
 *
 * anchor 'checkpoint' (the default): step r takes the synset gradient at the checkpoint that ends
 * the segment it undoes, θ_{c_r}, where the synsets were matched. The steps then add up to
 * Δ(m) = Σ_{k removed} D_k with D_k = Σ_r ν_r β_k ω_k Σ_{s∈S_k} ∇ℓ(θ_{c_r}, s), so D_k is computed
 * once per group and a mask costs one vector sum and one forward pass over the targets.
 * anchor 'current': plain gradient ascent from θ_T, each step at the current θ. Synsets match the
 * group's gradient only where they were matched, not its curvature (a few heavily weighted
 * synthetic points are far sharper than the group), so this walk leaves the region where they are
 * faithful and can run away; it is kept for comparison (docs/DDM.md).
 */
export class OnlineEvaluator {
  readonly K: number;
  readonly T: number;
  /** Seconds spent preparing (computing D_k), part of the online stage's cost. */
  readonly setupSeconds: number;
  private readonly net: MLP;
  private readonly thetaT: Float64Array;
  private readonly d: number;
  private readonly displacements: Float64Array | null;
  private readonly sequential: { synsets: Synsets; schedule: ReverseSchedule } | null;

  constructor(
    model: MLP,
    source: OnlineSource,
    readonly targets: Examples,
  ) {
    const started = performance.now();
    this.net = model.clone();
    this.thetaT = model.parameters();
    this.d = model.inputDim;
    this.T = targets.n;
    if (targets.x.length !== targets.n * this.d || targets.y.length !== targets.n) {
      throw new DvembError('SHAPE_MISMATCH', `targets: x has ${targets.x.length} values and y ${targets.y.length} labels for ${targets.n} rows of width ${this.d}`);
    }
    const P = model.numParams;
    if ('displacements' in source) {
      this.K = source.K;
      if (source.displacements.length !== source.K * P) throw new DvembError('SHAPE_MISMATCH', `displacements hold ${source.displacements.length} values, not K·numParams = ${source.K}·${P}`);
      this.displacements = source.displacements;
      this.sequential = null;
    } else {
      const { synsets, schedule } = source;
      checkSynsetsFit(synsets, model);
      this.K = synsets.K;
      const anchor = source.anchor ?? 'checkpoint';
      if (anchor === 'current') {
        this.displacements = null;
        this.sequential = { synsets, schedule };
      } else if (anchor === 'checkpoint') {
        const thetas = segmentCheckpoints(schedule, source.checkpoints ?? [], P);
        this.displacements = synsetDisplacements(model, synsets, schedule, thetas);
        this.sequential = null;
      } else {
        throw new DvembError('BAD_INPUT', `anchor must be 'checkpoint' or 'current', got ${String(anchor)}`);
      }
    }
    this.setupSeconds = (performance.now() - started) / 1000;
  }

  private checkMask(mask: ArrayLike<number>): void {
    if (mask.length !== this.K) throw new DvembError('SHAPE_MISMATCH', `a mask has ${mask.length} entries for ${this.K} groups`);
    for (let k = 0; k < this.K; k++) {
      if (mask[k] !== 0 && mask[k] !== 1) throw new DvembError('BAD_INPUT', `mask entry for group ${k} is ${String(mask[k])}, not 0 or 1`);
    }
  }

  /** θ after the reverse steps for one mask (row of K 0/1 entries, 1 = removed). */
  reversedParameters(mask: ArrayLike<number>): Float64Array {
    this.checkMask(mask);
    const theta = this.thetaT.slice();
    const P = theta.length;
    if (this.displacements) {
      const D = this.displacements;
      for (let k = 0; k < this.K; k++) {
        if (!mask[k]) continue;
        for (let j = 0; j < P; j++) theta[j]! += D[k * P + j] as number;
      }
      return theta;
    }
    const { synsets, schedule } = this.sequential!;
    const { d, net } = this;
    const m = synsets.perGroup;
    const rows: number[] = [];
    for (let k = 0; k < this.K; k++) if (mask[k]) for (let j = 0; j < m; j++) rows.push(k * m + j);
    if (rows.length === 0) return theta;
    const n = rows.length;
    const x = new Float64Array(n * d);
    const y = new Array<number>(n);
    const w = new Float64Array(n);
    rows.forEach((r, i) => {
      x.set(synsets.x.subarray(r * d, r * d + d), i * d);
      y[i] = synsets.y[r] as number;
      w[i] = synsets.weights[Math.floor(r / m)] as number;
    });
    for (const nu of schedule.sizes) {
      net.setParameters(theta);
      const g = net.gradient(x, y, n, w);
      for (let j = 0; j < P; j++) theta[j]! += nu * (g[j] as number);
    }
    return theta;
  }

  /** f(m): the loss of every target after the reverse steps. */
  evaluate(mask: ArrayLike<number>): Float64Array {
    const theta = this.reversedParameters(mask);
    this.net.setParameters(theta);
    return this.net.losses(this.targets.x, this.targets.y, this.targets.n);
  }

  /** f for `count` masks (count × K): a (count × T) matrix. */
  evaluateMany(masks: Uint8Array, onProgress?: (done: number, total: number) => void): Float64Array {
    const { K, T } = this;
    const count = masks.length / K;
    if (!Number.isInteger(count)) throw new DvembError('SHAPE_MISMATCH', `${masks.length} mask entries are not whole rows of ${K}`);
    const out = new Float64Array(count * T);
    for (let r = 0; r < count; r++) {
      out.set(this.evaluate(masks.subarray(r * K, (r + 1) * K)), r * T);
      onProgress?.(r + 1, count);
    }
    return out;
  }
}

/** θ at the end of each schedule segment, in schedule order; a missing checkpoint is an error. */
function segmentCheckpoints(schedule: ReverseSchedule, checkpoints: readonly Checkpoint[], P: number): Float64Array[] {
  return schedule.segments.map(({ to }) => {
    const c = checkpoints.find((cp) => cp.step === to);
    if (!c) {
      throw new DvembError('BAD_INPUT', `the reverse step for steps ${schedule.segments.find((s) => s.to === to)!.from}..${to - 1} needs the checkpoint θ_${to}, which was not given`, `pass the run's checkpoints (steps ${schedule.segments.map((s) => s.to).join(', ')})`);
    }
    if (c.theta.length !== P) throw new DvembError('SHAPE_MISMATCH', `checkpoint at step ${to} has ${c.theta.length} parameters, the model ${P}`);
    return c.theta;
  });
}

/** D_k = Σ_r ν_r β_k ω_k Σ_{s∈S_k} ∇ℓ(θ_r, s) for every group: K × numParams. */
export function synsetDisplacements(model: MLP, synsets: Synsets, schedule: ReverseSchedule, thetas: readonly Float64Array[]): Float64Array {
  const { K, perGroup: m } = synsets;
  const P = model.numParams;
  const D = new Float64Array(K * P);
  const net = model.clone();
  const n = K * m;
  thetas.forEach((theta, r) => {
    net.setParameters(theta);
    const G = net.perExampleGradients(synsets.x, synsets.y, n);
    const nu = schedule.sizes[r] as number;
    for (let i = 0; i < n; i++) {
      const k = Math.floor(i / m);
      const s = nu * (synsets.weights[k] as number);
      for (let j = 0; j < P; j++) D[k * P + j]! += s * (G[i * P + j] as number);
    }
  });
  return D;
}

/**
 * The same displacements with each group's EXACT gradient G_k(θ_r) in place of its synset: the
 * "perfect distillation" reference, which separates the distillation error from the rest.
 */
export function exactDisplacements(model: MLP, data: Examples, groups: Groups, schedule: ReverseSchedule, checkpoints: readonly Checkpoint[]): Float64Array {
  const P = model.numParams;
  const thetas = segmentCheckpoints(schedule, checkpoints, P);
  const D = new Float64Array(groups.K * P);
  const net = model.clone();
  thetas.forEach((theta, r) => {
    net.setParameters(theta);
    const G = groupGradients(net, data, groups);
    const nu = schedule.sizes[r] as number;
    for (let j = 0; j < D.length; j++) D[j]! += nu * (G[j] as number);
  });
  return D;
}

export interface RidgeFit {
  /** K × T coefficients. */
  W: Float64Array;
  /** T intercepts (unpenalised). */
  b: Float64Array;
  /** The λ used. */
  lambda: number;
}

export interface RidgeOptions {
  /** Absolute λ. */
  lambda?: number;
  /** λ = relative · trace(X_cᵀX_c)/K when no absolute λ is given (default 1e-3). */
  relative?: number;
}

/**
 * Ridge regression with an unpenalised intercept, every target at once:
 *   min_{W,b} ‖Y − X W − 1 bᵀ‖² + λ ‖W‖²   ⇒   (X_cᵀX_c + λI) W = X_cᵀ Y_c,  b = ȳ − W ᵀ x̄
 * (X_c, Y_c centred). X is M × K (0/1 masks or any numbers), Y is M × T. Solved by Cholesky.
 */
export function ridge(X: ArrayLike<number>, Y: ArrayLike<number>, M: number, K: number, T: number, options: RidgeOptions = {}): RidgeFit {
  if (X.length !== M * K || Y.length !== M * T) throw new DvembError('SHAPE_MISMATCH', `ridge: X has ${X.length} values (M·K = ${M * K}), Y ${Y.length} (M·T = ${M * T})`);
  if (M < 2) throw new DvembError('BAD_INPUT', `ridge regression needs at least 2 observations, got ${M}`);
  const xm = new Float64Array(K);
  const ym = new Float64Array(T);
  for (let r = 0; r < M; r++) {
    for (let k = 0; k < K; k++) xm[k]! += (X[r * K + k] as number) / M;
    for (let j = 0; j < T; j++) ym[j]! += (Y[r * T + j] as number) / M;
  }
  const A = new Float64Array(K * K);
  const B = new Float64Array(K * T);
  const xc = new Float64Array(K);
  for (let r = 0; r < M; r++) {
    for (let k = 0; k < K; k++) xc[k] = (X[r * K + k] as number) - (xm[k] as number);
    for (let k = 0; k < K; k++) {
      const a = xc[k] as number;
      if (a === 0) continue;
      for (let l = 0; l < K; l++) A[k * K + l]! += a * (xc[l] as number);
      for (let j = 0; j < T; j++) B[k * T + j]! += a * ((Y[r * T + j] as number) - (ym[j] as number));
    }
  }
  let trace = 0;
  for (let k = 0; k < K; k++) trace += A[k * K + k] as number;
  const lambda = options.lambda ?? (options.relative ?? 1e-3) * (trace / K);
  if (!Number.isFinite(lambda) || lambda < 0) throw new DvembError('BAD_INPUT', `ridge λ must be a finite number ≥ 0, got ${String(lambda)}`);
  for (let k = 0; k < K; k++) A[k * K + k]! += lambda;
  const W = choleskySolve(A, K, B, T);
  const b = new Float64Array(T);
  for (let j = 0; j < T; j++) {
    let s = ym[j] as number;
    for (let k = 0; k < K; k++) s -= (W[k * T + j] as number) * (xm[k] as number);
    b[j] = s;
  }
  return { W, b, lambda };
}

/** Solves A X = B for symmetric positive-definite A (K × K) and B (K × T). */
function choleskySolve(A: Float64Array, K: number, B: Float64Array, T: number): Float64Array {
  const L = new Float64Array(K * K);
  for (let i = 0; i < K; i++) {
    for (let j = 0; j <= i; j++) {
      let s = A[i * K + j] as number;
      for (let k = 0; k < j; k++) s -= (L[i * K + k] as number) * (L[j * K + k] as number);
      if (i === j) {
        if (!(s > 0)) {
          throw new DvembError('BAD_INPUT', `ridge: the normal equations are singular at group ${i} (a group that is removed in every mask or in none?)`, 'use λ > 0 or masks in which every group varies');
        }
        L[i * K + i] = Math.sqrt(s);
      } else {
        L[i * K + j] = s / (L[j * K + j] as number);
      }
    }
  }
  const X = B.slice();
  for (let j = 0; j < T; j++) {
    for (let i = 0; i < K; i++) {
      let s = X[i * T + j] as number;
      for (let k = 0; k < i; k++) s -= (L[i * K + k] as number) * (X[k * T + j] as number);
      X[i * T + j] = s / (L[i * K + i] as number);
    }
    for (let i = K - 1; i >= 0; i--) {
      let s = X[i * T + j] as number;
      for (let k = i + 1; k < K; k++) s -= (L[k * K + i] as number) * (X[k * T + j] as number);
      X[i * T + j] = s / (L[i * K + i] as number);
    }
  }
  return X;
}

export interface DatamodelResult extends RidgeFit {
  /** The masks the datamodel was fitted on (count × K) and the online outputs f (count × T). */
  masks: Uint8Array;
  outputs: Float64Array;
  count: number;
  /** f(∅) = the targets' loss at θ_T. */
  baseline: Float64Array;
  /** Wall-clock seconds of the online evaluations and of the fit. */
  evaluateSeconds: number;
  fitSeconds: number;
}

/** The online stage end to end: evaluate every mask, then fit W by ridge. */
export function fitDatamodel(evaluator: OnlineEvaluator, masks: Uint8Array, options: RidgeOptions & { onProgress?: (done: number, total: number) => void } = {}): DatamodelResult {
  const { K, T } = evaluator;
  const t0 = performance.now();
  const outputs = evaluator.evaluateMany(masks, options.onProgress);
  const t1 = performance.now();
  const count = masks.length / K;
  const fit = ridge(masks, outputs, count, K, T, options);
  const t2 = performance.now();
  return { ...fit, masks, outputs, count, baseline: evaluator.evaluate(new Uint8Array(K)), evaluateSeconds: (t1 - t0) / 1000, fitSeconds: (t2 - t1) / 1000 };
}
