// The backward pass (REFERENCE §3): walks a recorded trajectory from its last step to its
// first, carrying the propagator P, and writes one data value embedding per occurrence.
// Memory is bounded by a few chunks: the next chunk is read while the current one computes,
// and each chunk's embeddings go to disk at their place in the output file as soon as they exist.
//
// The same pass also runs over a contiguous range of steps starting from P = I: that is one
// segment of influence checkpointing (segments.ts), whose propagator.npy is then the segment
// propagator Q_j and whose embeddings are the local ones.
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { loadBackend, type BackendChoice } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { DvembError } from '../errors.js';
import type { ChunkData } from '../trajectory/chunk.js';
import { NPY_HEADER_BYTES, bytesOf, npyHeader } from '../trajectory/npy.js';
import { Trajectory } from '../trajectory/trajectory.js';
import { EMBEDDINGS_FORMAT, FILES, PartialSet, type EmbeddingsManifest, type SegmentInfo } from './store.js';

export interface ComputeProgress {
  stepsDone: number;
  stepsTotal: number;
  elapsedMs: number;
}

export interface ComputeOptions {
  /** Output directory (created). An earlier result there is replaced only on success. */
  out: string;
  /** One propagator per block (the paper's choice) or one over all blocks. */
  mode?: 'per-block' | 'global';
  /** Precision of the propagator; embeddings are stored as float32 either way. */
  precision?: 'fp32' | 'fp64';
  /** 'auto': recorded sampled-label rows when the trajectory has them, else empirical Fisher. */
  curvature?: 'auto' | 'empirical-fisher' | 'recorded';
  backend?: Backend | BackendChoice;
  /** Check every chunk's crc32 as it is read (default true). */
  verify?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: ComputeProgress) => void;
  /**
   * Per-block mode on a native backend: the blocks are split into this many lanes propagated
   * concurrently, each on one BLAS thread (default: one lane per core, at most one per block).
   * Small per-block GEMMs scale better across lanes than inside OpenBLAS. 1 turns it off.
   */
  lanes?: number;
}

/** Splits [off, k] block pairs into at most `count` contiguous lanes of balanced k² work. */
export function planLanes(blocks: Int32Array, count: number): { blocks: Int32Array; pStart: number; pEnd: number }[] {
  const n = blocks.length / 2;
  const work = Array.from({ length: n }, (_, b) => blocks[2 * b + 1]! ** 2);
  const total = work.reduce((a, w) => a + w, 0);
  const lanes: { blocks: Int32Array; pStart: number; pEnd: number }[] = [];
  let b = 0;
  let pAt = 0;
  for (let lane = 0; lane < Math.min(count, n); lane++) {
    const first = b;
    const pStart = pAt;
    const target = (total * (lane + 1)) / Math.min(count, n);
    // Take blocks until this lane's share is reached, leaving one block for each later lane.
    do {
      pAt += work[b]!;
      b++;
    } while (b < n - (Math.min(count, n) - lane - 1) && pAt + work[b]! / 2 <= target);
    lanes.push({ blocks: blocks.slice(2 * first, 2 * b), pStart, pEnd: pAt });
  }
  return lanes;
}

/**
 * A contiguous run of the trajectory: steps [stepStart, stepEnd) counted in the trajectory's step
 * order (0 is its first recorded step, whatever its step index), and the occurrences (rows)
 * [rowStart, rowEnd) those steps hold.
 */
export interface StepRange {
  stepStart: number;
  stepEnd: number;
  rowStart: number;
  rowEnd: number;
}

export interface PassOptions extends ComputeOptions {
  /** The steps to walk (default: the whole trajectory). The pass starts from P = I at stepEnd. */
  range?: StepRange;
  /** Recorded in the manifest when the range is a segment (segments.ts). */
  segment?: SegmentInfo;
}

/** P = I for every propagator block ([off, k] pairs), concatenated row-major. */
export function identityPropagators(blocks: ArrayLike<number>, precision: 'fp32' | 'fp64'): Float32Array | Float64Array {
  let size = 0;
  for (let b = 1; b < blocks.length; b += 2) size += blocks[b]! * blocks[b]!;
  const P = precision === 'fp64' ? new Float64Array(size) : new Float32Array(size);
  let at = 0;
  for (let b = 1; b < blocks.length; b += 2) {
    const k = blocks[b]!;
    for (let i = 0; i < k; i++) P[at + i * k + i] = 1;
    at += k * k;
  }
  return P;
}

/** Checks mode, precision and curvature; shared by the whole-run and the segment passes. */
export function checkComputeOptions(options: Pick<ComputeOptions, 'mode' | 'precision' | 'curvature'>): { mode: 'per-block' | 'global'; precision: 'fp32' | 'fp64' } {
  const mode = options.mode ?? 'per-block';
  const precision = options.precision ?? 'fp32';
  if (mode !== 'per-block' && mode !== 'global') throw new DvembError('BAD_INPUT', `mode must be "per-block" or "global", got ${String(mode)}`);
  if (precision !== 'fp32' && precision !== 'fp64') throw new DvembError('BAD_INPUT', `precision must be "fp32" or "fp64", got ${String(precision)}`);
  const wanted = options.curvature ?? 'auto';
  if (!['auto', 'empirical-fisher', 'recorded'].includes(wanted)) {
    throw new DvembError('BAD_INPUT', `curvature must be "auto", "empirical-fisher" or "recorded", got ${String(wanted)}`);
  }
  return { mode, precision };
}

/** Steps [a, b) of a chunk, as views: the whole chunk when the range covers it. */
function sliceChunk(c: ChunkData, a: number, b: number, dim: number): ChunkData {
  if (a === 0 && b === c.steps) return c;
  const r0 = c.stepRows[a]!;
  const r1 = c.stepRows[b]!;
  const c0 = c.stepCurvature ? c.stepCurvature[a]! : 0;
  const c1 = c.stepCurvature ? c.stepCurvature[b]! : 0;
  return {
    index: c.index,
    steps: b - a,
    step: c.step.subarray(a, b),
    lr: c.lr.subarray(a, b),
    weightDecay: c.weightDecay.subarray(a, b),
    reduction: c.reduction.subarray(a, b),
    stepRows: Int32Array.from(c.stepRows.subarray(a, b + 1), (v) => v - r0),
    rows: c.rows.subarray(r0 * dim, r1 * dim),
    ids: c.ids.subarray(r0, r1),
    weights: c.weights.subarray(r0, r1),
    curvature: c.curvature ? c.curvature.subarray(c0 * dim, c1 * dim) : null,
    stepCurvature: c.stepCurvature ? Int32Array.from(c.stepCurvature.subarray(a, b + 1), (v) => v - c0) : null,
    curvatureWeights: c.curvatureWeights ? c.curvatureWeights.subarray(c0, c1) : null,
  };
}

/** Beyond this, the product of factors amplifies perturbations so much that embeddings mislead. */
export const PROPAGATOR_WARN = 1e6;

/**
 * The largest |entry| of P, and a warning when the recursion blew up without overflowing: an
 * η·λ_max(H) far from (0, 2) somewhere, or curvature that a small projection estimates badly.
 */
function propagatorWarning(P: Float32Array | Float64Array): { propagatorMax: number; warnings?: string[] } {
  let max = 0;
  for (let i = 0; i < P.length; i++) max = Math.max(max, Math.abs(P[i]!));
  if (!(max > PROPAGATOR_WARN)) return { propagatorMax: max };
  return {
    propagatorMax: max,
    warnings: [
      `the propagator's largest entry is ${max.toExponential(2)}: the product of (cI − ηH) factors amplifies ` +
        'perturbations that much, so the embeddings are dominated by a few directions and are unreliable. ' +
        'Check the learning rates against the curvature (η·λ_max(H) < 2), use a larger projection, or per-block propagators',
    ],
  };
}

/** Computes the embeddings of every occurrence in the trajectory at `trajectoryDir`. */
export async function computeEmbeddings(trajectoryDir: string, options: ComputeOptions): Promise<EmbeddingsManifest> {
  return backwardPass(trajectoryDir, options);
}

/**
 * The backward pass over `options.range` of a trajectory (default: all of it), starting from
 * P = I at the range's end. Writes embeddings.npy (the range's occurrences, in order),
 * occurrences.npy, steps.npy (first rows counted from the range's first occurrence),
 * propagator.npy (the product of the range's factors) and, last, embeddings.json.
 */
export async function backwardPass(trajectory: string | Trajectory, options: PassOptions): Promise<EmbeddingsManifest> {
  const started = performance.now();
  const { mode, precision } = checkComputeOptions(options);
  const traj = typeof trajectory === 'string' ? Trajectory.open(trajectory) : trajectory;
  const trajectoryDir = typeof trajectory === 'string' ? trajectory : trajectory.dir;
  const { layout, manifest } = traj;
  const wanted = options.curvature ?? 'auto';
  if (wanted === 'recorded' && !manifest.curvature) {
    throw new DvembError('BAD_INPUT', `${trajectoryDir} has no recorded curvature rows`, 'use --curvature empirical-fisher, or record sampled-label rows (RecorderOptions.curvature)');
  }
  const curvature = wanted === 'empirical-fisher' || !manifest.curvature ? 'empirical-fisher' : 'recorded';
  if (traj.steps === 0) throw new DvembError('BAD_INPUT', `${trajectoryDir} holds no recorded step`, 'record at least one step');
  const range = options.range ?? { stepStart: 0, stepEnd: traj.steps, rowStart: 0, rowEnd: traj.rows };
  if (!(Number.isSafeInteger(range.stepStart) && Number.isSafeInteger(range.stepEnd) && range.stepStart >= 0 && range.stepStart < range.stepEnd && range.stepEnd <= traj.steps)) {
    throw new DvembError('BAD_INPUT', `steps [${range.stepStart}, ${range.stepEnd}) are not a non-empty range of the ${traj.steps} steps of ${trajectoryDir}`);
  }
  if (!(Number.isSafeInteger(range.rowStart) && Number.isSafeInteger(range.rowEnd) && range.rowStart >= 0 && range.rowStart <= range.rowEnd && range.rowEnd <= traj.rows)) {
    throw new DvembError('BAD_INPUT', `occurrences [${range.rowStart}, ${range.rowEnd}) are not a range of the ${traj.rows} occurrences of ${trajectoryDir}`);
  }
  const loaded = options.backend && typeof options.backend === 'object' ? { backend: options.backend, name: options.backend.info().backend } : loadBackend(options.backend);
  const backend = loaded.backend;

  const out = options.out;
  const dim = layout.dim;
  const nOcc = range.rowEnd - range.rowStart;
  const nSteps = range.stepEnd - range.stepStart;
  const blocks = layout.propagatorBlocks(mode);
  const P = identityPropagators(blocks, precision);
  const info = backend.info();
  const laneCount = mode === 'per-block' && info.backend !== 'ts' ? Math.max(1, Math.floor(options.lanes ?? availableParallelism())) : 1;
  const lanes = planLanes(blocks, laneCount);
  // Lanes replace OpenBLAS's own threading; the thread count is process-wide, so it is restored.
  const blasThreads = info.threads;
  if (lanes.length > 1) backend.setThreads(1);

  const output = new PartialSet(out, Object.values(FILES));
  const changed = (why: string) =>
    new DvembError('CORRUPT', `${trajectoryDir} does not hold the steps this pass was planned for (${why})`, 'the trajectory changed or is damaged: run `dvemb inspect` on it, and plan the segments again from its current state');

  try {
    const embFile = await output.open(FILES.embeddings, npyHeader('<f4', [nOcc, dim]), nOcc * dim * 4);
    const occFile = await output.open(FILES.occurrences, npyHeader('<i8', [nOcc, 2]), nOcc * 16);
    const stepFile = await output.open(FILES.steps, npyHeader('<f8', [nSteps, 4]), nSteps * 32);
    const rowOffsets = traj.rowOffsets();
    const stepOffsets: number[] = [];
    traj.chunks.reduce((a, c) => (stepOffsets.push(a), a + c.steps), 0);
    const verify = options.verify ?? true;
    // The chunks the range touches; the first and last may be cut at a step inside them.
    let first = traj.chunks.length - 1;
    while (stepOffsets[first]! > range.stepStart) first--;
    let last = first;
    while (stepOffsets[last]! + traj.chunks[last]!.steps < range.stepEnd) last++;

    const examples = new Set<number>();
    // Two output buffers, alternating: chunk i's writes finish before chunk i + 2 reuses its
    // buffer (`await writing` below), and reuse spares a fresh zeroed allocation per chunk.
    let maxRows = 0;
    for (let i = first; i <= last; i++) maxRows = Math.max(maxRows, traj.chunks[i]!.rows);
    const outBuffers = [new Float32Array(maxRows * dim), new Float32Array(maxRows * dim)];
    let stepsDone = 0;
    let rowsDone = 0;
    let pending: Promise<ChunkData> | null = traj.readChunk(last, verify);
    let writing: Promise<unknown> = Promise.resolve();
    for (let i = last; i >= first; i--) {
      const whole: ChunkData = await pending!;
      // Read ahead: the earlier chunk loads while this one computes.
      pending = i > first ? traj.readChunk(i - 1, verify) : null;
      pending?.catch(() => undefined); // surfaced when awaited
      if (options.signal?.aborted) throw new DvembError('ABORTED', 'the backward pass was cancelled; no embeddings were written');
      const a = Math.max(0, range.stepStart - stepOffsets[i]!);
      const b = Math.min(whole.steps, range.stepEnd - stepOffsets[i]!);
      const chunk = sliceChunk(whole, a, b, dim);
      // Where this piece's rows and steps go in the output.
      const rowAt = rowOffsets[i]! + whole.stepRows[a]! - range.rowStart;
      const stepAt = stepOffsets[i]! + a - range.stepStart;
      const nRows = chunk.stepRows[chunk.steps]!;
      if (rowAt < 0 || rowAt + nRows > nOcc) throw changed(`chunk ${i} puts rows at ${rowAt + range.rowStart}..${rowAt + range.rowStart + nRows}`);
      const decay = new Float64Array(chunk.steps);
      for (let s = 0; s < chunk.steps; s++) decay[s] = 1 - chunk.lr[s]! * chunk.weightDecay[s]!;
      // The backend writes every column of every row (the propagator blocks cover all of them).
      const embeddings = outBuffers[i % 2]!.subarray(0, chunk.rows.length);
      const useCurv = curvature === 'recorded';
      const results = await Promise.all(
        lanes.map((lane) =>
          backend.propagate({
            precision,
            dim,
            blocks: lane.blocks,
            propagators: P.subarray(lane.pStart, lane.pEnd),
            steps: chunk.steps,
            rows: chunk.rows,
            stepRows: chunk.stepRows,
            weights: chunk.weights,
            curvature: useCurv ? chunk.curvature : null,
            stepCurvature: useCurv ? chunk.stepCurvature : null,
            curvatureWeights: useCurv ? chunk.curvatureWeights : null,
            lr: chunk.lr,
            decay,
            embeddings,
          }),
        ),
      );
      // The first step in walking order (the highest position) where any lane went bad.
      const bad = Math.max(...results);
      if (bad >= 0) {
        throw new DvembError(
          'NON_FINITE',
          `the backward pass produced NaN/Inf at step ${chunk.step[bad]} (chunk ${i}); no embeddings were written and the trajectory is untouched`,
          'the product of (cI − ηH) factors overflowed: try --precision fp64, check the recorded learning rates and gradient scale at that step, or use per-block propagators',
        );
      }
      // Tables for this piece's rows and steps, at their places in the output.
      const occ = new BigInt64Array(chunk.ids.length * 2);
      for (let s = 0; s < chunk.steps; s++) {
        for (let r = chunk.stepRows[s]!; r < chunk.stepRows[s + 1]!; r++) {
          occ[2 * r] = BigInt(chunk.ids[r]!);
          occ[2 * r + 1] = BigInt(chunk.step[s]!);
        }
      }
      for (const id of chunk.ids) examples.add(id);
      const st = new Float64Array(chunk.steps * 4);
      for (let s = 0; s < chunk.steps; s++) {
        st.set([chunk.step[s]!, chunk.lr[s]!, chunk.weightDecay[s]!, rowAt + chunk.stepRows[s]!], s * 4);
      }
      await writing; // at most one chunk's writes in flight
      // Each chunk's writes are flushed to disk while the next chunk computes, so the fsync the
      // end of the pass owes (durability before embeddings.json appears) has little left to do.
      writing = Promise.all([
        embFile.write(bytesOf(embeddings), 0, embeddings.byteLength, NPY_HEADER_BYTES + rowAt * dim * 4),
        occFile.write(bytesOf(occ), 0, occ.byteLength, NPY_HEADER_BYTES + rowAt * 16),
        stepFile.write(bytesOf(st), 0, st.byteLength, NPY_HEADER_BYTES + stepAt * 32),
      ]).then(() => embFile.datasync());
      stepsDone += chunk.steps;
      rowsDone += nRows;
      options.onProgress?.({ stepsDone, stepsTotal: nSteps, elapsedMs: performance.now() - started });
    }
    await writing;
    if (rowsDone !== nOcc) throw changed(`its steps hold ${rowsDone} occurrences, ${nOcc} were expected`);
    const pFd = openSync(output.path(FILES.propagator), 'w');
    try {
      writeSync(pFd, npyHeader(precision === 'fp64' ? '<f8' : '<f4', [P.length]));
      writeSync(pFd, bytesOf(P));
      fsyncSync(pFd);
    } finally {
      closeSync(pFd);
    }
    await output.syncAndClose();

    const result: EmbeddingsManifest = {
      format: EMBEDDINGS_FORMAT,
      version: 1,
      trajectory: resolve(trajectoryDir),
      projection: manifest.projection,
      blocks: layout.specs(),
      fingerprint: layout.fingerprint,
      dim,
      occurrences: nOcc,
      steps: nSteps,
      examples: examples.size,
      mode,
      precision,
      curvature,
      propagatorBlocks: Array.from(blocks),
      backend: loaded.name,
      created: new Date().toISOString(),
      seconds: (performance.now() - started) / 1000,
      ...(options.segment ? { segment: options.segment } : {}),
      ...propagatorWarning(P),
    };
    output.commit(result);
    return result;
  } catch (err) {
    await output.abandon();
    throw err;
  } finally {
    if (lanes.length > 1) backend.setThreads(blasThreads);
  }
}
