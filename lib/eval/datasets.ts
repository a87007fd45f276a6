// Loaders for the two small real datasets shipped in data/ (see data/README.md for provenance),
// plus a deterministic train/test split. Parsing is strict: a damaged file stops with an error
// naming the file, the line and the column, never with silently shifted rows.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { Rng, type Seed } from './rng.js';

/** A classification dataset, features row-major. */
export interface Dataset {
  /** n × d features, row-major (row i is x[i·d .. i·d + d)). */
  x: Float64Array;
  /** n labels in 0..classes−1. */
  y: Int32Array;
  n: number;
  d: number;
  classes: number;
  name: string;
  /** Human-readable class names, where the file gives them. */
  classNames?: string[];
  /**
   * Unscaled features (n × d), present when `x` is z-scored. split() recomputes the z-scores
   * of both parts from the train part's mean and std, so no test statistic leaks into training.
   */
  rawX?: Float64Array;
}

/** Thrown for a missing or malformed data file. */
export class DatasetError extends Error {
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`dvemb dataset '${file}': ${problem}`);
    this.name = 'DatasetError';
  }
}

let cachedRoot: string | undefined;

/** The package root: the nearest directory above this module that holds package.json. */
export function packageRoot(): string {
  if (cachedRoot !== undefined) return cachedRoot;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return (cachedRoot = dir);
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`dvemb: no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

/** Path of a file under the package's data/ directory. */
export function dataPath(file: string): string {
  return join(packageRoot(), 'data', file);
}

function readData(path: string, gzipped: boolean): string {
  if (!existsSync(path)) throw new DatasetError(path, 'file not found');
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new DatasetError(path, `cannot read: ${(e as Error).message}`);
  }
  if (gzipped) {
    try {
      bytes = gunzipSync(bytes);
    } catch (e) {
      throw new DatasetError(path, `not a valid gzip file: ${(e as Error).message}`);
    }
  }
  return bytes.toString('utf8');
}

/** Non-empty lines with their 1-based line numbers (a trailing newline or CRLF is tolerated). */
function lines(text: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  text.split('\n').forEach((raw, i) => {
    const t = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (t.trim() !== '') out.push({ line: i + 1, text: t });
  });
  return out;
}

/** Parses one CSV row of exactly `columns` finite numbers. */
function parseRow(file: string, line: number, text: string, columns: number): Float64Array {
  const cells = text.split(',');
  if (cells.length !== columns) {
    throw new DatasetError(file, `wrong column count at line ${line}: expected ${columns}, found ${cells.length}`);
  }
  const row = new Float64Array(columns);
  for (let c = 0; c < columns; c++) {
    const cell = (cells[c] as string).trim();
    const v = cell === '' ? NaN : Number(cell);
    if (!Number.isFinite(v)) {
      throw new DatasetError(file, `non-numeric value '${cell}' at line ${line} column ${c + 1}`);
    }
    row[c] = v;
  }
  return row;
}

/** Checks the last column is an integer label in 0..classes−1. */
function parseLabel(file: string, line: number, column: number, v: number, classes: number): number {
  if (!Number.isInteger(v) || v < 0 || v >= classes) {
    throw new DatasetError(file, `label ${v} at line ${line} column ${column} is not an integer in 0..${classes - 1}`);
  }
  return v;
}

/**
 * The UCI optical digits (1797 8×8 images, 10 classes). Features are the 64 pixel counts 0..16
 * divided by 16, so they lie in [0, 1]. `path` overrides the shipped file (for tests).
 */
export function loadDigits(options: { path?: string } = {}): Dataset {
  const file = options.path ?? dataPath('digits.csv.gz');
  const rows = lines(readData(file, file.endsWith('.gz')));
  const d = 64;
  const classes = 10;
  const n = rows.length;
  if (n === 0) throw new DatasetError(file, 'no data rows');
  const x = new Float64Array(n * d);
  const y = new Int32Array(n);
  rows.forEach(({ line, text }, i) => {
    const row = parseRow(file, line, text, d + 1);
    for (let j = 0; j < d; j++) {
      const v = row[j] as number;
      if (!Number.isInteger(v) || v < 0 || v > 16) {
        throw new DatasetError(file, `pixel value ${v} at line ${line} column ${j + 1} is not an integer in 0..16`);
      }
      x[i * d + j] = v / 16;
    }
    y[i] = parseLabel(file, line, d + 1, row[d] as number, classes);
  });
  return { x, y, n, d, classes, name: 'digits', classNames: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] };
}

/**
 * Breast Cancer Wisconsin (Diagnostic): 569 rows, 30 real features, label 0 = malignant,
 * 1 = benign (the header line `569,30,malignant,benign` gives the counts and names). `x` is
 * z-scored with the statistics of all rows, for use without a split; split() re-standardises
 * from `rawX` with the train part's statistics, which is what evaluation should use.
 */
export function loadBreastCancer(options: { path?: string } = {}): Dataset {
  const file = options.path ?? dataPath('breast_cancer.csv');
  const all = lines(readData(file, file.endsWith('.gz')));
  const header = all[0];
  if (header === undefined) throw new DatasetError(file, 'empty file');
  const parts = header.text.split(',').map((s) => s.trim());
  const nDeclared = Number(parts[0]);
  const d = Number(parts[1]);
  const classNames = parts.slice(2);
  if (!Number.isInteger(nDeclared) || nDeclared <= 0 || !Number.isInteger(d) || d <= 0 || classNames.length < 2) {
    throw new DatasetError(file, `bad header at line ${header.line}: expected 'rows,features,class names…', found '${header.text}'`);
  }
  const rows = all.slice(1);
  if (rows.length !== nDeclared) {
    throw new DatasetError(file, `header declares ${nDeclared} rows but the file has ${rows.length}`);
  }
  const n = nDeclared;
  const classes = classNames.length;
  const rawX = new Float64Array(n * d);
  const y = new Int32Array(n);
  rows.forEach(({ line, text }, i) => {
    const row = parseRow(file, line, text, d + 1);
    rawX.set(row.subarray(0, d), i * d);
    y[i] = parseLabel(file, line, d + 1, row[d] as number, classes);
  });
  const { mean, std } = columnStats(rawX, d, Int32Array.from({ length: n }, (_, i) => i));
  return { x: zscore(rawX, d, mean, std), y, n, d, classes, name: 'breast_cancer', classNames, rawX };
}

/** Per-column mean and (population) standard deviation over the given rows; std 0 → 1. */
export function columnStats(x: Float64Array, d: number, rows: Int32Array): { mean: Float64Array; std: Float64Array } {
  const mean = new Float64Array(d);
  const std = new Float64Array(d);
  const m = rows.length;
  for (const r of rows) for (let j = 0; j < d; j++) mean[j] = (mean[j] as number) + (x[r * d + j] as number);
  for (let j = 0; j < d; j++) mean[j] = (mean[j] as number) / m;
  for (const r of rows) {
    for (let j = 0; j < d; j++) {
      const c = (x[r * d + j] as number) - (mean[j] as number);
      std[j] = (std[j] as number) + c * c;
    }
  }
  for (let j = 0; j < d; j++) {
    const s = Math.sqrt((std[j] as number) / m);
    std[j] = s > 0 ? s : 1; // a constant column stays 0 instead of becoming NaN
  }
  return { mean, std };
}

/** (x − mean) / std column-wise, as a new array. */
export function zscore(x: Float64Array, d: number, mean: Float64Array, std: Float64Array): Float64Array {
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const j = i % d;
    out[i] = ((x[i] as number) - (mean[j] as number)) / (std[j] as number);
  }
  return out;
}

/** The rows `indices` of `ds`, in that order, as a new dataset (rawX carried along). */
export function subset(ds: Dataset, indices: ArrayLike<number>, name = ds.name): Dataset {
  const m = indices.length;
  const { d } = ds;
  const x = new Float64Array(m * d);
  const y = new Int32Array(m);
  const rawX = ds.rawX ? new Float64Array(m * d) : undefined;
  for (let k = 0; k < m; k++) {
    const r = indices[k] as number;
    if (!Number.isInteger(r) || r < 0 || r >= ds.n) throw new RangeError(`subset: row index ${r} out of range 0..${ds.n - 1}`);
    x.set(ds.x.subarray(r * d, r * d + d), k * d);
    if (rawX && ds.rawX) rawX.set(ds.rawX.subarray(r * d, r * d + d), k * d);
    y[k] = ds.y[r] as number;
  }
  const out: Dataset = { x, y, n: m, d, classes: ds.classes, name };
  if (ds.classNames) out.classNames = ds.classNames;
  if (rawX) out.rawX = rawX;
  return out;
}

export interface Split {
  train: Dataset;
  test: Dataset;
  /** Row numbers in the original dataset, ascending. */
  trainIndex: Int32Array;
  testIndex: Int32Array;
  /** The train part's statistics, when the dataset is z-scored (apply them to new points). */
  scaling?: { mean: Float64Array; std: Float64Array };
}

/**
 * Deterministic train/test split. Stratified by default: each class contributes
 * round(count · testFraction) rows to the test part, chosen by a shuffle seeded from `seed` and
 * the class; otherwise round(n · testFraction) rows are drawn from one shuffle. Both parts keep
 * the original row order. A z-scored dataset (one with rawX) is re-standardised with the train
 * part's mean and std.
 */
export function split(ds: Dataset, testFraction: number, seed: Seed, options: { stratify?: boolean } = {}): Split {
  if (!Number.isFinite(testFraction) || testFraction < 0 || testFraction >= 1) {
    throw new RangeError(`testFraction must be in [0, 1), got ${testFraction}`);
  }
  const stratify = options.stratify ?? true;
  const rng = new Rng(seed).fork('split');
  const isTest = new Uint8Array(ds.n);
  const groups: number[][] = stratify ? Array.from({ length: ds.classes }, () => []) : [[]];
  for (let i = 0; i < ds.n; i++) (groups[stratify ? (ds.y[i] as number) : 0] as number[]).push(i);
  groups.forEach((members, g) => {
    rng.fork(`group${g}`).shuffle(members);
    const take = Math.round(members.length * testFraction);
    for (let k = 0; k < take; k++) isTest[members[k] as number] = 1;
  });
  const trainIndex: number[] = [];
  const testIndex: number[] = [];
  for (let i = 0; i < ds.n; i++) (isTest[i] ? testIndex : trainIndex).push(i);
  if (trainIndex.length === 0) throw new RangeError(`split of ${ds.name}: testFraction ${testFraction} leaves no training rows`);
  const result: Split = {
    train: subset(ds, trainIndex, `${ds.name}/train`),
    test: subset(ds, testIndex, `${ds.name}/test`),
    trainIndex: Int32Array.from(trainIndex),
    testIndex: Int32Array.from(testIndex),
  };
  if (ds.rawX) {
    const scaling = columnStats(ds.rawX, ds.d, result.trainIndex);
    for (const part of [result.train, result.test]) part.x = zscore(part.rawX as Float64Array, ds.d, scaling.mean, scaling.std);
    result.scaling = scaling;
  }
  return result;
}
