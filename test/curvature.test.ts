// Curvature products of the reference MLP against independent references: central finite
// differences of gradients (tanh only: smooth), symmetry and PSD of the GGN, the GGN = Hessian
// identity for logistic regression, and the sampled-label Fisher's expectation.
import { describe, expect, it } from 'vitest';
import { exactGGN, exactHessian, ggnVectorProduct, hessianVectorProduct, hessianVectorProducts, sampledLabelFactors, type WeightedBatch } from '../lib/eval/curvature.js';
import { MLP } from '../lib/eval/mlp.js';
import { Rng } from '../lib/eval/rng.js';
import { gaussian, relErr, rng } from './helpers.js';

function batch(seed: number, n: number, d: number, C: number): WeightedBatch {
  const r = rng(seed);
  return {
    x: Float64Array.from({ length: n * d }, () => gaussian(r)),
    y: Int32Array.from({ length: n }, () => Math.floor(r() * C)),
    n,
    weights: Float64Array.from({ length: n }, () => 0.2 + r()),
  };
}

function direction(seed: number, p: number): Float64Array {
  const r = rng(seed);
  return Float64Array.from({ length: p }, () => gaussian(r));
}

/** (∇L(θ + εv) − ∇L(θ − εv)) / 2ε of the weighted batch loss. */
function fdHvp(model: MLP, b: WeightedBatch, v: Float64Array, eps: number): Float64Array {
  const theta = model.parameters();
  const at = (s: number) => {
    const m = model.clone();
    m.setParameters(theta.map((t, j) => t + s * eps * v[j]!));
    return m.gradient(b.x, b.y, b.n, b.weights);
  };
  const plus = at(1);
  const minus = at(-1);
  return plus.map((g, j) => (g - minus[j]!) / (2 * eps));
}

describe('curvature products', () => {
  it('Hessian-vector products match central differences of gradients (tanh MLP)', () => {
    const model = new MLP({ widths: [5, 7, 6, 4], activation: 'tanh', seed: 3 });
    const b = batch(1, 9, 5, 4);
    for (const seed of [10, 11, 12]) {
      const v = direction(seed, model.numParams);
      const hv = hessianVectorProduct(model, b, v);
      expect(relErr(hv, fdHvp(model, b, v, 1e-5))).toBeLessThan(1e-7);
    }
  });

  it('the Hessian is symmetric, and batched products equal single ones bit for bit', () => {
    const model = new MLP({ widths: [4, 5, 3], activation: 'tanh', seed: 5 });
    const b = batch(2, 6, 4, 3);
    const p = model.numParams;
    const H = exactHessian(model, b);
    let asym = 0;
    let norm = 0;
    for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) {
      asym = Math.max(asym, Math.abs(H[i * p + j]! - H[j * p + i]!));
      norm = Math.max(norm, Math.abs(H[i * p + j]!));
    }
    expect(asym).toBeLessThan(1e-12 * norm);
    const vs = [direction(1, p), direction(2, p)];
    const many = hessianVectorProducts(model, b, vs);
    expect(Array.from(many[1]!)).toEqual(Array.from(hessianVectorProduct(model, b, vs[1]!)));
  });

  it('GGN products equal Jᵀ S J v built from finite-difference Jacobians; the GGN is symmetric PSD', () => {
    const model = new MLP({ widths: [4, 6, 3], activation: 'tanh', seed: 7 });
    const b = batch(3, 5, 4, 3);
    const p = model.numParams;
    const C = 3;
    const w = b.weights as Float64Array;
    // Reference: J_i by central differences of the logits, S_i from the softmax.
    const theta = model.parameters();
    const logitsAt = (t: Float64Array) => {
      const m = model.clone();
      m.setParameters(t);
      return m.forward(b.x, b.n).logits;
    };
    const J = new Float64Array(b.n * C * p); // (i, c, j)
    const eps = 1e-6;
    for (let j = 0; j < p; j++) {
      const tp = theta.slice();
      const tm = theta.slice();
      tp[j]! += eps;
      tm[j]! -= eps;
      const lp = logitsAt(tp);
      const lm = logitsAt(tm);
      for (let r = 0; r < b.n * C; r++) J[r * p + j] = (lp[r]! - lm[r]!) / (2 * eps);
    }
    const probs = model.forward(b.x, b.n).probs;
    const v = direction(9, p);
    const ref = new Float64Array(p);
    for (let i = 0; i < b.n; i++) {
      const jv = Array.from({ length: C }, (_, c) => {
        let s = 0;
        for (let j = 0; j < p; j++) s += J[(i * C + c) * p + j]! * v[j]!;
        return s;
      });
      const pi = Array.from({ length: C }, (_, c) => probs[i * C + c]!);
      const dot = pi.reduce((a, q, c) => a + q * jv[c]!, 0);
      const u = pi.map((q, c) => q * (jv[c]! - dot));
      for (let c = 0; c < C; c++) for (let j = 0; j < p; j++) ref[j]! += w[i]! * J[(i * C + c) * p + j]! * u[c]!;
    }
    expect(relErr(ggnVectorProduct(model, b, v), ref)).toBeLessThan(1e-7);
    const G = exactGGN(model, b);
    for (let i = 0; i < p; i++) for (let j = 0; j < i; j++) expect(Math.abs(G[i * p + j]! - G[j * p + i]!)).toBeLessThan(1e-13);
    for (const seed of [21, 22, 23, 24]) {
      const u = direction(seed, p);
      const gu = ggnVectorProduct(model, b, u);
      expect(u.reduce((a, x, j) => a + x * gu[j]!, 0)).toBeGreaterThanOrEqual(-1e-14);
    }
  });

  it('for logistic regression (widths [d, C]) the Hessian equals the GGN and matches finite differences', () => {
    const model = new MLP({ widths: [6, 4], seed: 2 });
    const b = batch(4, 8, 6, 4);
    const v = direction(5, model.numParams);
    const hv = hessianVectorProduct(model, b, v);
    expect(relErr(hv, ggnVectorProduct(model, b, v))).toBeLessThan(1e-13);
    expect(relErr(hv, fdHvp(model, b, v, 1e-5))).toBeLessThan(1e-7);
  });

  it('ReLU products are analytic: they match differences with steps too small to cross a kink', () => {
    const model = new MLP({ widths: [5, 8, 6, 3], activation: 'relu', seed: 4 });
    const b = batch(6, 7, 5, 3);
    // Within one linear region the network is smooth in θ; make sure no pre-activation is near 0.
    const pre = model.forward(b.x, b.n).pre.slice(0, -1);
    expect(Math.min(...pre.flatMap((z) => Array.from(z, Math.abs)))).toBeGreaterThan(1e-4);
    const v = direction(8, model.numParams);
    const hv = hessianVectorProduct(model, b, v);
    expect(relErr(hv, fdHvp(model, b, v, 1e-8))).toBeLessThan(1e-5);
    // σ″ = 0, yet H ≠ G: the hidden weights couple through the residual p − y.
    expect(relErr(hv, ggnVectorProduct(model, b, v))).toBeGreaterThan(1e-3);
  });

  it('sampled-label gradients: E[g_ŷ g_ŷᵀ] v ≈ GGN v (statistical)', () => {
    const model = new MLP({ widths: [4, 5, 3], activation: 'tanh', seed: 8 });
    const n = 3;
    const b = batch(7, n, 4, 3);
    const w = Float64Array.from({ length: n }, () => 1 / n);
    const v = direction(3, model.numParams);
    const exact = ggnVectorProduct(model, { ...b, weights: w }, v);
    const draws = 20000;
    const { layers, labels } = sampledLabelFactors(model, b.x, n, draws, new Rng('fisher-test'));
    expect(labels.length).toBe(n * draws);
    const p = model.numParams;
    const est = new Float64Array(p);
    const g = new Float64Array(p);
    for (let r = 0; r < n * draws; r++) {
      g.fill(0);
      model.layers.forEach(({ dIn, dOut, wOffset, bOffset }, l) => {
        const { inputs, outputGrads } = layers[l]!;
        for (let o = 0; o < dOut; o++) {
          const d = outputGrads[r * dOut + o]!;
          for (let k = 0; k < dIn; k++) g[wOffset + o * dIn + k] = d * inputs[r * dIn + k]!;
          g[bOffset + o] = d;
        }
      });
      const s = (g.reduce((a, x, j) => a + x * v[j]!, 0) * w[Math.floor(r / draws)]!) / draws;
      for (let j = 0; j < p; j++) est[j]! += s * g[j]!;
    }
    expect(relErr(est, exact)).toBeLessThan(0.05);
  });
});
