// A directory of data value embeddings: one row per occurrence (example, step) of the
// trajectory, in the trajectory's order, plus the occurrence and step tables (docs/FORMAT.md).
import { existsSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { DvembError } from '../errors.js';
import { Layout, type BlockSpec, type ProjectionSpec } from '../projection.js';
import { npyView, readNpyHeaderFile, type NpyHeader } from '../trajectory/npy.js';

export const EMBEDDINGS_FORMAT = 'dvemb-embeddings';
export const EMBEDDINGS_MANIFEST = 'embeddings.json';
export const FILES = {
  embeddings: 'embeddings.npy',
  occurrences: 'occurrences.npy',
  steps: 'steps.npy',
  propagator: 'propagator.npy',
} as const;

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
}

function notEmbeddings(dir: string, why: string): DvembError {
  return new DvembError('NOT_EMBEDDINGS', `${dir} holds no complete embeddings: ${why}`, 'compute them first: `dvemb compute <trajectory> --out <dir>` (an interrupted run leaves only *.partial files)');
}

export class EmbeddingSet {
  private constructor(
    readonly dir: string,
    readonly manifest: EmbeddingsManifest,
    readonly layout: Layout,
    private readonly header: NpyHeader,
    /** Sample id and step of each occurrence (row). */
    readonly ids: Float64Array,
    readonly occurrenceSteps: Float64Array,
    /** Per step: step index, η, λ, first row. */
    readonly stepTable: { step: Float64Array; lr: Float64Array; weightDecay: Float64Array; rowStart: Float64Array },
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
    const header = readNpyHeaderFile(join(dir, FILES.embeddings));
    const [rows, width] = header.shape;
    if (header.dtype !== '<f4' || header.shape.length !== 2 || rows !== manifest.occurrences || width !== layout.dim) {
      throw new DvembError('SHAPE_MISMATCH', `${join(dir, FILES.embeddings)} has shape (${header.shape.join(', ')}) ${header.dtype}, the manifest says (${manifest.occurrences}, ${layout.dim}) <f4`, 'recompute the embeddings');
    }
    const occ = readWhole(join(dir, FILES.occurrences), '<i8', [manifest.occurrences, 2]) as BigInt64Array;
    const ids = new Float64Array(manifest.occurrences);
    const occurrenceSteps = new Float64Array(manifest.occurrences);
    for (let i = 0; i < manifest.occurrences; i++) {
      ids[i] = Number(occ[2 * i]!);
      occurrenceSteps[i] = Number(occ[2 * i + 1]!);
    }
    const st = readWhole(join(dir, FILES.steps), '<f8', [manifest.steps, 4]) as Float64Array;
    const col = (c: number) => Float64Array.from({ length: manifest.steps }, (_, s) => st[s * 4 + c]!);
    return new EmbeddingSet(dir, manifest, layout, header, ids, occurrenceSteps, {
      step: col(0),
      lr: col(1),
      weightDecay: col(2),
      rowStart: col(3),
    });
  }

  get dim(): number {
    return this.layout.dim;
  }

  get count(): number {
    return this.manifest.occurrences;
  }

  /** Streams the embedding rows in blocks of at most `rowsPerBlock`, in occurrence order. */
  async *rows(rowsPerBlock: number): AsyncGenerator<{ start: number; count: number; rows: Float32Array }> {
    const fh = await open(join(this.dir, FILES.embeddings), 'r');
    try {
      const rowBytes = this.dim * 4;
      for (let start = 0; start < this.count; start += rowsPerBlock) {
        const count = Math.min(rowsPerBlock, this.count - start);
        const rows = new Float32Array(count * this.dim);
        const { bytesRead } = await fh.read(new Uint8Array(rows.buffer), 0, count * rowBytes, this.header.dataOffset + start * rowBytes);
        if (bytesRead !== count * rowBytes) {
          throw new DvembError('TRUNCATED', `${join(this.dir, FILES.embeddings)} ended early at row ${start}`, 'recompute the embeddings');
        }
        yield { start, count, rows };
      }
    } finally {
      await fh.close();
    }
  }
}

function readWhole(path: string, dtype: string, shape: number[]): Float64Array | BigInt64Array | Float32Array {
  const header = readNpyHeaderFile(path);
  if (header.dtype !== dtype || header.shape.join(',') !== shape.join(',')) {
    throw new DvembError('SHAPE_MISMATCH', `${path} has shape (${header.shape.join(', ')}) ${header.dtype}, expected (${shape.join(', ')}) ${dtype}`, 'recompute the embeddings');
  }
  return npyView(readFileSync(path), header);
}
