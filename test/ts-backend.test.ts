// The pure-TypeScript backend against independent float64 references written plainly here:
// naive triple loops, materialised gradients, explicit products of the Jacobians A_k.
import { describe, expect, it } from 'vitest';
import {
  FACTOR_DENSE,
  FACTOR_IN,
  FACTOR_OUT,
  type Distribution,
  type KroneckerArgs,
  type PropagateArgs,
} from '../lib/backend/surface.js';
import { dgemm, sgemm } from '../lib/backend/ts/gemm.js';
import { createTsBackend } from '../lib/backend/ts/index.js';
import { philox4x32, seedKey } from '../lib/backend/ts/philox.js';
import { projectDense, projectKronecker } from '../lib/backend/ts/projection.js';

const backend = createTsBackend();

// --- helpers ------------------------------------------------------------------------------------

/** Deterministic test data: mulberry32 uniforms and Box–Muller normals. */
function rng(seed: number): { uniform: () => number; normal: () => number } {
  let state = seed >>> 0;
  const uniform = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = (): number => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  return { uniform, normal };
}

function randomF32(length: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length }, () => scale * r.normal());
}

/** ‖x − ref‖ / ‖ref‖ over the listed indices (all when omitted). */
function relError(x: ArrayLike<number>, ref: ArrayLike<number>, indices?: number[]): number {
  let num = 0;
  let den = 0;
  const idx = indices ?? Array.from({ length: ref.length }, (_, i) => i);
  for (const i of idx) {
    num += (x[i]! - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

/** Row-major (rows × cols) float64 product of plain arrays. */
function matmul(a: ArrayLike<number>, b: ArrayLike<number>, rows: number, inner: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let sum = 0;
      for (let p = 0; p < inner; p++) sum += a[i * inner + p]! * b[p * cols + j]!;
      out[i * cols + j] = sum;
    }
  }
  return out;
}

function transpose(a: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = a[i * cols + j]!;
  return out;
}

function identity(k: number): Float64Array {
  const out = new Float64Array(k * k);
  for (let i = 0; i < k; i++) out[i * k + i] = 1;
  return out;
}

// --- gemm ---------------------------------------------------------------------------------------

describe('gemm', () => {
  // (m, n, k): the plain small-size loop; k deeper than one KC pass with edge tiles; m taller
  // than one MC block; n wider than one NC panel.
  const shapes: [number, number, number][] = [
    [3, 5, 2],
    [37, 71, 300],
    [133, 19, 40],
    [5, 1030, 7],
  ];
  const cases = shapes.flatMap((shape) =>
    [false, true].flatMap((transA) => [false, true].map((transB) => ({ shape, transA, transB }))),
  );

  function naive(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: ArrayLike<number>,
    aOff: number,
    lda: number,
    b: ArrayLike<number>,
    bOff: number,
    ldb: number,
    beta: number,
    c: ArrayLike<number>,
    cOff: number,
    ldc: number,
  ): Float64Array {
    const out = Float64Array.from(c);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let sum = 0;
        for (let p = 0; p < k; p++) {
          const av = transA ? a[aOff + p * lda + i]! : a[aOff + i * lda + p]!;
          const bv = transB ? b[bOff + j * ldb + p]! : b[bOff + p * ldb + j]!;
          sum += av * bv;
        }
        const at = cOff + i * ldc + j;
        out[at] = alpha * sum + (beta === 0 ? 0 : beta * c[at]!);
      }
    }
    return out;
  }

  for (const { shape, transA, transB } of cases) {
    const [m, n, k] = shape;
    const label = `${transA ? 'T' : 'N'}${transB ? 'T' : 'N'} m=${m} n=${n} k=${k}`;
    // op(A) is m × k: stored rows × cols = (k × m) when transposed; padding columns and a leading offset
    const aRows = transA ? k : m;
    const aCols = transA ? m : k;
    const bRows = transB ? n : k;
    const bCols = transB ? k : n;
    const lda = aCols + 3;
    const ldb = bCols + 2;
    const ldc = n + 5;
    const aOff = 7;
    const bOff = 4;
    const cOff = 3;

    it(`sgemm ${label} matches a float64 triple loop; C outside the block is untouched`, () => {
      const a = randomF32(aOff + aRows * lda, 1);
      const b = randomF32(bOff + bRows * ldb, 2);
      const c = randomF32(cOff + m * ldc, 3);
      const ref = naive(transA, transB, m, n, k, -1.5, a, aOff, lda, b, bOff, ldb, 0.5, c, cOff, ldc);
      sgemm(transA, transB, m, n, k, -1.5, a, aOff, lda, b, bOff, ldb, 0.5, c, cOff, ldc);
      expect(relError(c, ref)).toBeLessThan(1e-6);
      // untouched: everything before the offset and the padding columns, bit for bit
      for (let i = 0; i < c.length; i++) {
        const col = (i - cOff) % ldc;
        if (i < cOff || col >= n) expect(c[i]).toBe(Math.fround(ref[i]!));
      }
    });

    it(`dgemm ${label} matches to 1e-13; beta = 0 does not read C`, () => {
      const a = Float64Array.from(randomF32(aOff + aRows * lda, 4));
      const b = Float64Array.from(randomF32(bOff + bRows * ldb, 5));
      const c = new Float64Array(cOff + m * ldc).fill(NaN);
      const ref = naive(transA, transB, m, n, k, 2, a, aOff, lda, b, bOff, ldb, 0, c, cOff, ldc);
      dgemm(transA, transB, m, n, k, 2, a, aOff, lda, b, bOff, ldb, 0, c, cOff, ldc);
      const block: number[] = [];
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) block.push(cOff + i * ldc + j);
      expect(relError(c, ref, block)).toBeLessThan(1e-13);
    });
  }

  it('refuses operands that reach outside their arrays', () => {
    const a = new Float32Array(12);
    expect(() => sgemm(false, false, 3, 4, 4, 1, a, 0, 4, a, 0, 4, 0, a, 0, 4)).toThrow(
      'gemm: B (4 × 4, offset 0, ld 4) reaches element 15, but its array has length 12',
    );
    expect(() => sgemm(false, false, 2, 2, 2, 1, a, 0, 1, a, 0, 2, 0, a, 0, 2)).toThrow(/leading dimension must be ≥ 2, got 1/);
  });
});

// --- projection ---------------------------------------------------------------------------------

/** One projection entry, straight from the formula in surface.ts's ProjectionKey. */
function entry(seed: number, block: number, factor: number, distribution: Distribution, rows: number, r: number, c: number): number {
  const [k0, k1] = seedKey(seed);
  const words = new Uint32Array(4);
  philox4x32(c, r, block, factor, k0, k1, words);
  const v =
    distribution === 'gaussian'
      ? Math.sqrt(-2 * Math.log((words[0]! + 1) * 2 ** -32)) * Math.cos(6.283185307179586 * words[1]! * 2 ** -32)
      : words[0]! & 1
        ? -1
        : 1;
  return Math.fround(v / Math.sqrt(rows));
}

describe('projectionMatrix', () => {
  it('is the ProjectionKey formula, entry for entry, with a seed beyond 2^32', () => {
    const seed = 2 ** 40 + 12345;
    for (const distribution of ['gaussian', 'rademacher'] as const) {
      const rows = 9;
      const cols = 13;
      const m = backend.projectionMatrix({ seed, block: 3, factor: FACTOR_OUT, distribution }, rows, cols);
      expect(m.length).toBe(rows * cols);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) expect(m[r * cols + c]).toBe(entry(seed, 3, FACTOR_OUT, distribution, rows, r, c));
      }
    }
  });

  it('differs between factors and blocks', () => {
    const key = { seed: 7, block: 0, factor: FACTOR_IN, distribution: 'gaussian' } as const;
    const base = backend.projectionMatrix(key, 4, 4);
    expect(backend.projectionMatrix({ ...key, factor: FACTOR_OUT }, 4, 4)).not.toEqual(base);
    expect(backend.projectionMatrix({ ...key, block: 1 }, 4, 4)).not.toEqual(base);
  });
});

interface KronCase {
  name: string;
  distribution: Distribution;
  n: number;
  tokens: number;
  dIn: number;
  dOut: number;
  bias: boolean;
  kIn: number;
  kOut: number;
}

/** Per-example weight gradients Σ_τ δ_τ ã_τᵀ (dOut × (dIn + bias)), materialised in float64. */
function weightGradients(kc: KronCase, inputs: Float32Array, outputGrads: Float32Array): Float64Array[] {
  const width = kc.dIn + (kc.bias ? 1 : 0);
  const grads: Float64Array[] = [];
  for (let e = 0; e < kc.n; e++) {
    const g = new Float64Array(kc.dOut * width);
    for (let t = 0; t < kc.tokens; t++) {
      const a = (e * kc.tokens + t) * kc.dIn;
      const d = (e * kc.tokens + t) * kc.dOut;
      for (let o = 0; o < kc.dOut; o++) {
        for (let c = 0; c < width; c++) g[o * width + c]! += outputGrads[d + o]! * (c < kc.dIn ? inputs[a + c]! : 1);
      }
    }
    grads.push(g);
  }
  return grads;
}

/** R_out ∇W R_inᵀ with both factors generated whole. */
function kroneckerReference(kc: KronCase, seed: number, block: number, grads: Float64Array[]): Float64Array[] {
  const width = kc.dIn + (kc.bias ? 1 : 0);
  const rIn = backend.projectionMatrix({ seed, block, factor: FACTOR_IN, distribution: kc.distribution }, kc.kIn, width);
  const rOut = backend.projectionMatrix({ seed, block, factor: FACTOR_OUT, distribution: kc.distribution }, kc.kOut, kc.dOut);
  return grads.map((g) => matmul(matmul(rOut, g, kc.kOut, kc.dOut, width), transpose(rIn, kc.kIn, width), kc.kOut, width, kc.kIn));
}

describe('projectKronecker', () => {
  const cases: KronCase[] = [
    { name: 'no bias, one token', distribution: 'gaussian', n: 5, tokens: 1, dIn: 7, dOut: 6, bias: false, kIn: 4, kOut: 3 },
    { name: 'bias, three tokens', distribution: 'gaussian', n: 5, tokens: 3, dIn: 7, dOut: 6, bias: true, kIn: 4, kOut: 3 },
    { name: 'bias, rademacher', distribution: 'rademacher', n: 4, tokens: 1, dIn: 20, dOut: 3, bias: true, kIn: 2, kOut: 5 },
    { name: 'larger, packed products', distribution: 'gaussian', n: 6, tokens: 9, dIn: 40, dOut: 33, bias: true, kIn: 16, kOut: 12 },
  ];
  const seed = 2024;
  const block = 5;
  const ldExtra = 6;
  const offset = 2;

  for (const kc of cases) {
    for (const form of ['factors', 'gradient'] as const) {
      it(`${form}: ${kc.name} equals R_out ∇W R_inᵀ of the materialised gradient`, async () => {
        const inputs = randomF32(kc.n * kc.tokens * kc.dIn, 11);
        const outputGrads = randomF32(kc.n * kc.tokens * kc.dOut, 12);
        const grads = weightGradients(kc, inputs, outputGrads);
        const ref = kroneckerReference(kc, seed, block, grads);
        const width = kc.kOut * kc.kIn;
        const ldOut = width + ldExtra;
        const out = new Float32Array(kc.n * ldOut).fill(-9);
        const args: KroneckerArgs = {
          seed,
          block,
          distribution: kc.distribution,
          form,
          n: kc.n,
          tokens: form === 'factors' ? kc.tokens : 1,
          dIn: kc.dIn,
          dOut: kc.dOut,
          bias: kc.bias,
          kIn: kc.kIn,
          kOut: kc.kOut,
          inputs: form === 'factors' ? inputs : Float32Array.from(grads.flatMap((g) => Array.from(g))),
          outputGrads: form === 'factors' ? outputGrads : new Float32Array(0),
          out,
          ldOut,
          offset,
        };
        await backend.projectKronecker(args);
        for (let e = 0; e < kc.n; e++) {
          const row = out.subarray(e * ldOut + offset, e * ldOut + offset + width);
          expect(relError(row, ref[e]!)).toBeLessThan(1e-6);
          for (let j = 0; j < ldOut; j++) if (j < offset || j >= offset + width) expect(out[e * ldOut + j]).toBe(-9);
        }
        // the same in batches of one or two examples
        const batched = new Float32Array(kc.n * ldOut).fill(-9);
        projectKronecker({ ...args, out: batched }, 2 * kc.tokens * (kc.kIn + kc.kOut + kc.dOut));
        expect(relError(batched, out)).toBeLessThan(1e-6);
      });
    }
  }

  // JL: with independent factors of variance 1/k, ⟨Rg1, Rg2⟩ is unbiased for ⟨g1, g2⟩.
  for (const distribution of ['gaussian', 'rademacher'] as const) {
    it(`${distribution}: projected inner products average to the exact one (k = 64 × 64)`, async () => {
      const dIn = 24;
      const dOut = 16;
      const k = 64;
      const r = rng(99);
      const a1 = Array.from({ length: dIn }, () => r.normal());
      const a2 = a1.map((x) => Math.fround(0.6 * x + 0.8 * r.normal()));
      const d1 = Array.from({ length: dOut }, () => r.normal());
      const d2 = d1.map((x) => Math.fround(0.6 * x + 0.8 * r.normal()));
      const inputs = Float32Array.from([...a1, ...a2]);
      const outputGrads = Float32Array.from([...d1, ...d2]);
      const x1 = Array.from(inputs.subarray(0, dIn));
      const x2 = Array.from(inputs.subarray(dIn));
      const y1 = Array.from(outputGrads.subarray(0, dOut));
      const y2 = Array.from(outputGrads.subarray(dOut));
      const dot = (u: number[], v: number[]): number => u.reduce((s, ui, i) => s + ui * v[i]!, 0);

      // moments of ⟨Rx, Ry⟩ for one factor (R: k rows, entries of variance 1/k):
      // mean ⟨x,y⟩, variance (‖x‖²‖y‖² + ⟨x,y⟩² − [Rademacher] 2 Σ x_i² y_i²) / k
      const moments = (x: number[], y: number[]): [number, number] => {
        const m = dot(x, y);
        const fourth = distribution === 'rademacher' ? 2 * x.reduce((s, xi, i) => s + xi * xi * y[i]! * y[i]!, 0) : 0;
        return [m, (dot(x, x) * dot(y, y) + m * m - fourth) / k];
      };
      const [mIn, vIn] = moments(x1, x2);
      const [mOut, vOut] = moments(y1, y2);
      const exact = mIn * mOut; // = ⟨δ1 a1ᵀ, δ2 a2ᵀ⟩
      const variance = (vIn + mIn * mIn) * (vOut + mOut * mOut) - exact * exact; // independent factors

      const seeds = 400;
      const out = new Float32Array(2 * k * k);
      let sum = 0;
      for (let s = 0; s < seeds; s++) {
        await backend.projectKronecker({
          seed: 1000 + s,
          block: 0,
          distribution,
          form: 'factors',
          n: 2,
          tokens: 1,
          dIn,
          dOut,
          bias: false,
          kIn: k,
          kOut: k,
          inputs,
          outputGrads,
          out,
          ldOut: k * k,
          offset: 0,
        });
        let ip = 0;
        for (let j = 0; j < k * k; j++) ip += out[j]! * out[k * k + j]!;
        sum += ip;
      }
      const standardError = Math.sqrt(variance / seeds);
      expect(standardError).toBeLessThan(0.05 * Math.abs(exact)); // the test can tell a wrong scale
      expect(Math.abs(sum / seeds - exact)).toBeLessThan(5 * standardError);
    });
  }
});

describe('projectDense', () => {
  it('equals R g with R generated whole, in many column tiles and in the default one', async () => {
    const n = 4;
    const d = 300;
    const k = 16;
    const seed = 31;
    const block = 2;
    const grads = randomF32(n * d, 21);
    const r = backend.projectionMatrix({ seed, block, factor: FACTOR_DENSE, distribution: 'gaussian' }, k, d);
    const ref = matmul(grads, transpose(r, k, d), n, d, k);
    const ldOut = k + 3;
    const offset = 1;
    const refOut = new Float64Array(n * ldOut).fill(5);
    for (let e = 0; e < n; e++) for (let j = 0; j < k; j++) refOut[e * ldOut + offset + j] = ref[e * k + j]!;

    const out = new Float32Array(n * ldOut).fill(5);
    const args = { seed, block, distribution: 'gaussian' as const, n, d, k, grads, out, ldOut, offset };
    await backend.projectDense(args);
    expect(relError(out, refOut)).toBeLessThan(1e-6);

    const tiled = new Float32Array(n * ldOut).fill(5);
    projectDense({ ...args, out: tiled }, k * 37); // 37-column tiles, the last one partial
    expect(relError(tiled, refOut)).toBeLessThan(1e-6);
    for (let e = 0; e < n; e++) {
      expect(tiled[e * ldOut]).toBe(5);
      expect(tiled[e * ldOut + offset + k]).toBe(5);
    }
  });
});

// --- propagate ----------------------------------------------------------------------------------

interface Problem {
  dim: number;
  steps: number;
  rows: Float32Array;
  stepRows: Int32Array;
  weights: Float64Array;
  curvature: Float32Array | null;
  stepCurvature: Int32Array | null;
  curvatureWeights: Float64Array | null;
  lr: Float64Array;
  decay: Float64Array;
}

const BATCHES = [3, 2, 0, 4, 1, 3];
const CURVATURE_BATCHES = [2, 3, 1, 0, 2, 2];

function prefix(counts: number[]): Int32Array {
  const out = new Int32Array(counts.length + 1);
  counts.forEach((c, i) => (out[i + 1] = out[i]! + c));
  return out;
}

function makeProblem(weighting: 'mean' | 'sum' | 'custom', lambda: number, withCurvature: boolean): Problem {
  const dim = 14;
  const steps = BATCHES.length;
  const r = rng(7);
  const stepRows = prefix(BATCHES);
  const nRows = stepRows[steps]!;
  const weights = new Float64Array(nRows);
  for (let s = 0; s < steps; s++) {
    for (let i = stepRows[s]!; i < stepRows[s + 1]!; i++) {
      weights[i] = weighting === 'mean' ? 1 / BATCHES[s]! : weighting === 'sum' ? 1 : 0.2 + 1.8 * r.uniform();
    }
  }
  const lr = Float64Array.from(BATCHES, () => 0.05 + 0.25 * r.uniform());
  const decay = lr.map((eta) => 1 - eta * lambda);
  const stepCurvature = withCurvature ? prefix(CURVATURE_BATCHES) : null;
  const nCurvature = stepCurvature ? stepCurvature[steps]! : 0;
  return {
    dim,
    steps,
    rows: randomF32(nRows * dim, 8, 0.5),
    stepRows,
    weights,
    curvature: withCurvature ? randomF32(nCurvature * dim, 9, 0.5) : null,
    stepCurvature,
    curvatureWeights: withCurvature ? Float64Array.from({ length: nCurvature }, () => 0.1 + r.uniform()) : null,
    lr,
    decay,
  };
}

/**
 * Brute force, in float64, per block: A_t = c_t I − η_t Σ_z w_z g gᵀ (over the curvature rows
 * when given), DVEmb^{(t)}(z) = η_t w_z · A_{T−1} ⋯ A_{t+1} g_t(z), final P = A_{T−1} ⋯ A_0.
 */
function bruteForce(p: Problem, blocks: [number, number][]): { embeddings: Float64Array; propagators: Float64Array[] } {
  const embeddings = new Float64Array(p.rows.length);
  const propagators: Float64Array[] = [];
  for (const [off, k] of blocks) {
    const slice = (data: Float32Array, row: number): number[] => Array.from(data.subarray(row * p.dim + off, row * p.dim + off + k));
    const jacobians: Float64Array[] = [];
    for (let t = 0; t < p.steps; t++) {
      const a = identity(k).map((x) => x * p.decay[t]!);
      const [from, to, data, w] = p.curvature
        ? [p.stepCurvature![t]!, p.stepCurvature![t + 1]!, p.curvature, p.curvatureWeights!]
        : [p.stepRows[t]!, p.stepRows[t + 1]!, p.rows, p.weights];
      for (let z = from; z < to; z++) {
        const g = slice(data, z);
        for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) a[i * k + j]! -= p.lr[t]! * w[z]! * g[i]! * g[j]!;
      }
      jacobians.push(a);
    }
    for (let t = 0; t < p.steps; t++) {
      let product = identity(k);
      for (let u = p.steps - 1; u > t; u--) product = matmul(product, jacobians[u]!, k, k, k);
      for (let z = p.stepRows[t]!; z < p.stepRows[t + 1]!; z++) {
        const e = matmul(product, slice(p.rows, z), k, k, 1);
        for (let i = 0; i < k; i++) embeddings[z * p.dim + off + i] = p.lr[t]! * p.weights[z]! * e[i]!;
      }
    }
    let total = identity(k);
    for (let u = p.steps - 1; u >= 0; u--) total = matmul(total, jacobians[u]!, k, k, k);
    propagators.push(total);
  }
  return { embeddings, propagators };
}

const SENTINEL = 7;

function propagateArgs(p: Problem, blocks: [number, number][], precision: 'fp32' | 'fp64'): PropagateArgs {
  const size = blocks.reduce((s, [, k]) => s + k * k, 0);
  const propagators = precision === 'fp64' ? new Float64Array(size) : new Float32Array(size);
  let at = 0;
  for (const [, k] of blocks) {
    propagators.set(identity(k), at);
    at += k * k;
  }
  return {
    precision,
    dim: p.dim,
    blocks: Int32Array.from(blocks.flat()),
    propagators,
    steps: p.steps,
    rows: p.rows,
    stepRows: p.stepRows,
    weights: p.weights,
    curvature: p.curvature,
    stepCurvature: p.stepCurvature,
    curvatureWeights: p.curvatureWeights,
    lr: p.lr,
    decay: p.decay,
    embeddings: new Float32Array(p.rows.length).fill(SENTINEL),
  };
}

/** Covered (row, column) positions of the embeddings, and the uncovered ones. */
function coverage(p: Problem, blocks: [number, number][]): { covered: number[]; uncovered: number[] } {
  const covered: number[] = [];
  const uncovered: number[] = [];
  for (let z = 0; z < p.rows.length / p.dim; z++) {
    for (let j = 0; j < p.dim; j++) {
      (blocks.some(([off, k]) => j >= off && j < off + k) ? covered : uncovered).push(z * p.dim + j);
    }
  }
  return { covered, uncovered };
}

describe('propagate', () => {
  // per-block with two columns left out of every block (5 and 13), and one global block
  const layouts: Record<string, [number, number][]> = {
    'per-block': [
      [0, 5],
      [6, 7],
    ],
    global: [[0, 14]],
  };
  const variants = [
    { weighting: 'mean', lambda: 0, curvature: false },
    { weighting: 'sum', lambda: 0.5, curvature: false },
    { weighting: 'custom', lambda: 0.1, curvature: false },
    { weighting: 'custom', lambda: 0.2, curvature: true },
  ] as const;

  for (const [layout, blocks] of Object.entries(layouts)) {
    for (const v of variants) {
      const label = `${layout}, ${v.weighting} weights, λ = ${v.lambda}${v.curvature ? ', curvature rows' : ''}`;
      const p = makeProblem(v.weighting, v.lambda, v.curvature);
      const ref = bruteForce(p, blocks);
      const { covered, uncovered } = coverage(p, blocks);

      it(`fp32 ${label}: matches the explicit Jacobian product to 1e-5`, async () => {
        const args = propagateArgs(p, blocks, 'fp32');
        expect(await backend.propagate(args)).toBe(-1);
        expect(relError(args.embeddings, ref.embeddings, covered)).toBeLessThan(1e-5);
        for (const i of uncovered) expect(args.embeddings[i]).toBe(SENTINEL);
        let at = 0;
        for (const [b, [, k]] of blocks.entries()) {
          expect(relError(args.propagators.subarray(at, at + k * k), ref.propagators[b]!)).toBeLessThan(1e-5);
          at += k * k;
        }
      });

      it(`fp64 ${label}: P to 1e-10, embeddings to float32 rounding`, async () => {
        const args = propagateArgs(p, blocks, 'fp64');
        expect(await backend.propagate(args)).toBe(-1);
        const scale = Math.max(...covered.map((i) => Math.abs(ref.embeddings[i]!)));
        for (const i of covered) {
          const bound = 2 ** -24 * Math.abs(ref.embeddings[i]!) + 1e-10 * scale; // one float32 rounding
          expect(Math.abs(args.embeddings[i]! - ref.embeddings[i]!)).toBeLessThanOrEqual(bound);
        }
        let at = 0;
        for (const [b, [, k]] of blocks.entries()) {
          expect(relError(args.propagators.subarray(at, at + k * k), ref.propagators[b]!)).toBeLessThan(1e-10);
          at += k * k;
        }
      });
    }
  }

  for (const withCurvature of [false, true]) {
    for (const precision of ['fp32', 'fp64'] as const) {
      const label = `${precision}${withCurvature ? ' with curvature' : ''}`;
      it(`${label}: the later half, then the earlier half with its P, equals one call`, async () => {
        const blocks = layouts['per-block']!;
        const p = makeProblem('custom', 0.3, withCurvature);
        const whole = propagateArgs(p, blocks, precision);
        expect(await backend.propagate(whole)).toBe(-1);

        const split = propagateArgs(p, blocks, precision);
        const h = 3;
        const later: PropagateArgs = {
          ...split,
          steps: p.steps - h,
          stepRows: p.stepRows.subarray(h),
          stepCurvature: p.stepCurvature?.subarray(h) ?? null,
          lr: p.lr.subarray(h),
          decay: p.decay.subarray(h),
        };
        const earlier: PropagateArgs = {
          ...split,
          steps: h,
          stepRows: p.stepRows.subarray(0, h + 1),
          stepCurvature: p.stepCurvature?.subarray(0, h + 1) ?? null,
          lr: p.lr.subarray(0, h),
          decay: p.decay.subarray(0, h),
        };
        expect(await backend.propagate(later)).toBe(-1);
        expect(await backend.propagate(earlier)).toBe(-1);
        expect(split.embeddings).toEqual(whole.embeddings);
        expect(split.propagators).toEqual(whole.propagators);
      });
    }
  }

  it('stops at the step whose embeddings are not finite, leaving earlier steps unwritten', async () => {
    for (const [layout, blocks] of Object.entries(layouts)) {
      const p = makeProblem('mean', 0, false);
      const args = propagateArgs(p, blocks, 'fp32');
      args.rows[p.stepRows[3]! * p.dim + 8] = NaN; // step 3, a column of every layout's last block
      expect(await backend.propagate(args), layout).toBe(3);
      for (let i = 0; i < p.stepRows[3]! * p.dim; i++) expect(args.embeddings[i]).toBe(SENTINEL);
    }
  });

  it('reports an infinite learning rate at its step, and a step that poisoned only P at that step', async () => {
    const blocks = layouts.global!;
    const p = makeProblem('sum', 0, true);
    p.lr = p.lr.slice();
    p.lr[4] = Infinity;
    expect(await backend.propagate(propagateArgs(p, blocks, 'fp64'))).toBe(4);

    // a NaN curvature row of the last walked step leaves every E finite but poisons P
    const q = makeProblem('sum', 0, true);
    q.curvature = q.curvature!.slice();
    q.curvature[q.stepCurvature![0]! * q.dim + 2] = NaN;
    expect(await backend.propagate(propagateArgs(q, blocks, 'fp32'))).toBe(0);

    // one at step 4 first shows in E of step 3; P, already bad, moves the blame back to step 4
    const u = makeProblem('sum', 0, true);
    u.curvature = u.curvature!.slice();
    u.curvature[u.stepCurvature![4]! * u.dim + 2] = NaN;
    expect(await backend.propagate(propagateArgs(u, blocks, 'fp64'))).toBe(4);
  });
});

// --- score, info, argument checks ---------------------------------------------------------------

describe('score and the rest of the surface', () => {
  it('score is embeddings · testsᵀ', async () => {
    const n = 9;
    const m = 6;
    const dim = 33;
    const embeddings = randomF32(n * dim, 41);
    const tests = randomF32(m * dim, 42);
    const out = new Float32Array(n * m);
    await backend.score({ n, m, dim, embeddings, tests, out });
    expect(relError(out, matmul(embeddings, transpose(tests, m, dim), n, dim, m))).toBeLessThan(1e-6);
  });

  it('describes itself', () => {
    expect(backend.info()).toEqual({
      backend: 'ts',
      blas: 'TypeScript kernels (lib/backend/ts/gemm.ts), single-threaded',
      threads: 1,
    });
    expect(() => backend.setThreads(4)).not.toThrow();
  });

  it('names the field, the expectation and the value of a bad argument', async () => {
    const kron: KroneckerArgs = {
      seed: 1,
      block: 0,
      distribution: 'gaussian',
      form: 'factors',
      n: 5,
      tokens: 2,
      dIn: 65,
      dOut: 3,
      bias: true,
      kIn: 2,
      kOut: 2,
      inputs: new Float32Array(640),
      outputGrads: new Float32Array(30),
      out: new Float32Array(20),
      ldOut: 4,
      offset: 0,
    };
    await expect(backend.projectKronecker(kron)).rejects.toThrow('projectKronecker: inputs.length must be n*tokens*dIn = 650, got 640');
    await expect(backend.projectKronecker({ ...kron, inputs: new Float32Array(650), ldOut: 3 })).rejects.toThrow(
      'offset + kOut*kIn = 4 must be ≤ ldOut = 3',
    );
    await expect(backend.projectKronecker({ ...kron, inputs: new Float64Array(650) as unknown as Float32Array })).rejects.toThrow(
      TypeError,
    );
    const dense = { block: 0, distribution: 'gaussian' as const, n: 1, d: 1, k: 1, ldOut: 1, offset: 0 };
    await expect(backend.projectDense({ ...dense, seed: -1, grads: new Float32Array(1), out: new Float32Array(1) })).rejects.toThrow(
      'projectDense: seed must be an integer in [0, 2^53), got -1',
    );

    const p = makeProblem('mean', 0, false);
    const good = propagateArgs(p, [[0, 14]], 'fp32');
    await expect(backend.propagate({ ...good, propagators: new Float32Array(195) })).rejects.toThrow(
      'propagate: propagators.length must be Σ k_b² = 196, got 195',
    );
    await expect(backend.propagate({ ...good, propagators: new Float64Array(196) })).rejects.toThrow(
      'propagate: propagators must be a Float32Array, got a Float64Array',
    );
    await expect(backend.propagate({ ...good, blocks: Int32Array.from([10, 5]) })).rejects.toThrow(
      'offset + k ≤ dim = 14; got offset 10, k 5',
    );
    await expect(backend.propagate({ ...good, stepRows: Int32Array.from([0, 3, 2, 5, 6, 9, 13]) })).rejects.toThrow(
      'stepRows must be non-decreasing, got stepRows[1] = 3 > stepRows[2] = 2',
    );
    await expect(backend.propagate({ ...good, lr: new Float64Array(5) })).rejects.toThrow('lr.length must be steps = 6, got 5');
    await expect(backend.propagate({ ...good, curvatureWeights: new Float64Array(1) })).rejects.toThrow(
      'propagate: curvatureWeights must be null when curvature is null, got a Float64Array',
    );
    const overlapping = { ...good, blocks: Int32Array.from([0, 8, 6, 8]), propagators: new Float32Array(128) };
    await expect(backend.propagate(overlapping)).rejects.toThrow(
      'blocks must cover disjoint column ranges, got column 6 in two blocks',
    );
    await expect(backend.propagate({ ...good, embeddings: new Float32Array(good.rows.buffer) })).rejects.toThrow(
      'propagate: embeddings must not share memory with rows',
    );
    const scores = new Float32Array(4);
    const aliased = { n: 2, m: 2, dim: 1, embeddings: scores.subarray(2), tests: new Float32Array(2), out: scores };
    await expect(backend.score(aliased)).rejects.toThrow(
      'score: out must not share memory with embeddings',
    );
    expect(() => backend.setThreads(0)).toThrow('setThreads: threads must be an integer in [1, 1024], got 0');
  });
});
