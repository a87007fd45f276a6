// The GPU benchmark of the [CUDA] issue, for a machine with an NVIDIA GPU (docs/CUDA.md has the
// recipe for the lent one). Writes bench/results/cuda.json (or --out FILE) with the device named:
//   1. the backward pass next to plain cuBLAS SGEMMs of the same shapes, in one run
//      (dvemb_cuda_bench, the C++ program next to the addon: compute-only and wall throughput);
//   2. the PyTorch peers (a loop over layers, one bmm per half-step, that captured in a CUDA
//      graph: bench/torch_peer.py), in the same session;
//   3. the GPU vs the native CPU backend on the backward pass, through the addons;
//   4. end-to-end embeddings of a GPT-2-small-sized trajectory (24 blocks × 256, batch 16,
//      10,000 steps, ~3.9 GB of rows) recorded to disk and read back, the time split into disk
//      reads, the GPU calls (and, inside them, copies vs compute from 1.) and the rest.
// Where no GPU backend loads it prints "no GPU: skipped" with the reason and exits 0.
//
//   node dist/bench/cuda.js [--quick] [--steps N] [--out FILE] [--bench-bin PATH] [--python CMD]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { loadBackend, packageRoot, type LoadedBackend } from '../lib/backend/loader.js';
import type { Backend, PropagateArgs } from '../lib/backend/surface.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { Trajectory } from '../lib/trajectory/trajectory.js';
import { rowPool } from './util.js';

const BLOCKS = 24;
const K = 256;
const BATCH = 16;
const DIM = BLOCKS * K;
const FLOPS_PER_STEP = 4 * BATCH * BLOCKS * K * K;

interface Flags {
  quick: boolean;
  steps: number;
  out: string;
  benchBin: string | null;
  python: string;
}

function parseFlags(argv: string[], root: string): Flags {
  const get = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const quick = argv.includes('--quick');
  return {
    quick,
    steps: Number(get('--steps') ?? (quick ? 500 : 10_000)),
    out: get('--out') ?? join(root, 'bench', 'results', 'cuda.json'),
    benchBin: get('--bench-bin') ?? null,
    python: get('--python') ?? 'python3',
  };
}

const log = (m: string) => process.stderr.write(`bench:cuda: ${m}\n`);
const round = (x: number, d = 1) => +x.toFixed(d);

/** Runs a program that prints one JSON object; its error (or null) otherwise. */
function runJson(cmd: string, args: string[], cwd: string): Record<string, unknown> {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 16 << 20 });
  if (r.error) return { error: `${cmd}: ${r.error.message}` };
  try {
    return JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    return { error: `${cmd} exited ${r.status}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ')}` };
  }
}

function findBenchBin(root: string, given: string | null): string | null {
  const candidates = given ? [given] : ['build/dvemb_cuda_bench', 'build-cuda/dvemb_cuda_bench', 'build-cmake/dvemb_cuda_bench'];
  for (const c of candidates) {
    const p = join(root, c);
    if (existsSync(p)) return p;
    if (existsSync(c)) return c;
  }
  return null;
}

function propagateArgs(steps: number): PropagateArgs {
  const pool = rowPool(16, BATCH * DIM);
  const rows = new Float32Array(steps * BATCH * DIM);
  for (let s = 0; s < steps; s++) rows.set(pool[s % pool.length]!, s * BATCH * DIM);
  const P = new Float32Array(BLOCKS * K * K);
  for (let b = 0; b < BLOCKS; b++) for (let i = 0; i < K; i++) P[b * K * K + i * K + i] = 1;
  return {
    precision: 'fp32',
    dim: DIM,
    blocks: Int32Array.from(Array.from({ length: BLOCKS }, (_, b) => [b * K, K]).flat()),
    propagators: P,
    steps,
    rows,
    stepRows: Int32Array.from({ length: steps + 1 }, (_, s) => s * BATCH),
    weights: new Float64Array(steps * BATCH).fill(1 / BATCH),
    curvature: null,
    stepCurvature: null,
    curvatureWeights: null,
    lr: new Float64Array(steps).fill(0.01),
    decay: new Float64Array(steps).fill(1),
    embeddings: new Float32Array(steps * BATCH * DIM),
  };
}

/** Steps per second of one propagate call over `steps` steps (after one warm-up call). */
async function propagateRate(backend: Backend, steps: number): Promise<number> {
  await backend.propagate(propagateArgs(Math.min(steps, 20)));
  const args = propagateArgs(steps);
  const t0 = performance.now();
  const bad = await backend.propagate(args);
  const ms = performance.now() - t0;
  if (bad !== -1) throw new Error(`propagate reported a non-finite step ${bad}`);
  return steps / (ms / 1000);
}

/** Records the GPT-2-small-sized trajectory, then one timed backward pass over it. */
async function endToEnd(gpu: Backend, steps: number, work: string) {
  const traj = join(work, 'traj');
  const rec = TrajectoryRecorder.create(traj, {
    projection: { seed: 7, distribution: 'gaussian' },
    blocks: Array.from({ length: BLOCKS }, (_, i) => ({ name: `h${i}`, kind: 'projected' as const, k: K })),
    chunkSteps: 1000,
    chunkBytes: 512 << 20,
    backend: gpu,
  });
  const pool = rowPool(16, BATCH * DIM);
  const ids = new Float64Array(BATCH);
  const t0 = performance.now();
  for (let step = 0; step < steps; step++) {
    for (let i = 0; i < BATCH; i++) ids[i] = (step * BATCH + i) % 50_000;
    await rec.record({ step, lr: 0.01, ids, gradients: pool[step % pool.length]! });
    if ((step + 1) % 2000 === 0) log(`recorded ${step + 1} / ${steps} steps`);
  }
  await rec.close();
  const recordMs = performance.now() - t0;

  // Time spent in chunk reads (read + crc32) and in the GPU calls, by wrapping both.
  let readMs = 0;
  let propagateMs = 0;
  const proto = Trajectory.prototype;
  const readChunk = proto.readChunk;
  proto.readChunk = async function (this: Trajectory, i: number, verify = true) {
    const t = performance.now();
    try {
      return await readChunk.call(this, i, verify);
    } finally {
      readMs += performance.now() - t;
    }
  };
  const timed: Backend = Object.create(gpu) as Backend;
  timed.propagate = async (a) => {
    const t = performance.now();
    try {
      return await gpu.propagate(a);
    } finally {
      propagateMs += performance.now() - t;
    }
  };
  const t1 = performance.now();
  try {
    await computeEmbeddings(traj, { out: join(work, 'emb'), backend: timed });
  } finally {
    proto.readChunk = readChunk;
  }
  const totalMs = performance.now() - t1;
  return {
    steps,
    rowBytes: steps * BATCH * DIM * 4,
    recordMs: round(recordMs),
    // The trajectory was just written, so its reads mostly come from the page cache.
    pass: {
      totalMs: round(totalMs),
      readMs: round(readMs),
      propagateMs: round(propagateMs),
      otherMs: round(Math.max(0, totalMs - propagateMs - readMs)),
      stepsPerSec: round(steps / (totalMs / 1000)),
      note: 'reads overlap the GPU calls (the next chunk is read while one computes): the parts can add up to more than the total',
    },
    boundBy: readMs > propagateMs ? 'disk reads (read + crc32)' : 'the GPU calls (copies + compute)',
  };
}

async function main(): Promise<void> {
  const root = packageRoot();
  const flags = parseFlags(process.argv.slice(2), root);
  let gpu: LoadedBackend;
  try {
    gpu = loadBackend('cuda');
  } catch (err) {
    console.log(`no GPU: skipped (${(err as Error).message.split('\n')[0]})`);
    return;
  }
  const info = gpu.backend.info();
  log(`device: ${info.device}`);
  const result: Record<string, unknown> = {
    date: new Date().toISOString(),
    device: info.device,
    blas: info.blas,
    host: { cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: round(totalmem() / 2 ** 30), node: process.version },
    shape: { blocks: BLOCKS, k: K, batch: BATCH, precision: 'fp32', tf32: false, flopsPerStep: FLOPS_PER_STEP },
  };

  // 1. Backward pass vs plain cuBLAS SGEMMs of the same shapes.
  const bin = findBenchBin(root, flags.benchBin);
  const gemmSteps = flags.quick ? 500 : 2000;
  result.vsCublas = bin
    ? runJson(bin, ['--blocks', `${BLOCKS}`, '--k', `${K}`, '--batch', `${BATCH}`, '--steps', `${gemmSteps}`], root)
    : { error: 'dvemb_cuda_bench not found: build it with cmake (DVEMB_CUDA=ON) or pass --bench-bin' };
  log('cuBLAS comparison done');

  // 2. PyTorch peers.
  const torch = runJson(flags.python, [join(root, 'bench', 'torch_peer.py'), '--steps', `${gemmSteps}`], root);
  result.torch = torch;
  const ours = (result.vsCublas as { propagate?: { stepsPerSecCompute?: number; stepsPerSecWall?: number } }).propagate;
  const graph = (torch as { graph?: { stepsPerSec?: number } }).graph?.stepsPerSec;
  if (ours?.stepsPerSecCompute && graph) {
    result.vsTorchGraph = {
      computeRatio: round(ours.stepsPerSecCompute / graph, 2),
      wallRatio: round((ours.stepsPerSecWall ?? 0) / graph, 2),
      note: 'the torch peers keep rows on the device; compare computeRatio (ours with rows on the device too) against the 1.5x target',
    };
  }
  log('PyTorch peers done');

  // 3. GPU vs the native CPU backend, through the addons.
  let cpu: LoadedBackend | null = null;
  try {
    cpu = loadBackend('native');
  } catch {
    // reported below
  }
  const gpuRate = await propagateRate(gpu.backend, flags.quick ? 500 : 2000);
  const cpuRate = cpu ? await propagateRate(cpu.backend, flags.quick ? 20 : 100) : 0;
  result.vsCpu = {
    gpuStepsPerSec: round(gpuRate),
    cpuStepsPerSec: cpu ? round(cpuRate) : null,
    cpu: cpu ? cpu.backend.info().blas : 'native CPU addon not built',
    ratio: cpu ? round(gpuRate / cpuRate, 1) : null,
  };
  log(`GPU ${round(gpuRate)} steps/s, CPU ${round(cpuRate)} steps/s`);

  // 4. End to end.
  const work = mkdtempSync(join(tmpdir(), 'dvemb-bench-cuda-'));
  try {
    log(`end to end: recording ${flags.steps} steps (~${round((flags.steps * BATCH * DIM * 4) / 2 ** 30, 2)} GiB) in ${work}`);
    result.endToEnd = await endToEnd(gpu.backend, flags.steps, work);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }

  mkdirSync(dirname(flags.out), { recursive: true });
  const previous = existsSync(flags.out) ? readFileSync(flags.out, 'utf8') : null;
  writeFileSync(flags.out, JSON.stringify(result, null, 2) + '\n');
  log(`wrote ${flags.out}${previous ? ' (replacing the previous run)' : ''}`);
  console.log(JSON.stringify(result, null, 2));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
