// The dvemb command line, run as a user would: a real process on the built dist/ files.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { chunkFileName } from '../lib/trajectory/format.js';
import { NPY_HEADER_BYTES, bytesOf, npyHeader } from '../lib/trajectory/npy.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { randomF32, rng, tempDir } from './helpers.js';

const CLI = join(__dirname, '..', 'dist', 'lib', 'cli', 'dvemb.js');
const DIM = 10;

function dvemb(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, DVEMB_QUIET: '1' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let dir: string;
beforeAll(async () => {
  dir = tempDir();
  const rec = TrajectoryRecorder.create(join(dir, 'traj'), { projection: { seed: 4, distribution: 'gaussian' }, blocks: [{ name: 'm', kind: 'projected', k: DIM }], chunkSteps: 4, backend: 'ts' });
  const r = rng(2);
  for (let step = 0; step < 10; step++) await rec.record({ step, lr: 0.1, ids: [step % 5, (step + 1) % 5, 7], gradients: randomF32(3 * DIM, r) });
  await rec.close();
});

describe('dvemb CLI', () => {
  it('has help for every command, and exits 1 on an unknown one', () => {
    for (const cmd of ['doctor', 'inspect', 'compute', 'query']) {
      const r = dvemb(cmd, '--help');
      expect(r.code).toBe(0);
      expect(r.out).toContain(`dvemb ${cmd}`);
    }
    expect(dvemb('nonsense').code).toBe(1);
    expect(dvemb('compute').code).toBe(1);
  });

  it('doctor reports the backend in use as JSON', () => {
    const r = dvemb('doctor', '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as { backend: string; info: { threads: number }; passedOver: { fix: string }[] };
    expect(['cuda', 'native-cpu', 'ts']).toContain(report.backend);
    expect(report.info.threads).toBeGreaterThanOrEqual(1);
    for (const p of report.passedOver) expect(p.fix.length).toBeGreaterThan(10);
  });

  it('inspect, compute and query work end to end, with JSON output', () => {
    const inspect = dvemb('inspect', join(dir, 'traj'), '--json');
    expect(inspect.code).toBe(0);
    const summary = JSON.parse(inspect.out) as { steps: number; occurrences: number; integrity: { problems: string[] } };
    expect(summary.steps).toBe(10);
    expect(summary.occurrences).toBe(30);
    expect(summary.integrity.problems).toEqual([]);

    const compute = dvemb('compute', join(dir, 'traj'), '--out', join(dir, 'emb'), '--json', '--precision', 'fp64');
    expect(compute.code).toBe(0);
    expect((JSON.parse(compute.out) as { occurrences: number }).occurrences).toBe(30);

    const tests = randomF32(2 * DIM, rng(3));
    writeFileSync(join(dir, 'tests.npy'), Buffer.concat([npyHeader('<f4', [2, DIM]), bytesOf(tests)]));
    const query = dvemb('query', join(dir, 'emb'), '--test', join(dir, 'tests.npy'), '--top', '3', '--json');
    expect(query.code).toBe(0);
    const result = JSON.parse(query.out) as { proponents: { id: number }[] }[];
    expect(result).toHaveLength(2);
    expect(result[0]!.proponents.length).toBeLessThanOrEqual(3);

    const occ = dvemb('query', join(dir, 'emb'), '--test', join(dir, 'tests.npy'), '--per', 'occurrence');
    expect(occ.code).toBe(0);
    expect(occ.out).toMatch(/@ step \d+/);
  });

  it('exits 2 with the problem and the fix on bad data, and 3 when integrity fails', () => {
    writeFileSync(join(dir, 'wide.npy'), Buffer.concat([npyHeader('<f4', [1, DIM + 1]), bytesOf(new Float32Array(DIM + 1))]));
    const q = dvemb('query', join(dir, 'emb'), '--test', join(dir, 'wide.npy'));
    expect(q.code).toBe(2);
    expect(q.err).toMatch(/width 10.*Fix: project the test gradients/);
    const sidecar = dvemb('query', join(dir, 'emb'), '--test', join(dir, 'tests.npy'));
    expect(sidecar.code).toBe(0);
    writeFileSync(join(dir, 'tests.npy.json'), JSON.stringify({ fingerprint: 'another-seed' }));
    const seed = dvemb('query', join(dir, 'emb'), '--test', join(dir, 'tests.npy'));
    expect(seed.code).toBe(2);
    expect(seed.err).toMatch(/projected for layout another-seed/);
    expect(dvemb('compute', join(dir, 'nowhere'), '--out', join(dir, 'x')).code).toBe(2);
    expect(dvemb('query', join(dir, 'traj'), '--test', join(dir, 'tests.npy')).err).toMatch(/holds no complete embeddings/);

    const path = join(dir, 'traj', chunkFileName(1, 'rows'));
    const bytes = readFileSync(path);
    bytes[NPY_HEADER_BYTES + 3]! ^= 0x01;
    writeFileSync(path, bytes);
    const bad = dvemb('inspect', join(dir, 'traj'));
    expect(bad.code).toBe(3);
    expect(bad.out).toMatch(/1 problem\(s\)[\s\S]*chunk-000001\.rows\.npy is corrupt/);
  });
});
