// The trajectory store: round trip, crash safety with a real SIGKILL, integrity checks, and the
// bad input the recorder must refuse without losing what it already holds.
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { EmbeddingSet } from '../lib/embeddings/store.js';
import { DvembError } from '../lib/errors.js';
import { chunkFileName } from '../lib/trajectory/format.js';
import { NPY_HEADER_BYTES } from '../lib/trajectory/npy.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { Trajectory } from '../lib/trajectory/trajectory.js';
import { randomF32, rng, tempDir } from './helpers.js';

const DIM = 6;
const blocks = [{ name: 'all', kind: 'projected' as const, k: DIM }];

function newRecorder(dir: string, chunkSteps = 4) {
  return TrajectoryRecorder.create(dir, { projection: { seed: 1, distribution: 'gaussian' }, blocks, chunkSteps, backend: 'ts' });
}

async function recordSteps(rec: TrajectoryRecorder, from: number, count: number, seed = 1) {
  const r = rng(seed + from);
  const written: { step: number; ids: number[]; rows: Float32Array }[] = [];
  for (let step = from; step < from + count; step++) {
    const n = 1 + (step % 3);
    const rows = randomF32(n * DIM, r);
    const ids = Array.from({ length: n }, (_, i) => step * 10 + i);
    await rec.record({ step, lr: 0.1 + step / 1000, weightDecay: 0.01, ids, gradients: rows });
    written.push({ step, ids, rows });
  }
  return written;
}

async function expectError(p: Promise<unknown> | (() => unknown), code: string, pattern?: RegExp) {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected a ${code} error`).toBeInstanceOf(DvembError);
  expect((err as DvembError).code).toBe(code);
  if (pattern) expect((err as Error).message).toMatch(pattern);
  return err as DvembError;
}

describe('trajectory store', () => {
  it('reads back exactly what was recorded, across sealed chunks and the tail', async () => {
    const dir = join(tempDir(), 't');
    const rec = newRecorder(dir);
    const written = await recordSteps(rec, 0, 10);
    await rec.close();
    const traj = Trajectory.open(dir);
    expect(traj.steps).toBe(10);
    expect(traj.chunks.map((c) => c.steps)).toEqual([4, 4, 2]);
    expect(traj.chunks.every((c) => c.sealed)).toBe(true);
    let w = 0;
    for (let i = 0; i < traj.chunks.length; i++) {
      const c = await traj.readChunk(i);
      for (let s = 0; s < c.steps; s++, w++) {
        const want = written[w]!;
        expect(c.step[s]).toBe(want.step);
        expect(c.lr[s]).toBe(0.1 + want.step / 1000);
        expect(c.weightDecay[s]).toBe(0.01);
        expect(Array.from(c.ids.subarray(c.stepRows[s], c.stepRows[s + 1]))).toEqual(want.ids);
        expect(Array.from(c.weights.subarray(c.stepRows[s], c.stepRows[s + 1]))).toEqual(want.ids.map(() => 1 / want.ids.length));
        expect(c.rows.subarray(c.stepRows[s]! * DIM, c.stepRows[s + 1]! * DIM)).toEqual(want.rows);
      }
    }
    expect((await traj.verify()).problems).toEqual([]);
  });

  it('survives SIGKILL mid-recording: every completed step is there, and it can be appended to', async () => {
    const dir = join(tempDir(), 'killed');
    const child = spawn(process.execPath, [join(__dirname, 'fixtures', 'record-forever.mjs'), dir, 'create', String(DIM)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let completed = -1;
    await new Promise<void>((resolve, reject) => {
      child.on('exit', (code) => reject(new Error(`the recording child exited by itself (code ${code}); is dist/ built? (npm run build:ts)`)));
      child.stdout.on('data', (d: Buffer) => {
        for (const line of d.toString().split('\n')) if (line.trim()) completed = Math.max(completed, Number(line));
        // Kill at an arbitrary point past a few sealed chunks.
        if (completed >= 23) {
          child.kill('SIGKILL');
          resolve();
        }
      });
    });
    await new Promise((r) => child.on('exit', r));
    const traj = Trajectory.open(dir);
    // Every step the child announced is present (it may have completed a few more).
    expect(traj.steps).toBeGreaterThanOrEqual(completed + 1);
    const last = traj.chunks.at(-1)!.lastStep;
    expect((await traj.verify()).problems).toEqual([]);
    // Tear the tail: a partial step record must be ignored.
    const tail = traj.chunks.at(-1)!;
    if (!tail.sealed) appendFileSync(join(dir, chunkFileName(tail.index, 'steps')), Buffer.alloc(20, 0x7f));
    const rec = TrajectoryRecorder.open(dir, { backend: 'ts' });
    expect(rec.steps).toBe(traj.steps);
    await recordSteps(rec, last + 1, 6);
    await rec.close();
    const after = Trajectory.open(dir);
    expect(after.steps).toBe(traj.steps + 6);
    expect(after.chunks.every((c) => c.sealed)).toBe(true);
    expect((await after.verify()).problems).toEqual([]);
  });

  it('detects a corrupt chunk by its checksum, in verify, reads and the backward pass', async () => {
    const dir = join(tempDir(), 'corrupt');
    const rec = newRecorder(dir);
    await recordSteps(rec, 0, 8);
    await rec.close();
    const out = join(tempDir(), 'emb');
    await computeEmbeddings(dir, { out, backend: 'ts' });
    const path = join(dir, chunkFileName(0, 'rows'));
    const bytes = readFileSync(path);
    bytes[NPY_HEADER_BYTES + 5]! ^= 0x10;
    writeFileSync(path, bytes);
    const traj = Trajectory.open(dir);
    const report = await traj.verify();
    expect(report.problems.join('\n')).toMatch(/chunk-000000\.rows\.npy is corrupt: crc32/);
    await expectError(traj.readChunk(0), 'CORRUPT', /restore the file/);
    await expectError(computeEmbeddings(dir, { out, backend: 'ts' }), 'CORRUPT');
    expect(EmbeddingSet.open(out).count).toBe(Trajectory.open(dir).rows); // the earlier result stands
  });

  it('detects a truncated chunk and a trajectory directory that is not one', async () => {
    const dir = join(tempDir(), 'trunc');
    const rec = newRecorder(dir);
    await recordSteps(rec, 0, 8);
    await rec.close();
    truncateSync(join(dir, chunkFileName(1, 'ids')), NPY_HEADER_BYTES + 8);
    await expectError(Trajectory.open(dir).readChunk(1), 'TRUNCATED', /truncated/);
    await expectError(() => Trajectory.open(tempDir()), 'NOT_A_TRAJECTORY', /manifest\.json/);
    await expectError(() => Trajectory.open(join(tempDir(), 'nope')), 'NOT_A_TRAJECTORY', /does not exist/);
    const bad = tempDir();
    writeFileSync(join(bad, 'manifest.json'), '{"format": "something-else"}');
    await expectError(() => Trajectory.open(bad), 'NOT_A_TRAJECTORY');
    writeFileSync(join(bad, 'manifest.json'), '{not json');
    await expectError(() => Trajectory.open(bad), 'CORRUPT');
  });

  it('refuses bad steps with a clear error and loses nothing already recorded', async () => {
    const dir = join(tempDir(), 'bad');
    const rec = newRecorder(dir);
    await recordSteps(rec, 0, 5);
    const rows = new Float32Array(2 * DIM).fill(0.5);
    const ok = { step: 10, lr: 0.1, ids: [1, 2], gradients: rows };
    await expectError(rec.record({ ...ok, step: 4 }), 'STEP_ORDER', /step 4 does not come after the last recorded step 4/);
    await expectError(rec.record({ ...ok, step: 2 }), 'STEP_ORDER');
    await expectError(rec.record({ ...ok, step: 1.5 }), 'BAD_INPUT', /non-negative integer/);
    await expectError(rec.record({ ...ok, lr: NaN }), 'NON_FINITE', /learning rate/);
    await expectError(rec.record({ ...ok, lr: -0.1 }), 'NON_FINITE', /learning rate/);
    await expectError(rec.record({ ...ok, lr: Infinity }), 'NON_FINITE');
    await expectError(rec.record({ ...ok, ids: [1, -2] }), 'BAD_INPUT', /sample id at position 1 is -2/);
    await expectError(rec.record({ ...ok, ids: [1, 2.5] }), 'BAD_INPUT', /non-negative integers/);
    await expectError(rec.record({ ...ok, ids: [1, 2, 3] }), 'SHAPE_MISMATCH', /expected n × dim = 3 × 6 = 18/);
    await expectError(rec.record({ ...ok, gradients: Float32Array.from(rows).fill(NaN, 3, 4) }), 'NON_FINITE', /index 3/);
    await expectError(rec.record({ ...ok, gradients: { nope: { projected: rows } } }), 'UNKNOWN_BLOCK', /unknown block "nope".*blocks are: all/);
    await expectError(rec.record({ ...ok, gradients: { all: { projected: new Float32Array(3) } } }), 'SHAPE_MISMATCH');
    await expectError(rec.record({ ...ok, weights: [1, NaN] }), 'NON_FINITE');
    await expectError(rec.record({ ...ok, weights: [1] }), 'SHAPE_MISMATCH');
    await expectError(rec.record({ ...ok, curvature: rows }), 'BAD_INPUT', /without curvature/);
    await rec.record(ok); // recording goes on after refusals
    await rec.close();
    await expectError(rec.record({ ...ok, step: 11 }), 'CLOSED');
    const traj = Trajectory.open(dir);
    expect(traj.steps).toBe(6);
    expect(traj.chunks.at(-1)!.lastStep).toBe(10);
    await expectError(() => newRecorder(dir), 'BAD_INPUT', /already holds a trajectory/);
  });

  it('keeps the ids and weights a caller passed even if it reuses their buffers before awaiting', async () => {
    const dir = join(tempDir(), 'reuse');
    const rec = newRecorder(dir);
    const ids = new Int32Array([1, 2]);
    const weights = new Float64Array([0.25, 0.75]);
    const pending = [0, 1, 2].map((step) => {
      const p = rec.record({ step, lr: 0.1, ids, weights, gradients: new Float32Array(2 * DIM).fill(step + 1) });
      ids.set([ids[0]! + 10, ids[1]! + 10]);
      weights.reverse();
      return p;
    });
    await Promise.all(pending);
    await rec.close();
    const c = await Trajectory.open(dir).readChunk(0);
    expect(Array.from(c.ids)).toEqual([1, 2, 11, 12, 21, 22]);
    expect(Array.from(c.weights)).toEqual([0.25, 0.75, 0.75, 0.25, 0.25, 0.75]);
  });

  it('checks the layout it is given', () => {
    const dir = tempDir();
    const create = (b: unknown) => () => TrajectoryRecorder.create(join(dir, String(Math.random())), { projection: { seed: 1, distribution: 'gaussian' }, blocks: b as never, backend: 'ts' });
    expect(create([])).toThrow(/at least one block/);
    expect(create([{ name: 'x', kind: 'kronecker', dIn: 0, dOut: 2, kIn: 2, kOut: 2 }])).toThrow(/block "x".dIn must be a positive integer/);
    expect(create([{ name: 'x', kind: 'weird', k: 2 }])).toThrow(/unknown kind/);
    expect(create([{ name: 'x', kind: 'projected', k: 2 }, { name: 'x', kind: 'projected', k: 2 }])).toThrow(/used twice/);
  });

  const python = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' });
  it.skipIf(python.status !== 0)('is readable by numpy (mmap) and reads a trajectory numpy wrote per docs/FORMAT.md', async () => {
    const dir = join(tempDir(), 'np');
    const rec = newRecorder(dir);
    const written = await recordSteps(rec, 0, 6);
    await rec.close();
    const check = spawnSync(
      'python3',
      ['-c', `import numpy as np; a=np.load('${join(dir, chunkFileName(0, 'rows'))}', mmap_mode='r'); s=np.load('${join(dir, chunkFileName(0, 'steps'))}'); i=np.load('${join(dir, chunkFileName(0, 'ids'))}'); print(a.shape, a.dtype, s.shape, float(a[0,0]), int(i[1]))`],
      { encoding: 'utf8' },
    );
    expect(check.stderr).toBe('');
    const rows0 = written[0]!.ids.length + written[1]!.ids.length + written[2]!.ids.length + written[3]!.ids.length;
    expect(check.stdout.trim()).toBe(`(${rows0}, ${DIM}) float32 (4, 8) ${written[0]!.rows[0]} ${[...written[0]!.ids, ...written[1]!.ids][1]}`);

    // The Python writer from docs/FORMAT.md, run as documented.
    const doc = readFileSync(join(__dirname, '..', 'docs', 'FORMAT.md'), 'utf8');
    const script = /### Writing a trajectory from Python\n\n```python\n([\s\S]*?)```/.exec(doc)![1]!;
    const pdir = tempDir();
    const ran = spawnSync('python3', ['-c', script], { cwd: pdir, encoding: 'utf8' });
    expect(ran.stderr).toBe('');
    const traj = Trajectory.open(join(pdir, 'run'));
    expect(traj.steps).toBe(2);
    expect((await traj.verify()).problems).toEqual([]);
    const out = join(pdir, 'emb');
    await computeEmbeddings(join(pdir, 'run'), { out, backend: 'ts' });
    expect(EmbeddingSet.open(out).count).toBe(64);
    expect(existsSync(join(out, 'propagator.npy'))).toBe(true);
  });
});
