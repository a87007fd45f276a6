// Records a training run, one call per optimisation step, into an append-only trajectory
// directory (docs/FORMAT.md). Each step's data are written before its record in steps.npy, so
// a process killed at any instant leaves every completed step readable; chunks are sealed
// (fsync, crc32 into the manifest, atomic manifest rename) every `chunkSteps` steps.
import { closeSync, existsSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readdirSync, readSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from './checksum.js';
import { loadBackend, type BackendChoice } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { DvembError, assertFinite } from '../errors.js';
import { Layout, Projector, type BatchGradients, type BlockSpec, type ProjectionSpec } from '../projection.js';
import { chunkFiles, findTail, recordBytes, FILE_DTYPE } from './chunk.js';
import { COL, MANIFEST, REDUCTION_CODES, STEP_WIDTH, TRAJECTORY_FORMAT, TRAJECTORY_VERSION, chunkFileName, readManifest, type ChunkFile, type Manifest, type Reduction } from './format.js';
import { NPY_HEADER_BYTES, bytesOf, int64Bytes, npyHeader } from './npy.js';

export interface RecorderOptions {
  projection: ProjectionSpec;
  blocks: BlockSpec[];
  /** Sampled-label curvature rows (REFERENCE §3): `draws` sampled labels per example. */
  curvature?: { draws: number; kind?: string };
  /** Steps per chunk (default 256); a chunk is also sealed once it holds `chunkBytes`. */
  chunkSteps?: number;
  chunkBytes?: number;
  backend?: Backend | BackendChoice;
  /** Free-form metadata kept in the manifest (model, dataset, optimiser...). */
  meta?: Record<string, unknown>;
  /** fsync every step (survives power loss, slower). Without it a killed process loses nothing. */
  durable?: boolean;
}

export interface StepRecord {
  /** The optimisation step index; must increase from call to call. */
  step: number;
  /** η_t actually used at this step (after warm-up and decay). */
  lr: number;
  /** λ of θ ← (1 − ηλ)θ − η Σ w g (default 0). */
  weightDecay?: number;
  /** Sample id of each example in the batch (repeats allowed: separate occurrences). */
  ids: ArrayLike<number>;
  /** How the batch loss was reduced (default 'mean': w = 1/|B|), or explicit per-example weights. */
  reduction?: 'mean' | 'sum';
  weights?: ArrayLike<number>;
  /** Each example's gradient of its own loss (REFERENCE §1), in any form the Projector takes. */
  gradients: BatchGradients;
  /** Sampled-label gradients, `draws` per example in example order (n × draws rows). */
  curvature?: BatchGradients;
}

interface OpenChunk {
  index: number;
  fds: Partial<Record<ChunkFile, number>>;
  counts: Record<ChunkFile, number>; // records written per file
  crc: Record<ChunkFile, number>;
  steps: number;
  bytes: number;
  firstStep: number;
}

const DEFAULT_CHUNK_STEPS = 256;
const DEFAULT_CHUNK_BYTES = 32 << 20;

function writeManifestAtomic(dir: string, manifest: Manifest): void {
  const tmp = join(dir, `${MANIFEST}.tmp`);
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, JSON.stringify(manifest, null, 2) + '\n');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, join(dir, MANIFEST));
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

function shapeOf(file: ChunkFile, count: number, dim: number): number[] {
  if (file === 'rows' || file === 'curvature') return [count, dim];
  if (file === 'steps') return [count, STEP_WIDTH];
  return [count];
}

export class TrajectoryRecorder {
  readonly projector: Projector;
  private chunk: OpenChunk | null = null;
  private lastStep: number;
  private queue: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly dir: string,
    private readonly manifest: Manifest,
    readonly layout: Layout,
    backend: Backend,
    private readonly durable: boolean,
  ) {
    this.projector = new Projector(layout, backend);
    this.lastStep = manifest.chunks.at(-1)?.lastStep ?? -1;
  }

  /** Starts a new trajectory in `dir`, which must not exist or be empty. */
  static create(dir: string, options: RecorderOptions): TrajectoryRecorder {
    if (existsSync(join(dir, MANIFEST))) {
      throw new DvembError('BAD_INPUT', `${dir} already holds a trajectory`, 'append to it with TrajectoryRecorder.open(dir), or choose a new directory');
    }
    if (existsSync(dir) && readdirSync(dir).length > 0) {
      throw new DvembError('BAD_INPUT', `${dir} is not empty`, 'record into a new or empty directory');
    }
    const layout = new Layout(options.projection, options.blocks);
    const chunkSteps = options.chunkSteps ?? DEFAULT_CHUNK_STEPS;
    const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if (!Number.isSafeInteger(chunkSteps) || chunkSteps < 1) throw new DvembError('BAD_INPUT', `chunkSteps must be a positive integer, got ${chunkSteps}`);
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1) throw new DvembError('BAD_INPUT', `chunkBytes must be a positive integer, got ${chunkBytes}`);
    const draws = options.curvature?.draws;
    if (options.curvature && (!Number.isSafeInteger(draws) || draws! < 1)) {
      throw new DvembError('BAD_INPUT', `curvature.draws must be a positive integer, got ${String(draws)}`);
    }
    const manifest: Manifest = {
      format: TRAJECTORY_FORMAT,
      version: TRAJECTORY_VERSION,
      projection: { seed: layout.seed, distribution: layout.distribution },
      blocks: layout.specs(),
      dim: layout.dim,
      curvature: options.curvature ? { draws: draws!, kind: options.curvature.kind ?? 'sampled-fisher' } : null,
      chunkSteps,
      chunkBytes,
      chunks: [],
      meta: options.meta ?? {},
    };
    mkdirSync(dir, { recursive: true });
    writeManifestAtomic(dir, manifest);
    return new TrajectoryRecorder(dir, manifest, layout, resolveBackend(options.backend), options.durable ?? false);
  }

  /** Reopens a trajectory to append to it, keeping every step an earlier recorder completed. */
  static open(dir: string, options: { backend?: Backend | BackendChoice; durable?: boolean } = {}): TrajectoryRecorder {
    const { manifest, layout } = readManifest(dir);
    const rec = new TrajectoryRecorder(dir, manifest, layout, resolveBackend(options.backend), options.durable ?? false);
    const tail = findTail(dir, manifest, layout);
    if (tail) rec.adoptTail(tail.info.steps, tail.info.rows, tail.info.curvatureRows, tail.info.firstStep, tail.info.lastStep);
    return rec;
  }

  get steps(): number {
    return this.manifest.chunks.reduce((a, c) => a + c.steps, 0) + (this.chunk?.steps ?? 0);
  }

  /**
   * Records one step. Calls are applied in the order they are made, even without awaiting. The
   * ids and weights are copied at once; gradient arrays are read when the step's turn comes, so
   * do not overwrite them before the returned promise settles.
   */
  record(step: StepRecord): Promise<void> {
    const snapshot =
      step && typeof step === 'object'
        ? { ...step, ids: step.ids && Array.from(step.ids), weights: step.weights && Array.from(step.weights) }
        : step;
    const run = this.queue.then(() => this.recordNow(snapshot));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Seals the open chunk and releases the files. The trajectory can be reopened to append. */
  async close(): Promise<void> {
    await this.queue;
    if (this.closed) return;
    if (this.chunk) this.seal();
    this.closed = true;
  }

  private async recordNow(s: StepRecord): Promise<void> {
    if (this.closed) throw new DvembError('CLOSED', `the recorder of ${this.dir} is closed`, 'reopen it with TrajectoryRecorder.open(dir) to append');
    const { manifest } = this;
    if (typeof s !== 'object' || s === null) throw new DvembError('BAD_INPUT', 'record() takes one object {step, lr, ids, gradients, ...}');
    if (!Number.isSafeInteger(s.step) || s.step < 0) {
      throw new DvembError('BAD_INPUT', `step must be a non-negative integer, got ${String(s.step)}`);
    }
    if (s.step <= this.lastStep) {
      throw new DvembError('STEP_ORDER', `step ${s.step} does not come after the last recorded step ${this.lastStep}`, 'record steps in increasing order; to start over, record into a new directory');
    }
    if (typeof s.lr !== 'number' || !Number.isFinite(s.lr) || s.lr < 0) {
      throw new DvembError('NON_FINITE', `step ${s.step}: learning rate must be a finite number ≥ 0, got ${String(s.lr)}`, 'pass the learning rate actually used at this step');
    }
    const decay = s.weightDecay ?? 0;
    if (typeof decay !== 'number' || !Number.isFinite(decay) || decay < 0) {
      throw new DvembError('BAD_INPUT', `step ${s.step}: weightDecay must be a finite number ≥ 0, got ${String(decay)}`);
    }
    const n = s.ids?.length;
    if (!Number.isSafeInteger(n) || n < 1) throw new DvembError('BAD_INPUT', `step ${s.step}: ids must list the batch's sample ids (at least one)`);
    const ids = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const id = Number(s.ids[i]);
      if (!Number.isSafeInteger(id) || id < 0) {
        throw new DvembError('BAD_INPUT', `step ${s.step}: sample id at position ${i} is ${String(s.ids[i])}`, 'sample ids must be non-negative integers (e.g. row numbers of the training set)');
      }
      ids[i] = id;
    }
    let reduction: Reduction;
    const weights = new Float64Array(n);
    if (s.weights !== undefined) {
      if (s.reduction !== undefined) throw new DvembError('BAD_INPUT', `step ${s.step}: give either reduction or weights, not both`);
      if (s.weights.length !== n) throw new DvembError('SHAPE_MISMATCH', `step ${s.step}: ${s.weights.length} weights for ${n} examples`);
      for (let i = 0; i < n; i++) weights[i] = Number(s.weights[i]);
      assertFinite(weights, `step ${s.step}: weights`);
      reduction = 'custom';
    } else {
      reduction = s.reduction ?? 'mean';
      if (reduction !== 'mean' && reduction !== 'sum') throw new DvembError('BAD_INPUT', `step ${s.step}: reduction must be "mean" or "sum", got ${String(reduction)}`);
      weights.fill(reduction === 'mean' ? 1 / n : 1);
    }
    const rows = await this.projector.project(s.gradients, n, `step ${s.step}: gradients`);
    assertFinite(rows, `step ${s.step}: projected gradients`);
    let curvature: Float32Array | null = null;
    if (manifest.curvature) {
      if (!s.curvature) {
        throw new DvembError('BAD_INPUT', `step ${s.step}: this trajectory records curvature rows, and none were given`, `pass curvature: ${manifest.curvature.draws} sampled-label gradients per example`);
      }
      const draws = manifest.curvature.draws;
      curvature = await this.projector.project(s.curvature, n * draws, `step ${s.step}: curvature`);
      if (curvature === s.curvature) curvature = Float32Array.from(curvature);
      const scale = 1 / Math.sqrt(draws);
      for (let i = 0; i < curvature.length; i++) curvature[i]! *= scale;
      assertFinite(curvature, `step ${s.step}: projected curvature`);
    } else if (s.curvature) {
      throw new DvembError('BAD_INPUT', `step ${s.step}: curvature rows given, but the trajectory was created without curvature`, 'create it with the option curvature: {draws}');
    }
    this.append(s.step, s.lr, decay, reduction, ids, weights, rows, curvature);
    this.lastStep = s.step;
    const c = this.chunk!;
    if (c.steps >= manifest.chunkSteps || c.bytes >= manifest.chunkBytes) this.seal();
  }

  private openChunk(index: number, fresh: boolean): OpenChunk {
    const files = chunkFiles(this.manifest);
    const chunk: OpenChunk = {
      index,
      fds: {},
      counts: { rows: 0, ids: 0, weights: 0, steps: 0, curvature: 0 },
      crc: { rows: 0, ids: 0, weights: 0, steps: 0, curvature: 0 },
      steps: 0,
      bytes: 0,
      firstStep: -1,
    };
    for (const file of files) {
      const path = join(this.dir, chunkFileName(index, file));
      const fd = openSync(path, fresh || !existsSync(path) ? 'w+' : 'r+');
      chunk.fds[file] = fd;
      if (fresh) writeSync(fd, npyHeader(FILE_DTYPE[file], shapeOf(file, 0, this.layout.dim)), 0, NPY_HEADER_BYTES, 0);
    }
    return chunk;
  }

  /** Takes over the committed steps of an unsealed tail chunk, cutting off any torn write. */
  private adoptTail(steps: number, rows: number, curvRows: number, firstStep: number, lastStep: number): void {
    const index = this.manifest.chunks.length;
    const chunk = this.openChunk(index, false);
    const dim = this.layout.dim;
    chunk.counts = { rows, ids: rows, weights: rows, steps, curvature: curvRows };
    for (const file of chunkFiles(this.manifest)) {
      const fd = chunk.fds[file]!;
      const bytes = chunk.counts[file] * recordBytes(file, dim);
      ftruncateSync(fd, NPY_HEADER_BYTES + bytes);
      writeSync(fd, npyHeader(FILE_DTYPE[file], shapeOf(file, chunk.counts[file], dim)), 0, NPY_HEADER_BYTES, 0);
      // Recompute the running crc32 of the data kept.
      const buf = Buffer.alloc(Math.min(bytes, 8 << 20));
      let crc = 0;
      for (let at = 0; at < bytes; ) {
        const got = readSync(fd, buf, 0, Math.min(buf.length, bytes - at), NPY_HEADER_BYTES + at);
        crc = crc32(buf.subarray(0, got), crc);
        at += got;
      }
      chunk.crc[file] = crc;
      chunk.bytes += bytes;
    }
    chunk.steps = steps;
    chunk.firstStep = firstStep;
    this.chunk = chunk;
    this.lastStep = lastStep;
  }

  private append(step: number, lr: number, decay: number, reduction: Reduction, ids: Float64Array, weights: Float64Array, rows: Float32Array, curvature: Float32Array | null): void {
    const dim = this.layout.dim;
    const c = (this.chunk ??= this.openChunk(this.manifest.chunks.length, true));
    const n = ids.length;
    const record = new Float64Array(STEP_WIDTH);
    record[COL.step] = step;
    record[COL.lr] = lr;
    record[COL.decay] = decay;
    record[COL.rowStart] = c.counts.rows;
    record[COL.rowCount] = n;
    record[COL.curvStart] = c.counts.curvature;
    record[COL.curvCount] = curvature ? curvature.length / dim : 0;
    record[COL.reduction] = REDUCTION_CODES[reduction];
    // Data first, the step record last: the record is what commits the step.
    const writes: [ChunkFile, Buffer, number][] = [
      ['rows', bytesOf(rows), n],
      ['ids', int64Bytes(ids), n],
      ['weights', bytesOf(weights), n],
    ];
    if (curvature) writes.push(['curvature', bytesOf(curvature), curvature.length / dim]);
    writes.push(['steps', bytesOf(record), 1]);
    for (const [file, buf, count] of writes) {
      const fd = c.fds[file]!;
      writeSync(fd, buf, 0, buf.length, NPY_HEADER_BYTES + c.counts[file] * recordBytes(file, dim));
      c.crc[file] = crc32(buf, c.crc[file]);
      c.counts[file] += count;
      c.bytes += buf.length;
    }
    // Keep headers current so numpy sees every committed step even before the chunk is sealed.
    for (const [file] of writes) {
      writeSync(c.fds[file]!, npyHeader(FILE_DTYPE[file], shapeOf(file, c.counts[file], dim)), 0, NPY_HEADER_BYTES, 0);
      if (this.durable) fsyncSync(c.fds[file]!);
    }
    if (c.steps === 0) c.firstStep = step;
    c.steps++;
  }

  private seal(): void {
    const c = this.chunk;
    if (!c) return;
    this.chunk = null;
    const checksums: Partial<Record<ChunkFile, string>> = {};
    for (const file of chunkFiles(this.manifest)) {
      const fd = c.fds[file]!;
      fsyncSync(fd);
      closeSync(fd);
      checksums[file] = (c.crc[file] >>> 0).toString(16).padStart(8, '0');
    }
    if (c.steps === 0) return;
    this.manifest.chunks.push({
      index: c.index,
      steps: c.steps,
      rows: c.counts.rows,
      curvatureRows: c.counts.curvature,
      firstStep: c.firstStep,
      lastStep: this.lastStep,
      checksums,
    });
    writeManifestAtomic(this.dir, this.manifest);
  }
}

function resolveBackend(b: Backend | BackendChoice | undefined): Backend {
  if (b && typeof b === 'object') return b;
  return loadBackend(b).backend;
}
