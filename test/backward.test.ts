// The backward pass end to end (record → store → compute), on every backend that loads here,
// against a brute-force float64 product of the factors A_k = c_k I − η_k H_k (REFERENCE §2–3).
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { availableBackends } from '../lib/backend/loader.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { EmbeddingSet } from '../lib/embeddings/store.js';
import { DvembError } from '../lib/errors.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { gaussian, relErr, rng, tempDir } from './helpers.js';

interface Step {
  step: number;
  lr: number;
  decay: number;
  ids: number[];
  weights: number[];
  reduction?: 'mean' | 'sum';
  rows: Float32Array; // n × dim
  curv?: Float64Array; // raw sampled gradients, n × draws × dim
}

const BLOCKS = [
  { name: 'a', kind: 'projected' as const, k: 7 },
  { name: 'b', kind: 'projected' as const, k: 5 },
];
const DIM = 12;

function makeSteps(seed: number, T: number, draws = 0): Step[] {
  const r = rng(seed);
  const steps: Step[] = [];
  let step = 3;
  for (let t = 0; t < T; t++) {
    const n = 2 + Math.floor(r() * 4);
    const kind = t % 3;
    const weights = kind === 0 ? Array(n).fill(1 / n) : kind === 1 ? Array(n).fill(1) : Array.from({ length: n }, () => 0.05 + r() * 0.3);
    const rows = Float32Array.from({ length: n * DIM }, () => gaussian(r) * 0.5);
    const curv = draws ? Float64Array.from({ length: n * draws * DIM }, () => gaussian(r) * 0.5) : undefined;
    steps.push({
      step,
      lr: kind === 1 ? 0.01 + 0.02 * r() : 0.05 + 0.1 * r(),
      decay: t % 2 ? 0.1 : 0,
      ids: Array.from({ length: n }, () => Math.floor(r() * 9)), // repeats allowed
      weights,
      reduction: kind === 0 ? 'mean' : kind === 1 ? 'sum' : undefined,
      rows,
      curv,
    });
    step += 1 + Math.floor(r() * 3); // gaps are fine, order is what matters
  }
  return steps;
}

async function record(dir: string, steps: Step[], draws = 0): Promise<void> {
  const rec = TrajectoryRecorder.create(dir, {
    projection: { seed: 11, distribution: 'gaussian' },
    blocks: BLOCKS,
    chunkSteps: 7,
    curvature: draws ? { draws } : undefined,
    backend: 'ts',
  });
  for (const s of steps) {
    await rec.record({
      step: s.step,
      lr: s.lr,
      weightDecay: s.decay,
      ids: s.ids,
      ...(s.reduction ? { reduction: s.reduction } : { weights: s.weights }),
      gradients: s.rows,
      curvature: s.curv ? Float32Array.from(s.curv) : undefined,
    });
  }
  await rec.close();
}

/** DVEmb of every occurrence by explicit float64 matrices, per block group. */
function bruteForce(steps: Step[], groups: [number, number][], draws = 0): Float64Array {
  const total = steps.reduce((a, s) => a + s.ids.length, 0);
  const out = new Float64Array(total * DIM);
  for (const [off, k] of groups) {
    const A = steps.map((s) => {
      const M = new Float64Array(k * k);
      for (let i = 0; i < k; i++) M[i * k + i] = 1 - s.lr * s.decay;
      const n = s.ids.length;
      for (let e = 0; e < n; e++) {
        const vecs: Float64Array[] = [];
        if (draws) {
          for (let d = 0; d < draws; d++) {
            const base = (e * draws + d) * DIM + off;
            // Sampled-label Fisher: the average over draws of c cᵀ.
            vecs.push(Float64Array.from({ length: k }, (_, i) => Math.fround(s.curv![base + i]!) / Math.sqrt(draws)));
          }
        } else {
          vecs.push(Float64Array.from({ length: k }, (_, i) => s.rows[e * DIM + off + i]!));
        }
        for (const v of vecs) for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) M[i * k + j]! -= s.lr * s.weights[e]! * v[i]! * v[j]!;
      }
      return M;
    });
    let row = total;
    let P = new Float64Array(k * k);
    for (let i = 0; i < k; i++) P[i * k + i] = 1;
    for (let t = steps.length - 1; t >= 0; t--) {
      const s = steps[t]!;
      const n = s.ids.length;
      row -= n;
      for (let e = 0; e < n; e++) {
        for (let i = 0; i < k; i++) {
          let acc = 0;
          for (let j = 0; j < k; j++) acc += P[i * k + j]! * s.rows[e * DIM + off + j]!;
          out[(row + e) * DIM + off + i] = s.lr * s.weights[e]! * acc;
        }
      }
      // P ← P A_t
      const next = new Float64Array(k * k);
      const At = A[t]!;
      for (let i = 0; i < k; i++) for (let l = 0; l < k; l++) {
        const p = P[i * k + l]!;
        for (let j = 0; j < k; j++) next[i * k + j]! += p * At[l * k + j]!;
      }
      P = next;
    }
  }
  return out;
}

const backends = availableBackends();
const PER_BLOCK: [number, number][] = [
  [0, 7],
  [7, 5],
];
const GLOBAL: [number, number][] = [[0, DIM]];

describe.each(backends.map((b) => [b.name, b] as const))('backward pass on the %s backend', (_name, loaded) => {
  const steps = makeSteps(5, 23);
  const dir = tempDir();
  const traj = join(dir, 'traj');
  const ready = record(traj, steps);

  for (const mode of ['per-block', 'global'] as const) {
    for (const precision of ['fp32', 'fp64'] as const) {
      it(`${mode}, ${precision}: matches the float64 brute-force product`, async () => {
        await ready;
        const out = join(dir, `${mode}-${precision}`);
        const m = await computeEmbeddings(traj, { out, mode, precision, backend: loaded.backend });
        expect(m.occurrences).toBe(steps.reduce((a, s) => a + s.ids.length, 0));
        const set = EmbeddingSet.open(out);
        const got = new Float64Array(set.count * DIM);
        for await (const b of set.rows(10)) got.set(b.rows, b.start * DIM);
        const want = bruteForce(steps, mode === 'global' ? GLOBAL : PER_BLOCK);
        // Embeddings are stored as float32, so fp64 is checked against float32 rounding of the truth.
        expect(relErr(got, want)).toBeLessThan(precision === 'fp32' ? 1e-5 : 1e-7);
        expect(Array.from(set.occurrenceSteps.slice(0, steps[0]!.ids.length))).toEqual(steps[0]!.ids.map(() => steps[0]!.step));
        expect(Array.from(set.ids.slice(0, steps[0]!.ids.length))).toEqual(steps[0]!.ids);
      });
    }
  }

  it('uses recorded sampled-label curvature rows when the trajectory has them', async () => {
    const csteps = makeSteps(9, 17, 2);
    const ctraj = join(dir, 'ctraj');
    await record(ctraj, csteps, 2);
    for (const precision of ['fp32', 'fp64'] as const) {
      const out = join(dir, `curv-${precision}`);
      const m = await computeEmbeddings(ctraj, { out, precision, backend: loaded.backend });
      expect(m.curvature).toBe('recorded');
      const set = EmbeddingSet.open(out);
      const got = new Float64Array(set.count * DIM);
      for await (const b of set.rows(1000)) got.set(b.rows, b.start * DIM);
      expect(relErr(got, bruteForce(csteps, PER_BLOCK, 2))).toBeLessThan(precision === 'fp32' ? 1e-5 : 1e-7);
    }
    // Asking for the empirical Fisher ignores the curvature rows.
    const out = join(dir, 'curv-ef');
    await computeEmbeddings(ctraj, { out, curvature: 'empirical-fisher', backend: loaded.backend });
    const set = EmbeddingSet.open(out);
    const got = new Float64Array(set.count * DIM);
    for await (const b of set.rows(1000)) got.set(b.rows, b.start * DIM);
    expect(relErr(got, bruteForce(csteps, PER_BLOCK))).toBeLessThan(1e-5);
  });

  it('stops on NaN/Inf naming the step, and keeps an earlier result', async () => {
    const bad = makeSteps(3, 12).map((s, t) => (t === 8 || t === 5 ? { ...s, lr: 1e200, reduction: 'sum' as const } : s));
    const btraj = join(dir, 'btraj');
    await record(btraj, bad);
    const out = join(dir, 'bad-out');
    await computeEmbeddings(traj, { out, backend: loaded.backend }); // a good earlier result
    const before = EmbeddingSet.open(out).count;
    const err = await computeEmbeddings(btraj, { out, backend: loaded.backend }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DvembError);
    expect((err as DvembError).code).toBe('NON_FINITE');
    // Walking backwards, the blow-up happens where the huge factor multiplies in.
    expect((err as Error).message).toMatch(new RegExp(`step (${bad.slice(0, 9).map((s) => s.step).join('|')})\\b`));
    expect(readdirSync(out).some((f) => f.endsWith('.partial'))).toBe(false);
    expect(EmbeddingSet.open(out).count).toBe(before);
  });

  it('can be cancelled, leaving no file that looks complete', async () => {
    await ready;
    const out = join(dir, 'cancelled');
    const controller = new AbortController();
    controller.abort();
    const err = await computeEmbeddings(traj, { out, signal: controller.signal, backend: loaded.backend }).catch((e: unknown) => e);
    expect((err as DvembError).code).toBe('ABORTED');
    expect(existsSync(join(out, 'embeddings.json'))).toBe(false);
    expect(readdirSync(out)).toEqual([]);
  });

  it('reports progress up to the total number of steps', async () => {
    await ready;
    const seen: number[] = [];
    await computeEmbeddings(traj, { out: join(dir, 'progress'), backend: loaded.backend, onProgress: (p) => seen.push(p.stepsDone) });
    expect(seen.at(-1)).toBe(steps.length);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
  });
});

it('finds at least the TypeScript backend', () => {
  expect(backends.map((b) => b.name)).toContain('ts');
});

it('warns when the propagator blows up without overflowing, and not otherwise', async () => {
  const dir = tempDir();
  const rec = TrajectoryRecorder.create(join(dir, 't'), { projection: { seed: 1, distribution: 'gaussian' }, blocks: [{ name: 'a', kind: 'projected', k: 2 }], backend: 'ts' });
  // A = I − η g gᵀ with η‖g‖² = 10: each step multiplies perturbations along g by −9.
  for (let step = 0; step < 12; step++) await rec.record({ step, lr: 10, ids: [step], reduction: 'sum', gradients: Float32Array.from([1, 0]) });
  await rec.close();
  const blown = await computeEmbeddings(join(dir, 't'), { out: join(dir, 'e'), backend: 'ts' });
  expect(blown.propagatorMax).toBeCloseTo(9 ** 12, -6);
  expect(blown.warnings?.[0]).toMatch(/amplifies perturbations/);
  const fine = makeSteps(2, 6);
  await record(join(dir, 'ok'), fine);
  const ok = await computeEmbeddings(join(dir, 'ok'), { out: join(dir, 'e3'), backend: 'ts' });
  expect(ok.warnings).toBeUndefined();
  expect(ok.propagatorMax).toBeLessThan(10);
});
