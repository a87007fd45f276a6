// The 2 GB test: records a trajectory of more than 2 GB of rows (4 'projected' blocks of 256 →
// dim 1024, batch 32, 16,500 steps = 2.16 GB of rows; recording is just I/O) into a temp dir
// under os.tmpdir(), then computes its embeddings in a CHILD process, so that the anonymous
// memory measured is that of the backward pass alone. The child samples its own RssAnon from
// /proc/self/status every 20 ms (file-backed pages, i.e. the page cache of the trajectory and
// of the output, are RssFile and do not count) on a worker thread, so a busy main thread cannot
// delay the samples, and prints the peak and the elapsed time as one JSON line. Everything
// under the temp dir (~4.3 GB with the embeddings) is deleted afterwards.
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { loadBackend } from '../lib/backend/loader.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { BATCH, BLOCKS, DIM, FLOPS_PER_STEP, K, recordProjected } from './backward.js';
import type { BenchContext, SuiteReport } from './run.js';

const CHILD_FLAG = '--dvemb-memory-child';
const LIMIT_MIB = 512;

interface ChildResult {
  backend: string;
  peakRssAnonKiB: number;
  baselineRssAnonKiB: number;
  peakRssFileKiB: number;
  samples: number;
  maxSampleGapMs: number;
  elapsedS: number;
  steps: number;
  occurrences: number;
}

// --- child -------------------------------------------------------------------------------------

// Shared Int32 slots between the child's main thread and its sampler.
const STOP = 0;
const PEAK_ANON = 1;
const SAMPLES = 2;
const MAX_GAP = 3;
const PEAK_FILE = 4;

const SAMPLER = `
const { workerData } = require('node:worker_threads');
const { readFileSync } = require('node:fs');
const st = new Int32Array(workerData.sab);
const field = (s, key) => { const m = new RegExp(key + ':\\\\s+(\\\\d+)').exec(s); return m ? Number(m[1]) : 0; };
let last = 0;
while (Atomics.load(st, ${STOP}) === 0) {
  const s = readFileSync('/proc/self/status', 'utf8');
  const anon = field(s, 'RssAnon');
  const file = field(s, 'RssFile');
  if (anon > Atomics.load(st, ${PEAK_ANON})) Atomics.store(st, ${PEAK_ANON}, anon);
  if (file > Atomics.load(st, ${PEAK_FILE})) Atomics.store(st, ${PEAK_FILE}, file);
  Atomics.add(st, ${SAMPLES}, 1);
  const t = Date.now();
  if (last && t - last > Atomics.load(st, ${MAX_GAP})) Atomics.store(st, ${MAX_GAP}, t - last);
  last = t;
  Atomics.wait(st, ${STOP}, 0, 20);
}
`;

function rssAnonKiB(): number {
  const m = /RssAnon:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : 0;
}

async function child(trajDir: string, outDir: string, backendChoice: 'native' | 'ts'): Promise<void> {
  const st = new Int32Array(new SharedArrayBuffer(8 * 4));
  const backend = loadBackend(backendChoice).backend;
  const worker = new Worker(SAMPLER, { eval: true, workerData: { sab: st.buffer } });
  const exited = new Promise<void>((resolve, reject) => {
    worker.once('exit', () => resolve());
    worker.once('error', reject);
  });
  while (Atomics.load(st, SAMPLES) === 0) await new Promise((r) => setTimeout(r, 5));
  const baseline = rssAnonKiB();
  const t0 = performance.now();
  const manifest = await computeEmbeddings(trajDir, { out: outDir, backend });
  const elapsedS = (performance.now() - t0) / 1000;
  Atomics.store(st, STOP, 1);
  Atomics.notify(st, STOP);
  await exited;
  const result: ChildResult = {
    backend: backend.info().backend,
    peakRssAnonKiB: Math.max(Atomics.load(st, PEAK_ANON), rssAnonKiB()),
    baselineRssAnonKiB: baseline,
    peakRssFileKiB: Atomics.load(st, PEAK_FILE),
    samples: Atomics.load(st, SAMPLES),
    maxSampleGapMs: Atomics.load(st, MAX_GAP),
    elapsedS,
    steps: manifest.steps,
    occurrences: manifest.occurrences,
  };
  process.stdout.write(JSON.stringify(result) + '\n');
}

if (process.argv[2] === CHILD_FLAG) {
  const [trajDir, outDir, choice] = process.argv.slice(3);
  child(trajDir!, outDir!, choice === 'ts' ? 'ts' : 'native').catch((err: unknown) => {
    process.stderr.write(`memory child failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}

// --- parent ------------------------------------------------------------------------------------

function dirBytes(dir: string): number {
  let total = 0;
  for (const f of readdirSync(dir)) total += statSync(join(dir, f)).size;
  return total;
}

function runChild(trajDir: string, outDir: string, backend: 'native' | 'ts'): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [fileURLToPath(import.meta.url), CHILD_FLAG, trajDir, outDir, backend], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: process.env,
    });
    let out = '';
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (d: string) => (out += d));
    proc.on('error', reject);
    proc.on('close', (code) => {
      const line = out.trim().split('\n').at(-1) ?? '';
      if (code !== 0) return reject(new Error(`memory child exited with ${code}: ${out}`));
      try {
        resolve(JSON.parse(line) as ChildResult);
      } catch {
        reject(new Error(`memory child printed no result: ${out}`));
      }
    });
  });
}

export async function runMemory(ctx: BenchContext): Promise<SuiteReport> {
  const steps = ctx.quick ? 2000 : 16_500;
  const backend = ctx.native ? 'native' : 'ts';
  const work = mkdtempSync(join(tmpdir(), 'dvemb-bench-memory-'));
  const cleanup = () => rmSync(work, { recursive: true, force: true });
  const onSignal = (sig: NodeJS.Signals) => {
    cleanup();
    process.kill(process.pid, sig);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const trajDir = join(work, 'traj');
    const outDir = join(work, 'emb');
    ctx.log(`memory: recording ${steps} steps (${BLOCKS} × ${K}, batch ${BATCH}) into ${trajDir}`);
    const t0 = performance.now();
    await recordProjected(trajDir, {
      steps,
      chunkSteps: 256,
      backend: ctx.native ?? ctx.ts,
      every: 2000,
      onProgress: (done) => ctx.log(`  ${done}/${steps} steps, ${((performance.now() - t0) / 1000).toFixed(0)} s`),
    });
    const recordS = (performance.now() - t0) / 1000;
    const trajBytes = dirBytes(trajDir);
    ctx.log(`memory: ${(trajBytes / 1e9).toFixed(2)} GB recorded in ${recordS.toFixed(1)} s; computing embeddings in a child process (${backend})`);
    const r = await runChild(trajDir, outDir, backend);
    const embBytes = dirBytes(outDir);
    const peakMiB = r.peakRssAnonKiB / 1024;
    const gflops = (FLOPS_PER_STEP * r.steps) / r.elapsedS / 1e9;
    const figures: Record<string, unknown> = {
      shape: { blocks: BLOCKS, k: K, batch: BATCH, dim: DIM, steps, chunkSteps: 256 },
      backend: r.backend,
      trajectoryBytesOnDisk: trajBytes,
      trajectoryGB: +(trajBytes / 1e9).toFixed(3),
      embeddingsBytesOnDisk: embBytes,
      recordSeconds: +recordS.toFixed(1),
      computeSeconds: +r.elapsedS.toFixed(2),
      computeGflops: +gflops.toFixed(2),
      peakRssAnonMiB: +peakMiB.toFixed(1),
      baselineRssAnonMiB: +(r.baselineRssAnonKiB / 1024).toFixed(1),
      peakRssFileMiB: +(r.peakRssFileKiB / 1024).toFixed(1),
      samples: r.samples,
      maxSampleGapMs: r.maxSampleGapMs,
      limitMiB: LIMIT_MIB,
      underLimit: peakMiB < LIMIT_MIB,
      note: ctx.quick ? 'quick run: a smaller trajectory, not the 2 GB figure' : 'RssAnon of the child process running computeEmbeddings, sampled every 20 ms',
    };
    const table: SuiteReport['table'] = [
      { figure: 'trajectory on disk', value: `${(trajBytes / 1e9).toFixed(2)} GB`, note: `${steps} steps × ${BATCH} rows × ${DIM} floats` },
      { figure: 'peak RssAnon (compute)', value: `${peakMiB.toFixed(0)} MiB`, note: `limit ${LIMIT_MIB} MiB; baseline ${(r.baselineRssAnonKiB / 1024).toFixed(0)} MiB; ${r.samples} samples` },
      { figure: 'compute time', value: `${r.elapsedS.toFixed(1)} s`, note: `${gflops.toFixed(1)} GFLOP/s, ${r.backend}` },
    ];
    return { figures, table };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    cleanup();
  }
}
