// Segments (influence checkpointing) vs the sequential backward pass on this machine: K = 2
// segments in parallel (the calling thread and a worker thread) with one BLAS thread each,
// against one pass with one BLAS thread, on the same trajectory (4 blocks of 256, batch 32).
// The parallel figure is the whole job up to a queryable set: both segments, then a lazy
// composition (S_jᵀ applied to the test gradients at query time). The segments alone and an
// eager composition (S_j applied to every embedding now, 2·k² flops per row and block) are
// measured beside it. Writes benny JSON to bench/results/segments.json.
//
//   node dist/bench/segments.js [--quick]
import { existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { add, complete, cycle, save, suite } from 'benny';
import { loadBackend, type BackendChoice } from '../lib/backend/loader.js';
import type { Backend } from '../lib/backend/surface.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { compose, computeSegments } from '../lib/embeddings/segments.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { median, serial } from './util.js';

export interface SegmentsBenchResult {
  sequentialMs: number;
  parallelMs: number;
  speedup: number;
}

const BLOCK = 256;
const BLOCKS = 4;
const BATCH = 32;

function resultsDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  const out = join(dir, 'bench', 'results');
  mkdirSync(out, { recursive: true });
  return out;
}

async function recordTrajectory(dir: string, steps: number): Promise<void> {
  const dim = BLOCK * BLOCKS;
  const rec = TrajectoryRecorder.create(dir, {
    projection: { seed: 1, distribution: 'gaussian' },
    blocks: Array.from({ length: BLOCKS }, (_, b) => ({ name: `l${b}`, kind: 'projected' as const, k: BLOCK })),
    chunkSteps: 32,
    backend: 'ts',
  });
  let s = 12345;
  const grads = new Float32Array(BATCH * dim);
  for (let t = 0; t < steps; t++) {
    for (let i = 0; i < grads.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      grads[i] = (s / 4294967296 - 0.5) * 0.2;
    }
    await rec.record({ step: t, lr: 0.05, weightDecay: 1e-4, ids: Array.from({ length: BATCH }, (_, i) => (t * BATCH + i) % 5000), reduction: 'mean', gradients: grads });
  }
  await rec.close();
}

/** Runs the suite; `quick` records fewer steps and takes fewer samples. */
export async function runSegmentsBench(
  opts: { quick: boolean },
): Promise<SegmentsBenchResult & { eagerMs: number; segmentsOnlyMs: number; steps: number; backend: string; runner: string; loadAverage: { start: number[]; end: number[] } }> {
  const load0 = loadavg();
  let choice: BackendChoice = 'native';
  let backend: Backend;
  try {
    backend = loadBackend('native').backend;
  } catch {
    choice = 'ts'; // workers parallelise the TypeScript backend just as well
    backend = loadBackend('ts').backend;
  }
  const threadsBefore = backend.info().threads;
  const steps = opts.quick ? 128 : 512;
  const tmp = mkdtempSync(join(tmpdir(), 'dvemb-bench-segments-'));
  const traj = join(tmp, 'traj');
  let runner = '';
  try {
    await recordTrajectory(traj, steps);
    const sequential = async () => {
      backend.setThreads(1);
      await computeEmbeddings(traj, { out: join(tmp, 'seq'), backend, verify: true, lanes: 1 }); // one BLAS thread, one lane
    };
    const segments = async (then: 'none' | 'lazy' | 'eager') => {
      const r = await computeSegments(traj, { out: join(tmp, `seg-${then}`), K: 2, backend: choice, threadsPerSegment: 1, verify: true });
      runner = r.runner;
      if (then !== 'none') await compose(r.segments.map((x) => x.dir), { out: join(tmp, then), lazy: then === 'lazy', backend });
    };
    const label = `${steps} steps × batch ${BATCH}, ${BLOCKS} blocks of ${BLOCK} (${choice})`;
    const names = {
      seq: `sequential pass, 1 BLAS thread: ${label}`,
      only: `K = 2 segments in parallel (1 BLAS thread each), not composed: ${label}`,
      lazy: `K = 2 segments in parallel (1 BLAS thread each) + lazy compose: ${label}`,
      eager: `K = 2 segments in parallel (1 BLAS thread each) + eager compose: ${label}`,
    };
    const sample = opts.quick ? { minSamples: 2, maxTime: 0.5 } : { minSamples: 5, maxTime: 5 };
    const summary = await suite(
      'Segments: K = 2 in parallel vs the sequential pass',
      add(names.seq, serial(sequential), sample),
      add(names.only, serial(() => segments('none')), sample),
      add(names.lazy, serial(() => segments('lazy')), sample),
      add(names.eager, serial(() => segments('eager')), sample),
      cycle(),
      complete(),
      save({ file: 'segments', folder: resultsDir(), details: true }),
    );
    const ms = (name: string) => 1000 * median(summary.results.find((r) => r.name === name)!.details.sampleResults);
    const sequentialMs = ms(names.seq);
    const parallelMs = ms(names.lazy);
    const eagerMs = ms(names.eager);
    const segmentsOnlyMs = ms(names.only);
    // Other processes on a 2-core machine take a core from the parallel case first: keep the load.
    return { sequentialMs, parallelMs, speedup: sequentialMs / parallelMs, eagerMs, segmentsOnlyMs, steps, backend: choice, runner, loadAverage: { start: load0, end: loadavg() } };
  } finally {
    backend.setThreads(threadsBefore);
    rmSync(tmp, { recursive: true, force: true });
  }
}

const invoked = process.argv[1] ? pathToFileURL(realpathSync(process.argv[1])).href : '';
if (invoked === import.meta.url) {
  runSegmentsBench({ quick: process.argv.includes('--quick') }).then(
    (r) => {
      process.stdout.write(
        `\nsequential ${r.sequentialMs.toFixed(0)} ms; K = 2 segments + lazy compose ${r.parallelMs.toFixed(0)} ms (${r.runner}): ` +
          `speed-up ${r.speedup.toFixed(2)}×; segments alone ${r.segmentsOnlyMs.toFixed(0)} ms (${(r.sequentialMs / r.segmentsOnlyMs).toFixed(2)}×); with eager compose ${r.eagerMs.toFixed(0)} ms (${(r.sequentialMs / r.eagerMs).toFixed(2)}×); ` +
          `load average ${r.loadAverage.start[0]!.toFixed(2)} → ${r.loadAverage.end[0]!.toFixed(2)}\n`,
      );
    },
    (err: unknown) => {
      process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
