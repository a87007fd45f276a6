// The backward pass (REFERENCE §3): walks a recorded trajectory from its last step to its
// first, carrying the propagator P, and writes one data value embedding per occurrence.
// Memory is bounded by a few chunks: the next chunk is read while the current one computes,
// and each chunk's embeddings go to disk at their place in the output file as soon as they exist.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { loadBackend, type BackendChoice } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { DvembError } from '../errors.js';
import type { ChunkData } from '../trajectory/chunk.js';
import { NPY_HEADER_BYTES, bytesOf, npyHeader } from '../trajectory/npy.js';
import { Trajectory } from '../trajectory/trajectory.js';
import { EMBEDDINGS_FORMAT, EMBEDDINGS_MANIFEST, FILES, type EmbeddingsManifest } from './store.js';

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
}

function identity(blocks: Int32Array, precision: 'fp32' | 'fp64'): Float32Array | Float64Array {
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

/** Computes the embeddings of every occurrence in the trajectory at `trajectoryDir`. */
export async function computeEmbeddings(trajectoryDir: string, options: ComputeOptions): Promise<EmbeddingsManifest> {
  const started = performance.now();
  const mode = options.mode ?? 'per-block';
  const precision = options.precision ?? 'fp32';
  if (mode !== 'per-block' && mode !== 'global') throw new DvembError('BAD_INPUT', `mode must be "per-block" or "global", got ${String(mode)}`);
  if (precision !== 'fp32' && precision !== 'fp64') throw new DvembError('BAD_INPUT', `precision must be "fp32" or "fp64", got ${String(precision)}`);
  const traj = Trajectory.open(trajectoryDir);
  const { layout, manifest } = traj;
  const wanted = options.curvature ?? 'auto';
  if (!['auto', 'empirical-fisher', 'recorded'].includes(wanted)) {
    throw new DvembError('BAD_INPUT', `curvature must be "auto", "empirical-fisher" or "recorded", got ${String(wanted)}`);
  }
  if (wanted === 'recorded' && !manifest.curvature) {
    throw new DvembError('BAD_INPUT', `${trajectoryDir} has no recorded curvature rows`, 'use --curvature empirical-fisher, or record sampled-label rows (RecorderOptions.curvature)');
  }
  const curvature = wanted === 'empirical-fisher' || !manifest.curvature ? 'empirical-fisher' : 'recorded';
  if (traj.steps === 0) throw new DvembError('BAD_INPUT', `${trajectoryDir} holds no recorded step`, 'record at least one step');
  const loaded = options.backend && typeof options.backend === 'object' ? { backend: options.backend, name: options.backend.info().backend } : loadBackend(options.backend);
  const backend = loaded.backend;

  const out = options.out;
  mkdirSync(out, { recursive: true });
  const partial = (f: string) => join(out, `${f}.partial`);
  const dim = layout.dim;
  const nOcc = traj.rows;
  const nSteps = traj.steps;
  const blocks = layout.propagatorBlocks(mode);
  const P = identity(blocks, precision);

  const handles: FileHandle[] = [];
  const openPartial = async (file: string, header: Buffer, dataBytes: number) => {
    const fh = await open(partial(file), 'w+');
    handles.push(fh);
    await fh.truncate(NPY_HEADER_BYTES + dataBytes);
    await fh.write(header, 0, header.length, 0);
    return fh;
  };
  const cleanup = async () => {
    await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
    for (const f of Object.values(FILES)) rmSync(partial(f), { force: true });
  };

  try {
    const embFile = await openPartial(FILES.embeddings, npyHeader('<f4', [nOcc, dim]), nOcc * dim * 4);
    const occFile = await openPartial(FILES.occurrences, npyHeader('<i8', [nOcc, 2]), nOcc * 16);
    const stepFile = await openPartial(FILES.steps, npyHeader('<f8', [nSteps, 4]), nSteps * 32);
    const rowOffsets = traj.rowOffsets();
    const stepOffsets: number[] = [];
    traj.chunks.reduce((a, c) => (stepOffsets.push(a), a + c.steps), 0);
    const verify = options.verify ?? true;

    let stepsDone = 0;
    let pending: Promise<ChunkData> | null = traj.readChunk(traj.chunks.length - 1, verify);
    let writing: Promise<unknown> = Promise.resolve();
    for (let i = traj.chunks.length - 1; i >= 0; i--) {
      const chunk: ChunkData = await pending!;
      // Read ahead: the earlier chunk loads while this one computes.
      pending = i > 0 ? traj.readChunk(i - 1, verify) : null;
      pending?.catch(() => undefined); // surfaced when awaited
      if (options.signal?.aborted) throw new DvembError('ABORTED', 'the backward pass was cancelled; no embeddings were written');
      const decay = new Float64Array(chunk.steps);
      for (let s = 0; s < chunk.steps; s++) decay[s] = 1 - chunk.lr[s]! * chunk.weightDecay[s]!;
      const embeddings = new Float32Array(chunk.rows.length);
      const useCurv = curvature === 'recorded';
      const bad = await backend.propagate({
        precision,
        dim,
        blocks,
        propagators: P,
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
      });
      if (bad >= 0) {
        throw new DvembError(
          'NON_FINITE',
          `the backward pass produced NaN/Inf at step ${chunk.step[bad]} (chunk ${i}); no embeddings were written and the trajectory is untouched`,
          'the product of (cI − ηH) factors overflowed: try --precision fp64, check the recorded learning rates and gradient scale at that step, or use per-block propagators',
        );
      }
      // Tables for this chunk's rows and steps, at their places in the output.
      const occ = new BigInt64Array(chunk.ids.length * 2);
      for (let s = 0; s < chunk.steps; s++) {
        for (let r = chunk.stepRows[s]!; r < chunk.stepRows[s + 1]!; r++) {
          occ[2 * r] = BigInt(chunk.ids[r]!);
          occ[2 * r + 1] = BigInt(chunk.step[s]!);
        }
      }
      const st = new Float64Array(chunk.steps * 4);
      for (let s = 0; s < chunk.steps; s++) {
        st.set([chunk.step[s]!, chunk.lr[s]!, chunk.weightDecay[s]!, rowOffsets[i]! + chunk.stepRows[s]!], s * 4);
      }
      await writing; // at most one chunk's writes in flight
      writing = Promise.all([
        embFile.write(bytesOf(embeddings), 0, embeddings.byteLength, NPY_HEADER_BYTES + rowOffsets[i]! * dim * 4),
        occFile.write(bytesOf(occ), 0, occ.byteLength, NPY_HEADER_BYTES + rowOffsets[i]! * 16),
        stepFile.write(bytesOf(st), 0, st.byteLength, NPY_HEADER_BYTES + stepOffsets[i]! * 32),
      ]);
      stepsDone += chunk.steps;
      options.onProgress?.({ stepsDone, stepsTotal: nSteps, elapsedMs: performance.now() - started });
    }
    await writing;
    for (const h of handles) await h.sync();

    const pFd = openSync(partial(FILES.propagator), 'w');
    try {
      writeSync(pFd, npyHeader(precision === 'fp64' ? '<f8' : '<f4', [P.length]));
      writeSync(pFd, bytesOf(P));
      fsyncSync(pFd);
    } finally {
      closeSync(pFd);
    }
    await Promise.all(handles.map((h) => h.close()));
    handles.length = 0;

    const result: EmbeddingsManifest = {
      format: EMBEDDINGS_FORMAT,
      version: 1,
      trajectory: trajectoryDir,
      projection: manifest.projection,
      blocks: layout.specs(),
      fingerprint: layout.fingerprint,
      dim,
      occurrences: nOcc,
      steps: nSteps,
      examples: await countExamples(traj),
      mode,
      precision,
      curvature,
      propagatorBlocks: Array.from(blocks),
      backend: loaded.name,
      created: new Date().toISOString(),
      seconds: (performance.now() - started) / 1000,
    };
    // The manifest goes last: a directory with embeddings.json is complete, and one without is not.
    rmSync(join(out, EMBEDDINGS_MANIFEST), { force: true });
    for (const f of Object.values(FILES)) renameSync(partial(f), join(out, f));
    const tmp = join(out, `${EMBEDDINGS_MANIFEST}.tmp`);
    writeFileSync(tmp, JSON.stringify(result, null, 2) + '\n');
    renameSync(tmp, join(out, EMBEDDINGS_MANIFEST));
    return result;
  } catch (err) {
    await cleanup();
    throw err;
  }
}

async function countExamples(traj: Trajectory): Promise<number> {
  const seen = new Set<number>();
  for (let i = 0; i < traj.chunks.length; i++) {
    const c = await traj.readChunk(i, false);
    for (const id of c.ids) seen.add(id);
  }
  return seen.size;
}


