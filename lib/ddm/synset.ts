// Offline stage of the distilled datamodel (REFERENCE §7): for every group k, a few synthetic
// examples S_k with fixed labels whose loss gradient, at the recorded checkpoints θ_c, matches the
// group's real gradient G_k(θ_c) = Σ_{z∈D_k} ∇ℓ(θ_c, z) ("reverse gradient matching": the matched
// quantity is the group's pull on the trajectory, so that stepping against it removes the group).
//
// The synthetic gradient of group k is   g_k(θ) = ω_k Σ_{s∈S_k} ∇ℓ(θ; x_s, y_s),   ω_k = |D_k| / m:
// each of the m synthetic examples stands in for |D_k|/m real ones (one example's gradient is
// bounded in the last layer, so without ω a synset could not reach the size of a summed group
// gradient). The matching loss, per group, averaged over the C checkpoints and summed over layers
// (a layer's vector is [W_l | b_l], the Kronecker block with the bias column):
//
//     D_k = (1/C) Σ_c Σ_l d(g_k^l(θ_c), G_k^l(θ_c))
//     d = 'cosine':  1 − ⟨g, G⟩ / (‖g‖ ‖G‖)           (direction only, as in gradient-matching
//                                                      dataset distillation)
//     d = 'squared': ‖g − G‖² / ‖G‖²                  (relative, so every layer and checkpoint
//                                                      counts alike whatever its gradient scale)
//
// Only the inputs x_s are learned (Adam, seeded initialisation from real members of the group);
// the labels stay fixed. ∂D/∂x_s is a mixed second derivative, computed here EXACTLY by a
// hand-derived double backward through the per-layer factors (∇_{W_l} ℓ = δ_l a_lᵀ): with
// Γ_l = ∂D/∂g^l = [ΓW_l | Γb_l],
//   direct:          ā_l += ω ΓW_lᵀ δ_l,      δ̄_l += ω (ΓW_l a_l + Γb_l)
//   through δ (the backward pass δ_{l−1} = σ′(z_{l−1}) ⊙ W_lᵀ δ_l, reversed for l = 1 … L−1):
//                    z̄_{l−1} += δ̄_{l−1} ⊙ (W_lᵀ δ_l) ⊙ σ″(z_{l−1}),   δ̄_l += W_l (σ′(z_{l−1}) ⊙ δ̄_{l−1})
//   through δ_{L−1} = softmax(z_{L−1}) − e_y:   z̄_{L−1} += (diag p − p pᵀ) δ̄_{L−1}
//   through the forward pass (l = L−1 … 0):     ā_l += W_lᵀ z̄_l,   z̄_{l−1} += σ′(z_{l−1}) ⊙ ā_l
//   and ∂D/∂x = ā_0.
// The tests check it against central finite differences on tanh models.
//
// After the inputs are learned, a per-group scale β_k corrects the size of g_k (cosine matching
// leaves it free; squared matching leaves a small residual): the least-squares β minimising
// Σ_c ‖β g_k(θ_c) − G_k(θ_c)‖² / ‖G_k(θ_c)‖². The online stage uses β_k ω_k Σ_{s∈S_k} ∇ℓ(θ, s).

import { DvembError } from '../errors.js';
import { MLP, type Activation, type LayerInfo } from '../eval/mlp.js';
import { Rng, type Seed } from '../eval/rng.js';
import { groupClasses, type Groups } from './groups.js';

export type MatchDistance = 'cosine' | 'squared';

/** θ_t at a recorded step t (θ_t is the parameter vector step t starts from; θ_T ends the run). */
export interface Checkpoint {
  step: number;
  theta: Float64Array;
}

/** Training examples, row-major. */
export interface Examples {
  x: Float64Array;
  y: ArrayLike<number>;
  n: number;
}

/** The distilled synsets of K groups, m synthetic examples each (rows k·m … k·m + m − 1 are S_k). */
export interface Synsets {
  /** The model shape the synsets were distilled for; they only make sense for that shape. */
  widths: number[];
  activation: Activation;
  K: number;
  perGroup: number;
  /** K·m × d synthetic inputs. */
  x: Float64Array;
  /** K·m fixed labels. */
  y: Int32Array;
  /** |D_k|. */
  groupSizes: Int32Array;
  /** β_k (the fitted size correction). */
  scale: Float64Array;
  /** β_k ω_k: the weight each synthetic example of group k carries in g_k. */
  weights: Float64Array;
  distance: MatchDistance;
  /** The checkpoints the synsets were matched at. */
  checkpointSteps: number[];
  /** D_k before and after optimisation. */
  initialLoss: Float64Array;
  finalLoss: Float64Array;
  /** Mean over checkpoints of cos(β_k g_k(θ_c), G_k(θ_c)) on the whole parameter vector, and of the relative error ‖β g − G‖/‖G‖. */
  cosine: Float64Array;
  relativeError: Float64Array;
  seconds: number;
}

/** G_k(θ) = Σ_{z∈D_k} ∇ℓ(θ, z) for every group: K × numParams, row-major (flat MLP layout). */
export function groupGradients(model: MLP, data: Examples, groups: Groups): Float64Array {
  if (groups.n !== data.n) throw new DvembError('SHAPE_MISMATCH', `${groups.n} grouped examples, but the data have ${data.n}`);
  const P = model.numParams;
  const out = new Float64Array(groups.K * P);
  // Per-example factors in slices, so memory stays bounded for large sets.
  const slice = 512;
  const d = model.inputDim;
  for (let start = 0; start < data.n; start += slice) {
    const count = Math.min(slice, data.n - start);
    const pe = model.perExample(data.x.subarray(start * d, (start + count) * d), Array.prototype.slice.call(data.y, start, start + count) as number[], count);
    model.layers.forEach(({ dIn, dOut, wOffset, bOffset }, l) => {
      const { inputs: a, outputGrads: delta } = pe.layers[l]!;
      for (let i = 0; i < count; i++) {
        const base = (groups.assignment[start + i] as number) * P;
        for (let o = 0; o < dOut; o++) {
          const s = delta[i * dOut + o] as number;
          const row = base + wOffset + o * dIn;
          for (let k = 0; k < dIn; k++) out[row + k]! += s * (a[i * dIn + k] as number);
          out[base + bOffset + o]! += s;
        }
      }
    });
  }
  return out;
}

/**
 * Labels of a group's m synthetic examples: largest-remainder apportionment of m over the group's
 * class histogram (so a one-class group gets m copies of its class, and the majority class always
 * gets the first), ties to the lower class.
 */
export function synsetLabels(histogram: ArrayLike<number>, m: number): Int32Array {
  const C = histogram.length;
  let total = 0;
  for (let c = 0; c < C; c++) total += histogram[c] as number;
  if (total <= 0) throw new DvembError('BAD_INPUT', 'a group with no members has no labels to distil');
  const count = new Int32Array(C);
  const rem = new Float64Array(C);
  let given = 0;
  for (let c = 0; c < C; c++) {
    const q = (m * (histogram[c] as number)) / total;
    count[c] = Math.floor(q);
    rem[c] = q - (count[c] as number);
    given += count[c] as number;
  }
  while (given < m) {
    let best = 0;
    for (let c = 1; c < C; c++) if ((rem[c] as number) > (rem[best] as number) || ((rem[c] as number) === (rem[best] as number) && (histogram[c] as number) > (histogram[best] as number))) best = c;
    count[best]! += 1;
    rem[best] = -1;
    given++;
  }
  const out = new Int32Array(m);
  // Majority class first, then by class index.
  const order = Array.from({ length: C }, (_, c) => c).sort((a, b) => (histogram[b] as number) - (histogram[a] as number) || a - b);
  let at = 0;
  for (const c of order) for (let j = 0; j < (count[c] as number); j++) out[at++] = c;
  return out;
}

/** Per-row derivatives σ′(z), σ″(z) of hidden layer l, from the cached forward pass. */
function activationDerivatives(activation: Activation, pre: Float64Array, post: Float64Array): { d1: Float64Array; d2: Float64Array } {
  const d1 = new Float64Array(pre.length);
  const d2 = new Float64Array(pre.length);
  if (activation === 'tanh') {
    for (let j = 0; j < pre.length; j++) {
      const t = post[j] as number;
      d1[j] = 1 - t * t;
      d2[j] = -2 * t * (1 - t * t);
    }
  } else {
    for (let j = 0; j < pre.length; j++) d1[j] = (pre[j] as number) > 0 ? 1 : 0; // σ″ = 0 a.e.
  }
  return { d1, d2 };
}

/** Layer-wise distance and its gradient Γ = ∂d/∂g (written into gamma). */
function layerDistance(distance: MatchDistance, g: Float64Array, G: Float64Array, from: number, to: number, gamma: Float64Array): number {
  let gg = 0;
  let GG = 0;
  let gG = 0;
  for (let j = from; j < to; j++) {
    const a = g[j] as number;
    const b = G[j] as number;
    gg += a * a;
    GG += b * b;
    gG += a * b;
  }
  const tiny = 1e-300;
  if (distance === 'squared') {
    const den = Math.max(GG, tiny);
    for (let j = from; j < to; j++) gamma[j] = (2 * ((g[j] as number) - (G[j] as number))) / den;
    return (gg - 2 * gG + GG) / den;
  }
  const ng = Math.sqrt(gg);
  const nG = Math.sqrt(GG);
  if (ng < tiny || nG < tiny) {
    for (let j = from; j < to; j++) gamma[j] = 0; // cosine undefined at 0: no direction to follow
    return 1;
  }
  const cos = gG / (ng * nG);
  // ∂(1 − cos)/∂g = −G/(‖g‖‖G‖) + cos · g/‖g‖²
  for (let j = from; j < to; j++) gamma[j] = -(G[j] as number) / (ng * nG) + (cos * (g[j] as number)) / gg;
  return 1 - cos;
}

/** Everything one evaluation of the matching loss returns. */
export interface MatchEvaluation {
  /** D_k per group. */
  loss: Float64Array;
  /** ∂(Σ_k D_k)/∂x, same shape as x (row r only depends on its own group's D). */
  gradX: Float64Array;
}

/**
 * The gradient-matching objective for a set of synthetic rows against recorded targets. Holds one
 * model per checkpoint; `evaluate` returns every group's D_k and the exact ∂/∂x of their sum.
 */
export class GradientMatcher {
  readonly model: MLP;
  readonly K: number;
  readonly distance: MatchDistance;
  private readonly nets: MLP[];
  private readonly thetas: Float64Array[];
  /** G_k(θ_c), K × P per checkpoint. */
  private readonly targets: Float64Array[];

  /** `targets[c]` is G(θ_c) as K × numParams (groupGradients at checkpoints[c]). */
  constructor(model: MLP, checkpoints: readonly Checkpoint[], targets: readonly Float64Array[], K: number, distance: MatchDistance) {
    if (distance !== 'cosine' && distance !== 'squared') throw new DvembError('BAD_INPUT', `matching distance must be 'cosine' or 'squared', got ${String(distance)}`);
    if (checkpoints.length === 0) throw new DvembError('BAD_INPUT', 'gradient matching needs at least one checkpoint');
    if (targets.length !== checkpoints.length) throw new DvembError('SHAPE_MISMATCH', `${targets.length} target sets for ${checkpoints.length} checkpoints`);
    this.model = model;
    this.K = K;
    this.distance = distance;
    this.nets = checkpoints.map((c, i) => {
      if (c.theta.length !== model.numParams) {
        throw new DvembError('SHAPE_MISMATCH', `checkpoint ${i} (step ${c.step}) has ${c.theta.length} parameters; the model ${model.widths.join('-')} has ${model.numParams}`);
      }
      const net = model.clone();
      net.setParameters(c.theta);
      return net;
    });
    this.thetas = checkpoints.map((c) => c.theta);
    targets.forEach((t, i) => {
      if (t.length !== K * model.numParams) throw new DvembError('SHAPE_MISMATCH', `targets[${i}] has ${t.length} values, expected K·numParams = ${K * model.numParams}`);
    });
    this.targets = [...targets];
  }

  get checkpoints(): number {
    return this.nets.length;
  }

  /** g_k(θ_c) for every group (K × P): Σ over rows of group k of weight · ∇ℓ(θ_c; x_r, y_r). */
  synsetGradients(c: number, x: Float64Array, y: ArrayLike<number>, rowGroup: Int32Array, rowWeight: Float64Array): Float64Array {
    const net = this.nets[c]!;
    const n = rowGroup.length;
    const pe = net.perExample(x, y, n);
    const P = net.numParams;
    const g = new Float64Array(this.K * P);
    accumulate(net.layers, pe.layers, rowGroup, rowWeight, P, g);
    return g;
  }

  /** D_k for every group and ∂(Σ_k D_k)/∂x, exactly (see the file comment). */
  evaluate(x: Float64Array, y: ArrayLike<number>, rowGroup: Int32Array, rowWeight: Float64Array): MatchEvaluation {
    const { K, model } = this;
    const n = rowGroup.length;
    const d = model.inputDim;
    if (x.length !== n * d || y.length !== n || rowWeight.length !== n) {
      throw new DvembError('SHAPE_MISMATCH', `synthetic rows: x has ${x.length} values, y ${y.length} labels, ${rowWeight.length} weights for ${n} rows of width ${d}`);
    }
    const P = model.numParams;
    const L = model.layers.length;
    const C = this.nets.length;
    const loss = new Float64Array(K);
    const gradX = new Float64Array(n * d);
    const gamma = new Float64Array(K * P);
    for (let c = 0; c < C; c++) {
      const net = this.nets[c]!;
      const theta = this.thetas[c]!;
      const G = this.targets[c]!;
      const cache = net.forward(x, n);
      const classes = net.classes;
      const out = cache.probs.slice();
      for (let i = 0; i < n; i++) out[i * classes + (y[i] as number)]! -= 1;
      const deltas = net.backward(cache, out);
      const layers = deltas.map((outputGrads, l) => ({ inputs: cache.inputs[l]!, outputGrads }));
      const g = new Float64Array(K * P);
      accumulate(net.layers, layers, rowGroup, rowWeight, P, g);
      // Γ per group and layer; D_k accumulates (1/C) Σ_l d.
      for (let k = 0; k < K; k++) {
        for (const { wOffset, bOffset, dOut } of net.layers) {
          const v = layerDistance(this.distance, g, G, k * P + wOffset, k * P + bOffset + dOut, gamma);
          loss[k]! += v / C;
        }
      }
      for (let j = 0; j < gamma.length; j++) gamma[j]! /= C;
      // Double backward, row by row.
      const derivs = Array.from({ length: L - 1 }, (_, l) => activationDerivatives(net.activation, cache.pre[l]!, cache.inputs[l + 1]!));
      for (let r = 0; r < n; r++) {
        const w = rowWeight[r] as number;
        const base = (rowGroup[r] as number) * P;
        const aBar: Float64Array[] = [];
        const dBar: Float64Array[] = [];
        const zBar: Float64Array[] = [];
        // Direct adjoints of a_l and δ_l from g^l = ω Σ δ aᵀ.
        net.layers.forEach(({ dIn, dOut, wOffset, bOffset }, l) => {
          const a = layers[l]!.inputs;
          const dl = layers[l]!.outputGrads;
          const ab = new Float64Array(dIn);
          const db = new Float64Array(dOut);
          for (let o = 0; o < dOut; o++) {
            const row = base + wOffset + o * dIn;
            const del = dl[r * dOut + o] as number;
            let s = 0;
            for (let k = 0; k < dIn; k++) {
              const gw = gamma[row + k] as number;
              ab[k]! += w * gw * del;
              s += gw * (a[r * dIn + k] as number);
            }
            db[o] = w * (s + (gamma[base + bOffset + o] as number));
          }
          aBar.push(ab);
          dBar.push(db);
          zBar.push(new Float64Array(dOut));
        });
        // Reverse the backward pass: δ_{l−1} = σ′(z_{l−1}) ⊙ (W_lᵀ δ_l), for l = 1 … L−1.
        for (let l = 1; l < L; l++) {
          const { dIn, dOut, wOffset } = net.layers[l]!;
          const { d1, d2 } = derivs[l - 1]!;
          const upper = layers[l]!.outputGrads;
          const lowerBar = dBar[l - 1]!;
          const zb = zBar[l - 1]!;
          const ub = dBar[l]!;
          for (let k = 0; k < dIn; k++) {
            let u = 0;
            for (let o = 0; o < dOut; o++) u += (theta[wOffset + o * dIn + k] as number) * (upper[r * dOut + o] as number);
            zb[k]! += (lowerBar[k] as number) * u * (d2[r * dIn + k] as number);
            const e = (lowerBar[k] as number) * (d1[r * dIn + k] as number);
            for (let o = 0; o < dOut; o++) ub[o]! += (theta[wOffset + o * dIn + k] as number) * e;
          }
        }
        // δ_{L−1} = softmax(z_{L−1}) − e_y:  z̄_{L−1} += S δ̄_{L−1}.
        {
          const p = cache.probs;
          const v = dBar[L - 1]!;
          const zb = zBar[L - 1]!;
          let pv = 0;
          for (let cl = 0; cl < classes; cl++) pv += (p[r * classes + cl] as number) * (v[cl] as number);
          for (let cl = 0; cl < classes; cl++) zb[cl]! += (p[r * classes + cl] as number) * ((v[cl] as number) - pv);
        }
        // Reverse the forward pass.
        for (let l = L - 1; l >= 0; l--) {
          const { dIn, dOut, wOffset } = net.layers[l]!;
          const zb = zBar[l]!;
          const ab = aBar[l]!;
          for (let o = 0; o < dOut; o++) {
            const s = zb[o] as number;
            if (s === 0) continue;
            const row = wOffset + o * dIn;
            for (let k = 0; k < dIn; k++) ab[k]! += (theta[row + k] as number) * s;
          }
          if (l > 0) {
            const { d1 } = derivs[l - 1]!;
            const below = zBar[l - 1]!;
            for (let k = 0; k < dIn; k++) below[k]! += (d1[r * dIn + k] as number) * (ab[k] as number);
          }
        }
        const a0 = aBar[0]!;
        for (let k = 0; k < d; k++) gradX[r * d + k]! += a0[k] as number;
      }
    }
    return { loss, gradX };
  }
}

/** g[group(r)] += weight_r · (δ_r a_rᵀ, δ_r) for every layer. */
function accumulate(info: readonly LayerInfo[], layers: readonly { inputs: Float64Array; outputGrads: Float64Array }[], rowGroup: Int32Array, rowWeight: Float64Array, P: number, g: Float64Array): void {
  info.forEach(({ dIn, dOut, wOffset, bOffset }, l) => {
    const { inputs: a, outputGrads: delta } = layers[l]!;
    for (let r = 0; r < rowGroup.length; r++) {
      const base = (rowGroup[r] as number) * P;
      const w = rowWeight[r] as number;
      for (let o = 0; o < dOut; o++) {
        const s = w * (delta[r * dOut + o] as number);
        const row = base + wOffset + o * dIn;
        for (let k = 0; k < dIn; k++) g[row + k]! += s * (a[r * dIn + k] as number);
        g[base + bOffset + o]! += s;
      }
    }
  });
}

export interface DistillProgress {
  iteration: number;
  iterations: number;
  /** Mean D_k over groups at this iteration. */
  loss: number;
}

export interface DistillOptions {
  /** Synthetic examples per group, m (default 2). */
  perGroup?: number;
  /** Layer-wise matching distance (default 'cosine'). */
  distance?: MatchDistance;
  /** Adam iterations on the inputs (default 200). */
  iterations?: number;
  /** Adam step size (default 0.01; inputs of the shipped data lie in [0, 1]). */
  lr?: number;
  /** Seed of the initialisation (group k draws its starting members from Rng(seed).fork(`group${k}`)). */
  seed?: Seed;
  onProgress?: (p: DistillProgress) => void;
}

/**
 * Distils the synsets of every group (the offline stage). `checkpoints` are the recorded θ_t to
 * match at; `data` the training set the groups index; `model` gives the architecture.
 */
export function distillSynsets(model: MLP, checkpoints: readonly Checkpoint[], data: Examples, groups: Groups, options: DistillOptions = {}): Synsets {
  const started = performance.now();
  const m = options.perGroup ?? 2;
  const iterations = options.iterations ?? 200;
  const lr = options.lr ?? 0.01;
  const distance = options.distance ?? 'cosine';
  if (!Number.isSafeInteger(m) || m < 1) throw new DvembError('BAD_INPUT', `perGroup must be a positive integer, got ${String(m)}`);
  if (!Number.isSafeInteger(iterations) || iterations < 0) throw new DvembError('BAD_INPUT', `iterations must be a non-negative integer, got ${String(iterations)}`);
  if (!Number.isFinite(lr) || lr <= 0) throw new DvembError('BAD_INPUT', `lr must be a positive number, got ${String(lr)}`);
  const d = model.inputDim;
  if (data.x.length !== data.n * d || data.y.length !== data.n) {
    throw new DvembError('SHAPE_MISMATCH', `training data: x has ${data.x.length} values and y ${data.y.length} labels for n = ${data.n} rows of width ${d}`);
  }
  if (groups.n !== data.n) throw new DvembError('SHAPE_MISMATCH', `the groups cover ${groups.n} examples, the training data have ${data.n}`);
  const { K } = groups;
  const targets = checkpoints.map((c) => {
    const net = model.clone();
    if (c.theta.length !== model.numParams) throw new DvembError('SHAPE_MISMATCH', `checkpoint at step ${c.step} has ${c.theta.length} parameters; the model ${model.widths.join('-')} has ${model.numParams}`);
    net.setParameters(c.theta);
    return groupGradients(net, data, groups);
  });
  const matcher = new GradientMatcher(model, checkpoints, targets, K, distance);

  // Fixed labels and a seeded start from real members of the group with that label.
  const { histogram } = groupClasses(groups, data.y, model.classes);
  const n = K * m;
  const x = new Float64Array(n * d);
  const y = new Int32Array(n);
  const rowGroup = new Int32Array(n);
  const rowWeight = new Float64Array(n);
  const root = new Rng(options.seed ?? 0);
  for (let k = 0; k < K; k++) {
    const labels = synsetLabels(histogram.subarray(k * model.classes, (k + 1) * model.classes), m);
    const rng = root.fork(`group${k}`);
    const members = groups.members[k]!;
    const used = new Set<number>();
    for (let j = 0; j < m; j++) {
      const r = k * m + j;
      const c = labels[j] as number;
      const pool = Array.from(members).filter((i) => (data.y[i] as number) === c);
      const fresh = pool.filter((i) => !used.has(i));
      const from = fresh.length > 0 ? fresh : pool;
      const pick = from[rng.int(from.length)] as number;
      used.add(pick);
      x.set(data.x.subarray(pick * d, pick * d + d), r * d);
      y[r] = c;
      rowGroup[r] = k;
      rowWeight[r] = (groups.sizes[k] as number) / m;
    }
  }

  // Adam on the inputs; groups are independent terms of one sum, so this is K separate problems.
  const mom = new Float64Array(x.length);
  const vel = new Float64Array(x.length);
  const b1 = 0.9;
  const b2 = 0.999;
  let initialLoss: Float64Array | null = null;
  for (let it = 0; it < iterations; it++) {
    const { loss, gradX } = matcher.evaluate(x, y, rowGroup, rowWeight);
    initialLoss ??= loss;
    const c1 = 1 - Math.pow(b1, it + 1);
    const c2 = 1 - Math.pow(b2, it + 1);
    for (let j = 0; j < x.length; j++) {
      const gj = gradX[j] as number;
      mom[j] = b1 * (mom[j] as number) + (1 - b1) * gj;
      vel[j] = b2 * (vel[j] as number) + (1 - b2) * gj * gj;
      x[j]! -= (lr * ((mom[j] as number) / c1)) / (Math.sqrt((vel[j] as number) / c2) + 1e-8);
    }
    options.onProgress?.({ iteration: it + 1, iterations, loss: mean(loss) });
  }
  const finalLoss = matcher.evaluate(x, y, rowGroup, rowWeight).loss;
  initialLoss ??= finalLoss;

  // β_k: least squares over checkpoints, each weighted by 1/‖G_k(θ_c)‖².
  const P = model.numParams;
  const num = new Float64Array(K);
  const den = new Float64Array(K);
  const grads = checkpoints.map((_, c) => matcher.synsetGradients(c, x, y, rowGroup, rowWeight));
  for (let c = 0; c < checkpoints.length; c++) {
    const G = targets[c]!;
    const g = grads[c]!;
    for (let k = 0; k < K; k++) {
      let gG = 0;
      let gg = 0;
      let GG = 0;
      for (let j = k * P; j < (k + 1) * P; j++) {
        gG += (g[j] as number) * (G[j] as number);
        gg += (g[j] as number) ** 2;
        GG += (G[j] as number) ** 2;
      }
      if (GG > 0) {
        num[k]! += gG / GG;
        den[k]! += gg / GG;
      }
    }
  }
  const scale = Float64Array.from(num, (v, k) => ((den[k] as number) > 0 ? v / (den[k] as number) : 1));
  const cosine = new Float64Array(K);
  const relativeError = new Float64Array(K);
  for (let c = 0; c < checkpoints.length; c++) {
    const G = targets[c]!;
    const g = grads[c]!;
    for (let k = 0; k < K; k++) {
      const b = scale[k] as number;
      let gG = 0;
      let gg = 0;
      let GG = 0;
      let ee = 0;
      for (let j = k * P; j < (k + 1) * P; j++) {
        const gv = b * (g[j] as number);
        const Gv = G[j] as number;
        gG += gv * Gv;
        gg += gv * gv;
        GG += Gv * Gv;
        ee += (gv - Gv) ** 2;
      }
      cosine[k]! += (gg > 0 && GG > 0 ? gG / Math.sqrt(gg * GG) : 0) / checkpoints.length;
      relativeError[k]! += (GG > 0 ? Math.sqrt(ee / GG) : 0) / checkpoints.length;
    }
  }
  const weights = new Float64Array(K);
  for (let k = 0; k < K; k++) weights[k] = ((groups.sizes[k] as number) / m) * (scale[k] as number);
  return {
    widths: [...model.widths],
    activation: model.activation,
    K,
    perGroup: m,
    x,
    y,
    groupSizes: Int32Array.from(groups.sizes),
    scale,
    weights,
    distance,
    checkpointSteps: checkpoints.map((c) => c.step),
    initialLoss,
    finalLoss,
    cosine,
    relativeError,
    seconds: (performance.now() - started) / 1000,
  };
}

function mean(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] as number;
  return a.length ? s / a.length : 0;
}

/** Stops with SHAPE_MISMATCH unless the synsets were distilled for this model's shape. */
export function checkSynsetsFit(synsets: Pick<Synsets, 'widths' | 'activation'>, model: Pick<MLP, 'widths' | 'activation'>): void {
  const a = synsets.widths.join('-');
  const b = model.widths.join('-');
  if (a !== b || synsets.activation !== model.activation) {
    throw new DvembError(
      'SHAPE_MISMATCH',
      `these synsets were distilled for an MLP ${a} (${synsets.activation}), but the model is ${b} (${model.activation})`,
      'distil synsets for this model from its own recorded checkpoints (distillSynsets)',
    );
  }
}
