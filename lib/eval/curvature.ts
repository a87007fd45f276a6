// Exact second-order products for the reference MLP (REFERENCE §3 "Curvature"), all analytic:
//
//   Hessian-vector products  H v = Σ_i w_i ∇²ℓ_i(θ) v   by Pearlmutter's R-operator (forward-over-
//                            backward: push the direction v through the forward pass, then
//                            differentiate the backward pass along it). Never finite differences:
//                            across a ReLU kink those are garbage (REFERENCE §8).
//   Gauss–Newton products    G v = Σ_i w_i J_iᵀ S_i J_i v,  S_i = diag(p_i) − p_i p_iᵀ, where J_i is
//                            the Jacobian of example i's logits: the R-forward pass gives J v, the
//                            ordinary backward pass with output gradient S J v gives Jᵀ S J v.
//   Sampled-label gradients  per example, the gradient of the loss at labels drawn from the model's
//                            own softmax; E[g_ŷ g_ŷᵀ] = Jᵀ S J, so their outer products are an
//                            unbiased estimate of the GGN ("true Fisher"), the recorder's curvature rows.
//
// Multinomial logistic regression is the MLP with widths [d, C]: one layer, no hidden activation,
// and every function here handles it (the hidden-layer loops are then empty; H = G exactly).

import { MLP, weightedGradient, type ForwardCache, type LayerFactors } from './mlp.js';
import { Rng } from './rng.js';

/** A batch for the curvature products: n rows of x, labels y, and each example's weight w_i. */
export interface WeightedBatch {
  x: Float64Array;
  y: ArrayLike<number>;
  n: number;
  /** w_i per example, or one weight for all (1/n for a mean loss, 1 for a sum). */
  weights: ArrayLike<number> | number;
}

function expand(weights: ArrayLike<number> | number, n: number): Float64Array {
  const w = typeof weights === 'number' ? new Float64Array(n).fill(weights) : Float64Array.from(weights);
  if (w.length !== n) throw new RangeError(`weights has length ${w.length}, expected n = ${n}`);
  return w;
}

function checkDirections(model: MLP, vs: readonly Float64Array[]): void {
  vs.forEach((v, j) => {
    if (v.length !== model.numParams) throw new RangeError(`direction ${j} has length ${v.length}, expected numParams = ${model.numParams}`);
  });
}

/** σ′(z) and σ″(z) of hidden layer l, elementwise, from the cached forward pass. */
function activationDerivatives(model: MLP, cache: ForwardCache, l: number): { d1: Float64Array; d2: Float64Array } {
  const z = cache.pre[l] as Float64Array;
  const d1 = new Float64Array(z.length);
  const d2 = new Float64Array(z.length);
  if (model.activation === 'tanh') {
    const a = cache.inputs[l + 1] as Float64Array;
    for (let j = 0; j < z.length; j++) {
      const t = a[j] as number;
      d1[j] = 1 - t * t;
      d2[j] = -2 * t * (1 - t * t);
    }
  } else {
    // ReLU: σ′ = [z > 0] (0 at the kink, as in MLP.backward), σ″ = 0 almost everywhere.
    for (let j = 0; j < z.length; j++) d1[j] = (z[j] as number) > 0 ? 1 : 0;
  }
  return { d1, d2 };
}

/** softmax-CE output gradient p − onehot(y), row by row. */
function outputGradients(cache: ForwardCache, y: ArrayLike<number>, C: number): Float64Array {
  const g = cache.probs.slice();
  for (let i = 0; i < cache.n; i++) g[i * C + (y[i] as number)] = (g[i * C + (y[i] as number)] as number) - 1;
  return g;
}

/** u_i = S_i r_i = p_i ⊙ r_i − p_i (p_iᵀ r_i): the softmax Jacobian applied row by row. */
function softmaxJacobian(probs: Float64Array, r: Float64Array, n: number, C: number): Float64Array {
  const u = new Float64Array(n * C);
  for (let i = 0; i < n; i++) {
    let dot = 0;
    for (let c = 0; c < C; c++) dot += (probs[i * C + c] as number) * (r[i * C + c] as number);
    for (let c = 0; c < C; c++) u[i * C + c] = (probs[i * C + c] as number) * ((r[i * C + c] as number) - dot);
  }
  return u;
}

/**
 * The R-forward pass: Rz_l = V_l a_l + Vb_l + W_l Ra_l and Ra_{l+1} = σ′(z_l) ⊙ Rz_l, with Ra_0 = 0.
 * Returns Ra_l (layer inputs) and Rz_l (pre-activations) per layer; Rz_{L−1} = J v.
 */
function rForward(model: MLP, theta: Float64Array, v: Float64Array, cache: ForwardCache, deriv: { d1: Float64Array }[]): { ra: Float64Array[]; rz: Float64Array[] } {
  const { n } = cache;
  const L = model.layers.length;
  const ra: Float64Array[] = [];
  const rz: Float64Array[] = [];
  let rIn = new Float64Array(n * model.inputDim);
  model.layers.forEach(({ dIn, dOut, wOffset, bOffset }, l) => {
    ra.push(rIn);
    const a = cache.inputs[l] as Float64Array;
    const out = new Float64Array(n * dOut);
    for (let i = 0; i < n; i++) {
      for (let o = 0; o < dOut; o++) {
        const row = wOffset + o * dIn;
        let s = 0;
        for (let k = 0; k < dIn; k++) s += (v[row + k] as number) * (a[i * dIn + k] as number) + (theta[row + k] as number) * (rIn[i * dIn + k] as number);
        out[i * dOut + o] = s + (v[bOffset + o] as number);
      }
    }
    rz.push(out);
    if (l < L - 1) {
      const d1 = (deriv[l] as { d1: Float64Array }).d1;
      const next = new Float64Array(out.length);
      for (let j = 0; j < out.length; j++) next[j] = (d1[j] as number) * (out[j] as number);
      rIn = next;
    }
  });
  return { ra, rz };
}

/** Shared state of one batch: the forward pass and everything that does not depend on v. */
interface Prepared {
  theta: Float64Array;
  cache: ForwardCache;
  w: Float64Array;
  deriv: { d1: Float64Array; d2: Float64Array }[];
}

function prepare(model: MLP, batch: WeightedBatch): Prepared {
  const { x, n } = batch;
  const cache = model.forward(x, n);
  const deriv = model.layers.slice(0, -1).map((_, l) => activationDerivatives(model, cache, l));
  return { theta: model.parameters(), cache, w: expand(batch.weights, n), deriv };
}

/**
 * Exact Hessian-vector products Σ_i w_i ∇²ℓ_i(θ) v for each direction in `vs`, sharing one forward
 * and one backward pass. Derivation: δ_{L−1} = p − e_y, δ_{l−1} = σ′(z_{l−1}) ⊙ (W_lᵀ δ_l), ∇W_l = δ_l a_lᵀ.
 * Applying R{·}: Rδ_{L−1} = S Rz_{L−1}; Rδ_{l−1} = σ″ ⊙ Rz_{l−1} ⊙ (W_lᵀ δ_l) + σ′ ⊙ (V_lᵀ δ_l + W_lᵀ Rδ_l);
 * R∇W_l = Rδ_l a_lᵀ + δ_l Ra_lᵀ; R∇b_l = Rδ_l.
 */
export function hessianVectorProducts(model: MLP, batch: WeightedBatch, vs: readonly Float64Array[]): Float64Array[] {
  checkDirections(model, vs);
  const p = prepare(model, batch);
  const { theta, cache, w, deriv } = p;
  const { n } = cache;
  const C = model.classes;
  const L = model.layers.length;
  const deltas = model.backward(cache, outputGradients(cache, batch.y, C));
  return vs.map((v) => {
    const { ra, rz } = rForward(model, theta, v, cache, deriv);
    const rDelta: Float64Array[] = new Array<Float64Array>(L);
    rDelta[L - 1] = softmaxJacobian(cache.probs, rz[L - 1] as Float64Array, n, C);
    for (let l = L - 1; l > 0; l--) {
      const { dIn, dOut, wOffset } = model.layers[l]!;
      const delta = deltas[l] as Float64Array;
      const rd = rDelta[l] as Float64Array;
      const { d1, d2 } = deriv[l - 1]!;
      const rzBelow = rz[l - 1] as Float64Array;
      const lower = new Float64Array(n * dIn);
      for (let i = 0; i < n; i++) {
        for (let k = 0; k < dIn; k++) {
          let back = 0; // (W_lᵀ δ_l)_k
          let rBack = 0; // (V_lᵀ δ_l + W_lᵀ Rδ_l)_k
          for (let o = 0; o < dOut; o++) {
            const at = wOffset + o * dIn + k;
            const dl = delta[i * dOut + o] as number;
            back += (theta[at] as number) * dl;
            rBack += (v[at] as number) * dl + (theta[at] as number) * (rd[i * dOut + o] as number);
          }
          const j = i * dIn + k;
          lower[j] = (d2[j] as number) * (rzBelow[j] as number) * back + (d1[j] as number) * rBack;
        }
      }
      rDelta[l - 1] = lower;
    }
    // Hv = Σ_i w_i (Rδ_i a_iᵀ + δ_i Ra_iᵀ, Rδ_i).
    const hv = new Float64Array(model.numParams);
    model.layers.forEach(({ dIn, dOut, wOffset, bOffset }, l) => {
      const a = cache.inputs[l] as Float64Array;
      const rIn = ra[l] as Float64Array;
      const delta = deltas[l] as Float64Array;
      const rd = rDelta[l] as Float64Array;
      for (let i = 0; i < n; i++) {
        const wi = w[i] as number;
        for (let o = 0; o < dOut; o++) {
          const s = wi * (rd[i * dOut + o] as number);
          const t = wi * (delta[i * dOut + o] as number);
          const row = wOffset + o * dIn;
          for (let k = 0; k < dIn; k++) hv[row + k] = (hv[row + k] as number) + s * (a[i * dIn + k] as number) + t * (rIn[i * dIn + k] as number);
          hv[bOffset + o] = (hv[bOffset + o] as number) + s;
        }
      }
    });
    return hv;
  });
}

/** One exact Hessian-vector product Σ_i w_i ∇²ℓ_i(θ) v. */
export function hessianVectorProduct(model: MLP, batch: WeightedBatch, v: Float64Array): Float64Array {
  return hessianVectorProducts(model, batch, [v])[0] as Float64Array;
}

/** Exact Gauss–Newton products Σ_i w_i J_iᵀ S_i J_i v for each direction (symmetric PSD operator). */
export function ggnVectorProducts(model: MLP, batch: WeightedBatch, vs: readonly Float64Array[]): Float64Array[] {
  checkDirections(model, vs);
  const { theta, cache, w, deriv } = prepare(model, batch);
  const C = model.classes;
  const L = model.layers.length;
  return vs.map((v) => {
    const { rz } = rForward(model, theta, v, cache, deriv);
    const u = softmaxJacobian(cache.probs, rz[L - 1] as Float64Array, cache.n, C);
    const back = model.backward(cache, u);
    const layers = back.map((outputGrads, l) => ({ inputs: cache.inputs[l] as Float64Array, outputGrads }));
    return weightedGradient(model.layers, layers, w, model.numParams);
  });
}

/** One exact Gauss–Newton product. */
export function ggnVectorProduct(model: MLP, batch: WeightedBatch, v: Float64Array): Float64Array {
  return ggnVectorProducts(model, batch, [v])[0] as Float64Array;
}

/**
 * Empirical-Fisher products Σ_i w_i g_i (g_iᵀ v) with g_i the observed-label per-example gradients:
 * the curvature the engine uses by default (REFERENCE §3), here in exact float64.
 */
export function empiricalFisherVectorProducts(model: MLP, batch: WeightedBatch, vs: readonly Float64Array[]): Float64Array[] {
  checkDirections(model, vs);
  const w = expand(batch.weights, batch.n);
  const G = model.perExampleGradients(batch.x, batch.y, batch.n);
  return vs.map((v) => outerProductApply(G, w, batch.n, model.numParams, v));
}

/** Σ_i w_i g_i (g_iᵀ v) for the rows g_i of G (n × p). */
export function outerProductApply(G: ArrayLike<number>, w: ArrayLike<number>, n: number, p: number, v: Float64Array): Float64Array {
  const out = new Float64Array(p);
  for (let i = 0; i < n; i++) {
    let dot = 0;
    for (let j = 0; j < p; j++) dot += (G[i * p + j] as number) * (v[j] as number);
    const s = (w[i] as number) * dot;
    for (let j = 0; j < p; j++) out[j] = (out[j] as number) + s * (G[i * p + j] as number);
  }
  return out;
}

/**
 * The dense matrix of a symmetric operator on R^p, built column by column from its products with
 * the unit vectors (p products: for small models and tests only).
 */
export function denseOperator(p: number, apply: (vs: Float64Array[]) => Float64Array[], columnsPerCall = 64): Float64Array {
  const M = new Float64Array(p * p);
  for (let start = 0; start < p; start += columnsPerCall) {
    const count = Math.min(columnsPerCall, p - start);
    const units = Array.from({ length: count }, (_, c) => {
      const e = new Float64Array(p);
      e[start + c] = 1;
      return e;
    });
    apply(units).forEach((col, c) => {
      for (let r = 0; r < p; r++) M[r * p + start + c] = col[r] as number;
    });
  }
  return M;
}

/** The exact Hessian Σ_i w_i ∇²ℓ_i(θ) as a dense p × p matrix (row-major). */
export function exactHessian(model: MLP, batch: WeightedBatch): Float64Array {
  return denseOperator(model.numParams, (vs) => hessianVectorProducts(model, batch, vs));
}

/** The exact Gauss–Newton matrix as a dense p × p matrix (row-major). */
export function exactGGN(model: MLP, batch: WeightedBatch): Float64Array {
  return denseOperator(model.numParams, (vs) => ggnVectorProducts(model, batch, vs));
}

/** Labels drawn from each row's softmax: `draws` per example, example-major (n·draws). */
export function sampleLabels(probs: Float64Array, n: number, C: number, draws: number, rng: Rng): Int32Array {
  if (!Number.isSafeInteger(draws) || draws < 1) throw new RangeError(`draws must be a positive integer, got ${draws}`);
  const out = new Int32Array(n * draws);
  for (let i = 0; i < n; i++) {
    for (let d = 0; d < draws; d++) {
      const u = rng.next();
      let c = 0;
      let acc = probs[i * C] as number;
      while (u >= acc && c < C - 1) acc += probs[i * C + ++c] as number;
      out[i * draws + d] = c;
    }
  }
  return out;
}

export interface SampledFactors {
  /** The sampled labels, `draws` per example, example-major. */
  labels: Int32Array;
  /** Per layer, the Kronecker factors of the n·draws sampled-label gradients (rows example-major). */
  layers: LayerFactors[];
}

/**
 * Per-example gradients at labels sampled from the model's own prediction (the true Fisher's
 * curvature rows). Row i·draws + d belongs to example i. These are RAW gradients: the recorder
 * applies the 1/√draws itself. One backward pass over the repeated rows; the forward pass is shared.
 */
export function sampledLabelFactors(model: MLP, x: Float64Array, n: number, draws: number, rng: Rng): SampledFactors {
  const cache = model.forward(x, n);
  const C = model.classes;
  const labels = sampleLabels(cache.probs, n, C, draws, rng);
  const m = n * draws;
  const repeat = (a: Float64Array, width: number): Float64Array => {
    if (draws === 1) return a;
    const out = new Float64Array(m * width);
    for (let i = 0; i < n; i++) for (let d = 0; d < draws; d++) out.set(a.subarray(i * width, (i + 1) * width), (i * draws + d) * width);
    return out;
  };
  const widths = model.widths;
  const big: ForwardCache = {
    n: m,
    inputs: cache.inputs.map((a, l) => repeat(a, widths[l] as number)),
    pre: cache.pre.map((z, l) => repeat(z, widths[l + 1] as number)),
    logits: repeat(cache.logits, C),
    probs: repeat(cache.probs, C),
  };
  const g = big.probs.slice();
  for (let r = 0; r < m; r++) g[r * C + (labels[r] as number)] = (g[r * C + (labels[r] as number)] as number) - 1;
  const deltas = model.backward(big, g);
  return { labels, layers: deltas.map((outputGrads, l) => ({ inputs: big.inputs[l] as Float64Array, outputGrads })) };
}
