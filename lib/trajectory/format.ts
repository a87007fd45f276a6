// The on-disk layout of a trajectory directory (docs/FORMAT.md is the user-facing version).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DvembError } from '../errors.js';
import { Layout, type BlockSpec, type ProjectionSpec } from '../projection.js';

export const TRAJECTORY_FORMAT = 'dvemb-trajectory';
export const TRAJECTORY_VERSION = 1;
export const MANIFEST = 'manifest.json';

/** Columns of a chunk's steps.npy (float64, one row per step). */
export const STEP_COLUMNS = ['step', 'lr', 'weight_decay', 'row_start', 'row_count', 'curvature_start', 'curvature_count', 'reduction'] as const;
export const STEP_WIDTH = STEP_COLUMNS.length;
export const COL = { step: 0, lr: 1, decay: 2, rowStart: 3, rowCount: 4, curvStart: 5, curvCount: 6, reduction: 7 } as const;
export const REDUCTION_CODES = { custom: 0, mean: 1, sum: 2 } as const;
export type Reduction = keyof typeof REDUCTION_CODES;

export type ChunkFile = 'rows' | 'ids' | 'weights' | 'steps' | 'curvature';

export function chunkFileName(index: number, file: ChunkFile): string {
  return `chunk-${String(index).padStart(6, '0')}.${file}.npy`;
}

export interface SealedChunk {
  index: number;
  steps: number;
  rows: number;
  curvatureRows: number;
  firstStep: number;
  lastStep: number;
  /** crc32 (hex) of each file's data bytes, i.e. everything after the 128-byte header. */
  checksums: Partial<Record<ChunkFile, string>>;
}

export interface Manifest {
  format: typeof TRAJECTORY_FORMAT;
  version: number;
  projection: ProjectionSpec;
  blocks: BlockSpec[];
  dim: number;
  curvature: { draws: number; kind: string } | null;
  chunkSteps: number;
  chunkBytes: number;
  chunks: SealedChunk[];
  meta: Record<string, unknown>;
}

function notTrajectory(dir: string, why: string): DvembError {
  return new DvembError('NOT_A_TRAJECTORY', `${dir} is not a dvemb trajectory: ${why}`, 'point at the directory a TrajectoryRecorder wrote (it holds manifest.json)');
}

/** Reads and validates manifest.json; returns it with the Layout it describes. */
export function readManifest(dir: string): { manifest: Manifest; layout: Layout } {
  const path = join(dir, MANIFEST);
  if (!existsSync(dir)) throw notTrajectory(dir, 'the directory does not exist');
  if (!existsSync(path)) throw notTrajectory(dir, `there is no ${MANIFEST}`);
  let manifest: Manifest;
  try {
    manifest = JSON.parse(readFileSync(path, 'utf8')) as Manifest;
  } catch (err) {
    throw new DvembError('CORRUPT', `${path} is not valid JSON (${(err as Error).message})`, 'restore the manifest; it is rewritten atomically, so this means outside damage');
  }
  if (manifest?.format !== TRAJECTORY_FORMAT) throw notTrajectory(dir, `${MANIFEST} has format ${JSON.stringify(manifest?.format)}`);
  if (manifest.version !== TRAJECTORY_VERSION) {
    throw new DvembError('BAD_INPUT', `${path} is format version ${manifest.version}; this dvemb reads version ${TRAJECTORY_VERSION}`, 'upgrade dvemb');
  }
  const layout = new Layout(manifest.projection, manifest.blocks);
  if (layout.dim !== manifest.dim) {
    throw new DvembError('CORRUPT', `${path} says dim ${manifest.dim} but its blocks add up to ${layout.dim}`);
  }
  if (!Array.isArray(manifest.chunks)) throw new DvembError('CORRUPT', `${path} has no chunk list`);
  let lastStep = -1;
  manifest.chunks.forEach((c, i) => {
    if (c.index !== i) throw new DvembError('CORRUPT', `${path}: chunk entry ${i} has index ${c.index}`);
    if (!(c.firstStep > lastStep) || c.lastStep < c.firstStep) {
      throw new DvembError('CORRUPT', `${path}: chunk ${i} covers steps ${c.firstStep}..${c.lastStep} after step ${lastStep}`);
    }
    lastStep = c.lastStep;
  });
  return { manifest, layout };
}
