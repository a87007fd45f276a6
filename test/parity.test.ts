// Native vs TypeScript: the same matrices (Rademacher bit for bit, Gaussian within one float32
// ulp), and the same projections, recursions and scores (normwise relative error ≤ 1e-5 fp32).
import { describe, expect, it } from 'vitest';
import { loadBackend, type LoadedBackend } from '../lib/backend/loader.js';
import { FACTOR_DENSE, FACTOR_IN, FACTOR_OUT, type Backend, type PropagateArgs } from '../lib/backend/surface.js';
import { randomF32, relErr, rng, ulps } from './helpers.js';

let native: LoadedBackend | null = null;
let reason = '';
try {
  native = loadBackend('native');
} catch (err) {
  reason = (err as Error).message.split('\n')[0]!;
}
const ts = loadBackend('ts').backend;

function propagateArgs(seed: number, precision: 'fp32' | 'fp64', global: boolean, withCurvature: boolean): PropagateArgs {
  const r = rng(seed);
  const blocksSizes = [16, 24, 8];
  const dim = 48;
  const blocks = global ? Int32Array.from([0, dim]) : Int32Array.from([0, 16, 16, 24, 40, 8]);
  const steps = 9;
  const stepRows = new Int32Array(steps + 1);
  for (let s = 0; s < steps; s++) stepRows[s + 1] = stepRows[s]! + 3 + (s % 4);
  const nRows = stepRows[steps]!;
  const size = global ? dim * dim : blocksSizes.reduce((a, k) => a + k * k, 0);
  const P = precision === 'fp64' ? new Float64Array(size) : new Float32Array(size);
  let at = 0;
  for (const k of global ? [dim] : blocksSizes) {
    for (let i = 0; i < k; i++) P[at + i * k + i] = 1;
    at += k * k;
  }
  const stepCurvature = withCurvature ? Int32Array.from(stepRows, (v) => 2 * v) : null;
  return {
    precision,
    dim,
    blocks,
    propagators: P,
    steps,
    rows: randomF32(nRows * dim, r, 0.4),
    stepRows,
    weights: Float64Array.from({ length: nRows }, () => 0.1 + 0.2 * r()),
    curvature: withCurvature ? randomF32(2 * nRows * dim, r, 0.3) : null,
    stepCurvature,
    curvatureWeights: withCurvature ? Float64Array.from({ length: 2 * nRows }, () => 0.1 + 0.2 * r()) : null,
    lr: Float64Array.from({ length: steps }, () => 0.05 + 0.1 * r()),
    decay: Float64Array.from({ length: steps }, () => 1 - 0.01 * r()),
    embeddings: new Float32Array(nRows * dim),
  };
}

function copyArgs(a: PropagateArgs): PropagateArgs {
  return { ...a, propagators: a.propagators.slice(), embeddings: new Float32Array(a.embeddings.length) };
}

describe.skipIf(!native)(`native (${native?.name ?? 'unavailable'}) vs TypeScript`, () => {
  const nb = native?.backend as Backend;

  it('generates the same projection matrices', () => {
    for (const seed of [0, 1, 2 ** 40 + 7]) {
      for (const factor of [FACTOR_DENSE, FACTOR_IN, FACTOR_OUT] as const) {
        const rad = { seed, block: 3, factor, distribution: 'rademacher' as const };
        expect(nb.projectionMatrix(rad, 17, 65)).toEqual(ts.projectionMatrix(rad, 17, 65));
        const gau = { ...rad, distribution: 'gaussian' as const };
        const a = nb.projectionMatrix(gau, 17, 65);
        const b = ts.projectionMatrix(gau, 17, 65);
        let worst = 0;
        for (let i = 0; i < a.length; i++) worst = Math.max(worst, ulps(a[i]!, b[i]!));
        expect(worst).toBeLessThanOrEqual(1);
      }
    }
  });

  it('projects Kronecker factors, raw gradients and dense gradients alike', async () => {
    const r = rng(5);
    const n = 6;
    const tokens = 3;
    const dIn = 20;
    const dOut = 12;
    const base = { seed: 77, block: 1, distribution: 'gaussian' as const, n, dIn, dOut, bias: true, kIn: 8, kOut: 4, ldOut: 40, offset: 3 };
    const factors = { ...base, form: 'factors' as const, tokens, inputs: randomF32(n * tokens * dIn, r), outputGrads: randomF32(n * tokens * dOut, r) };
    const outN = new Float32Array(n * 40);
    const outT = new Float32Array(n * 40);
    await nb.projectKronecker({ ...factors, out: outN });
    await ts.projectKronecker({ ...factors, out: outT });
    expect(relErr(outN, outT)).toBeLessThan(1e-6);
    const grad = { ...base, form: 'gradient' as const, tokens: 1, inputs: randomF32(n * dOut * (dIn + 1), r), outputGrads: new Float32Array(0) };
    await nb.projectKronecker({ ...grad, out: outN });
    await ts.projectKronecker({ ...grad, out: outT });
    expect(relErr(outN, outT)).toBeLessThan(1e-6);
    const dense = { seed: 5, block: 2, distribution: 'rademacher' as const, n, d: 3000, k: 32, grads: randomF32(n * 3000, r), ldOut: 32, offset: 0 };
    const dN = new Float32Array(n * 32);
    const dT = new Float32Array(n * 32);
    await nb.projectDense({ ...dense, out: dN });
    await ts.projectDense({ ...dense, out: dT });
    expect(relErr(dN, dT)).toBeLessThan(1e-6);
  });

  for (const precision of ['fp32', 'fp64'] as const) {
    for (const global of [false, true]) {
      for (const curvature of [false, true]) {
        it(`propagates alike (${precision}, ${global ? 'global' : 'per-block'}${curvature ? ', curvature rows' : ''})`, async () => {
          const args = propagateArgs(11, precision, global, curvature);
          const a = copyArgs(args);
          const b = copyArgs(args);
          expect(await nb.propagate(a)).toBe(-1);
          expect(await ts.propagate(b)).toBe(-1);
          const tol = precision === 'fp32' ? 1e-5 : 1e-12;
          expect(relErr(a.propagators, b.propagators)).toBeLessThan(tol);
          expect(relErr(a.embeddings, b.embeddings)).toBeLessThan(precision === 'fp32' ? 1e-5 : 1e-7);
        });
      }
    }
  }

  it('report the same step on NaN/Inf', async () => {
    const args = propagateArgs(3, 'fp32', false, false);
    args.lr[4] = 1e30;
    args.lr[6] = 1e30;
    const a = copyArgs(args);
    const b = copyArgs(args);
    const sa = await nb.propagate(a);
    expect(sa).toBeGreaterThanOrEqual(0);
    expect(await ts.propagate(b)).toBe(sa);
  });

  it('score alike', async () => {
    const r = rng(8);
    const args = { n: 300, m: 7, dim: 64, embeddings: randomF32(300 * 64, r), tests: randomF32(7 * 64, r) };
    const a = new Float32Array(300 * 7);
    const b = new Float32Array(300 * 7);
    await nb.score({ ...args, out: a });
    await ts.score({ ...args, out: b });
    expect(relErr(a, b)).toBeLessThan(1e-6);
  });

  it('reject bad arguments with a message naming the field', async () => {
    const args = propagateArgs(1, 'fp32', false, false);
    await expect(nb.propagate({ ...args, weights: new Float64Array(3) })).rejects.toThrow(/weights/);
    await expect(ts.propagate({ ...args, weights: new Float64Array(3) })).rejects.toThrow(/weights/);
  });
});

it.runIf(!native)('native backend unavailable here: parity tests skipped', () => {
  console.warn(`parity tests skipped: ${reason}`);
});

it.runIf(!!native)('the native crc32 (libdeflate) equals zlib.crc32, running value included', async () => {
  const { crc32 } = await import('node:zlib');
  const addon = (await import('../lib/backend/loader.js')).nativeAddon()!;
  const r = rng(17);
  for (const n of [0, 1, 7, 64, 1000, 1 << 20]) {
    const data = Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
    expect(addon.crc32(data)).toBe(crc32(data) >>> 0);
    expect(addon.crc32(data, 0xdeadbeef)).toBe(crc32(data, 0xdeadbeef) >>> 0);
  }
  expect(() => addon.crc32(new Float32Array(4) as unknown as Uint8Array)).toThrow(/Uint8Array/);
});
