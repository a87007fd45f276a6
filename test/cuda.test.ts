// The CUDA backend against the CPU one (the native addon, or pure TypeScript where it is not
// built): the same projection matrices (Rademacher bit for bit, Gaussian within one float32 ulp),
// and the same projections, recursions and scores up to the order of float sums. They run in the
// normal `npm test` wherever build/Release/dvemb_cuda.node loads and finds a GPU, and are skipped
// with the reason everywhere else (CI has no GPU).
import { afterEach, describe, expect, it } from 'vitest';
import { loadBackend, type LoadedBackend } from '../lib/backend/loader.js';
import {
  FACTOR_DENSE,
  FACTOR_IN,
  FACTOR_OUT,
  type Backend,
  type Distribution,
  type PropagateArgs,
} from '../lib/backend/surface.js';
import { randomF32, relErr, rng, ulps } from './helpers.js';

let gpu: LoadedBackend | null = null;
let reason = '';
try {
  gpu = loadBackend('cuda');
} catch (err) {
  reason = (err as Error).message.split('\n')[0]!;
}
let cpu: LoadedBackend;
try {
  cpu = loadBackend('native');
} catch {
  cpu = loadBackend('ts');
}

/** A propagate call over `sizes` blocks at `offsets` (dim wide), P = I, seeded data. */
function propagateArgs(
  seed: number,
  o: { precision: 'fp32' | 'fp64'; dim: number; offsets: number[]; sizes: number[]; curvature: boolean; steps?: number },
): PropagateArgs {
  const r = rng(seed);
  const steps = o.steps ?? 9;
  const stepRows = new Int32Array(steps + 1);
  for (let s = 0; s < steps; s++) stepRows[s + 1] = stepRows[s]! + (s === 5 ? 0 : 3 + (s % 4)); // step 5: no rows
  const nRows = stepRows[steps]!;
  const size = o.sizes.reduce((a, k) => a + k * k, 0);
  const P = o.precision === 'fp64' ? new Float64Array(size) : new Float32Array(size);
  let at = 0;
  for (const k of o.sizes) {
    for (let i = 0; i < k; i++) P[at + i * k + i] = 1;
    at += k * k;
  }
  const blocks = Int32Array.from(o.offsets.flatMap((off, b) => [off, o.sizes[b]!]));
  // 0, 1 or 2 curvature rows per step: some steps have rows but none, and the other way round.
  const stepCurvature = o.curvature ? new Int32Array(steps + 1) : null;
  for (let s = 0; stepCurvature && s < steps; s++) stepCurvature[s + 1] = stepCurvature[s]! + (s % 3);
  const nCurv = stepCurvature ? stepCurvature[steps]! : 0;
  return {
    precision: o.precision,
    dim: o.dim,
    blocks,
    propagators: P,
    steps,
    rows: randomF32(nRows * o.dim, r, 0.4),
    stepRows,
    weights: Float64Array.from({ length: nRows }, () => 0.1 + 0.2 * r()),
    curvature: o.curvature ? randomF32(nCurv * o.dim, r, 0.3) : null,
    stepCurvature,
    curvatureWeights: o.curvature ? Float64Array.from({ length: nCurv }, () => 0.1 + 0.2 * r()) : null,
    lr: Float64Array.from({ length: steps }, () => 0.05 + 0.1 * r()),
    decay: Float64Array.from({ length: steps }, () => 1 - 0.01 * r()),
    // Columns outside every block must come back as they were.
    embeddings: new Float32Array(nRows * o.dim).fill(-3),
  };
}

function copyArgs(a: PropagateArgs): PropagateArgs {
  return { ...a, propagators: a.propagators.slice(), embeddings: a.embeddings.slice() };
}

const LAYOUTS = {
  'mixed sizes (grouped pointer arrays)': { dim: 48, offsets: [0, 16, 40], sizes: [16, 24, 8] },
  'one size, evenly spaced (strided batched)': { dim: 96, offsets: [0, 32, 64], sizes: [32, 32, 32] },
  'one size, unevenly spaced (pointer arrays)': { dim: 110, offsets: [0, 40, 72], sizes: [32, 32, 32] },
  global: { dim: 48, offsets: [0], sizes: [48] },
};

describe.skipIf(!gpu)(`CUDA (${gpu?.backend.info().device ?? 'no GPU'}) vs ${cpu.name}`, () => {
  const g = gpu?.backend as Backend;
  const c = cpu.backend;

  afterEach(() => {
    delete process.env.DVEMB_CUDA_CHUNK_BYTES;
    delete process.env.DVEMB_CUDA_TF32;
  });

  it('reports the device', () => {
    const info = g.info();
    expect(info.backend).toBe('cuda');
    expect(info.device).toMatch(/sm_\d+/);
  });

  it('generates the same projection matrices', () => {
    for (const seed of [0, 1, 2 ** 40 + 7, 2 ** 53 - 1]) {
      for (const factor of [FACTOR_DENSE, FACTOR_IN, FACTOR_OUT] as const) {
        for (const [rows, cols] of [
          [17, 65],
          [1, 1],
          [257, 1031],
        ] as const) {
          const rad = { seed, block: 3 + factor, factor, distribution: 'rademacher' as const };
          expect(g.projectionMatrix(rad, rows, cols)).toEqual(c.projectionMatrix(rad, rows, cols));
          const gau = { ...rad, distribution: 'gaussian' as const };
          const a = g.projectionMatrix(gau, rows, cols);
          const b = c.projectionMatrix(gau, rows, cols);
          let worst = 0;
          for (let i = 0; i < a.length; i++) worst = Math.max(worst, ulps(a[i]!, b[i]!));
          expect(worst).toBeLessThanOrEqual(1);
        }
      }
    }
  });

  for (const distribution of ['gaussian', 'rademacher'] as Distribution[]) {
    for (const [bias, tokens] of [
      [true, 3],
      [false, 1],
    ] as const) {
      it(`projects Kronecker factors and raw gradients alike (${distribution}, bias ${bias}, ${tokens} tokens)`, async () => {
        const r = rng(5);
        const n = 6;
        const dIn = 20;
        const dOut = 12;
        const base = { seed: 77, block: 1, distribution, n, dIn, dOut, bias, kIn: 8, kOut: 4, ldOut: 40, offset: 3 };
        const factors = {
          ...base,
          form: 'factors' as const,
          tokens,
          inputs: randomF32(n * tokens * dIn, r),
          outputGrads: randomF32(n * tokens * dOut, r),
        };
        const outG = new Float32Array(n * 40).fill(-7);
        const outC = new Float32Array(n * 40).fill(-7);
        await g.projectKronecker({ ...factors, out: outG });
        await c.projectKronecker({ ...factors, out: outC });
        expect(relErr(outG, outC)).toBeLessThan(1e-5); // untouched columns equal too (-7)
        const grad = {
          ...base,
          form: 'gradient' as const,
          tokens: 1,
          inputs: randomF32(n * dOut * (dIn + (bias ? 1 : 0)), r),
          outputGrads: new Float32Array(0),
        };
        await g.projectKronecker({ ...grad, out: outG });
        await c.projectKronecker({ ...grad, out: outC });
        expect(relErr(outG, outC)).toBeLessThan(1e-5);
      });
    }
  }

  it('projects dense gradients alike, in one tile and in many', async () => {
    const r = rng(9);
    for (const [n, d, k] of [
      [6, 3000, 32],
      [3, 200_000, 64],
    ] as const) {
      const dense = { seed: 5, block: 2, distribution: 'gaussian' as const, n, d, k, grads: randomF32(n * d, r), ldOut: k + 5, offset: 2 };
      const outG = new Float32Array(n * (k + 5)).fill(-7);
      const outC = new Float32Array(n * (k + 5)).fill(-7);
      await g.projectDense({ ...dense, out: outG });
      await c.projectDense({ ...dense, out: outC });
      expect(relErr(outG, outC)).toBeLessThan(1e-5);
    }
  });

  for (const precision of ['fp32', 'fp64'] as const) {
    for (const [layout, shape] of Object.entries(LAYOUTS)) {
      for (const curvature of [false, true]) {
        for (const streamed of [false, true]) {
          const name = `propagates alike (${precision}, ${layout}${curvature ? ', curvature rows' : ''}${streamed ? ', many chunks' : ''})`;
          it(name, async () => {
            // 4 KiB chunks: a step or two each, so the two-stream pipeline runs end to end.
            if (streamed) process.env.DVEMB_CUDA_CHUNK_BYTES = '4096';
            const args = propagateArgs(11, { precision, curvature, ...shape });
            const a = copyArgs(args);
            const b = copyArgs(args);
            expect(await g.propagate(a)).toBe(-1);
            expect(await c.propagate(b)).toBe(-1);
            expect(relErr(a.propagators, b.propagators)).toBeLessThan(precision === 'fp32' ? 1e-5 : 1e-12);
            expect(relErr(a.embeddings, b.embeddings)).toBeLessThan(precision === 'fp32' ? 1e-5 : 1e-7);
          });
        }
      }
    }
  }

  it('propagates with TF32 only when asked, and close to fp32', async () => {
    const shape = LAYOUTS['one size, evenly spaced (strided batched)'];
    const args = propagateArgs(4, { precision: 'fp32', curvature: false, ...shape });
    const plain = copyArgs(args);
    const tf32 = copyArgs(args);
    const ref = copyArgs(args);
    await g.propagate(plain);
    process.env.DVEMB_CUDA_TF32 = '1';
    await g.propagate(tf32);
    await c.propagate(ref);
    expect(relErr(plain.propagators, ref.propagators)).toBeLessThan(1e-5);
    expect(relErr(tf32.propagators, ref.propagators)).toBeLessThan(2e-2);
  });

  for (const streamed of [false, true]) {
    it(`reports the same step on NaN/Inf${streamed ? ' (many chunks)' : ''}`, async () => {
      if (streamed) process.env.DVEMB_CUDA_CHUNK_BYTES = '4096';
      for (const precision of ['fp32', 'fp64'] as const) {
        const shape = LAYOUTS['mixed sizes (grouped pointer arrays)'];
        // lr overflow at two steps; a NaN row; a NaN curvature row (spoils P only).
        const cases: ((a: PropagateArgs) => void)[] = [
          (a) => {
            a.lr[4] = 1e30; // P grows at step 7, E overflows at step 4
            a.lr[7] = 1e30;
          },
          (a) => {
            a.rows[a.stepRows[3]! * a.dim + 20] = NaN;
          },
          (a) => {
            a.curvature![a.stepCurvature![4]! * a.dim + 1] = NaN;
          },
        ];
        for (const spoil of cases) {
          const args = propagateArgs(3, { precision, curvature: true, ...shape });
          spoil(args);
          const a = copyArgs(args);
          const b = copyArgs(args);
          const sb = await c.propagate(b);
          expect(sb).toBeGreaterThanOrEqual(0);
          expect(await g.propagate(a)).toBe(sb);
          // Embeddings the CPU wrote before it stopped are the same.
          const from = args.stepRows[sb + 1]! * args.dim;
          expect(relErr(a.embeddings.subarray(from), b.embeddings.subarray(from))).toBeLessThan(1e-5);
        }
      }
    });
  }

  it('runs concurrent calls independently', async () => {
    const shape = LAYOUTS['mixed sizes (grouped pointer arrays)'];
    const calls = [1, 2, 3, 4, 5, 6].map((seed) => propagateArgs(seed, { precision: 'fp32', curvature: seed % 2 === 0, ...shape }));
    const together = calls.map(copyArgs);
    const alone = calls.map(copyArgs);
    await Promise.all(together.map((a) => g.propagate(a)));
    for (const a of alone) await g.propagate(a);
    for (let i = 0; i < calls.length; i++) {
      expect(together[i]!.propagators).toEqual(alone[i]!.propagators);
      expect(together[i]!.embeddings).toEqual(alone[i]!.embeddings);
    }
  });

  for (const streamed of [false, true]) {
    it(`scores alike${streamed ? ' (many chunks)' : ''}`, async () => {
      if (streamed) process.env.DVEMB_CUDA_CHUNK_BYTES = '65536';
      const r = rng(8);
      const n = 3000;
      const args = { n, m: 7, dim: 64, embeddings: randomF32(n * 64, r), tests: randomF32(7 * 64, r) };
      const a = new Float32Array(n * 7);
      const b = new Float32Array(n * 7);
      await g.score({ ...args, out: a });
      await c.score({ ...args, out: b });
      expect(relErr(a, b)).toBeLessThan(1e-6);
    });
  }

  it('rejects bad arguments as the CPU build does', async () => {
    const args = propagateArgs(1, { precision: 'fp32', curvature: false, ...LAYOUTS.global });
    await expect(g.propagate({ ...args, weights: new Float64Array(3) })).rejects.toThrow(/weights/);
  });
});

if (!gpu) it.skip(`CUDA parity tests skipped: ${reason}`, () => {});
