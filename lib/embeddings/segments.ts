// Influence checkpointing (REFERENCE §3 "Segments", the paper's Algorithm 2): the steps are split
// into K segments in training order; each runs the backward pass alone from P = I, giving local
// embeddings and its segment propagator Q_j; the final-model embedding of an occurrence in segment
// j is S_j · local with S_j = Q_{K−1} ⋯ Q_{j+1}. Segments are independent, so they run in parallel:
// worker threads here (computeSegments), or separate processes and machines (`dvemb compute
// --segment j/K`), joined afterwards by compose(). docs/SEGMENTS.md is the user-facing version.
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { isMainThread, parentPort, Worker, workerData, type MessagePort } from 'node:worker_threads';
import { loadBackend, packageRoot, type BackendChoice } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { DvembError, assertFinite, type ErrorCode } from '../errors.js';
import { chunkFiles, crcHex, recordBytes } from '../trajectory/chunk.js';
import { COL, STEP_WIDTH, chunkFileName } from '../trajectory/format.js';
import { NPY_HEADER_BYTES, bytesOf, npyHeader, npyView, parseNpyHeader, readNpyHeaderFile } from '../trajectory/npy.js';
import { Trajectory } from '../trajectory/trajectory.js';
import { backwardPass, checkComputeOptions, identityPropagators, type ComputeOptions, type ComputeProgress } from './backward.js';
import type { ProjectedTests } from './query.js';
import {
  EMBEDDINGS_FORMAT,
  EMBEDDINGS_MANIFEST,
  EmbeddingSet,
  FILES,
  LAZY_FILES,
  PartialSet,
  applyBlockMatrices,
  blockMatrixLength,
  transposeBlocks,
  type CompositionInfo,
  type EmbeddingsManifest,
  type SegmentInfo,
} from './store.js';

export type { SegmentInfo } from './store.js';

/** The directory of segment j of K inside a parent directory. */
export function segmentDirName(j: number, K: number): string {
  return `segment-${j}-of-${K}`;
}
const SEGMENT_DIR = /^segment-(\d+)-of-(\d+)$/;

// --- planning --------------------------------------------------------------------------------

/**
 * What the plan needs from a trajectory without reading its rows: rows before each step
 * (length T + 1), each step's index, and an id of the contents. The id hashes every chunk's
 * counts and data checksums (the manifest's for sealed chunks; computed over the committed
 * records for an unsealed tail, so sealing it later does not change the id), never the path.
 */
export function scanTrajectory(traj: Trajectory): { id: string; rowsBefore: Float64Array; stepIndex: Float64Array } {
  const T = traj.steps;
  const rowsBefore = new Float64Array(T + 1);
  const stepIndex = new Float64Array(T);
  const files = chunkFiles(traj.manifest);
  const dim = traj.layout.dim;
  const chunks: unknown[] = [];
  let s = 0;
  for (const c of traj.chunks) {
    const path = join(traj.dir, chunkFileName(c.index, 'steps'));
    let buf: Buffer;
    try {
      buf = readFileSync(path);
    } catch (err) {
      throw new DvembError('TRUNCATED', `${path} is missing (${(err as Error).message})`, 'restore the file from a backup, or re-record the trajectory');
    }
    const header = parseNpyHeader(buf, path);
    if (header.dtype !== '<f8' || buf.length < header.dataOffset + c.steps * STEP_WIDTH * 8) {
      throw new DvembError('CORRUPT', `${path} does not hold the ${c.steps} step records the trajectory lists`, 'run `dvemb inspect` on the trajectory');
    }
    const rec = npyView(buf.subarray(0, header.dataOffset + c.steps * STEP_WIDTH * 8), { ...header, shape: [c.steps * STEP_WIDTH] }) as Float64Array;
    let rows = 0;
    for (let i = 0; i < c.steps; i++, s++) {
      stepIndex[s] = rec[i * STEP_WIDTH + COL.step]!;
      rows += rec[i * STEP_WIDTH + COL.rowCount]!;
      rowsBefore[s + 1] = rowsBefore[s]! + rec[i * STEP_WIDTH + COL.rowCount]!;
    }
    if (rows !== c.rows) throw new DvembError('CORRUPT', `chunk ${c.index} of ${traj.dir}: its steps hold ${rows} rows, the manifest says ${c.rows}`, 'run `dvemb inspect` on the trajectory');
    const checksums = files.map((f) => {
      if (c.sealed) return c.checksums[f] ?? null;
      const p = join(traj.dir, chunkFileName(c.index, f));
      const data = readFileSync(p);
      const h = parseNpyHeader(data, p);
      const records = f === 'steps' ? c.steps : f === 'curvature' ? c.curvatureRows : c.rows;
      return crcHex(data.subarray(h.dataOffset, h.dataOffset + records * recordBytes(f, dim)));
    });
    chunks.push([c.steps, c.rows, c.curvatureRows, c.firstStep, c.lastStep, checksums]);
  }
  const id = createHash('sha256')
    .update(JSON.stringify({ layout: traj.layout.fingerprint, curvature: traj.manifest.curvature, chunks }))
    .digest('hex')
    .slice(0, 32);
  return { id, rowsBefore, stepIndex };
}

function checkK(K: number, T: number, dir: string): void {
  if (!Number.isSafeInteger(K) || K < 1) throw new DvembError('BAD_INPUT', `the number of segments K must be a positive integer, got ${K}`);
  if (K > T) {
    throw new DvembError('BAD_INPUT', `cannot split the ${T} steps of ${dir} into ${K} segments: a segment holds at least one step`, `use at most ${T} segments`);
  }
}

export interface PlanOptions {
  /**
   * Where segments end, as the step indices of their last steps (all but the last segment's):
   * the steps after which checkpoints were saved, so that data value dynamics can be evaluated
   * at them. K is then ends.length + 1. Default: boundaries balanced by rows.
   */
  ends?: readonly number[];
}

/**
 * The K segments of a trajectory. Boundaries fall between steps (inside a chunk if need be) and,
 * unless `ends` places them, balance the occurrences (rows): boundary b is the step boundary
 * nearest to b·N/K rows, each segment keeping at least one step. The plan is a pure function of
 * the trajectory's contents (and `ends`), so separate processes given the same trajectory and K
 * agree on it.
 */
export function planSegments(trajectory: string | Trajectory, K: number, options: PlanOptions = {}): SegmentInfo[] {
  const traj = typeof trajectory === 'string' ? Trajectory.open(trajectory) : trajectory;
  const T = traj.steps;
  if (T === 0) throw new DvembError('BAD_INPUT', `${traj.dir} holds no recorded step`, 'record at least one step');
  checkK(K, T, traj.dir);
  const { id, rowsBefore, stepIndex } = scanTrajectory(traj);
  const N = rowsBefore[T]!;
  const cuts = [0];
  if (options.ends) {
    const ends = options.ends;
    if (ends.length !== K - 1) {
      throw new DvembError('BAD_INPUT', `${ends.length} segment ends make ${ends.length + 1} segments, not ${K}`, `give K − 1 = ${K - 1} ends, or K = ${ends.length + 1}`);
    }
    const position = new Map<number, number>();
    stepIndex.forEach((step, s) => position.set(step, s));
    for (const end of ends) {
      const s = position.get(end);
      if (s === undefined) {
        throw new DvembError('BAD_INPUT', `segment end ${end} is not a recorded step of ${traj.dir} (its steps run ${stepIndex[0]}..${stepIndex[T - 1]})`, 'give the step indices after which checkpoints were saved, each a recorded step');
      }
      if (s + 1 <= cuts.at(-1)! || s + 1 >= T) {
        throw new DvembError('BAD_INPUT', `segment ends must increase and come before the last step ${stepIndex[T - 1]}, got ${ends.join(', ')}`, 'list them in training order; the last segment ends with the trajectory');
      }
      cuts.push(s + 1);
    }
  }
  for (let b = cuts.length; b < K; b++) {
    const lo = cuts[b - 1]! + 1;
    const hi = T - (K - b);
    const target = (b * N) / K;
    // First boundary at or past the target (rowsBefore is non-decreasing), or its predecessor.
    let l = lo;
    let h = hi;
    while (l < h) {
      const mid = (l + h) >> 1;
      if (rowsBefore[mid]! < target) l = mid + 1;
      else h = mid;
    }
    let cut = l;
    if (cut > lo && target - rowsBefore[cut - 1]! <= rowsBefore[cut]! - target) cut--;
    cuts.push(cut);
  }
  cuts.push(T);
  return Array.from({ length: K }, (_, j) => ({
    index: j,
    count: K,
    stepStart: cuts[j]!,
    stepEnd: cuts[j + 1]!,
    rowStart: rowsBefore[cuts[j]!]!,
    rowEnd: rowsBefore[cuts[j + 1]!]!,
    firstStep: stepIndex[cuts[j]!]!,
    lastStep: stepIndex[cuts[j + 1]! - 1]!,
    totalSteps: T,
    totalRows: N,
    trajectoryId: id,
  }));
}

// --- one segment -----------------------------------------------------------------------------

export interface SegmentOptions extends ComputeOptions, PlanOptions {
  /** The parent directory: the segment goes to `<out>/segment-j-of-K/`. */
  out: string;
}

export interface SegmentResult {
  dir: string;
  manifest: EmbeddingsManifest;
}

/**
 * Computes segment j of K alone (from P = I at the segment's last step) into
 * `<out>/segment-j-of-K/`: local embeddings, the segment propagator Q_j as propagator.npy, and a
 * manifest naming the segment and the trajectory it came from. The directory is itself an
 * embeddings set: its scores are influences on θ_{e_j}, the model at the segment's end.
 */
export async function computeSegment(trajectory: string | Trajectory, options: SegmentOptions & { j: number; K: number }): Promise<SegmentResult> {
  checkComputeOptions(options);
  const traj = typeof trajectory === 'string' ? Trajectory.open(trajectory) : trajectory;
  const { j, K } = options;
  if (!Number.isSafeInteger(j) || j < 0 || !Number.isSafeInteger(K) || j >= K) {
    throw new DvembError('BAD_INPUT', `segment ${j} of ${K} does not exist`, `segments are numbered 0..K−1 in training order: pass j/K with 0 ≤ j < K, e.g. 0/${Number.isSafeInteger(K) && K > 0 ? K : 4}`);
  }
  const info = planSegments(traj, K, { ends: options.ends })[j]!;
  return runSegment(traj, info, options);
}

function runSegment(traj: Trajectory | string, info: SegmentInfo, options: SegmentOptions): Promise<SegmentResult> {
  const dir = join(options.out, segmentDirName(info.index, info.count));
  return backwardPass(traj, { ...options, out: dir, range: info, segment: info }).then((manifest) => ({ dir, manifest }));
}

// --- K segments in parallel ------------------------------------------------------------------

export interface SegmentsProgress extends ComputeProgress {
  segmentsDone: number;
  segments: number;
}

export interface SegmentsOptions extends Omit<SegmentOptions, 'onProgress'> {
  K: number;
  /** Worker threads, one segment each (default true); false runs the segments one after another. */
  parallel?: boolean;
  /** Segments running at once (default min(K, available cores)). */
  concurrency?: number;
  /** BLAS threads of each running segment (default 1 in parallel, unchanged with parallel: false). */
  threadsPerSegment?: number;
  onProgress?: (p: SegmentsProgress) => void;
}

export interface SegmentsResult {
  segments: SegmentResult[];
  /**
   * 'workers': this thread and worker threads, one segment each at a time; 'in-process':
   * concurrent calls in this thread (no compiled worker script found); 'sequential'.
   */
  runner: 'workers' | 'in-process' | 'sequential';
}

const WORKER_KIND = 'dvemb-segment';

interface WorkerJob {
  kind: typeof WORKER_KIND;
  trajectory: string;
  info: SegmentInfo;
  out: string;
  mode: ComputeOptions['mode'];
  precision: ComputeOptions['precision'];
  curvature: ComputeOptions['curvature'];
  verify: boolean;
  backend: BackendChoice;
  threads: number;
}

type WorkerMessage =
  | { type: 'progress'; stepsDone: number }
  | { type: 'done'; result: SegmentResult }
  | { type: 'error'; code: ErrorCode | null; problem: string; fix: string | null; stack: string | undefined };

/** The script a worker runs: this module, compiled (under vitest this file is TypeScript source). */
function workerScript(): URL | null {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return new URL(import.meta.url);
  const root = packageRoot();
  const js = join(root, 'dist', relative(root, here)).replace(/\.ts$/, '.js');
  return existsSync(js) ? pathToFileURL(js) : null;
}

function choiceOf(backend: Backend | BackendChoice | undefined): BackendChoice {
  if (backend === undefined) return (process.env.DVEMB_BACKEND as BackendChoice | undefined) ?? 'auto';
  if (typeof backend === 'string') return backend;
  const name = backend.info().backend;
  return name === 'native-cpu' ? 'native' : name;
}

function toMessage(err: unknown): WorkerMessage {
  if (err instanceof DvembError) {
    const problem = err.fix ? err.message.slice(0, err.message.length - `. Fix: ${err.fix}`.length) : err.message;
    return { type: 'error', code: err.code, problem, fix: err.fix ?? null, stack: err.stack };
  }
  return { type: 'error', code: null, problem: err instanceof Error ? err.message : String(err), fix: null, stack: err instanceof Error ? err.stack : undefined };
}

function fromMessage(m: Extract<WorkerMessage, { type: 'error' }>): Error {
  if (m.code) return new DvembError(m.code, m.problem, m.fix ?? undefined);
  const err = new Error(m.problem);
  if (m.stack) err.stack = m.stack;
  return err;
}

async function runWorker(job: WorkerJob, port: MessagePort): Promise<void> {
  const controller = new AbortController();
  port.on('message', (m) => {
    if (m === 'abort') controller.abort();
  });
  let message: WorkerMessage;
  try {
    const loaded = loadBackend(job.backend);
    loaded.backend.setThreads(job.threads);
    const result = await runSegment(job.trajectory, job.info, {
      lanes: 1, // the segments are the parallelism here
      out: job.out,
      mode: job.mode,
      precision: job.precision,
      curvature: job.curvature,
      verify: job.verify,
      backend: loaded.backend,
      signal: controller.signal,
      onProgress: (p) => port.postMessage({ type: 'progress', stepsDone: p.stepsDone } satisfies WorkerMessage),
    });
    message = { type: 'done', result };
  } catch (err) {
    message = toMessage(err);
  }
  port.postMessage(message);
  port.unref();
}

if (!isMainThread && parentPort && (workerData as { kind?: string } | null)?.kind === WORKER_KIND) {
  void runWorker(workerData as WorkerJob, parentPort);
}

/**
 * Plans K segments and computes them into `<out>/segment-j-of-K/`, up to `concurrency` at once:
 * one in the calling thread, the others each in a worker thread, with `threadsPerSegment` BLAS
 * threads each (the BLAS thread count is
 * process-wide, so it is restored when all are done). On an error or an abort the other segments
 * are stopped; segments that finished stay complete, the others leave no file that looks complete.
 */
export async function computeSegments(trajectory: string | Trajectory, options: SegmentsOptions): Promise<SegmentsResult> {
  const started = performance.now();
  checkComputeOptions(options);
  const traj = typeof trajectory === 'string' ? Trajectory.open(trajectory) : trajectory;
  const K = options.K;
  const plan = planSegments(traj, K, { ends: options.ends });
  const parallel = options.parallel ?? true;
  const concurrency = parallel ? Math.min(K, options.concurrency ?? Math.max(1, availableParallelism())) : 1;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) throw new DvembError('BAD_INPUT', `concurrency must be a positive integer, got ${options.concurrency}`);
  const script = parallel ? workerScript() : null;
  const runner: SegmentsResult['runner'] = !parallel ? 'sequential' : script ? 'workers' : 'in-process';
  const choice = choiceOf(options.backend);
  const backend = typeof options.backend === 'object' ? options.backend : loadBackend(choice).backend;
  const threadsBefore = backend.info().threads;
  // One BLAS thread per running segment: the parallelism is across segments. One after another,
  // a segment keeps the threads the backend has.
  const threads = options.threadsPerSegment ?? (runner === 'sequential' ? threadsBefore : 1);
  if (!Number.isSafeInteger(threads) || threads < 1) throw new DvembError('BAD_INPUT', `threadsPerSegment must be a positive integer, got ${threads}`);

  const done = new Array<number>(K).fill(0);
  let segmentsDone = 0;
  const report = () =>
    options.onProgress?.({
      stepsDone: done.reduce((a, b) => a + b, 0),
      stepsTotal: traj.steps,
      elapsedMs: performance.now() - started,
      segmentsDone,
      segments: K,
    });
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  options.signal?.addEventListener('abort', onAbort);
  if (options.signal?.aborted) stop.abort();

  const inWorker = (info: SegmentInfo): Promise<SegmentResult> =>
    new Promise((resolvePromise, reject) => {
      const job: WorkerJob = {
        kind: WORKER_KIND,
        trajectory: traj.dir,
        info,
        out: options.out,
        mode: options.mode,
        precision: options.precision,
        curvature: options.curvature,
        verify: options.verify ?? true,
        backend: choice,
        threads,
      };
      const worker = new Worker(script!, { workerData: job });
      let settled: WorkerMessage | null = null;
      const abort = () => worker.postMessage('abort');
      stop.signal.addEventListener('abort', abort);
      if (stop.signal.aborted) abort();
      worker.on('message', (m: WorkerMessage) => {
        if (m.type === 'progress') {
          done[info.index] = m.stepsDone;
          report();
        } else {
          settled = m;
          void worker.terminate();
        }
      });
      worker.on('error', (err) => (settled ??= toMessage(err)));
      worker.on('exit', (code) => {
        stop.signal.removeEventListener('abort', abort);
        const m = settled as WorkerMessage | null;
        if (m?.type === 'done') resolvePromise(m.result);
        else if (m?.type === 'error') reject(fromMessage(m));
        else reject(new Error(`the worker computing segment ${info.index} of ${K} exited with code ${code} before finishing`));
      });
    });

  const inProcess = (info: SegmentInfo): Promise<SegmentResult> =>
    runSegment(traj, info, {
      ...options,
      lanes: 1, // the segments are the parallelism here
      backend,
      signal: stop.signal,
      onProgress: (p) => {
        done[info.index] = p.stepsDone;
        report();
      },
    });

  const results = new Array<SegmentResult>(K);
  const errors: unknown[] = [];
  let next = 0;
  // Lane 0 runs in this thread, the others in worker threads: a worker costs a Node start-up
  // (tens of ms of CPU), and this thread would otherwise only wait.
  const lane = async (_: unknown, laneIndex: number) => {
    while (next < K && errors.length === 0) {
      const info = plan[next++]!;
      try {
        results[info.index] = await (runner === 'workers' && laneIndex > 0 ? inWorker(info) : inProcess(info));
        segmentsDone++;
        report();
      } catch (err) {
        errors.push(err);
        stop.abort(); // the first failure stops the others
      }
    }
  };
  try {
    backend.setThreads(threads);
    await Promise.all(Array.from({ length: concurrency }, lane));
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    backend.setThreads(threadsBefore);
  }
  if (errors.length > 0) {
    // An abort from outside reads as ABORTED even where a segment failed for that reason.
    const first = errors.find((e) => !(e instanceof DvembError && e.code === 'ABORTED')) ?? errors[0];
    if (options.signal?.aborted) throw new DvembError('ABORTED', 'computing the segments was cancelled; finished segments are complete, the others left no file that looks complete');
    throw first;
  }
  return { segments: results, runner };
}

// --- finding and checking finished segments -------------------------------------------------

export interface OpenSegment {
  dir: string;
  set: EmbeddingSet;
  info: SegmentInfo;
}

function segmentHint(j: number, K: number, parent: string, trajectory: string): string {
  return `run \`dvemb compute ${trajectory} --segment ${j}/${K} --out ${parent}\``;
}

/**
 * Opens finished segments: a parent directory holding `segment-j-of-K/` directories, or the
 * segment directories themselves. Checks that they are all K segments of one trajectory (by
 * content), computed with the same mode, precision and curvature, and returns them in order.
 */
export function openSegments(input: string | readonly string[]): OpenSegment[] {
  let dirs: string[];
  let parent: string;
  const incomplete: { dir: string; j: number; K: number }[] = [];
  if (typeof input === 'string') {
    parent = input;
    if (!existsSync(input)) throw new DvembError('NOT_EMBEDDINGS', `${input} does not exist`, 'pass the directory the segments were written to (`--out` of `dvemb compute --segment j/K`)');
    dirs = [];
    for (const name of readdirSync(input).sort()) {
      const m = SEGMENT_DIR.exec(name);
      if (!m) continue;
      const dir = join(input, name);
      if (existsSync(join(dir, EMBEDDINGS_MANIFEST))) dirs.push(dir);
      else incomplete.push({ dir, j: Number(m[1]), K: Number(m[2]) });
    }
    if (dirs.length === 0) {
      const why = incomplete.length > 0 ? `: ${incomplete.map((d) => d.dir).join(', ')} ${incomplete.length === 1 ? 'is' : 'are'} not finished (interrupted or still running)` : '';
      throw new DvembError('NOT_EMBEDDINGS', `${input} holds no finished segment directory (segment-j-of-K)${why}`, 'compute the segments first: `dvemb compute <trajectory> --segment j/K --out ' + input + '` for j = 0..K−1');
    }
  } else {
    if (input.length === 0) throw new DvembError('BAD_INPUT', 'no segment directories given', 'pass the parent directory of segment-j-of-K/ or every segment directory');
    dirs = [...input];
    parent = resolve(input[0]!, '..');
  }
  const segs: OpenSegment[] = dirs.map((dir) => {
    const set = EmbeddingSet.open(dir);
    const info = set.manifest.segment;
    if (!info) throw new DvembError('BAD_INPUT', `${dir} holds embeddings of a whole run, not a segment (its ${EMBEDDINGS_MANIFEST} has no "segment")`, 'pass segment directories written by `dvemb compute --segment j/K` or computeSegment()');
    return { dir, set, info };
  });
  const Ks = [...new Set(segs.map((s) => s.info.count))];
  if (Ks.length > 1) {
    throw new DvembError('BAD_INPUT', `the segments are from different splits: ${segs.map((s) => `${s.dir} is ${s.info.index + 1} of ${s.info.count}`).join(', ')}`, 'compose the segments of one split only: remove the stale segment directories or pass the segment directories explicitly');
  }
  const K = Ks[0]!;
  const first = segs[0]!;
  const trajectory = first.set.manifest.trajectory;
  for (const s of segs) {
    if (s.info.trajectoryId !== first.info.trajectoryId) {
      throw new DvembError(
        'BAD_INPUT',
        `the segments come from different trajectories (or different states of one still being recorded): ${segs.map((x) => `${x.dir} from ${x.set.manifest.trajectory} (content id ${x.info.trajectoryId.slice(0, 12)})`).join('; ')}`,
        'compute every segment from the same, finished trajectory',
      );
    }
    for (const field of ['fingerprint', 'mode', 'precision', 'curvature'] as const) {
      if (s.set.manifest[field] !== first.set.manifest[field]) {
        throw new DvembError('BAD_INPUT', `${s.dir} was computed with ${field} ${s.set.manifest[field]}, ${first.dir} with ${first.set.manifest[field]}`, `compute every segment with the same --${field === 'fingerprint' ? 'projection' : field}`);
      }
    }
  }
  const byIndex = new Map<number, OpenSegment>();
  for (const s of segs) {
    const other = byIndex.get(s.info.index);
    if (other) throw new DvembError('BAD_INPUT', `segment ${s.info.index} of ${K} is given twice: ${other.dir} and ${s.dir}`, 'pass each segment once');
    byIndex.set(s.info.index, s);
  }
  const missing = Array.from({ length: K }, (_, j) => j).filter((j) => !byIndex.has(j));
  if (missing.length > 0) {
    const notes = missing.map((j) => {
      const partial = incomplete.find((d) => d.j === j && d.K === K);
      return `${j}${partial ? ' (its directory is not finished: interrupted or still running)' : ''}`;
    });
    throw new DvembError(
      'NOT_EMBEDDINGS',
      `segment${missing.length > 1 ? 's' : ''} ${notes.join(', ')} of ${K} ${missing.length > 1 ? 'are' : 'is'} missing`,
      missing.map((j) => segmentHint(j, K, parent, trajectory)).join('; then '),
    );
  }
  const ordered = Array.from({ length: K }, (_, j) => byIndex.get(j)!);
  let step = 0;
  let row = 0;
  for (const s of ordered) {
    const i = s.info;
    const m = s.set.manifest;
    if (i.stepStart !== step || i.rowStart !== row) {
      throw new DvembError('BAD_INPUT', `the segments were split differently: ${s.dir} starts at step position ${i.stepStart}, the segment before it ends at ${step}`, 'compute every segment with the same K and the same --ends');
    }
    if (m.steps !== i.stepEnd - i.stepStart || m.occurrences !== i.rowEnd - i.rowStart) {
      throw new DvembError('CORRUPT', `${s.dir} covers steps [${i.stepStart}, ${i.stepEnd}) and rows [${i.rowStart}, ${i.rowEnd}) but holds ${m.steps} steps and ${m.occurrences} rows`, 'recompute that segment');
    }
    step = i.stepEnd;
    row = i.rowEnd;
  }
  if (step !== first.info.totalSteps || row !== first.info.totalRows) {
    throw new DvembError('CORRUPT', `the segments cover ${step} steps and ${row} rows, the trajectory has ${first.info.totalSteps} and ${first.info.totalRows}`, 'recompute the segments');
  }
  return ordered;
}

/** Q_j of a segment, as stored (float32 or float64). */
function readPropagator(s: OpenSegment): Float32Array | Float64Array {
  const m = s.set.manifest;
  const path = join(s.dir, FILES.propagator);
  const header = readNpyHeaderFile(path);
  const len = blockMatrixLength(m.propagatorBlocks);
  const dtype = m.precision === 'fp64' ? '<f8' : '<f4';
  if (header.dtype !== dtype || header.shape.length !== 1 || header.shape[0] !== len) {
    throw new DvembError('SHAPE_MISMATCH', `${path} has shape (${header.shape.join(', ')}) ${header.dtype}, expected (${len},) ${dtype}`, 'recompute that segment');
  }
  const q = npyView(readFileSync(path), header) as Float32Array | Float64Array;
  assertFinite(q, path, 'recompute that segment');
  return q;
}

/** Per block C = A · B: float64 in JavaScript for fp64, the backend's float32 GEMM otherwise. */
async function mulBlocks(A: Float32Array | Float64Array, B: Float32Array | Float64Array, blocks: ArrayLike<number>, backend: Backend): Promise<Float32Array | Float64Array> {
  if (A instanceof Float64Array) {
    const C = new Float64Array(A.length);
    let at = 0;
    for (let b = 1; b < blocks.length; b += 2) {
      const k = blocks[b]!;
      for (let i = 0; i < k; i++) {
        for (let l = 0; l < k; l++) {
          const a = A[at + i * k + l]!;
          if (a === 0) continue;
          for (let j = 0; j < k; j++) C[at + i * k + j]! += a * B[at + l * k + j]!;
        }
      }
      at += k * k;
    }
    return C;
  }
  // backend.score computes X Yᵀ, so A B = score(A, Bᵀ).
  const Bt = transposeBlocks(Float32Array.from(B), blocks);
  const C = new Float32Array(A.length);
  let at = 0;
  for (let b = 1; b < blocks.length; b += 2) {
    const k = blocks[b]!;
    await backend.score({ n: k, m: k, dim: k, embeddings: A.subarray(at, at + k * k), tests: Bt.subarray(at, at + k * k), out: C.subarray(at, at + k * k) });
    at += k * k;
  }
  return C;
}

/** S_j = Q_{K−1} ⋯ Q_{j+1} for every j (S_{K−1} = I), and the whole-run propagator S_0 Q_0. */
async function suffixProducts(Q: (Float32Array | Float64Array)[], blocks: ArrayLike<number>, precision: 'fp32' | 'fp64', backend: Backend) {
  const K = Q.length;
  const S = new Array<Float32Array | Float64Array>(K);
  S[K - 1] = identityPropagators(blocks, precision);
  // S_{K−2} = Q_{K−1}: no product with the identity.
  for (let j = K - 2; j >= 0; j--) S[j] = j === K - 2 ? Q[K - 1]!.slice() : await mulBlocks(S[j + 1]!, Q[j + 1]!, blocks, backend);
  const whole = await mulBlocks(S[0]!, Q[0]!, blocks, backend);
  return { S, whole };
}

// --- compose -------------------------------------------------------------------------------

export interface ComposeProgress {
  rowsDone: number;
  rowsTotal: number;
  elapsedMs: number;
}

export interface ComposeOptions {
  /** Output directory (created); an earlier result there is replaced only on success. */
  out: string;
  /**
   * false (default): apply S_j to every local embedding now (2·k² flops per row and block), giving
   * the same files as the sequential pass. true: store the local embeddings and S_j, and let
   * queries apply S_jᵀ to the test gradients instead.
   */
  lazy?: boolean;
  backend?: Backend | BackendChoice;
  /** Embedding rows per block read and written (default: about 16 MB of rows). */
  rowsPerBlock?: number;
  signal?: AbortSignal;
  onProgress?: (p: ComposeProgress) => void;
}

/**
 * Joins finished segments into one embeddings directory that EmbeddingSet.open reads and every
 * query function scores exactly like the sequential pass's. `segments` is the parent directory
 * of `segment-j-of-K/` or the list of segment directories.
 */
export async function compose(segments: string | readonly string[], options: ComposeOptions): Promise<EmbeddingsManifest> {
  const started = performance.now();
  const segs = openSegments(segments);
  const out = options.out;
  const outAbs = resolve(out);
  for (const s of segs) {
    if (resolve(s.dir) === outAbs) throw new DvembError('BAD_INPUT', `--out ${out} is one of the segment directories`, 'write the composed set elsewhere, e.g. the segments\' parent directory');
  }
  const lazy = options.lazy ?? false;
  const backend = options.backend && typeof options.backend === 'object' ? options.backend : loadBackend(options.backend).backend;
  const first = segs[0]!.set.manifest;
  const { precision, dim } = first;
  const blocks = Int32Array.from(first.propagatorBlocks);
  const K = segs.length;
  const N = segs[0]!.info.totalRows;
  const T = segs[0]!.info.totalSteps;
  const { S, whole } = await suffixProducts(segs.map(readPropagator), blocks, precision, backend);
  const S32 = S.map((s) => (s instanceof Float32Array ? s : Float32Array.from(s)));
  const len = blockMatrixLength(blocks);
  const perBlock = options.rowsPerBlock ?? Math.max(1, Math.floor((16 << 20) / (dim * 4)));

  const files = lazy ? [LAZY_FILES.composition, FILES.occurrences, FILES.steps, FILES.propagator] : [FILES.embeddings, FILES.occurrences, FILES.steps, FILES.propagator];
  const output = new PartialSet(out, files);
  try {
    // Lazily, the local embeddings are read in place from the segments: nothing N × dim is written.
    const embFile = lazy ? null : await output.open(FILES.embeddings, npyHeader('<f4', [N, dim]), N * dim * 4);
    const occFile = await output.open(FILES.occurrences, npyHeader('<i8', [N, 2]), N * 16);
    const stepFile = await output.open(FILES.steps, npyHeader('<f8', [T, 4]), T * 32);
    const dtype = precision === 'fp64' ? '<f8' : '<f4';
    const propFile = await output.open(FILES.propagator, npyHeader(dtype, [len]), whole.byteLength);
    await propFile.write(bytesOf(whole), 0, whole.byteLength, NPY_HEADER_BYTES);
    if (lazy) {
      const compFile = await output.open(LAZY_FILES.composition, npyHeader(dtype, [K, len]), K * len * S[0]!.BYTES_PER_ELEMENT);
      for (let j = 0; j < K; j++) await compFile.write(bytesOf(S[j]!), 0, S[j]!.byteLength, NPY_HEADER_BYTES + j * S[j]!.byteLength);
    }
    const examples = new Set<number>();
    let rowsDone = 0;
    for (let j = 0; j < K; j++) {
      const { set, info } = segs[j]!;
      const occ = new BigInt64Array(set.count * 2);
      for (let r = 0; r < set.count; r++) {
        occ[2 * r] = BigInt(set.ids[r]!);
        occ[2 * r + 1] = BigInt(set.occurrenceSteps[r]!);
        examples.add(set.ids[r]!);
      }
      await occFile.write(bytesOf(occ), 0, occ.byteLength, NPY_HEADER_BYTES + info.rowStart * 16);
      const st = new Float64Array(set.manifest.steps * 4);
      const t = set.stepTable;
      for (let s = 0; s < set.manifest.steps; s++) st.set([t.step[s]!, t.lr[s]!, t.weightDecay[s]!, t.rowStart[s]! + info.rowStart], s * 4);
      await stepFile.write(bytesOf(st), 0, st.byteLength, NPY_HEADER_BYTES + info.stepStart * 32);
      if (!embFile) {
        if (options.signal?.aborted) throw new DvembError('ABORTED', 'composing the segments was cancelled; nothing was written');
        rowsDone += set.count;
        options.onProgress?.({ rowsDone, rowsTotal: N, elapsedMs: performance.now() - started });
        continue;
      }
      const identity = j === K - 1;
      for await (const block of set.storedRows(perBlock)) {
        if (options.signal?.aborted) throw new DvembError('ABORTED', 'composing the segments was cancelled; nothing was written');
        const rows = identity ? block.rows : await applyBlockMatrices(block.rows, block.count, dim, blocks, S32[j]!, backend);
        await embFile.write(bytesOf(rows), 0, rows.byteLength, NPY_HEADER_BYTES + (info.rowStart + block.start) * dim * 4);
        rowsDone += block.count;
        options.onProgress?.({ rowsDone, rowsTotal: N, elapsedMs: performance.now() - started });
      }
    }
    if (options.signal?.aborted) throw new DvembError('ABORTED', 'composing the segments was cancelled; nothing was written');
    await output.syncAndClose();

    const composition: CompositionInfo | undefined = lazy
      ? {
          file: LAZY_FILES.composition,
          segments: segs.map(({ dir, set, info }) => ({
            index: info.index,
            dir: relative(outAbs, resolve(dir)) || '.',
            created: set.manifest.created,
            rowStart: info.rowStart,
            rows: info.rowEnd - info.rowStart,
            stepStart: info.stepStart,
            steps: info.stepEnd - info.stepStart,
          })),
        }
      : undefined;
    const result: EmbeddingsManifest = {
      format: EMBEDDINGS_FORMAT,
      version: 1,
      trajectory: first.trajectory,
      projection: first.projection,
      blocks: first.blocks,
      fingerprint: first.fingerprint,
      dim,
      occurrences: N,
      steps: T,
      examples: examples.size,
      mode: first.mode,
      precision,
      curvature: first.curvature,
      propagatorBlocks: first.propagatorBlocks,
      backend: [...new Set(segs.map((s) => s.set.manifest.backend))].join('+'),
      created: new Date().toISOString(),
      seconds: (performance.now() - started) / 1000,
      ...(composition ? { composition } : {}),
      composedFrom: { segments: K, trajectoryId: segs[0]!.info.trajectoryId, lazy, segmentSeconds: segs.map((s) => s.set.manifest.seconds) },
    };
    // As in the backward pass: the manifest goes last, and files of the other kind of set go.
    output.commit(result, lazy ? [FILES.embeddings] : Object.values(LAZY_FILES));
    return result;
  } catch (err) {
    await output.abandon();
    throw err;
  }
}

// --- data value dynamics -------------------------------------------------------------------

export interface DynamicsOptions {
  /** One value per example (summed over its occurrences, the default) or per occurrence. */
  per?: 'example' | 'occurrence';
  backend?: Backend;
  rowsPerBlock?: number;
}

export interface DataValueDynamics {
  per: 'example' | 'occurrence';
  /** K segments; boundary j′ is θ_{e_j′}, the model after step `lastStep` (the end of segment j′). */
  boundaries: { segment: number; lastStep: number; stepEnd: number }[];
  m: number;
  /** Per example: distinct sample ids, increasing. Per occurrence: each row's sample id. */
  ids: Float64Array;
  /** Per occurrence only: each row's step and segment. */
  steps?: Float64Array;
  segmentOf?: Int32Array;
  /**
   * values[(i·K + j′)·m + t]: the influence of point i on test t at checkpoint θ_{e_j′}. It is 0
   * where the point is not trained on before that checkpoint, and NaN for a boundary whose tests
   * were given as null.
   */
  values: Float64Array;
}

/**
 * Data value dynamics (REFERENCE §3): the influence of each training point on every later
 * segment-boundary checkpoint. For an occurrence in segment j and a boundary j′ ≥ j it is
 * ⟨Q_{j′} ⋯ Q_{j+1} · local, ∇ℓ(θ_{e_j′}, z_test)⟩. `tests[j′]` holds the test gradients at
 * θ_{e_j′}, projected with the trajectory's projection (projectTests on any segment's
 * EmbeddingSet), (m × dim) each, or null where no checkpoint was kept. Computed on the test side:
 * each boundary's tests are carried back through the Q's (u ← Q_jᵀ u) and scored against the
 * local embeddings, so no embedding is composed.
 */
export async function dataValueDynamics(segments: string | readonly string[], tests: readonly (ProjectedTests | Float32Array | null)[], options: DynamicsOptions = {}): Promise<DataValueDynamics> {
  const segs = openSegments(segments);
  const K = segs.length;
  const set0 = segs[0]!.set;
  const dim = set0.dim;
  const per = options.per ?? 'example';
  if (per !== 'example' && per !== 'occurrence') throw new DvembError('BAD_INPUT', `per must be "example" or "occurrence", got ${String(per)}`);
  if (tests.length !== K) {
    throw new DvembError('BAD_INPUT', `${tests.length} sets of test gradients for ${K} segment boundaries`, `pass one per boundary: tests[j] at the parameters after step ${segs.map((s) => s.info.lastStep).join(', ')} (null where there is no checkpoint)`);
  }
  let m = -1;
  const g: (Float32Array | null)[] = tests.map((t, j) => {
    if (t === null) return null;
    const rows = t instanceof Float32Array ? t : t.rows;
    if (!(t instanceof Float32Array) && t.fingerprint !== set0.layout.fingerprint) {
      throw new DvembError('PROJECTION_MISMATCH', `test gradients for boundary ${j} were projected for layout ${t.fingerprint}, the segments use ${set0.layout.fingerprint} (seed ${set0.layout.seed})`, 'project them with projectTests(EmbeddingSet.open(<segment dir>), ...)');
    }
    if (rows.length === 0 || rows.length % dim !== 0) {
      throw new DvembError('SHAPE_MISMATCH', `test gradients for boundary ${j} have ${rows.length} values, not a whole number of rows of width ${dim}`, `project them with the trajectory's projection to width ${dim}`);
    }
    if (m >= 0 && rows.length / dim !== m) throw new DvembError('SHAPE_MISMATCH', `boundary ${j} has ${rows.length / dim} test rows, an earlier one ${m}`, 'give the same test points at every boundary');
    m = rows.length / dim;
    assertFinite(rows, `test gradients for boundary ${j}`);
    return rows;
  });
  if (m < 0) throw new DvembError('BAD_INPUT', 'every boundary\'s test gradients are null', 'give the test gradients for at least one boundary');
  const backend = options.backend ?? loadBackend().backend;
  const blocks = Int32Array.from(set0.manifest.propagatorBlocks);
  const QT = segs.map((s) => transposeBlocks(Float32Array.from(readPropagator(s)), blocks));

  // carried[j][j′]: (Q_{j′} ⋯ Q_{j+1})ᵀ g_{j′} as rows; stacked per segment j for one GEMM pass.
  const stacked: { rows: Float32Array; boundaries: number[] }[] = Array.from({ length: K }, () => ({ rows: new Float32Array(0), boundaries: [] }));
  const pieces: Float32Array[][] = Array.from({ length: K }, () => []);
  for (let jp = 0; jp < K; jp++) {
    let u = g[jp];
    if (!u) continue;
    for (let j = jp; j >= 0; j--) {
      pieces[j]!.push(u);
      stacked[j]!.boundaries.push(jp);
      if (j > 0) u = await applyBlockMatrices(u, m, dim, blocks, QT[j]!, backend);
    }
  }
  for (let j = 0; j < K; j++) {
    const rows = new Float32Array(pieces[j]!.length * m * dim);
    pieces[j]!.forEach((p, i) => rows.set(p, i * m * dim));
    stacked[j]!.rows = rows;
  }

  const N = segs[0]!.info.totalRows;
  let ids: Float64Array;
  let slotOf: (row: number) => number;
  let steps: Float64Array | undefined;
  let segmentOf: Int32Array | undefined;
  if (per === 'example') {
    const all = new Set<number>();
    for (const s of segs) for (const id of s.set.ids) all.add(id);
    ids = Float64Array.from(all).sort();
    const index = new Map<number, number>();
    ids.forEach((id, i) => index.set(id, i));
    const globalIds = new Float64Array(N);
    for (const s of segs) globalIds.set(s.set.ids, s.info.rowStart);
    slotOf = (row) => index.get(globalIds[row]!)!;
  } else {
    ids = new Float64Array(N);
    steps = new Float64Array(N);
    segmentOf = new Int32Array(N);
    for (const s of segs) {
      ids.set(s.set.ids, s.info.rowStart);
      steps.set(s.set.occurrenceSteps, s.info.rowStart);
      segmentOf.fill(s.info.index, s.info.rowStart, s.info.rowEnd);
    }
    slotOf = (row) => row;
  }
  const values = new Float64Array(ids.length * K * m);
  for (let jp = 0; jp < K; jp++) {
    if (g[jp]) continue;
    for (let i = 0; i < ids.length; i++) values.fill(NaN, (i * K + jp) * m, (i * K + jp + 1) * m);
  }
  const perBlock = options.rowsPerBlock ?? Math.max(1, Math.floor((16 << 20) / (dim * 4)));
  for (let j = 0; j < K; j++) {
    const { rows: U, boundaries } = stacked[j]!;
    if (boundaries.length === 0) continue;
    const M = boundaries.length * m;
    const seg = segs[j]!;
    for await (const block of seg.set.storedRows(perBlock)) {
      const scores = new Float32Array(block.count * M);
      await backend.score({ n: block.count, m: M, dim, embeddings: block.rows, tests: U, out: scores });
      for (let r = 0; r < block.count; r++) {
        const slot = slotOf(seg.info.rowStart + block.start + r);
        for (let b = 0; b < boundaries.length; b++) {
          const at = (slot * K + boundaries[b]!) * m;
          for (let t = 0; t < m; t++) values[at + t]! += scores[r * M + b * m + t]!;
        }
      }
    }
  }
  return {
    per,
    boundaries: segs.map((s) => ({ segment: s.info.index, lastStep: s.info.lastStep, stepEnd: s.info.stepEnd })),
    m,
    ids,
    ...(steps ? { steps, segmentOf } : {}),
    values,
  };
}
