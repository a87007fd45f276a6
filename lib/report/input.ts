// The report's input: `report.json` plus .npy files in one directory (docs/REPORT.md), saying
// which test points to show and what the training examples look like. prepareReport writes it;
// readReportInput reads and checks it, so every mistake is named before any work starts.
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, relative, resolve } from 'node:path';
import type { ProjectedTests } from '../embeddings/query.js';
import { EMBEDDINGS_MANIFEST, EmbeddingSet } from '../embeddings/store.js';
import { DvembError } from '../errors.js';
import { bytesOf, npyHeader, npyView, readNpyHeaderFile, type NpyDtype } from '../trajectory/npy.js';
import { DEFAULT_PHASE_RULE, type PhaseRule } from './phases.js';

export const REPORT_INPUT = 'report.json';
export const REPORT_INPUT_FORMAT = 'dvemb-report-input';
export const REPORT_FILES = {
  tests: 'tests.npy',
  testImages: 'test-images.npy',
  images: 'images.npy',
  labels: 'labels.npy',
  selfInfluence: 'self-influence.npy',
  dynamics: 'dynamics.npy',
} as const;

/** How to draw the images: size, channels (1 grey or 3 RGB), value range, and ink-on-paper. */
export interface ImageSpec {
  height: number;
  width: number;
  channels?: 1 | 3;
  /** Values mapped to black..white (default: the min and max of the shown images). */
  range?: [number, number];
  /** Draw high values dark (ink on paper), as for digits. */
  invert?: boolean;
}

/** `report.json`, version 1. Paths are relative to the report directory. */
export interface ReportInputFile {
  format: typeof REPORT_INPUT_FORMAT;
  version: 1;
  title?: string;
  /** The embeddings directory (default: the report directory itself). */
  embeddings?: string;
  tests?: { file: string; names?: string[]; labels?: number[]; images?: string };
  train?: { images?: string; labels?: string };
  images?: ImageSpec;
  classNames?: string[];
  /** "trajectory" (default): computed from the recorded trajectory; a file name: precomputed, by sample id; null: left out. */
  selfInfluence?: string | null;
  dynamics?: { file: string; segments?: [number, number][]; boundaries?: number[] } | null;
  /** Proponents and opponents shown per test point (default 6). */
  top?: number;
  phaseRule?: Partial<PhaseRule>;
}

export interface Dynamics {
  /** (K × B) summed over the tests, or (m × K × B) per test; NaN where a boundary precedes a segment. */
  values: ArrayLike<number>;
  shape: [number, number] | [number, number, number];
  /** First and last step of each segment. */
  segments?: [number, number][];
  /** The step of each boundary checkpoint. */
  boundaries?: number[];
}

/** The shape of `dataValueDynamics(..., { per: 'occurrence' })`'s result (lib/embeddings/segments.ts). */
export interface SegmentDynamicsLike {
  per: 'example' | 'occurrence';
  boundaries: readonly { lastStep: number }[];
  m: number;
  /** values[(i·K + j′)·m + t]: occurrence i's influence on test t at boundary j′. */
  values: ArrayLike<number>;
  steps?: ArrayLike<number>;
  segmentOf?: ArrayLike<number>;
}

/**
 * The report's (m × K × K) dynamics from per-occurrence data value dynamics: cell (t, j, j′) sums
 * the influence of segment j's occurrences on test t at boundary j′; j′ < j is NaN (drawn blank),
 * since data not yet seen have no influence on a checkpoint.
 */
export function dynamicsFromSegments(d: SegmentDynamicsLike): Dynamics {
  if (d.per !== 'occurrence' || !d.segmentOf) {
    throw bad('per-example data value dynamics cannot be split by segment', "compute them with dataValueDynamics(dir, tests, { per: 'occurrence' })");
  }
  const K = d.boundaries.length;
  const { m } = d;
  const n = d.segmentOf.length;
  if (d.values.length !== n * K * m) throw new DvembError('SHAPE_MISMATCH', `data value dynamics hold ${d.values.length} values for ${n} occurrences × ${K} boundaries × ${m} tests`);
  const out = new Float64Array(m * K * K);
  for (let i = 0; i < n; i++) {
    const j = d.segmentOf[i]!;
    for (let b = j; b < K; b++) for (let t = 0; t < m; t++) out[(t * K + j) * K + b]! += d.values[(i * K + b) * m + t]!;
  }
  for (let t = 0; t < m; t++) for (let j = 0; j < K; j++) for (let b = 0; b < j; b++) out[(t * K + j) * K + b] = NaN;
  let first = 0;
  if (d.steps && n > 0) {
    first = Infinity;
    for (let i = 0; i < n; i++) first = Math.min(first, d.steps[i]!);
  }
  return {
    values: out,
    shape: [m, K, K],
    segments: d.boundaries.map((b, j) => [j === 0 ? first : d.boundaries[j - 1]!.lastStep + 1, b.lastStep] as [number, number]),
    boundaries: d.boundaries.map((b) => b.lastStep),
  };
}

export interface PrepareReportOptions {
  /** The embeddings directory (default: `dir` itself). */
  embeddings?: string;
  /** Test gradients projected with the embeddings' projection (projectTests). */
  tests: ProjectedTests;
  testNames?: string[];
  testLabels?: ArrayLike<number>;
  /** (m × h × w [× c]) in test order. */
  testImages?: ArrayLike<number>;
  /** (n × h × w [× c]); row i is the training example with sample id i. */
  images?: ArrayLike<number>;
  image?: ImageSpec;
  /** Training labels by sample id. */
  labels?: ArrayLike<number>;
  classNames?: string[];
  /** 'trajectory' (default), precomputed values by sample id, or false to leave it out. */
  selfInfluence?: 'trajectory' | ArrayLike<number> | false;
  dynamics?: Dynamics;
  title?: string;
  top?: number;
  phaseRule?: Partial<PhaseRule>;
}

function bad(problem: string, fix?: string): DvembError {
  return new DvembError('BAD_INPUT', problem, fix);
}

function writeNpy(path: string, dtype: NpyDtype, shape: number[], values: ArrayLike<number>): void {
  let data: Float32Array | Float64Array | BigInt64Array;
  if (dtype === '<f4') data = values instanceof Float32Array ? values : Float32Array.from(values);
  else if (dtype === '<f8') data = values instanceof Float64Array ? values : Float64Array.from(values);
  else data = BigInt64Array.from(Array.from(values, (v) => BigInt(v)));
  writeFileSync(path, Buffer.concat([npyHeader(dtype, shape), bytesOf(data)]));
}

function imageSize(spec: ImageSpec): number {
  const c = spec.channels ?? 1;
  for (const [k, v] of [['height', spec.height], ['width', spec.width]] as const) {
    if (!Number.isSafeInteger(v) || v < 1 || v > 4096) throw bad(`image ${k} must be an integer in 1..4096, got ${String(v)}`);
  }
  if (c !== 1 && c !== 3) throw bad(`image channels must be 1 or 3, got ${String(c)}`);
  return spec.height * spec.width * c;
}

/**
 * Writes the report input into `dir` (created if needed): tests.npy with its fingerprint sidecar,
 * the optional images, labels, self-influence and dynamics, and report.json last. Returns the
 * path of report.json.
 */
export function prepareReport(dir: string, options: PrepareReportOptions): string {
  mkdirSync(dir, { recursive: true });
  const embDir = options.embeddings ?? dir;
  const set = openEmbeddings(embDir);
  const { tests } = options;
  if (tests.fingerprint !== set.layout.fingerprint) {
    throw new DvembError('PROJECTION_MISMATCH', `the test gradients were projected for layout ${tests.fingerprint}, the embeddings in ${embDir} use ${set.layout.fingerprint}`, 'project them with projectTests(set, ...) on these embeddings');
  }
  if (tests.n < 1 || tests.rows.length !== tests.n * set.dim) {
    throw new DvembError('SHAPE_MISMATCH', `the test gradients hold ${tests.rows.length} values for ${tests.n} rows of width ${set.dim}`);
  }
  const m = tests.n;
  const file: ReportInputFile = { format: REPORT_INPUT_FORMAT, version: 1 };
  if (options.title) file.title = options.title;
  const rel = relative(resolve(dir), resolve(embDir)) || '.';
  file.embeddings = rel;

  writeNpy(join(dir, REPORT_FILES.tests), '<f4', [m, set.dim], tests.rows);
  writeFileSync(join(dir, `${REPORT_FILES.tests}.json`), JSON.stringify({ fingerprint: tests.fingerprint }) + '\n');
  file.tests = { file: REPORT_FILES.tests };
  const perTest = (what: string, a: ArrayLike<unknown> | undefined) => {
    if (a && a.length !== m) throw bad(`${what} has ${a.length} entries for ${m} test points`);
  };
  perTest('testNames', options.testNames);
  perTest('testLabels', options.testLabels);
  if (options.testNames) file.tests.names = options.testNames.map(String);
  if (options.testLabels) file.tests.labels = Array.from(options.testLabels, Number);

  if (options.images || options.testImages) {
    if (!options.image) throw bad('images were given without their shape', 'pass image: {height, width, channels?}');
    const size = imageSize(options.image);
    const shape = (n: number) => (options.image!.channels === 3 ? [n, options.image!.height, options.image!.width, 3] : [n, options.image!.height, options.image!.width]);
    file.images = { ...options.image };
    if (options.images) {
      if (options.images.length === 0 || options.images.length % size !== 0) throw bad(`images have ${options.images.length} values, not a whole number of ${size}-value images`);
      writeNpy(join(dir, REPORT_FILES.images), '<f4', shape(options.images.length / size), options.images);
      file.train = { ...file.train, images: REPORT_FILES.images };
    }
    if (options.testImages) {
      if (options.testImages.length !== m * size) throw bad(`testImages have ${options.testImages.length} values, expected ${m} images of ${size}`);
      writeNpy(join(dir, REPORT_FILES.testImages), '<f4', shape(m), options.testImages);
      file.tests.images = REPORT_FILES.testImages;
    }
  }
  if (options.labels) {
    writeNpy(join(dir, REPORT_FILES.labels), '<i8', [options.labels.length], Array.from(options.labels, (v) => Math.trunc(v)));
    file.train = { ...file.train, labels: REPORT_FILES.labels };
  }
  if (options.classNames) file.classNames = options.classNames.map(String);

  const si = options.selfInfluence ?? 'trajectory';
  if (si === false) file.selfInfluence = null;
  else if (si === 'trajectory') file.selfInfluence = 'trajectory';
  else {
    writeNpy(join(dir, REPORT_FILES.selfInfluence), '<f8', [si.length], si);
    file.selfInfluence = REPORT_FILES.selfInfluence;
  }
  if (options.dynamics) {
    const d = options.dynamics;
    const count = d.shape.reduce((a, b) => a * b, 1);
    if (d.values.length !== count) throw bad(`dynamics has ${d.values.length} values for shape (${d.shape.join(', ')})`);
    if (d.shape.length === 3 && d.shape[0] !== m) throw bad(`per-test dynamics has ${d.shape[0]} tests, the report has ${m}`);
    writeNpy(join(dir, REPORT_FILES.dynamics), '<f8', [...d.shape], d.values);
    file.dynamics = { file: REPORT_FILES.dynamics };
    if (d.segments) file.dynamics.segments = d.segments;
    if (d.boundaries) file.dynamics.boundaries = d.boundaries;
  }
  if (options.top !== undefined) file.top = options.top;
  if (options.phaseRule) file.phaseRule = options.phaseRule;
  checkFile(file, join(dir, REPORT_INPUT));
  // report.json goes last and by rename: its presence means the rest is written.
  const path = join(dir, REPORT_INPUT);
  writeFileSync(`${path}.tmp`, JSON.stringify(file, null, 2) + '\n');
  renameSync(`${path}.tmp`, path);
  return path;
}

/** Opens the embeddings with a fix that speaks of the report. */
export function openEmbeddings(dir: string): EmbeddingSet {
  try {
    return EmbeddingSet.open(dir);
  } catch (err) {
    if (err instanceof DvembError && err.code === 'NOT_EMBEDDINGS') {
      throw new DvembError(
        'NOT_EMBEDDINGS',
        `${dir} holds no embeddings for a report (${err.message.split('. Fix:')[0]!.replace(/^.*holds no complete embeddings: /, '')})`,
        `run \`dvemb compute <trajectory> --out ${dir}\` first, or set "embeddings" in ${REPORT_INPUT} to the directory that holds ${EMBEDDINGS_MANIFEST}`,
      );
    }
    throw err;
  }
}

function checkFile(f: ReportInputFile, path: string): void {
  if (f?.format !== REPORT_INPUT_FORMAT) throw bad(`${path} has format ${JSON.stringify(f?.format)}, expected "${REPORT_INPUT_FORMAT}"`, 'write it with prepareReport (docs/REPORT.md)');
  if (f.version !== 1) throw bad(`${path} is version ${String(f.version)}; this dvemb reads version 1`, 'upgrade dvemb');
  if (f.top !== undefined && (!Number.isSafeInteger(f.top) || f.top < 1 || f.top > 100)) throw bad(`${path}: "top" must be an integer in 1..100, got ${String(f.top)}`);
  if (f.tests && typeof f.tests.file !== 'string') throw bad(`${path}: "tests.file" must name a .npy file`);
  if (f.images) imageSize(f.images);
  if ((f.train?.images || f.tests?.images) && !f.images) throw bad(`${path} names image files but gives no "images": {height, width}`);
  if (f.phaseRule) {
    for (const [k, v] of Object.entries(f.phaseRule)) {
      if (!(k in DEFAULT_PHASE_RULE) || typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw bad(`${path}: phaseRule.${k} = ${JSON.stringify(v)} is not a known non-negative number`, `the keys are ${Object.keys(DEFAULT_PHASE_RULE).join(', ')}`);
    }
  }
}

/** Everything the report needs, read and checked. */
export interface ReportInput {
  dir: string;
  /** Path of report.json, or null when the directory has none (a report without test points). */
  file: string | null;
  title: string;
  set: EmbeddingSet;
  tests: { rows: Float32Array; m: number; fingerprint: string | null } | null;
  testNames: string[];
  testLabels: (number | null)[];
  testImages: Float32Array | Float64Array | null;
  trainImages: Float32Array | Float64Array | null;
  trainImageCount: number;
  trainLabels: Float64Array | null;
  image: ImageSpec | null;
  classNames: string[] | null;
  selfInfluence: { mode: 'trajectory' } | { mode: 'file'; values: Float64Array; path: string } | { mode: 'off' };
  dynamics: (Dynamics & { values: Float64Array }) | null;
  top: number;
  rule: PhaseRule;
  warnings: string[];
}

function readArray(path: string, what: string, shape?: (s: number[]) => string | null): { values: Float32Array | Float64Array; shape: number[] } {
  if (!existsSync(path)) throw bad(`${what} file ${path} is missing`, 'rewrite the report input with prepareReport');
  const header = readNpyHeaderFile(path);
  const problem = shape?.(header.shape);
  if (problem) throw new DvembError('SHAPE_MISMATCH', `${path} (${what}) has shape (${header.shape.join(', ')}): ${problem}`);
  const view = npyView(readFileSync(path), header);
  const values = view instanceof BigInt64Array ? Float64Array.from(view, Number) : view;
  return { values, shape: header.shape };
}

/** Reads `dir`/report.json (when present) and the embeddings it points to. */
export function readReportInput(dir: string): ReportInput {
  if (!existsSync(dir)) openEmbeddings(dir); // throws, naming the missing directory and the fix
  const path = join(dir, REPORT_INPUT);
  const warnings: string[] = [];
  let f: ReportInputFile | null = null;
  if (existsSync(path)) {
    try {
      f = JSON.parse(readFileSync(path, 'utf8')) as ReportInputFile;
    } catch (err) {
      throw new DvembError('CORRUPT', `${path} is not valid JSON (${(err as Error).message})`, 'rewrite it with prepareReport (docs/REPORT.md)');
    }
    checkFile(f, path);
  }
  const at = (p: string) => (isAbsolute(p) ? p : join(dir, p));
  const set = openEmbeddings(f?.embeddings ? at(f.embeddings) : dir);
  const meta = (set.manifest as { meta?: Record<string, unknown> }).meta;
  const input: ReportInput = {
    dir,
    file: f ? path : null,
    title: f?.title ?? (typeof meta?.model === 'string' ? meta.model : `Data value embeddings in ${dir}`),
    set,
    tests: null,
    testNames: [],
    testLabels: [],
    testImages: null,
    trainImages: null,
    trainImageCount: 0,
    trainLabels: null,
    image: f?.images ?? null,
    classNames: f?.classNames ?? null,
    selfInfluence: { mode: 'trajectory' },
    dynamics: null,
    top: f?.top ?? 6,
    rule: { ...DEFAULT_PHASE_RULE, ...(f?.phaseRule ?? {}) },
    warnings,
  };
  if (!f) {
    warnings.push(`${dir} has no ${REPORT_INPUT}, so no test points are shown; write one with prepareReport (docs/REPORT.md)`);
    return input;
  }
  const size = f.images ? imageSize(f.images) : 0;
  const imageShape = (s: number[]) => {
    const want = f!.images!.channels === 3 ? [f!.images!.height, f!.images!.width, 3] : [f!.images!.height, f!.images!.width];
    return s.slice(1).join(',') === want.join(',') ? null : `expected (n, ${want.join(', ')}) as report.json's "images" says`;
  };
  if (f.tests) {
    const testsPath = at(f.tests.file);
    const t = readArray(testsPath, 'projected test gradients', (s) => (s.length === 2 && s[1] === set.dim && s[0]! > 0 ? null : `these embeddings need (m, ${set.dim}) float32 rows projected with their projection (seed ${set.layout.seed})`));
    const m = t.shape[0]!;
    const sidecar = `${testsPath}.json`;
    let fingerprint: string | null = null;
    if (existsSync(sidecar)) fingerprint = String((JSON.parse(readFileSync(sidecar, 'utf8')) as { fingerprint?: unknown }).fingerprint);
    else warnings.push(`no ${sidecar}: the projection of the test gradients could not be checked`);
    input.tests = { rows: t.values instanceof Float32Array ? t.values : Float32Array.from(t.values), m, fingerprint };
    input.testNames = Array.from({ length: m }, (_, j) => f!.tests!.names?.[j] ?? `test ${j}`);
    input.testLabels = Array.from({ length: m }, (_, j) => f!.tests!.labels?.[j] ?? null);
    if (f.tests.images) {
      input.testImages = readArray(at(f.tests.images), 'test images', (s) => (s[0] === m ? imageShape(s) : `expected ${m} images, one per test point`)).values;
    }
  } else {
    warnings.push(`${path} names no test points, so influence and proponents are not shown`);
  }
  if (f.train?.images) {
    const a = readArray(at(f.train.images), 'training images', imageShape);
    input.trainImages = a.values;
    input.trainImageCount = a.values.length / size;
  }
  if (f.train?.labels) input.trainLabels = Float64Array.from(readArray(at(f.train.labels), 'training labels', (s) => (s.length === 1 ? null : 'expected one label per sample id')).values);
  if (f.selfInfluence === null) input.selfInfluence = { mode: 'off' };
  else if (f.selfInfluence !== undefined && f.selfInfluence !== 'trajectory') {
    const p = at(f.selfInfluence);
    const a = readArray(p, 'self-influence', (s) => (s.length === 1 ? null : 'expected one value per sample id'));
    input.selfInfluence = { mode: 'file', values: Float64Array.from(a.values), path: p };
  }
  if (f.dynamics) {
    const a = readArray(at(f.dynamics.file), 'data value dynamics', (s) =>
      s.length === 2 || (s.length === 3 && s[0] === input.tests?.m) ? null : `expected (segments, boundaries) or (${input.tests?.m ?? 'tests'}, segments, boundaries)`,
    );
    const shape = a.shape as Dynamics['shape'];
    const K = shape[shape.length - 2]!;
    const B = shape[shape.length - 1]!;
    if (f.dynamics.segments && f.dynamics.segments.length !== K) throw bad(`${path}: dynamics.segments lists ${f.dynamics.segments.length} segments, the file has ${K}`);
    if (f.dynamics.boundaries && f.dynamics.boundaries.length !== B) throw bad(`${path}: dynamics.boundaries lists ${f.dynamics.boundaries.length} boundaries, the file has ${B}`);
    input.dynamics = { values: Float64Array.from(a.values), shape, ...(f.dynamics.segments ? { segments: f.dynamics.segments } : {}), ...(f.dynamics.boundaries ? { boundaries: f.dynamics.boundaries } : {}) };
  }
  return input;
}
