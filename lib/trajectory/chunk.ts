// Reading one chunk of a trajectory, and finding the unsealed tail chunk a recorder that was
// killed (or is still running) left behind. The steps file is the commit log of a chunk: a step
// counts once its record there is complete, and its data, written before it, are then complete too.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from './checksum.js';
import { DvembError } from '../errors.js';
import type { Layout } from '../projection.js';
import { COL, STEP_WIDTH, chunkFileName, type ChunkFile, type Manifest, type SealedChunk } from './format.js';
import { DTYPE_BYTES, NPY_HEADER_BYTES, npyElements, npyView, parseNpyHeader, type NpyDtype } from './npy.js';

export interface ChunkInfo extends SealedChunk {
  sealed: boolean;
}

export interface ChunkData {
  index: number;
  steps: number;
  /** Per step, from steps.npy. */
  step: Float64Array;
  lr: Float64Array;
  weightDecay: Float64Array;
  reduction: Float64Array;
  stepRows: Int32Array; // steps + 1 prefix offsets into rows
  rows: Float32Array; // (rowCount × dim)
  ids: Float64Array; // sample id per row
  weights: Float64Array; // w_z per row
  curvature: Float32Array | null;
  stepCurvature: Int32Array | null;
  curvatureWeights: Float64Array | null;
}

export const FILE_DTYPE: Record<ChunkFile, NpyDtype> = {
  rows: '<f4',
  ids: '<i8',
  weights: '<f8',
  steps: '<f8',
  curvature: '<f4',
};

export function chunkFiles(manifest: Manifest): ChunkFile[] {
  return manifest.curvature ? ['rows', 'ids', 'weights', 'steps', 'curvature'] : ['rows', 'ids', 'weights', 'steps'];
}

export function crcHex(data: Uint8Array, previous = 0): string {
  return (crc32(data, previous) >>> 0).toString(16).padStart(8, '0');
}

/** Bytes per record of each file: rows and curvature rows are dim floats wide. */
export function recordBytes(file: ChunkFile, dim: number): number {
  if (file === 'rows' || file === 'curvature') return dim * 4;
  if (file === 'steps') return STEP_WIDTH * 8;
  return 8;
}

/**
 * The unsealed tail chunk after the sealed ones, if a recorder left one: its complete step
 * records and the row counts they commit. Steps that do not continue the sealed steps in
 * increasing order, or whose data files fall short, are not part of it.
 */
export function findTail(dir: string, manifest: Manifest, layout: Layout): { info: ChunkInfo; records: Float64Array } | null {
  const index = manifest.chunks.length;
  const stepsPath = join(dir, chunkFileName(index, 'steps'));
  if (!existsSync(stepsPath)) return null;
  const buf = readFileSync(stepsPath);
  if (buf.length < NPY_HEADER_BYTES) return null;
  const width = STEP_WIDTH * 8;
  let count = Math.floor((buf.length - NPY_HEADER_BYTES) / width);
  const records = new Float64Array(count * STEP_WIDTH);
  Buffer.from(records.buffer).set(buf.subarray(NPY_HEADER_BYTES, NPY_HEADER_BYTES + count * width));
  const sizeOf = (file: ChunkFile): number => {
    const p = join(dir, chunkFileName(index, file));
    return existsSync(p) ? statSync(p).size : 0;
  };
  const have = {
    rows: Math.floor((sizeOf('rows') - NPY_HEADER_BYTES) / recordBytes('rows', layout.dim)),
    ids: Math.floor((sizeOf('ids') - NPY_HEADER_BYTES) / 8),
    weights: Math.floor((sizeOf('weights') - NPY_HEADER_BYTES) / 8),
    curvature: manifest.curvature ? Math.floor((sizeOf('curvature') - NPY_HEADER_BYTES) / recordBytes('curvature', layout.dim)) : 0,
  };
  let lastStep = manifest.chunks.at(-1)?.lastStep ?? -1;
  let rows = 0;
  let curv = 0;
  let good = 0;
  for (let s = 0; s < count; s++) {
    const r = records.subarray(s * STEP_WIDTH, (s + 1) * STEP_WIDTH);
    const ok =
      r[COL.step]! > lastStep &&
      r[COL.rowStart] === rows &&
      r[COL.curvStart] === curv &&
      rows + r[COL.rowCount]! <= Math.min(have.rows, have.ids, have.weights) &&
      curv + r[COL.curvCount]! <= (manifest.curvature ? have.curvature : 0);
    if (!ok) break;
    lastStep = r[COL.step]!;
    rows += r[COL.rowCount]!;
    curv += r[COL.curvCount]!;
    good++;
  }
  count = good;
  if (count === 0) return null;
  const kept = records.subarray(0, count * STEP_WIDTH);
  return {
    info: {
      index,
      steps: count,
      rows,
      curvatureRows: curv,
      firstStep: kept[COL.step]!,
      lastStep,
      checksums: {},
      sealed: false,
    },
    records: kept,
  };
}

async function readArray(dir: string, info: ChunkInfo, file: ChunkFile, records: number, dim: number, verify: boolean) {
  const path = join(dir, chunkFileName(info.index, file));
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new DvembError('TRUNCATED', `${path} is missing (${(err as Error).message})`, 'restore the file from a backup, or re-record the trajectory');
  }
  const header = parseNpyHeader(buf, path);
  const width = recordBytes(file, dim) / DTYPE_BYTES[FILE_DTYPE[file]];
  if (header.dtype !== FILE_DTYPE[file]) {
    throw new DvembError('CORRUPT', `${path} has dtype ${header.dtype}, expected ${FILE_DTYPE[file]}`);
  }
  const elements = records * width;
  const bytes = elements * DTYPE_BYTES[header.dtype];
  if (info.sealed && npyElements(header.shape) !== elements) {
    throw new DvembError('SHAPE_MISMATCH', `${path} has shape (${header.shape.join(', ')}), but the manifest says ${records} records of width ${width}`, 'the file does not belong to this trajectory; restore it or re-record');
  }
  if (buf.length < header.dataOffset + bytes) {
    throw new DvembError('TRUNCATED', `${path} is truncated: ${buf.length - header.dataOffset} data bytes, ${bytes} expected`, 'restore the file from a backup, or re-record the trajectory');
  }
  const data = buf.subarray(header.dataOffset, header.dataOffset + bytes);
  if (verify && info.sealed) {
    const expected = info.checksums[file];
    const actual = crcHex(data);
    if (expected !== actual) {
      throw new DvembError('CORRUPT', `${path} is corrupt: crc32 ${actual}, the manifest recorded ${expected}`, 'restore the file from a backup, or re-record the trajectory');
    }
  }
  return npyView(buf, { ...header, shape: [elements] });
}

/** Reads a chunk whole, checking its checksums (sealed chunks) and its shapes. */
export async function readChunk(dir: string, manifest: Manifest, layout: Layout, info: ChunkInfo, verify = true): Promise<ChunkData> {
  const dim = layout.dim;
  const [steps, rows, ids, weights, curvature] = await Promise.all([
    readArray(dir, info, 'steps', info.steps, dim, verify) as Promise<Float64Array>,
    readArray(dir, info, 'rows', info.rows, dim, verify) as Promise<Float32Array>,
    readArray(dir, info, 'ids', info.rows, dim, verify) as Promise<BigInt64Array>,
    readArray(dir, info, 'weights', info.rows, dim, verify) as Promise<Float64Array>,
    manifest.curvature ? (readArray(dir, info, 'curvature', info.curvatureRows, dim, verify) as Promise<Float32Array>) : Promise.resolve(null),
  ]);
  const S = info.steps;
  const column = (c: number) => {
    const out = new Float64Array(S);
    for (let s = 0; s < S; s++) out[s] = steps[s * STEP_WIDTH + c]!;
    return out;
  };
  const stepRows = new Int32Array(S + 1);
  const stepCurvature = curvature ? new Int32Array(S + 1) : null;
  for (let s = 0; s < S; s++) {
    stepRows[s + 1] = stepRows[s]! + steps[s * STEP_WIDTH + COL.rowCount]!;
    if (stepCurvature) stepCurvature[s + 1] = stepCurvature[s]! + steps[s * STEP_WIDTH + COL.curvCount]!;
  }
  if (stepRows[S] !== info.rows) {
    throw new DvembError('CORRUPT', `chunk ${info.index} of ${dir}: its steps hold ${stepRows[S]} rows, the manifest says ${info.rows}`);
  }
  const idNumbers = new Float64Array(ids.length);
  for (let i = 0; i < ids.length; i++) idNumbers[i] = Number(ids[i]!);
  let curvatureWeights: Float64Array | null = null;
  if (curvature && stepCurvature) {
    // Curvature rows of a step belong to its examples in order, `draws` rows each.
    const draws = manifest.curvature!.draws;
    curvatureWeights = new Float64Array(info.curvatureRows);
    for (let s = 0; s < S; s++) {
      for (let i = stepCurvature[s]!; i < stepCurvature[s + 1]!; i++) {
        curvatureWeights[i] = weights[stepRows[s]! + Math.floor((i - stepCurvature[s]!) / draws)]!;
      }
    }
  }
  return {
    index: info.index,
    steps: S,
    step: column(COL.step),
    lr: column(COL.lr),
    weightDecay: column(COL.decay),
    reduction: column(COL.reduction),
    stepRows,
    rows,
    ids: idNumbers,
    weights,
    curvature,
    stepCurvature,
    curvatureWeights,
  };
}
