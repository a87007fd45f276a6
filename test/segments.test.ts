// Influence checkpointing (REFERENCE §3 "Segments"): K segments composed with their propagators
// equal the sequential pass, eagerly and lazily, in-process, in worker threads and in separate
// processes; data value dynamics against explicit products of the Q's; interrupts; bad input.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { availableBackends, type LoadedBackend } from '../lib/backend/loader.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { influenceProfile, perExample, perOccurrence, topK } from '../lib/embeddings/query.js';
import { compose, computeSegment, computeSegments, dataValueDynamics, openSegments, planSegments, segmentDirName } from '../lib/embeddings/segments.js';
import { EmbeddingSet, FILES } from '../lib/embeddings/store.js';
import { DvembError } from '../lib/errors.js';
import { npyView, readNpyHeaderFile } from '../lib/trajectory/npy.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { Trajectory } from '../lib/trajectory/trajectory.js';
import { gaussian, randomF32, relErr, rng, tempDir } from './helpers.js';

const BLOCKS = [
  { name: 'a', kind: 'projected' as const, k: 7 },
  { name: 'b', kind: 'projected' as const, k: 5 },
];
const DIM = 12;
const ROOT = resolve(import.meta.dirname, '..');

interface Step {
  step: number;
  lr: number;
  decay: number;
  ids: number[];
  weights: number[];
  rows: Float32Array;
}

function makeSteps(seed: number, T: number): Step[] {
  const r = rng(seed);
  const steps: Step[] = [];
  let step = 2;
  for (let t = 0; t < T; t++) {
    const n = 2 + Math.floor(r() * 5); // uneven batches: row-balanced cuts are not step-balanced
    steps.push({
      step,
      lr: 0.05 + 0.1 * r(),
      decay: t % 2 ? 0.1 : 0,
      ids: Array.from({ length: n }, () => Math.floor(r() * 13)),
      weights: Array.from({ length: n }, () => 0.1 + 0.3 * r()),
      rows: Float32Array.from({ length: n * DIM }, () => gaussian(r) * 0.5),
    });
    step += 1 + Math.floor(r() * 2);
  }
  return steps;
}

async function record(dir: string, steps: Step[], close = true): Promise<TrajectoryRecorder> {
  const rec = TrajectoryRecorder.create(dir, { projection: { seed: 11, distribution: 'gaussian' }, blocks: BLOCKS, chunkSteps: 7, backend: 'ts' });
  for (const s of steps) {
    await rec.record({ step: s.step, lr: s.lr, weightDecay: s.decay, ids: s.ids, weights: s.weights, gradients: s.rows });
  }
  if (close) await rec.close();
  return rec;
}

async function readRows(set: EmbeddingSet): Promise<Float64Array> {
  const out = new Float64Array(set.count * set.dim);
  for await (const b of set.rows(9)) out.set(b.rows, b.start * set.dim);
  return out;
}

function readNpy(path: string): Float32Array | Float64Array | BigInt64Array {
  return npyView(readFileSync(path), readNpyHeaderFile(path));
}

function noPartials(dir: string): boolean {
  return !existsSync(dir) || readdirSync(dir).every((f) => !f.endsWith('.partial') && !f.endsWith('.tmp'));
}

const STEPS = makeSteps(5, 25); // chunks of 7, 7, 7, 4 steps
const backends = availableBackends();

describe.each(backends.map((b) => [b.name, b] as const))('segments on the %s backend', (_name, loaded: LoadedBackend) => {
  const dir = tempDir();
  const traj = join(dir, 'traj');
  const ready = record(traj, STEPS);
  const backend = loaded.backend;

  for (const mode of ['per-block', 'global'] as const) {
    for (const precision of ['fp32', 'fp64'] as const) {
      it(`${mode}, ${precision}: K = 2, 3, 4, 6 composed eagerly and lazily equal the sequential pass`, async () => {
        await ready;
        const seqDir = join(dir, `seq-${mode}-${precision}`);
        const seqManifest = await computeEmbeddings(traj, { out: seqDir, mode, precision, backend });
        const seq = EmbeddingSet.open(seqDir);
        const want = await readRows(seq);
        const wantP = readNpy(join(seqDir, FILES.propagator)) as Float32Array;
        const r = rng(77);
        const tests = randomF32(3 * DIM, r);
        const wantScores = await perOccurrence(seq, tests, { backend });
        const tol = precision === 'fp32' ? 1e-5 : 5e-7;
        for (const K of [2, 3, 4, 6]) {
          const parent = join(dir, `seg-${mode}-${precision}-${K}`);
          // K = 6 > 4 chunks: segments are cut inside chunks.
          const { segments, runner } = await computeSegments(traj, { out: parent, K, mode, precision, backend, parallel: false });
          expect(runner).toBe('sequential');
          expect(segments.map((s) => s.dir)).toEqual(Array.from({ length: K }, (_, j) => join(parent, segmentDirName(j, K))));
          for (const lazy of [false, true]) {
            const out = join(parent, lazy ? 'lazy' : 'eager');
            const m = await compose(parent, { out, lazy, backend });
            expect(m.occurrences).toBe(seqManifest.occurrences);
            expect(m.steps).toBe(seqManifest.steps);
            expect(m.examples).toBe(seqManifest.examples);
            const set = EmbeddingSet.open(out);
            expect(set.lazy).toBe(lazy);
            expect(relErr(await readRows(set), want)).toBeLessThan(tol);
            expect(Array.from(set.ids)).toEqual(Array.from(seq.ids));
            expect(Array.from(set.occurrenceSteps)).toEqual(Array.from(seq.occurrenceSteps));
            expect(Array.from(set.stepTable.rowStart)).toEqual(Array.from(seq.stepTable.rowStart));
            expect(Array.from(set.stepTable.lr)).toEqual(Array.from(seq.stepTable.lr));
            expect(relErr(readNpy(join(out, FILES.propagator)) as Float32Array, wantP)).toBeLessThan(tol);
            // Scoring sees no difference (lazily: S_jᵀ applied to the tests).
            expect(relErr(await perOccurrence(set, tests, { backend, rowsPerBlock: 5 }), wantScores)).toBeLessThan(tol);
          }
        }
      });
    }
  }

  it('splits recorded curvature rows with their steps', async () => {
    const ctraj = join(dir, 'ctraj');
    const r = rng(12);
    const rec = TrajectoryRecorder.create(ctraj, { projection: { seed: 11, distribution: 'gaussian' }, blocks: BLOCKS, chunkSteps: 5, curvature: { draws: 2 }, backend: 'ts' });
    for (const s of STEPS.slice(0, 17)) {
      const n = s.ids.length;
      await rec.record({ step: s.step, lr: s.lr, weightDecay: s.decay, ids: s.ids, weights: s.weights, gradients: s.rows, curvature: randomF32(n * 2 * DIM, r, 0.5) });
    }
    await rec.close();
    await computeEmbeddings(ctraj, { out: join(dir, 'cseq'), backend });
    const want = await readRows(EmbeddingSet.open(join(dir, 'cseq')));
    await computeSegments(ctraj, { out: join(dir, 'cseg'), K: 4, backend, parallel: false });
    const m = await compose(join(dir, 'cseg'), { out: join(dir, 'cseg'), backend });
    expect(m.curvature).toBe('recorded');
    expect(relErr(await readRows(EmbeddingSet.open(join(dir, 'cseg'))), want)).toBeLessThan(1e-5);
  });

  it('plans row-balanced segments that tile the trajectory, also cut inside chunks', async () => {
    await ready;
    const t = Trajectory.open(traj);
    const rowsOf = STEPS.map((s) => s.ids.length);
    for (const K of [1, 2, 3, 4, 5, 9, 25]) {
      const plan = planSegments(t, K);
      expect(plan).toHaveLength(K);
      let step = 0;
      let row = 0;
      for (const s of plan) {
        expect(s.stepStart).toBe(step);
        expect(s.stepEnd).toBeGreaterThan(s.stepStart);
        expect(s.rowStart).toBe(row);
        expect(s.rowEnd - s.rowStart).toBe(rowsOf.slice(s.stepStart, s.stepEnd).reduce((a, b) => a + b, 0));
        expect(s.firstStep).toBe(STEPS[s.stepStart]!.step);
        expect(s.lastStep).toBe(STEPS[s.stepEnd - 1]!.step);
        step = s.stepEnd;
        row = s.rowEnd;
      }
      expect(step).toBe(STEPS.length);
      // Balanced by rows: no segment is further from N/K than one step's rows.
      const N = row;
      for (const s of plan) expect(Math.abs(s.rowEnd - s.rowStart - N / K)).toBeLessThanOrEqual(2 * Math.max(...rowsOf));
    }
    expect(() => planSegments(t, 26)).toThrow(/at most 25 segments/);
    expect(() => planSegments(t, 0)).toThrow(DvembError);

    // Segments that end where checkpoints were saved.
    const ends = [STEPS[3]!.step, STEPS[4]!.step, STEPS[20]!.step];
    const plan = planSegments(t, 4, { ends });
    expect(plan.map((s) => s.lastStep)).toEqual([...ends, STEPS[24]!.step]);
    expect(plan.map((s) => s.stepEnd)).toEqual([4, 5, 21, 25]);
    expect(() => planSegments(t, 3, { ends })).toThrow(/3 segment ends make 4 segments, not 3/);
    expect(() => planSegments(t, 2, { ends: [STEPS[3]!.step + 0.5] })).toThrow(/is not a recorded step/);
    expect(() => planSegments(t, 3, { ends: [ends[1]!, ends[0]!] })).toThrow(/must increase/);
    expect(() => planSegments(t, 2, { ends: [STEPS[24]!.step] })).toThrow(/before the last step/);
  });

  it('data value dynamics equal explicit products of the Q\'s and the pass over each prefix of the run', async () => {
    await ready;
    const K = 3;
    const parent = join(dir, 'dyn');
    // Boundaries where checkpoints were "saved": after the 8th and the 19th step.
    const ends = [STEPS[7]!.step, STEPS[18]!.step];
    await computeSegments(traj, { out: parent, K, ends, precision: 'fp64', backend, parallel: false });
    const segs = openSegments(parent);
    expect(segs.map((s) => s.info.stepEnd)).toEqual([8, 19, 25]);
    const r = rng(3);
    const m = 2;
    const tests = Array.from({ length: K }, () => randomF32(m * DIM, r));
    const got = await dataValueDynamics(parent, tests, { per: 'occurrence', backend });
    expect(got.boundaries.map((b) => b.lastStep)).toEqual(segs.map((s) => s.info.lastStep));
    const N = segs[K - 1]!.info.rowEnd;

    // Brute force: R_{j′,j} = Q_{j′} ⋯ Q_{j+1} as explicit float64 matrices per block.
    const blocks: [number, number][] = [
      [0, 7],
      [7, 5],
    ];
    const Q = segs.map((s) => Float64Array.from(readNpy(join(s.dir, FILES.propagator)) as Float64Array));
    const mul = (A: Float64Array, B: Float64Array) => {
      const C = new Float64Array(A.length);
      let at = 0;
      for (const [, k] of blocks) {
        for (let i = 0; i < k; i++) for (let l = 0; l < k; l++) for (let j = 0; j < k; j++) C[at + i * k + j]! += A[at + i * k + l]! * B[at + l * k + j]!;
        at += k * k;
      }
      return C;
    };
    const eye = () => {
      const I = new Float64Array(49 + 25);
      for (let i = 0; i < 7; i++) I[i * 7 + i] = 1;
      for (let i = 0; i < 5; i++) I[49 + i * 5 + i] = 1;
      return I;
    };
    const want = new Float64Array(N * K * m);
    for (let j = 0; j < K; j++) {
      const local = await readRows(segs[j]!.set);
      let R = eye();
      for (let jp = j; jp < K; jp++) {
        if (jp > j) R = mul(Q[jp]!, R);
        for (let row = 0; row < segs[j]!.set.count; row++) {
          const x = local.subarray(row * DIM, (row + 1) * DIM);
          let at = 0;
          for (const [off, k] of blocks) {
            for (let i = 0; i < k; i++) {
              let y = 0;
              for (let c = 0; c < k; c++) y += R[at + i * k + c]! * x[off + c]!;
              for (let t = 0; t < m; t++) want[((segs[j]!.info.rowStart + row) * K + jp) * m + t]! += y * tests[jp]![t * DIM + off + i]!;
            }
            at += k * k;
          }
        }
      }
    }
    expect(relErr(got.values, want)).toBeLessThan(1e-5);
    // An occurrence has no influence on checkpoints before it.
    for (let row = 0; row < N; row++) for (let jp = 0; jp < got.segmentOf![row]!; jp++) expect(got.values[(row * K + jp) * m]).toBe(0);

    // Meaning: at boundary j′ they are the embeddings of the run that stops at θ_{e_j′}.
    for (let jp = 0; jp < K; jp++) {
      const prefix = join(dir, `prefix-${jp}`);
      await record(prefix, STEPS.slice(0, segs[jp]!.info.stepEnd));
      await computeEmbeddings(prefix, { out: join(prefix, 'emb'), precision: 'fp64', backend });
      const scores = await perOccurrence(EmbeddingSet.open(join(prefix, 'emb')), tests[jp]!, { backend });
      const mine = new Float64Array(scores.length);
      for (let row = 0; row < scores.length / m; row++) for (let t = 0; t < m; t++) mine[row * m + t] = got.values[(row * K + jp) * m + t]!;
      expect(relErr(mine, scores)).toBeLessThan(1e-5);
    }

    // Per example: the sum over the example's occurrences; a boundary without tests is NaN.
    const ex = await dataValueDynamics(parent, [tests[0]!, null, tests[2]!], { backend });
    const idx = new Map(Array.from(ex.ids, (id, i) => [id, i]));
    const sums = new Float64Array(ex.ids.length * K * m);
    for (let row = 0; row < N; row++) {
      const e = idx.get(got.ids[row]!)!;
      for (const jp of [0, 2]) for (let t = 0; t < m; t++) sums[(e * K + jp) * m + t]! += got.values[(row * K + jp) * m + t]!;
    }
    for (let e = 0; e < ex.ids.length; e++) {
      expect(ex.values[(e * K + 1) * m]).toBeNaN();
      for (const jp of [0, 2]) for (let t = 0; t < m; t++) expect(ex.values[(e * K + jp) * m + t]).toBeCloseTo(sums[(e * K + jp) * m + t]!, 6);
    }
    await expect(dataValueDynamics(parent, tests.slice(0, 2), { backend })).rejects.toThrow(/2 sets of test gradients for 3 segment boundaries/);
    await expect(dataValueDynamics(parent, [tests[0]!, tests[1]!, randomF32(DIM * 2 + 1, r)], { backend })).rejects.toThrow(/width 12/);
  });

  it('an interrupted segment or composition leaves no file that looks complete', async () => {
    await ready;
    const parent = join(dir, 'abort');
    // A segment: stop after its first chunk.
    const c1 = new AbortController();
    const err1 = await computeSegment(traj, { out: parent, j: 0, K: 2, backend, signal: c1.signal, onProgress: () => c1.abort() }).catch((e: unknown) => e);
    expect((err1 as DvembError).code).toBe('ABORTED');
    const seg0 = join(parent, segmentDirName(0, 2));
    expect(existsSync(join(seg0, 'embeddings.json'))).toBe(false);
    expect(readdirSync(seg0)).toEqual([]);
    // compose sees the unfinished segment as missing, and says how to compute it.
    await computeSegment(traj, { out: parent, j: 1, K: 2, backend });
    await expect(compose(parent, { out: join(parent, 'c') })).rejects.toThrow(/segment 0 \(its directory is not finished[^)]*\) of 2 is missing.*--segment 0\/2/);
    await computeSegment(traj, { out: parent, j: 0, K: 2, backend });

    // A composition: an earlier result stays; the interrupted one leaves nothing behind.
    const out = join(parent, 'composed');
    await compose(parent, { out, backend });
    const before = await readRows(EmbeddingSet.open(out));
    for (const lazy of [false, true]) {
      const c2 = new AbortController();
      const err2 = await compose(parent, { out, lazy, backend, rowsPerBlock: 3, signal: c2.signal, onProgress: () => c2.abort() }).catch((e: unknown) => e);
      expect((err2 as DvembError).code).toBe('ABORTED');
      expect(noPartials(out)).toBe(true);
      const after = EmbeddingSet.open(out);
      expect(after.lazy).toBe(false);
      expect(Array.from(await readRows(after))).toEqual(Array.from(before));
    }

    // K segments in parallel: cancelled before any finished, none looks complete.
    const c3 = new AbortController();
    c3.abort();
    const par = join(dir, 'abort-par');
    const err3 = await computeSegments(traj, { out: par, K: 3, backend: loaded.name === 'native-cpu' ? 'native' : loaded.name === 'cuda' ? 'cuda' : 'ts', signal: c3.signal }).catch((e: unknown) => e);
    expect((err3 as DvembError).code).toBe('ABORTED');
    for (let j = 0; j < 3; j++) {
      const d = join(par, segmentDirName(j, 3));
      expect(existsSync(join(d, 'embeddings.json'))).toBe(false);
      expect(noPartials(d)).toBe(true);
    }
  });

  it('rejects segments from different trajectories, missing, duplicated or mixed segments', async () => {
    await ready;
    const other = join(dir, 'other');
    const r = rng(6);
    await record(other, STEPS.map((s) => ({ ...s, rows: randomF32(s.rows.length, r, 0.5) })));
    const parent = join(dir, 'bad');
    await computeSegment(traj, { out: parent, j: 0, K: 3, backend });
    await computeSegment(traj, { out: parent, j: 2, K: 3, backend });
    await expect(compose(parent, { out: join(dir, 'bad-out') })).rejects.toThrow(/segment 1 of 3 is missing.*dvemb compute .* --segment 1\/3 --out/);
    // Same shapes, steps and learning rates, different gradients: a different trajectory.
    await computeSegment(other, { out: parent, j: 1, K: 3, backend });
    await expect(compose(parent, { out: join(dir, 'bad-out') })).rejects.toThrow(/different trajectories/);
    expect(existsSync(join(dir, 'bad-out', 'embeddings.json'))).toBe(false);
    await computeSegment(traj, { out: parent, j: 1, K: 3, backend });
    await compose(parent, { out: join(dir, 'bad-out'), backend });
    // A stale split beside it.
    await computeSegment(traj, { out: parent, j: 0, K: 2, backend });
    await expect(compose(parent, { out: join(dir, 'bad-out') })).rejects.toThrow(/different splits/);
    const dirs = [0, 1, 2].map((j) => join(parent, segmentDirName(j, 3)));
    await expect(compose([dirs[0]!, dirs[0]!, dirs[1]!], { out: join(dir, 'bad-out') })).rejects.toThrow(/given twice/);
    // Split at other steps.
    const { dir: moved } = await computeSegment(traj, { out: join(dir, 'bad-ends'), j: 1, K: 3, ends: [STEPS[2]!.step, STEPS[9]!.step], backend });
    await expect(compose([dirs[0]!, moved, dirs[2]!], { out: join(dir, 'bad-out') })).rejects.toThrow(/split differently/);
    await expect(compose(dirs, { out: dirs[1]! })).rejects.toThrow(/one of the segment directories/);
    // Another precision.
    await computeSegment(traj, { out: join(dir, 'bad64'), j: 1, K: 3, precision: 'fp64', backend });
    await expect(compose([dirs[0]!, join(dir, 'bad64', segmentDirName(1, 3)), dirs[2]!], { out: join(dir, 'bad-out') })).rejects.toThrow(/precision fp64/);
    // A whole-run embeddings directory is not a segment.
    await computeEmbeddings(traj, { out: join(dir, 'whole'), backend });
    await expect(compose([join(dir, 'whole')], { out: join(dir, 'bad-out') })).rejects.toThrow(/not a segment/);
    await expect(compose(join(dir, 'nothing-here'), { out: join(dir, 'bad-out') })).rejects.toThrow(DvembError);
    await expect(computeSegment(traj, { out: parent, j: 3, K: 3, backend })).rejects.toThrow(/segment 3 of 3 does not exist/);

    // A lazy set reads the segments in place: it notices a segment computed again or gone.
    const lazyOut = join(dir, 'bad-lazy');
    await compose(dirs, { out: lazyOut, lazy: true, backend });
    expect(existsSync(join(lazyOut, FILES.embeddings))).toBe(false);
    expect(EmbeddingSet.open(lazyOut).lazy).toBe(true);
    await computeSegment(traj, { out: parent, j: 2, K: 3, backend });
    expect(() => EmbeddingSet.open(lazyOut)).toThrow(/segment 2 .* was computed again after this set was composed/);
    await compose(dirs, { out: lazyOut, lazy: true, backend });
    renameSync(dirs[0]!, `${dirs[0]}.gone`);
    expect(() => EmbeddingSet.open(lazyOut)).toThrow(/segment 0 .* is gone or unfinished.*keep the segment directories/);
    renameSync(`${dirs[0]}.gone`, dirs[0]!);
    expect(EmbeddingSet.open(lazyOut).count).toBe(STEPS.reduce((a, s) => a + s.ids.length, 0));
  });
});

describe('segments across threads and processes', () => {
  const dir = tempDir();
  const traj = join(dir, 'traj');
  const ready = record(traj, STEPS);

  it('runs the K segments in worker threads, with the same result', async () => {
    await ready;
    const seqDir = join(dir, 'seq');
    await computeEmbeddings(traj, { out: seqDir });
    const want = await readRows(EmbeddingSet.open(seqDir));
    const seen: number[] = [];
    const { segments, runner } = await computeSegments(traj, { out: join(dir, 'par'), K: 3, onProgress: (p) => seen.push(p.stepsDone) });
    // Workers run the compiled module (dist/, built by `npm test`).
    expect(runner).toBe('workers');
    expect(seen.at(-1)).toBe(STEPS.length);
    await compose(segments.map((s) => s.dir), { out: join(dir, 'par', 'out') });
    expect(relErr(await readRows(EmbeddingSet.open(join(dir, 'par', 'out'))), want)).toBeLessThan(1e-5);
  });

  it('reads an unsealed tail the same before and after it is sealed', async () => {
    const live = join(dir, 'live');
    const rec = await record(live, STEPS.slice(0, 18), false); // 2 sealed chunks + a 4-step tail
    expect(Trajectory.open(live).chunks.at(-1)!.sealed).toBe(false);
    const parent = join(dir, 'live-seg');
    await computeSegment(live, { out: parent, j: 1, K: 2 });
    await rec.close();
    expect(Trajectory.open(live).chunks.at(-1)!.sealed).toBe(true);
    await computeSegment(live, { out: parent, j: 0, K: 2 });
    await compose(parent, { out: join(parent, 'out') });
    await computeEmbeddings(live, { out: join(dir, 'live-seq') });
    expect(relErr(await readRows(EmbeddingSet.open(join(parent, 'out'))), await readRows(EmbeddingSet.open(join(dir, 'live-seq'))))).toBeLessThan(1e-5);
  });

  it('K = 3 separate processes of the CLI, then `compose`, equal the single pass', async () => {
    await ready;
    const entry = join(ROOT, 'dist/lib/cli/dvemb.js');
    const run = (args: string[]) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((res) => {
        const p = spawn(process.execPath, [entry, ...args], { env: { ...process.env, DVEMB_QUIET: '1' } });
        let stdout = '';
        let stderr = '';
        p.stdout.on('data', (d: Buffer) => (stdout += d));
        p.stderr.on('data', (d: Buffer) => (stderr += d));
        p.on('close', (code) => res({ code, stdout, stderr }));
      });
    const parent = join(dir, 'cluster');
    mkdirSync(parent, { recursive: true });
    const jobs = await Promise.all([0, 1, 2].map((j) => run(['compute', traj, '--segment', `${j}/3`, '--out', parent, '--json'])));
    for (const [j, r] of jobs.entries()) {
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout).segment.index).toBe(j);
    }
    // A missing segment is a clear error (exit 2) naming the command that computes it.
    const away = join(dir, 'segment-1-of-3.away');
    renameSync(join(parent, segmentDirName(1, 3)), away);
    const missing = await run(['compose', parent, '--out', join(dir, 'composed')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/segment 1 of 3 is missing.*--segment 1\/3/);
    renameSync(away, join(parent, segmentDirName(1, 3)));

    const composed = await run(['compose', parent, '--out', join(dir, 'composed'), '--json']);
    expect(composed.stderr).toBe('');
    expect(composed.code).toBe(0);
    expect(JSON.parse(composed.stdout).composedFrom.segments).toBe(3);
    await computeEmbeddings(traj, { out: join(dir, 'single') });
    const single = EmbeddingSet.open(join(dir, 'single'));
    const set = EmbeddingSet.open(join(dir, 'composed'));
    expect(relErr(await readRows(set), await readRows(single))).toBeLessThan(1e-5);

    // `--segments K` in one process, composed lazily: queries agree with the single pass.
    const inproc = await run(['compute', traj, '--segments', '2', '--lazy', '--out', join(dir, 'inproc'), '--json']);
    expect(inproc.code).toBe(0);
    // The segments live inside the composed directory, so it moves as a whole.
    renameSync(join(dir, 'inproc'), join(dir, 'inproc-moved'));
    const lazy = EmbeddingSet.open(join(dir, 'inproc-moved'));
    expect(lazy.lazy).toBe(true);
    const tests = randomF32(2 * DIM, rng(1));
    expect(relErr(await perOccurrence(lazy, tests), await perOccurrence(single, tests))).toBeLessThan(1e-5);
    const [a, b] = [await perExample(lazy, tests), await perExample(single, tests)];
    expect(relErr(a.scores, b.scores)).toBeLessThan(1e-5);
    const [pa, pb] = [await influenceProfile(lazy, tests), await influenceProfile(single, tests)];
    expect(relErr(pa.values, pb.values)).toBeLessThan(1e-5);
    const [ta, tb] = [await topK(lazy, tests, 3), await topK(single, tests, 3)];
    expect(ta.map((t) => t.proponents.map((p) => p.id))).toEqual(tb.map((t) => t.proponents.map((p) => p.id)));

    // Ctrl-C while the segments compute: exit 130, and no file that looks complete.
    const big = join(dir, 'big');
    const rb = rng(8);
    const rec = TrajectoryRecorder.create(big, { projection: { seed: 1, distribution: 'gaussian' }, blocks: [{ name: 'w', kind: 'projected', k: 384 }], chunkSteps: 2, backend: 'ts' });
    for (let t = 0; t < 48; t++) await rec.record({ step: t, lr: 0.01, ids: Array.from({ length: 32 }, (_, i) => i), reduction: 'mean', gradients: randomF32(32 * 384, rb, 0.05) });
    await rec.close();
    const outBig = join(dir, 'big-out');
    const child = spawn(process.execPath, [entry, 'compute', big, '--segments', '2', '--backend', 'ts', '--out', outBig], { env: { ...process.env, DVEMB_QUIET: '1' } });
    const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
    const started = () => [0, 1].some((j) => existsSync(join(outBig, segmentDirName(j, 2))) && readdirSync(join(outBig, segmentDirName(j, 2))).some((f) => f.endsWith('.partial')));
    for (let i = 0; i < 500 && !started(); i++) await new Promise((r) => setTimeout(r, 10));
    expect(started()).toBe(true);
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(existsSync(join(outBig, 'embeddings.json'))).toBe(false);
    for (const j of [0, 1]) {
      const d = join(outBig, segmentDirName(j, 2));
      expect(noPartials(d)).toBe(true);
      // A segment that finished before the interrupt is complete and valid; the other has nothing.
      if (existsSync(join(d, 'embeddings.json'))) expect(EmbeddingSet.open(d).manifest.segment!.index).toBe(j);
      else expect(readdirSync(d)).toEqual([]);
    }

    // Usage errors exit 1.
    expect((await run(['compute', traj, '--segment', '3/3', '--out', parent])).code).toBe(1);
    expect((await run(['compute', traj, '--segment', '1/3', '--segments', '3', '--out', parent])).code).toBe(1);
    expect((await run(['compute', traj, '--segments', '3', '--ends', '4,x', '--out', parent])).code).toBe(1);
    const badEnds = await run(['compute', traj, '--segments', '3', '--ends', '4', '--out', join(dir, 'bad-ends')]);
    expect(badEnds.code).toBe(2);
    expect(badEnds.stderr).toMatch(/1 segment ends make 2 segments, not 3/);
  });
});
