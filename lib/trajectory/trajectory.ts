// A recorded trajectory, opened for reading: the manifest's sealed chunks plus any unsealed
// tail a running or killed recorder left, which is read as far as its committed steps go.
import { DvembError } from '../errors.js';
import type { Layout } from '../projection.js';
import { findTail, readChunk, type ChunkData, type ChunkInfo } from './chunk.js';
import { readManifest, type Manifest } from './format.js';

export interface VerifyReport {
  chunks: number;
  steps: number;
  rows: number;
  unsealedSteps: number;
  problems: string[];
}

export class Trajectory {
  private constructor(
    readonly dir: string,
    readonly manifest: Manifest,
    readonly layout: Layout,
    readonly chunks: readonly ChunkInfo[],
  ) {}

  static open(dir: string): Trajectory {
    const { manifest, layout } = readManifest(dir);
    const chunks: ChunkInfo[] = manifest.chunks.map((c) => ({ ...c, sealed: true }));
    const tail = findTail(dir, manifest, layout);
    if (tail) chunks.push(tail.info);
    return new Trajectory(dir, manifest, layout, chunks);
  }

  get steps(): number {
    return this.chunks.reduce((a, c) => a + c.steps, 0);
  }

  get rows(): number {
    return this.chunks.reduce((a, c) => a + c.rows, 0);
  }

  /** Row offset of each chunk's first row in the trajectory's occurrence order. */
  rowOffsets(): number[] {
    let at = 0;
    return this.chunks.map((c) => {
      const o = at;
      at += c.rows;
      return o;
    });
  }

  readChunk(i: number, verify = true): Promise<ChunkData> {
    const info = this.chunks[i];
    if (!info) throw new RangeError(`chunk ${i} does not exist (the trajectory has ${this.chunks.length})`);
    return readChunk(this.dir, this.manifest, this.layout, info, verify);
  }

  /** Full integrity check: every checksum, shape and value. Collects problems instead of stopping. */
  async verify(onChunk?: (done: number, total: number) => void): Promise<VerifyReport> {
    const problems: string[] = [];
    let lastStep = -Infinity;
    for (let i = 0; i < this.chunks.length; i++) {
      try {
        const c = await this.readChunk(i, true);
        for (let s = 0; s < c.steps; s++) {
          const step = c.step[s]!;
          if (!(step > lastStep)) problems.push(`chunk ${i}: step ${step} does not follow step ${lastStep}`);
          lastStep = step;
          const lr = c.lr[s]!;
          if (!Number.isFinite(lr) || lr < 0) problems.push(`step ${step}: learning rate ${lr}`);
        }
        const bad = c.rows.findIndex((v) => !Number.isFinite(v));
        if (bad >= 0) problems.push(`chunk ${i}: non-finite projected value at row ${Math.floor(bad / this.layout.dim)}`);
        if (c.curvature && c.curvature.some((v) => !Number.isFinite(v))) problems.push(`chunk ${i}: non-finite curvature row`);
        if (c.ids.some((v) => !Number.isSafeInteger(v) || v < 0)) problems.push(`chunk ${i}: a sample id is not a non-negative integer`);
      } catch (err) {
        problems.push(err instanceof DvembError ? err.message : String(err));
      }
      onChunk?.(i + 1, this.chunks.length);
    }
    const unsealed = this.chunks.filter((c) => !c.sealed).reduce((a, c) => a + c.steps, 0);
    return { chunks: this.chunks.length, steps: this.steps, rows: this.rows, unsealedSteps: unsealed, problems };
  }
}
