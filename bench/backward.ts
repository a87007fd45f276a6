// The backward pass (REFERENCE §3), per-block propagators of k = 256, batch 32:
//   (a) one backward step: propagate with steps = 1, native vs TS;
//   (b) the whole pass through computeEmbeddings over a trajectory recorded to a temp dir and read
//       back from disk (page cache warmed first), native (crc32 verify on and off) and TS;
//   (c) a plain OpenBLAS sgemm of the same shapes, in the same suite, through the addon's `score`
//       op (out = E·Tᵀ, one cblas_sgemm and nothing else; the addon exports no bare gemm):
//         E = diag(ηw) G Pᵀ     (32×256)·(256×256)ᵀ  = score(n=32,  m=256, dim=256)  same shape
//         P ← cP − Eᵀ G          (256×32)·(32×256)    ≈ score(n=256, m=256, dim=32)   a rank-32
//       product with the same flop count and shape class (score's operands are (256×32)·(256×32)ᵀ
//       with β = 0, the update's are (32×256)ᵀ·(32×256) with β = c).
//       Each score call also pays one AsyncWorker dispatch, which propagate pays once per chunk;
//       a third case (score 1×1×1, as many calls) measures that cost, and the "sgemm" throughput
//       is taken with it subtracted (the raw figure is reported too).
// Flops: 4·b·Σk² per step (2·b·k² for E and 2·b·k² for the update, per block).
// A profile of one instrumented pass says where the time goes (reads + crc32, propagate, writes,
// fsync, the final re-read that counts examples).
import { mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { packageRoot } from '../lib/backend/loader.js';
import type { Backend, PropagateArgs } from '../lib/backend/surface.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import type { ChunkData } from '../lib/trajectory/chunk.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { Trajectory } from '../lib/trajectory/trajectory.js';
import type { BenchContext, CaseSpec, SuiteReport } from './run.js';
import { rowPool } from './util.js';

export const BLOCKS = 4;
export const K = 256;
export const BATCH = 32;
export const DIM = BLOCKS * K;
/** 4·b·Σk²: flops of one backward step (per-block propagators). */
export const FLOPS_PER_STEP = 4 * BATCH * BLOCKS * K * K;

export interface RecordOptions {
  steps: number;
  chunkSteps: number;
  backend: Backend;
  /** Called every `every` steps. */
  onProgress?: (done: number) => void;
  every?: number;
}

/**
 * Records a trajectory of `steps` steps of BATCH examples over BLOCKS 'projected' blocks of K
 * columns (recording is then just I/O). Rows come from a pool of 16 seeded batches, uniform in
 * ±0.05 (row norm² ≈ 0.2 per block), lr 0.01: the propagators stay well inside float range.
 * Returns the bytes of rows written.
 */
export async function recordProjected(dir: string, o: RecordOptions): Promise<number> {
  const rec = TrajectoryRecorder.create(dir, {
    projection: { seed: 7, distribution: 'gaussian' },
    blocks: Array.from({ length: BLOCKS }, (_, i) => ({ name: `layer${i}`, kind: 'projected' as const, k: K })),
    chunkSteps: o.chunkSteps,
    backend: o.backend,
  });
  const pool = rowPool(16, BATCH * DIM);
  const ids = new Float64Array(BATCH);
  for (let step = 0; step < o.steps; step++) {
    for (let i = 0; i < BATCH; i++) ids[i] = (step * BATCH + i) % 50_000;
    await rec.record({ step, lr: 0.01, ids, gradients: pool[step % pool.length]! });
    if (o.onProgress && (step + 1) % (o.every ?? 1000) === 0) o.onProgress(step + 1);
  }
  await rec.close();
  return o.steps * BATCH * DIM * 4;
}

function identity(): Float32Array {
  const P = new Float32Array(BLOCKS * K * K);
  for (let b = 0; b < BLOCKS; b++) for (let i = 0; i < K; i++) P[b * K * K + i * K + i] = 1;
  return P;
}

const BLOCK_LAYOUT = Int32Array.from(Array.from({ length: BLOCKS }, (_, b) => [b * K, K]).flat());

/** propagate() arguments for the first `steps` steps of a chunk, with their own P and output. */
function propagateArgs(chunk: ChunkData, steps: number): PropagateArgs {
  const rows = chunk.stepRows[steps]!;
  const decay = new Float64Array(steps);
  for (let s = 0; s < steps; s++) decay[s] = 1 - chunk.lr[s]! * chunk.weightDecay[s]!;
  return {
    precision: 'fp32',
    dim: DIM,
    blocks: BLOCK_LAYOUT,
    propagators: identity(),
    steps,
    rows: chunk.rows.slice(0, rows * DIM),
    stepRows: chunk.stepRows.slice(0, steps + 1),
    weights: chunk.weights.slice(0, rows),
    curvature: null,
    stepCurvature: null,
    curvatureWeights: null,
    lr: chunk.lr.slice(0, steps),
    decay,
    embeddings: new Float32Array(rows * DIM),
  };
}

/** `calls` score calls of one shape, awaited one after the other (as the propagation runs). */
function scoreLoop(backend: Backend, n: number, m: number, dim: number, calls: number): () => Promise<void> {
  let x = 1;
  const fill = (a: Float32Array) => {
    for (let i = 0; i < a.length; i++) a[i] = ((x = (x * 48271) % 2147483647) / 2147483647 - 0.5) * 0.1;
    return a;
  };
  const args = { n, m, dim, embeddings: fill(new Float32Array(n * dim)), tests: fill(new Float32Array(m * dim)), out: new Float32Array(n * m) };
  return async () => {
    for (let c = 0; c < calls; c++) await backend.score(args);
  };
}

// --- profile of one pass ------------------------------------------------------------------------

interface Span {
  kind: 'propagate' | 'read' | 'write' | 'sync' | 'truncate';
  t0: number;
  t1: number;
  verify?: boolean;
}

type AsyncMethod = (this: unknown, ...a: unknown[]) => Promise<unknown>;

/** Runs computeEmbeddings once with its I/O and kernel calls wrapped in timers. */
async function profilePass(backend: Backend, trajDir: string, out: string, verify: boolean) {
  const spans: Span[] = [];
  const now = () => performance.now();
  const timed = <T>(kind: Span['kind'], p: () => Promise<T>, extra: Partial<Span> = {}): Promise<T> => {
    const t0 = now();
    return p().then((v) => {
      spans.push({ kind, t0, t1: now(), ...extra });
      return v;
    });
  };
  const wrapped: Backend = {
    info: () => backend.info(),
    setThreads: (t) => backend.setThreads(t),
    projectionMatrix: (k, r, c) => backend.projectionMatrix(k, r, c),
    projectKronecker: (a) => backend.projectKronecker(a),
    projectDense: (a) => backend.projectDense(a),
    propagate: (a) => timed('propagate', () => backend.propagate(a)),
    score: (a) => backend.score(a),
  };
  // Trajectory.readChunk (read + crc32) and the FileHandle methods computeEmbeddings writes with.
  const trajProto = Trajectory.prototype;
  const readChunk = trajProto.readChunk;
  trajProto.readChunk = function (this: Trajectory, i: number, v = true) {
    return timed('read', () => readChunk.call(this, i, v), { verify: v });
  };
  const probe = await open(join(trajDir, 'manifest.json'), 'r');
  const fhProto = Object.getPrototypeOf(probe) as Record<string, AsyncMethod>;
  await probe.close();
  const saved: Record<string, AsyncMethod> = {};
  for (const [name, kind] of [['write', 'write'], ['sync', 'sync'], ['truncate', 'truncate']] as const) {
    const orig = fhProto[name]!;
    saved[name] = orig;
    fhProto[name] = function (this: unknown, ...a: unknown[]) {
      return timed(kind, () => orig.apply(this, a));
    };
  }
  const t0 = now();
  const cpu0 = process.cpuUsage();
  try {
    await computeEmbeddings(trajDir, { out, backend: wrapped, verify });
  } finally {
    trajProto.readChunk = readChunk;
    for (const [name, orig] of Object.entries(saved)) fhProto[name] = orig;
  }
  const t1 = now();
  const cpu = process.cpuUsage(cpu0);
  const props = spans.filter((s) => s.kind === 'propagate');
  const firstP = Math.min(...props.map((s) => s.t0));
  const lastP = Math.max(...props.map((s) => s.t1));
  const sum = (xs: Span[]) => xs.reduce((a, s) => a + (s.t1 - s.t0), 0);
  const propagateMs = sum(props);
  const reads = spans.filter((s) => s.kind === 'read');
  return {
    totalMs: t1 - t0,
    // CPU time of the whole process (all threads, user + system) during the pass: less sensitive
    // to a busy machine than wall time (OpenBLAS threads spinning while they wait count too).
    cpuMs: (cpu.user + cpu.system) / 1000,
    propagateMs,
    // From the call to the first propagate: output files created and sized, first chunk read.
    startupMs: firstP - t0,
    // Between propagates: waiting on the read-ahead, the occurrence/step tables, the previous writes.
    loopGapsMs: lastP - firstP - propagateMs,
    // After the last propagate: the last chunk's writes, fsync of the outputs, the propagator file
    // (written and fsynced synchronously), renames, the manifest; and any chunk re-read there.
    tailMs: t1 - lastP,
    tailWritesMs: sum(spans.filter((s) => s.kind === 'write' && s.t0 >= lastP)),
    tailSyncMs: sum(spans.filter((s) => s.kind === 'sync')),
    tailReadsMs: sum(reads.filter((s) => s.t0 >= lastP)),
    // Overlapped with the propagation (run alongside it), for reference.
    loopReadsMs: sum(reads.filter((s) => s.t0 < lastP)),
    writesMs: sum(spans.filter((s) => s.kind === 'write')),
    truncateMs: sum(spans.filter((s) => s.kind === 'truncate')),
    chunks: props.length,
  };
}

type Profile = Awaited<ReturnType<typeof profilePass>>;

function medianProfile(ps: Profile[]): Profile {
  const keys = Object.keys(ps[0]!) as (keyof Profile)[];
  const out = {} as Profile;
  for (const k of keys) {
    const xs = ps.map((p) => p[k]).sort((a, b) => a - b);
    out[k] = xs[xs.length >> 1]!;
  }
  return out;
}

const round = (x: number, d = 2) => +x.toFixed(d);

export async function runBackward(ctx: BenchContext): Promise<SuiteReport> {
  const { native, ts } = ctx;
  const steps = ctx.quick ? 128 : 400;
  const tsSteps = ctx.quick ? 16 : 64;
  const chunkSteps = 64;
  const work = mkdtempSync(join(tmpdir(), 'dvemb-bench-backward-'));
  try {
    const trajDir = join(work, 'traj');
    const tsTrajDir = join(work, 'traj-ts');
    ctx.log(`recording ${steps} + ${tsSteps} steps (${BLOCKS} blocks × ${K}, batch ${BATCH}) into ${work}`);
    const rowBytes = await recordProjected(trajDir, { steps, chunkSteps, backend: native ?? ts });
    await recordProjected(tsTrajDir, { steps: tsSteps, chunkSteps, backend: native ?? ts });
    // Warm the page cache (and the JIT) with one full pass each.
    if (native) await computeEmbeddings(trajDir, { out: join(work, 'warm'), backend: native });
    await computeEmbeddings(tsTrajDir, { out: join(work, 'warm-ts'), backend: ts });

    const chunk0 = await Trajectory.open(trajDir).readChunk(0);
    const cases: CaseSpec[] = [];
    const name = {
      propChunk: `native: propagate ${chunkSteps} steps in memory (no I/O)`,
      sgemmE: `native: sgemm baseline E-shape, score 32×256·(256×256)ᵀ × ${chunkSteps * BLOCKS} calls`,
      sgemmU: `native: sgemm baseline update-shape, score 256×32·(256×32)ᵀ × ${chunkSteps * BLOCKS} calls`,
      dispatch: `native: score dispatch overhead, 1×1×1 × ${chunkSteps * BLOCKS} calls`,
      passVerify: `native: backward pass (computeEmbeddings), ${steps} steps from disk, verify on`,
      passNoVerify: `native: backward pass (computeEmbeddings), ${steps} steps from disk, verify off`,
      stepNative: 'native: one backward step (propagate, steps=1)',
      stepTs: 'ts: one backward step (propagate, steps=1)',
      passTs: `ts: backward pass (computeEmbeddings), ${tsSteps} steps from disk, verify on`,
    };
    const sgemmE = native ? scoreLoop(native, BATCH, K, K, chunkSteps * BLOCKS) : null;
    const sgemmU = native ? scoreLoop(native, K, K, BATCH, chunkSteps * BLOCKS) : null;
    const dispatch = native ? scoreLoop(native, 1, 1, 1, chunkSteps * BLOCKS) : null;
    const passVerify = () => computeEmbeddings(trajDir, { out: join(work, 'out-verify'), backend: native!, verify: true });
    if (native) {
      const chunkArgs = propagateArgs(chunk0, chunkSteps);
      cases.push({ name: name.propChunk, op: () => native.propagate(chunkArgs) });
      cases.push({ name: name.sgemmE, op: sgemmE! });
      cases.push({ name: name.sgemmU, op: sgemmU! });
      cases.push({ name: name.dispatch, op: dispatch! });
      cases.push({ name: name.passVerify, op: passVerify, slow: true });
      cases.push({
        name: name.passNoVerify,
        op: () => computeEmbeddings(trajDir, { out: join(work, 'out-noverify'), backend: native, verify: false }),
        slow: true,
      });
      const oneNative = propagateArgs(chunk0, 1);
      cases.push({ name: name.stepNative, op: () => native.propagate(oneNative) });
    }
    const oneTs = propagateArgs(chunk0, 1);
    cases.push({ name: name.stepTs, op: () => ts.propagate(oneTs) });
    cases.push({ name: name.passTs, op: () => computeEmbeddings(tsTrajDir, { out: join(work, 'out-ts'), backend: ts }), slow: true });

    const stats = await ctx.runSuite('Backward pass (native vs TS vs sgemm)', 'backward', cases);
    const med = (n: string) => stats.get(n)?.median ?? NaN;
    const gf = (flops: number, seconds: number) => flops / seconds / 1e9;

    const figures: Record<string, unknown> = {
      shape: { blocks: BLOCKS, k: K, batch: BATCH, dim: DIM, steps, tsSteps, chunkSteps, flopsPerStep: FLOPS_PER_STEP, trajectoryRowBytes: rowBytes },
      flopCount: '4·b·Σk² per step: E = diag(ηw)·G·Pᵀ (2·b·k²) and P ← cP − Eᵀ·G (2·b·k²) per block',
      sgemmBaseline:
        "addon `score` (one cblas_sgemm, no other work): (32×256)·(256×256)ᵀ is E's shape exactly; " +
        '(256×32)·(256×32)ᵀ stands for the rank-32 update (same flops and shape class); per-call AsyncWorker dispatch ' +
        '(measured with 1×1×1 calls) is subtracted for the headline sgemm figure',
      nativeUnavailable: ctx.nativeError,
      timing: 'median time of one benny operation per case',
      cases: Object.fromEntries(
        [...stats.values()].map((s) => [s.name, { medianMs: round(s.median * 1e3, 4), bennyOps: s.ops, marginPct: s.margin, samples: s.samples }]),
      ),
    };
    const table: SuiteReport['table'] = [];
    const tsStepGf = gf(FLOPS_PER_STEP, med(name.stepTs));
    const tsPassGf = gf(FLOPS_PER_STEP * tsSteps, med(name.passTs));

    if (native) {
      const chunkFlops = FLOPS_PER_STEP * chunkSteps;
      const overhead = med(name.dispatch);
      const sgemmRawS = med(name.sgemmE) + med(name.sgemmU);
      const sgemmS = sgemmRawS - 2 * overhead;
      const sgemmGf = gf(chunkFlops, sgemmS);
      const sgemmRawGf = gf(chunkFlops, sgemmRawS);
      const passGf = gf(FLOPS_PER_STEP * steps, med(name.passVerify));
      const passNoVerifyGf = gf(FLOPS_PER_STEP * steps, med(name.passNoVerify));
      const propGf = gf(chunkFlops, med(name.propChunk));
      const stepGf = gf(FLOPS_PER_STEP, med(name.stepNative));
      const perCall = chunkSteps * BLOCKS;
      const eGf = gf(chunkFlops / 2, med(name.sgemmE) - overhead);
      const uGf = gf(chunkFlops / 2, med(name.sgemmU) - overhead);
      const warnings: string[] = [];
      if (!(med(name.sgemmE) - overhead > 0.25 * med(name.sgemmE) && med(name.sgemmU) - overhead > 0.25 * med(name.sgemmU))) {
        warnings.push('the dispatch time measured is ≥ 75% of a baseline case: the machine was too busy for the subtraction to mean much; use the raw sgemm figure or rerun');
      }

      // The same ratios from interleaved runs (baseline, pass on, pass off, TS pass, baseline, ...),
      // each pass compared with the baseline measured just before and after it: less exposed to a
      // noisy neighbour than benny's one-case-after-the-other order.
      const reps = ctx.quick ? 2 : 7;
      const paired: number[] = [];
      const pairedNoVerify: number[] = [];
      const pairedTs: number[] = [];
      const rounds: { sgemmGflops: number; passMs: number; passVerifyOffMs: number; tsPassMs: number }[] = [];
      const timeIt = async (f: () => Promise<unknown>) => {
        const t = performance.now();
        await f();
        return (performance.now() - t) / 1000;
      };
      /** Seconds of plain sgemm for one chunk (chunkSteps steps), dispatch subtracted; mean of 2. */
      const baseChunk = async () => {
        let t = 0;
        for (let c = 0; c < 2; c++) t += (await timeIt(sgemmE!)) + (await timeIt(sgemmU!)) - 2 * (await timeIt(dispatch!));
        return t / 2;
      };
      const passNoVerify = () => computeEmbeddings(trajDir, { out: join(work, 'out-noverify'), backend: native, verify: false });
      const passTs = () => computeEmbeddings(tsTrajDir, { out: join(work, 'out-ts'), backend: ts });
      for (let r = 0; r < reps; r++) {
        const before = await baseChunk();
        const tPass = await timeIt(passVerify);
        const tPassNv = await timeIt(passNoVerify);
        const tTs = await timeIt(passTs);
        const base = (before + (await baseChunk())) / 2 / chunkSteps; // seconds of sgemm per step
        paired.push((base * steps) / tPass);
        pairedNoVerify.push((base * steps) / tPassNv);
        pairedTs.push((base * tsSteps) / tTs);
        rounds.push({ sgemmGflops: round(gf(FLOPS_PER_STEP, base)), passMs: round(tPass * 1e3, 1), passVerifyOffMs: round(tPassNv * 1e3, 1), tsPassMs: round(tTs * 1e3, 1) });
      }
      const mid = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

      // Where one pass spends its time.
      const profReps = ctx.quick ? 1 : 3;
      const profOn: Profile[] = [];
      const profOff: Profile[] = [];
      for (let r = 0; r < profReps; r++) {
        profOn.push(await profilePass(native, trajDir, join(work, 'out-prof'), true));
        profOff.push(await profilePass(native, trajDir, join(work, 'out-prof'), false));
      }
      const traj = Trajectory.open(trajDir);
      const readAll = async (verify: boolean) => {
        const t = performance.now();
        for (let i = 0; i < traj.chunks.length; i++) await traj.readChunk(i, verify);
        return performance.now() - t;
      };
      const readOnMs = Math.min(await readAll(true), await readAll(true), await readAll(true));
      const readOffMs = Math.min(await readAll(false), await readAll(false), await readAll(false));
      // The pass's propagate calls again, on the same chunks read beforehand, with nothing else
      // running: the difference to propagateMs inside the pass is what the concurrent reads, crc32
      // and writes cost the BLAS threads. Fresh outputs per chunk, as the pass allocates them.
      const chunks: ChunkData[] = [];
      for (let i = traj.chunks.length - 1; i >= 0; i--) chunks.push(await traj.readChunk(i, false));
      const propagateAlone = async (freshOutput: boolean) => {
        const P = identity();
        const shared = new Float32Array(chunkSteps * BATCH * DIM);
        let ms = 0;
        const cpu0 = process.cpuUsage();
        for (const c of chunks) {
          const a = propagateArgs(c, c.steps);
          a.propagators = P;
          a.embeddings = freshOutput ? new Float32Array(c.rows.length) : shared.subarray(0, c.rows.length);
          a.rows = c.rows; // the read buffer itself, as the pass passes it
          const t = performance.now();
          await native.propagate(a);
          ms += performance.now() - t;
        }
        const cpu = process.cpuUsage(cpu0);
        return { ms, cpuMs: (cpu.user + cpu.system) / 1000 };
      };
      const aloneFresh: number[] = [];
      const aloneFreshCpu: number[] = [];
      const aloneReused: number[] = [];
      for (let r = 0; r < 3; r++) {
        const a = await propagateAlone(true);
        aloneFresh.push(a.ms);
        aloneFreshCpu.push(a.cpuMs);
        aloneReused.push((await propagateAlone(false)).ms);
      }
      const propagateAloneMs = mid(aloneFresh);
      const propagateAloneCpuMs = mid(aloneFreshCpu);
      const propagateAloneReusedOutputMs = mid(aloneReused);
      const pOn = medianProfile(profOn);
      const pOff = medianProfile(profOff);
      const shape = (p: Profile) => ({
        ...Object.fromEntries(Object.entries(p).map(([k, v]) => [k, round(v, 2)])),
        propagateGflopsInsidePass: round(gf(FLOPS_PER_STEP * steps, p.propagateMs / 1000)),
        passGflops: round(gf(FLOPS_PER_STEP * steps, p.totalMs / 1000)),
        shareOfTotal: {
          propagate: round(p.propagateMs / p.totalMs, 3),
          startup: round(p.startupMs / p.totalMs, 3),
          loopGaps: round(p.loopGapsMs / p.totalMs, 3),
          tail: round(p.tailMs / p.totalMs, 3),
        },
      });

      // The plain-sgemm baseline without JS dispatch: the same GEMM sequence as a C++ loop over
      // data in memory (native/test/gemm_bench.cc), run before and after the pass's timings.
      const cpp = cppSgemmLoop(steps);
      const cppGf = cpp ? cpp.gflops : NaN;
      if (cpp) {
        table.push(
          { figure: 'sgemm C++ loop GFLOP/s', value: cppGf.toFixed(1), note: `the same GEMMs in native/test/gemm_bench.cc, ${cpp.threads} BLAS threads, median of ${cpp.runs} runs` },
          { figure: 'backward / C++ sgemm loop (verify on)', value: (passGf / cppGf).toFixed(3), note: 'target ≥ 0.8' },
          { figure: 'backward / C++ sgemm loop (verify off)', value: (passNoVerifyGf / cppGf).toFixed(3) },
          { figure: 'propagate in memory / C++ loop', value: (propGf / cppGf).toFixed(3) },
          { figure: 'TS / C++ sgemm loop', value: (tsPassGf / cppGf).toFixed(4), note: 'target ≥ 0.015' },
        );
      } else {
        warnings.push('build-cmake/dvemb_gemm_bench is missing (npm run build:bench-native): only the score-based sgemm estimate is reported');
      }
      Object.assign(figures, {
        warnings,
        sgemmCppLoop: cpp
          ? {
              ...cpp,
              backwardOverSgemm: round(passGf / cppGf, 3),
              backwardOverSgemmVerifyOff: round(passNoVerifyGf / cppGf, 3),
              propagateInMemoryOverSgemm: round(propGf / cppGf, 3),
              tsOverSgemm: round(tsPassGf / cppGf, 4),
            }
          : null,
        gflops: {
          backwardPassVerifyOn: round(passGf),
          backwardPassVerifyOff: round(passNoVerifyGf),
          propagateInMemory: round(propGf),
          oneStepNative: round(stepGf),
          oneStepTs: round(tsStepGf, 3),
          backwardPassTs: round(tsPassGf, 3),
          sgemm: round(sgemmGf),
          sgemmRawWithDispatch: round(sgemmRawGf),
          sgemmEShape: round(eGf),
          sgemmUpdateShape: round(uGf),
          scoreDispatchUsPerCall: round((overhead / perCall) * 1e6, 2),
        },
        ratios: {
          backwardOverSgemm: round(passGf / sgemmGf, 3),
          backwardOverSgemmVerifyOff: round(passNoVerifyGf / sgemmGf, 3),
          backwardOverSgemmRaw: round(passGf / sgemmRawGf, 3),
          propagateInMemoryOverSgemm: round(propGf / sgemmGf, 3),
          backwardOverSgemmInterleaved: round(mid(paired), 3),
          backwardOverSgemmInterleavedVerifyOff: round(mid(pairedNoVerify), 3),
          tsOverSgemmInterleaved: round(mid(pairedTs), 4),
          interleavedSamples: {
            verifyOn: paired.map((x) => round(x, 3)),
            verifyOff: pairedNoVerify.map((x) => round(x, 3)),
            ts: pairedTs.map((x) => round(x, 4)),
            rounds,
          },
          tsOverSgemm: round(tsPassGf / sgemmGf, 4),
          tsOneStepOverSgemm: round(tsStepGf / sgemmGf, 4),
          nativeOverTsBackwardPass: round(passGf / tsPassGf, 1),
          nativeOverTsOneStep: round(stepGf / tsStepGf, 1),
          targets: { backwardOverSgemm: 0.8, tsOverSgemm: 0.015 },
        },
        profile: {
          note:
            'median of instrumented passes (ms). startup = call → first propagate (file creation, first chunk read); ' +
            'loopGaps = time between propagates (waiting on the read-ahead, building tables, awaiting writes); ' +
            'tail = after the last propagate (last chunk writes, fsync of outputs, propagator file, renames, manifest); ' +
            'loopReads / writes ran alongside the propagation',
          verifyOn: shape(pOn),
          verifyOff: shape(pOff),
          standaloneReadAllChunksMs: { verifyOn: round(readOnMs), verifyOff: round(readOffMs), crc32Ms: round(readOnMs - readOffMs) },
          propagateSameChunksAloneMs: {
            freshOutputs: round(propagateAloneMs),
            freshOutputsCpuMs: round(propagateAloneCpuMs),
            reusedOutput: round(propagateAloneReusedOutputMs),
            gflops: round(gf(FLOPS_PER_STEP * steps, propagateAloneMs / 1000)),
            note: 'the propagate calls of one pass with no I/O running beside them; propagateMs inside the pass minus this = contention',
          },
        },
      });
      table.push(
        { figure: 'backward pass GFLOP/s (verify on)', value: passGf.toFixed(1), note: `${steps} steps from disk, warm cache` },
        { figure: 'backward pass GFLOP/s (verify off)', value: passNoVerifyGf.toFixed(1) },
        { figure: 'propagate in memory GFLOP/s', value: propGf.toFixed(1), note: `${chunkSteps} steps, no I/O` },
        { figure: 'sgemm GFLOP/s (same shapes)', value: sgemmGf.toFixed(1), note: `raw incl. dispatch ${sgemmRawGf.toFixed(1)}; E ${eGf.toFixed(1)}, update ${uGf.toFixed(1)}` },
        { figure: 'backward / sgemm (verify on)', value: (passGf / sgemmGf).toFixed(3), note: `target ≥ 0.8; interleaved ${mid(paired).toFixed(3)}` },
        { figure: 'backward / sgemm (verify off)', value: (passNoVerifyGf / sgemmGf).toFixed(3), note: `interleaved ${mid(pairedNoVerify).toFixed(3)}` },
        { figure: 'propagate in memory / sgemm', value: (propGf / sgemmGf).toFixed(3) },
        { figure: 'TS backward GFLOP/s', value: tsPassGf.toFixed(3), note: `${tsSteps} steps, single-threaded` },
        { figure: 'TS / sgemm', value: (tsPassGf / sgemmGf).toFixed(4), note: `target ≥ 0.015; interleaved ${mid(pairedTs).toFixed(4)}` },
        { figure: 'native / TS (backward pass)', value: `${(passGf / tsPassGf).toFixed(1)}×` },
        { figure: 'native / TS (one step)', value: `${(stepGf / tsStepGf).toFixed(1)}×`, note: `native ${stepGf.toFixed(1)}, TS ${tsStepGf.toFixed(2)} GFLOP/s` },
        {
          figure: 'profile ms (verify on)',
          value: `${pOn.totalMs.toFixed(0)}`,
          note: `propagate ${pOn.propagateMs.toFixed(0)} (alone ${propagateAloneMs.toFixed(0)}), startup ${pOn.startupMs.toFixed(0)}, gaps ${pOn.loopGapsMs.toFixed(0)}, tail ${pOn.tailMs.toFixed(0)} (last writes ${pOn.tailWritesMs.toFixed(0)}, fsync ${pOn.tailSyncMs.toFixed(0)}, re-reads ${pOn.tailReadsMs.toFixed(0)}); cpu ${pOn.cpuMs.toFixed(0)}`,
        },
      );
      for (const w of warnings) table.push({ figure: 'WARNING', value: 'sgemm', note: w });
    } else {
      Object.assign(figures, { gflops: { oneStepTs: round(tsStepGf, 3), backwardPassTs: round(tsPassGf, 3) } });
      table.push({ figure: 'TS backward GFLOP/s', value: tsPassGf.toFixed(3), note: 'native addon unavailable: no sgemm baseline' });
    }
    return { figures, table };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Runs native/test/gemm_bench.cc's plain sgemm loop of the pass's GEMMs; median GFLOP/s of 3 runs. */
function cppSgemmLoop(steps: number): { gflops: number; threads: number; runs: number; samples: number[] } | null {
  const exe = join(packageRoot(), 'build-cmake', 'dvemb_gemm_bench');
  if (!existsSync(exe)) return null;
  const samples: number[] = [];
  let threads = 0;
  for (let r = 0; r < 3; r++) {
    const run = spawnSync(exe, [String(BLOCKS), String(K), String(BATCH), String(steps), '5'], { encoding: 'utf8' });
    if (run.status !== 0) return null;
    const out = JSON.parse(run.stdout) as { gflops: number; threads: number };
    samples.push(out.gflops);
    threads = out.threads;
  }
  const sorted = [...samples].sort((a, b) => a - b);
  return { gflops: sorted[1]!, threads, runs: 3, samples };
}
