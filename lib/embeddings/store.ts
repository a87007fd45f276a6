// A directory of data value embeddings: one row per occurrence (example, step) of the
// trajectory, in the trajectory's order, plus the occurrence and step tables (docs/FORMAT.md).
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { loadBackend } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { DvembError } from '../errors.js';
import { Layout, type BlockSpec, type ProjectionSpec } from '../projection.js';
import { NPY_HEADER_BYTES, npyView, readNpyHeaderFile } from '../trajectory/npy.js';

export const EMBEDDINGS_FORMAT = 'dvemb-embeddings';
export const EMBEDDINGS_MANIFEST = 'embeddings.json';
export const FILES = {
  embeddings: 'embeddings.npy',
  occurrences: 'occurrences.npy',
  steps: 'steps.npy',
  propagator: 'propagator.npy',
} as const;
/**
 * A lazily composed set (docs/SEGMENTS.md) has no embeddings.npy: it reads each segment's local
 * embeddings in place and keeps each segment's S_j in composition.npy.
 */
export const LAZY_FILES = {
  composition: 'composition.npy',
} as const;

/** What a segment directory's manifest adds (docs/SEGMENTS.md): which part of which trajectory. */
export interface SegmentInfo {
  /** j, counted from 0 in training order, and K. */
  index: number;
  count: number;
  /** Steps [stepStart, stepEnd) and occurrences [rowStart, rowEnd), in the trajectory's order. */
  stepStart: number;
  stepEnd: number;
  rowStart: number;
  rowEnd: number;
  /** Step indices of the segment's first and last step; θ_{e_j} is the model after lastStep. */
  firstStep: number;
  lastStep: number;
  totalSteps: number;
  totalRows: number;
  /** Identifies the trajectory's contents (not its path): segments compose only with the same. */
  trajectoryId: string;
}

/** A lazily composed set: where each segment's local embeddings are; S_j are rows of composition.npy. */
export interface CompositionInfo {
  file: typeof LAZY_FILES.composition;
  segments: {
    index: number;
    /** The segment directory, relative to the composed set's directory. */
    dir: string;
    /** The segment's `created`, so a segment computed again later is noticed. */
    created: string;
    rowStart: number;
    rows: number;
    stepStart: number;
    steps: number;
  }[];
}

export interface EmbeddingsManifest {
  format: typeof EMBEDDINGS_FORMAT;
  version: 1;
  trajectory: string;
  projection: ProjectionSpec;
  blocks: BlockSpec[];
  fingerprint: string;
  dim: number;
  occurrences: number;
  steps: number;
  examples: number;
  mode: 'per-block' | 'global';
  precision: 'fp32' | 'fp64';
  curvature: 'empirical-fisher' | 'recorded';
  /** The propagator over the whole run, P = A_{T−1}⋯A_0, per propagator block [off, k]. */
  propagatorBlocks: number[];
  backend: string;
  created: string;
  seconds: number;
  /** max |P_ij| at the end of the pass; `warnings` says when it is large enough to distrust. */
  propagatorMax?: number;
  warnings?: string[];
  /** Present in a segment directory: the embeddings are local to the segment, the propagator is Q_j. */
  segment?: SegmentInfo;
  /** Present in a lazily composed set: scores apply S_jᵀ to the test gradients. */
  composition?: CompositionInfo;
  /** Present in a set composed from segments (eager or lazy). */
  composedFrom?: { segments: number; trajectoryId: string; lazy: boolean; segmentSeconds: number[] };
}

/** The loaded S_j of a lazily composed set: row ranges and per-block matrices (float32). */
export interface Composition {
  blocks: Int32Array;
  segments: { index: number; rowStart: number; rows: number; matrices: Float32Array; identity: boolean }[];
}

/** Sum of k² over [off, k] pairs: the length of a per-block matrix set. */
export function blockMatrixLength(blocks: ArrayLike<number>): number {
  let n = 0;
  for (let b = 1; b < blocks.length; b += 2) n += blocks[b]! * blocks[b]!;
  return n;
}

/** Each block's matrix transposed (blocks stored row-major one after another). */
export function transposeBlocks<T extends Float32Array | Float64Array>(mats: T, blocks: ArrayLike<number>): T {
  const out = new (mats.constructor as { new (n: number): T })(mats.length);
  let at = 0;
  for (let b = 1; b < blocks.length; b += 2) {
    const k = blocks[b]!;
    for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) out[at + j * k + i] = mats[at + i * k + j]!;
    at += k * k;
  }
  return out;
}

/**
 * out (n × dim): in each block [off, k], out_b = M_b · x_b for every row x, with M_b the block's
 * (k × k) matrix in `mats`. One GEMM per block (backend.score computes X M_bᵀ).
 */
export async function applyBlockMatrices(rows: Float32Array, n: number, dim: number, blocks: ArrayLike<number>, mats: Float32Array, backend: Backend): Promise<Float32Array> {
  const out = new Float32Array(n * dim);
  if (n === 0) return out;
  let at = 0;
  for (let b = 0; b < blocks.length; b += 2) {
    const off = blocks[b]!;
    const k = blocks[b + 1]!;
    const M = mats.subarray(at, at + k * k);
    at += k * k;
    if (off === 0 && k === dim) {
      await backend.score({ n, m: k, dim: k, embeddings: rows, tests: M, out });
      continue;
    }
    const x = new Float32Array(n * k);
    for (let r = 0; r < n; r++) x.set(rows.subarray(r * dim + off, r * dim + off + k), r * k);
    const y = new Float32Array(n * k);
    await backend.score({ n, m: k, dim: k, embeddings: x, tests: M, out: y });
    for (let r = 0; r < n; r++) out.set(y.subarray(r * k, (r + 1) * k), r * dim + off);
  }
  return out;
}

function notEmbeddings(dir: string, why: string): DvembError {
  return new DvembError('NOT_EMBEDDINGS', `${dir} holds no complete embeddings: ${why}`, 'compute them first: `dvemb compute <trajectory> --out <dir>` (an interrupted run leaves only *.partial files)');
}

export class EmbeddingSet {
  private constructor(
    readonly dir: string,
    readonly manifest: EmbeddingsManifest,
    readonly layout: Layout,
    /** The files holding the stored rows: embeddings.npy, or each segment's for a lazy set. */
    private readonly parts: { path: string; rowStart: number; rows: number; dataOffset: number }[],
    /** Sample id and step of each occurrence (row). */
    readonly ids: Float64Array,
    readonly occurrenceSteps: Float64Array,
    /** Per step: step index, η, λ, first row. */
    readonly stepTable: { step: Float64Array; lr: Float64Array; weightDecay: Float64Array; rowStart: Float64Array },
    /** For a lazily composed set: each segment's S_j; null when the stored rows are final. */
    readonly composition: Composition | null = null,
  ) {}

  static open(dir: string): EmbeddingSet {
    const path = join(dir, EMBEDDINGS_MANIFEST);
    if (!existsSync(dir)) throw notEmbeddings(dir, 'the directory does not exist');
    if (!existsSync(path)) throw notEmbeddings(dir, `there is no ${EMBEDDINGS_MANIFEST}`);
    let manifest: EmbeddingsManifest;
    try {
      manifest = JSON.parse(readFileSync(path, 'utf8')) as EmbeddingsManifest;
    } catch (err) {
      throw new DvembError('CORRUPT', `${path} is not valid JSON (${(err as Error).message})`, 'recompute the embeddings');
    }
    if (manifest?.format !== EMBEDDINGS_FORMAT) throw notEmbeddings(dir, `${EMBEDDINGS_MANIFEST} has format ${JSON.stringify(manifest?.format)}`);
    const layout = new Layout(manifest.projection, manifest.blocks);
    const parts = manifest.composition
      ? lazyParts(dir, manifest)
      : [{ path: join(dir, FILES.embeddings), rowStart: 0, rows: manifest.occurrences }];
    const checked = parts.map((part) => {
      const header = readNpyHeaderFile(part.path);
      const [rows, width] = header.shape;
      if (header.dtype !== '<f4' || header.shape.length !== 2 || rows !== part.rows || width !== layout.dim) {
        throw new DvembError('SHAPE_MISMATCH', `${part.path} has shape (${header.shape.join(', ')}) ${header.dtype}, the manifest says (${part.rows}, ${layout.dim}) <f4`, 'recompute the embeddings');
      }
      return { ...part, dataOffset: header.dataOffset };
    });
    const occ = readWhole(join(dir, FILES.occurrences), '<i8', [manifest.occurrences, 2]) as BigInt64Array;
    const ids = new Float64Array(manifest.occurrences);
    const occurrenceSteps = new Float64Array(manifest.occurrences);
    for (let i = 0; i < manifest.occurrences; i++) {
      ids[i] = Number(occ[2 * i]!);
      occurrenceSteps[i] = Number(occ[2 * i + 1]!);
    }
    const st = readWhole(join(dir, FILES.steps), '<f8', [manifest.steps, 4]) as Float64Array;
    const col = (c: number) => Float64Array.from({ length: manifest.steps }, (_, s) => st[s * 4 + c]!);
    return new EmbeddingSet(
      dir,
      manifest,
      layout,
      checked,
      ids,
      occurrenceSteps,
      {
        step: col(0),
        lr: col(1),
        weightDecay: col(2),
        rowStart: col(3),
      },
      manifest.composition ? readComposition(dir, manifest) : null,
    );
  }

  /** True when the stored rows are local embeddings composed at query time (docs/SEGMENTS.md). */
  get lazy(): boolean {
    return this.composition !== null;
  }

  get dim(): number {
    return this.layout.dim;
  }

  get count(): number {
    return this.manifest.occurrences;
  }

  /**
   * Streams the embedding rows in blocks of at most `rowsPerBlock`, in occurrence order. For a
   * lazily composed set the rows are composed here (S_j · local, a GEMM per block of rows).
   */
  async *rows(rowsPerBlock: number, backend?: Backend): AsyncGenerator<{ start: number; count: number; rows: Float32Array }> {
    const comp = this.composition;
    if (!comp) {
      yield* this.storedRows(rowsPerBlock);
      return;
    }
    const be = backend ?? loadBackend().backend;
    for await (const block of this.storedRows(rowsPerBlock)) {
      const rows = new Float32Array(block.rows.length);
      for (const seg of comp.segments) {
        const a = Math.max(seg.rowStart, block.start) - block.start;
        const b = Math.min(seg.rowStart + seg.rows, block.start + block.count) - block.start;
        if (a >= b) continue;
        const local = block.rows.subarray(a * this.dim, b * this.dim);
        rows.set(seg.identity ? local : await applyBlockMatrices(local, b - a, this.dim, comp.blocks, seg.matrices, be), a * this.dim);
      }
      yield { start: block.start, count: block.count, rows };
    }
  }

  /** The rows as stored: the embeddings, or for a lazily composed set the local embeddings. */
  async *storedRows(rowsPerBlock: number): AsyncGenerator<{ start: number; count: number; rows: Float32Array }> {
    const handles = await Promise.all(this.parts.map((p) => open(p.path, 'r')));
    try {
      const rowBytes = this.dim * 4;
      for (let start = 0; start < this.count; start += rowsPerBlock) {
        const count = Math.min(rowsPerBlock, this.count - start);
        const rows = new Float32Array(count * this.dim);
        // A block may span parts (segments of a lazy set): read each piece from its file.
        for (let i = 0; i < this.parts.length; i++) {
          const part = this.parts[i]!;
          const a = Math.max(start, part.rowStart);
          const b = Math.min(start + count, part.rowStart + part.rows);
          if (a >= b) continue;
          const want = (b - a) * rowBytes;
          const { bytesRead } = await handles[i]!.read(new Uint8Array(rows.buffer, (a - start) * rowBytes, want), 0, want, part.dataOffset + (a - part.rowStart) * rowBytes);
          if (bytesRead !== want) {
            throw new DvembError('TRUNCATED', `${part.path} ended early at row ${a - part.rowStart}`, 'recompute the embeddings');
          }
        }
        yield { start, count, rows };
      }
    } finally {
      await Promise.all(handles.map((h) => h.close()));
    }
  }
}

/** The segments' local embeddings a lazy set reads in place, after checking each is the one composed. */
function lazyParts(dir: string, manifest: EmbeddingsManifest): { path: string; rowStart: number; rows: number }[] {
  return manifest.composition!.segments.map((s) => {
    const segDir = join(dir, s.dir);
    const fix = 'a lazily composed set reads the segments\' local embeddings in place: keep the segment directories beside it, or compose again (`dvemb compose`, eagerly for a self-contained set)';
    let created: unknown;
    try {
      created = (JSON.parse(readFileSync(join(segDir, EMBEDDINGS_MANIFEST), 'utf8')) as EmbeddingsManifest).created;
    } catch {
      throw notEmbeddingsWith(dir, `segment ${s.index} (${segDir}) is gone or unfinished`, fix);
    }
    if (created !== s.created) {
      throw new DvembError('CORRUPT', `${dir}: segment ${s.index} (${segDir}) was computed again after this set was composed`, 'compose the segments again');
    }
    return { path: join(segDir, FILES.embeddings), rowStart: s.rowStart, rows: s.rows };
  });
}

function notEmbeddingsWith(dir: string, why: string, fix: string): DvembError {
  return new DvembError('NOT_EMBEDDINGS', `${dir} holds no complete embeddings: ${why}`, fix);
}

/** Reads composition.npy (K × Σk², the S_j of each segment) and checks it against the manifest. */
function readComposition(dir: string, manifest: EmbeddingsManifest): Composition {
  const info = manifest.composition!;
  const blocks = Int32Array.from(manifest.propagatorBlocks);
  const len = blockMatrixLength(blocks);
  const K = info.segments.length;
  let at = 0;
  for (const s of info.segments) {
    if (s.rowStart !== at) {
      throw new DvembError('CORRUPT', `${join(dir, EMBEDDINGS_MANIFEST)}: segment ${s.index} starts at row ${s.rowStart}, expected ${at}`, 'compose the segments again');
    }
    at += s.rows;
  }
  if (at !== manifest.occurrences) {
    throw new DvembError('CORRUPT', `${join(dir, EMBEDDINGS_MANIFEST)}: the segments hold ${at} rows, the set ${manifest.occurrences}`, 'compose the segments again');
  }
  const dtype = manifest.precision === 'fp64' ? '<f8' : '<f4';
  const all = readWhole(join(dir, LAZY_FILES.composition), dtype, [K, len]) as Float32Array | Float64Array;
  return {
    blocks,
    segments: info.segments.map((s, j) => {
      const matrices = Float32Array.from(all.subarray(j * len, (j + 1) * len));
      return { index: s.index, rowStart: s.rowStart, rows: s.rows, matrices, identity: isIdentity(matrices, blocks) };
    }),
  };
}

function isIdentity(mats: Float32Array, blocks: Int32Array): boolean {
  let at = 0;
  for (let b = 1; b < blocks.length; b += 2) {
    const k = blocks[b]!;
    for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) if (mats[at + i * k + j] !== (i === j ? 1 : 0)) return false;
    at += k * k;
  }
  return true;
}

function readWhole(path: string, dtype: string, shape: number[]): Float64Array | BigInt64Array | Float32Array {
  const header = readNpyHeaderFile(path);
  if (header.dtype !== dtype || header.shape.join(',') !== shape.join(',')) {
    throw new DvembError('SHAPE_MISMATCH', `${path} has shape (${header.shape.join(', ')}) ${header.dtype}, expected (${shape.join(', ')}) ${dtype}`, 'recompute the embeddings');
  }
  return npyView(readFileSync(path), header);
}

/**
 * The files of an embeddings directory while they are written: each as `<name>.partial` until
 * commit() renames them and writes embeddings.json last, so a directory with a manifest is
 * complete and an interrupted run leaves nothing that looks complete.
 */
export class PartialSet {
  private handles: FileHandle[] = [];

  constructor(
    readonly out: string,
    readonly files: readonly string[],
  ) {
    mkdirSync(out, { recursive: true });
  }

  path(file: string): string {
    return join(this.out, `${file}.partial`);
  }

  /** Creates `<file>.partial` at its full size with its .npy header written. */
  async open(file: string, header: Buffer, dataBytes: number): Promise<FileHandle> {
    const fh = await open(this.path(file), 'w+');
    this.handles.push(fh);
    await fh.truncate(NPY_HEADER_BYTES + dataBytes);
    await fh.write(header, 0, header.length, 0);
    return fh;
  }

  async syncAndClose(): Promise<void> {
    for (const h of this.handles) await h.sync();
    await Promise.all(this.handles.map((h) => h.close()));
    this.handles = [];
  }

  /** Renames every partial file into place (removing `stale` files first), then the manifest. */
  commit(manifest: EmbeddingsManifest, stale: readonly string[] = []): void {
    rmSync(join(this.out, EMBEDDINGS_MANIFEST), { force: true });
    for (const f of stale) rmSync(join(this.out, f), { force: true });
    for (const f of this.files) renameSync(this.path(f), join(this.out, f));
    const tmp = join(this.out, `${EMBEDDINGS_MANIFEST}.tmp`);
    writeFileSync(tmp, JSON.stringify(manifest, null, 2) + '\n');
    renameSync(tmp, join(this.out, EMBEDDINGS_MANIFEST));
  }

  /** After a failure or an abort: closes and removes every partial file. */
  async abandon(): Promise<void> {
    await Promise.all(this.handles.map((h) => h.close().catch(() => undefined)));
    this.handles = [];
    for (const f of this.files) rmSync(this.path(f), { force: true });
  }
}
