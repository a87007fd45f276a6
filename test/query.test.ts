// Queries against embeddings, checked against scores computed here by plain float64 loops.
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { influenceProfile, perExample, perOccurrence, projectTests, scoreBlocks, topK } from '../lib/embeddings/query.js';
import { EmbeddingSet } from '../lib/embeddings/store.js';
import { DvembError } from '../lib/errors.js';
import { Layout } from '../lib/projection.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { randomF32, rng, tempDir } from './helpers.js';

const blocks = [
  { name: 'fc', kind: 'kronecker' as const, dIn: 5, dOut: 3, bias: true, kIn: 4, kOut: 2 },
  { name: 'emb', kind: 'dense' as const, d: 40, k: 6 },
];
const DIM = 8 + 6;
let set: EmbeddingSet;
let E: Float64Array; // all embeddings, read independently of the query code
const M = 3;
let tests: Float32Array;

beforeAll(async () => {
  const dir = tempDir();
  const r = rng(42);
  const rec = TrajectoryRecorder.create(join(dir, 't'), { projection: { seed: 9, distribution: 'rademacher' }, blocks, chunkSteps: 3, backend: 'ts' });
  for (let step = 0; step < 10; step++) {
    const n = 4;
    await rec.record({
      step,
      lr: 0.05 * (1 + (step % 3)),
      ids: Array.from({ length: n }, (_, i) => (step * 3 + i) % 11),
      gradients: { fc: { inputs: randomF32(n * 5, r), outputGrads: randomF32(n * 3, r) }, emb: { gradient: randomF32(n * 40, r) } },
    });
  }
  await rec.close();
  await computeEmbeddings(join(dir, 't'), { out: join(dir, 'e'), backend: 'ts' });
  set = EmbeddingSet.open(join(dir, 'e'));
  E = new Float64Array(set.count * DIM);
  for await (const b of set.rows(7)) E.set(b.rows, b.start * DIM);
  tests = randomF32(M * DIM, r);
});

function brute(): Float64Array {
  const S = new Float64Array(set.count * M);
  for (let i = 0; i < set.count; i++) for (let j = 0; j < M; j++) {
    let acc = 0;
    for (let c = 0; c < DIM; c++) acc += E[i * DIM + c]! * tests[j * DIM + c]!;
    S[i * M + j] = acc;
  }
  return S;
}

describe('queries', () => {
  it('per occurrence and streamed blocks agree with a float64 dot product', async () => {
    const want = brute();
    const got = await perOccurrence(set, tests, { rowsPerBlock: 5 });
    for (let i = 0; i < want.length; i++) expect(got[i]).toBeCloseTo(want[i]!, 5);
    let rowsSeen = 0;
    await scoreBlocks(set, tests, (_s, count, scores, m) => {
      rowsSeen += count;
      expect(scores.length).toBe(count * m);
      expect(count).toBeLessThanOrEqual(6);
    }, { rowsPerBlock: 6 });
    expect(rowsSeen).toBe(set.count);
  });

  it('per example sums every occurrence of the example', async () => {
    const want = brute();
    const sums = new Map<number, number[]>();
    for (let i = 0; i < set.count; i++) {
      const s = sums.get(set.ids[i]!) ?? Array(M).fill(0);
      for (let j = 0; j < M; j++) s[j] += want[i * M + j]!;
      sums.set(set.ids[i]!, s);
    }
    const got = await perExample(set, tests);
    expect(Array.from(got.ids)).toEqual([...sums.keys()].sort((a, b) => a - b));
    got.ids.forEach((id, e) => {
      for (let j = 0; j < M; j++) expect(got.scores[e * M + j]).toBeCloseTo(sums.get(id)![j]!, 5);
    });
  });

  it('top-k proponents and opponents match a full sort', async () => {
    const want = brute();
    const res = await topK(set, tests, 4, 'occurrence', { rowsPerBlock: 5 });
    for (let j = 0; j < M; j++) {
      const all = Array.from({ length: set.count }, (_, i) => ({ i, s: want[i * M + j]! }));
      const pro = all.filter((a) => a.s > 0).sort((a, b) => b.s - a.s).slice(0, 4);
      const opp = all.filter((a) => a.s < 0).sort((a, b) => a.s - b.s).slice(0, 4);
      expect(res[j]!.proponents.map((a) => [a.id, a.step])).toEqual(pro.map((a) => [set.ids[a.i], set.occurrenceSteps[a.i]]));
      expect(res[j]!.opponents.map((a) => [a.id, a.step])).toEqual(opp.map((a) => [set.ids[a.i], set.occurrenceSteps[a.i]]));
      expect(res[j]!.opponents.every((a) => a.score < 0)).toBe(true);
    }
    const ex = await topK(set, tests, 2, 'example');
    expect(ex[0]!.proponents.length).toBeLessThanOrEqual(2);
    expect(ex[0]!.proponents[0]!.step).toBeUndefined();
  });

  it('the influence profile sums each step, optionally divided by its learning rate', async () => {
    const want = brute();
    const prof = await influenceProfile(set, tests, { rowsPerBlock: 3 });
    const scaled = await influenceProfile(set, tests, { divideByLr: true });
    expect(prof.steps.length).toBe(10);
    for (let t = 0; t < 10; t++) {
      for (let j = 0; j < M; j++) {
        let acc = 0;
        for (let i = 0; i < set.count; i++) if (set.occurrenceSteps[i] === t) acc += want[i * M + j]!;
        expect(prof.values[t * M + j]).toBeCloseTo(acc, 5);
        expect(scaled.values[t * M + j]).toBeCloseTo(acc / (0.05 * (1 + (t % 3))), 3);
      }
    }
  });

  it('refuses test gradients of the wrong width or projection', async () => {
    await expect(perOccurrence(set, new Float32Array(DIM + 1))).rejects.toThrow(/not a whole number of rows of width 14/);
    await expect(perOccurrence(set, Float32Array.from(tests).fill(NaN, 0, 1))).rejects.toThrow(DvembError);
    const r = rng(1);
    const factors = { fc: { inputs: randomF32(5, r), outputGrads: randomF32(3, r) }, emb: { gradient: randomF32(40, r) } };
    const good = await projectTests(set, factors, 1);
    expect(good.rows.length).toBe(DIM);
    const other = new Layout({ seed: 10, distribution: 'rademacher' }, blocks);
    const err = await perOccurrence(set, { ...good, fingerprint: other.fingerprint }).catch((e: DvembError) => e);
    expect((err as DvembError).code).toBe('PROJECTION_MISMATCH');
    expect((err as Error).message).toMatch(/seed 9/);
    await expect(projectTests(set, { fc: factors.fc }, 1)).rejects.toThrow(/no entry for block "emb"/);
    await expect(topK(set, tests, 0)).rejects.toThrow(/k must be a positive integer/);
  });

  it('refuses a directory without complete embeddings', () => {
    expect(() => EmbeddingSet.open(tempDir())).toThrow(/holds no complete embeddings/);
  });
});
