// The pure-TypeScript backend: surface.ts's Backend with TypeScript kernels, for machines
// without the native addon. Each method checks its arguments as the native binding does
// (array types, lengths, offsets, layouts), so a bad call fails here with a message that names
// the field, the expected value and the given one, instead of reading past an array (which in
// JavaScript silently yields NaN). The work itself runs synchronously inside the call; the
// async methods return settled promises (rejected when an argument is invalid).
import type {
  Backend,
  BackendInfo,
  DenseArgs,
  Distribution,
  KroneckerArgs,
  ProjectionKey,
  PropagateArgs,
  ScoreArgs,
} from '../surface.js';
import { projectDense, projectionMatrix, projectKronecker } from './projection.js';
import { propagate } from './propagator.js';
import { score } from './scoring.js';

/** Sizes are BLAS ints in the native backend: the same limits here keep the two alike. */
const MAX_SIZE = 0x7fffffff;
const MAX_BLOCK = 0xffffffff; // a 32-bit Philox counter word
const MAX_THREADS = 1024;

const INFO: BackendInfo = {
  backend: 'ts',
  blas: 'TypeScript kernels (lib/backend/ts/gemm.ts), single-threaded',
  threads: 1,
};

export function createTsBackend(): Backend {
  return {
    info: () => ({ ...INFO }),
    setThreads(threads: number): void {
      // single-threaded: the value is checked as the native backend does, then ignored
      new Checker('setThreads').integer('threads', threads, 1, MAX_THREADS);
    },
    projectionMatrix(key: ProjectionKey, rows: number, cols: number): Float32Array {
      const check = new Checker('projectionMatrix');
      check.object('key', key);
      checkKey(check, 'key.', key.seed, key.block, key.distribution);
      if (key.factor !== 0 && key.factor !== 1 && key.factor !== 2) {
        check.fail(RangeError, `key.factor must be 0 (dense), 1 (in) or 2 (out), got ${String(key.factor)}`);
      }
      check.integer('rows', rows, 1);
      check.integer('cols', cols, 1);
      if (rows * cols > MAX_SIZE) check.fail(RangeError, `rows * cols must be at most ${MAX_SIZE}, got ${rows * cols}`);
      return projectionMatrix(key, rows, cols);
    },
    async projectKronecker(args: KroneckerArgs): Promise<void> {
      checkKronecker(args);
      projectKronecker(args);
    },
    async projectDense(args: DenseArgs): Promise<void> {
      checkDense(args);
      projectDense(args);
    },
    async propagate(args: PropagateArgs): Promise<number> {
      checkPropagate(args);
      return propagate(args);
    },
    async score(args: ScoreArgs): Promise<void> {
      checkScore(args);
      score(args);
    },
  };
}

// --- argument checks ----------------------------------------------------------------------------

type ArrayName = 'Float32Array' | 'Float64Array' | 'Int32Array';

function withArticle(noun: string): string {
  return `${/^[aeiou]/i.test(noun) ? 'an' : 'a'} ${noun}`;
}

/** What a value is, for the "got ..." of a message. */
function describe(value: unknown): string {
  if (value === null || value === undefined || typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (typeof value === 'string') return `'${value.length > 40 ? `${value.slice(0, 40)}...` : value}'`;
  if (ArrayBuffer.isView(value)) return withArticle(Object.prototype.toString.call(value).slice(8, -1));
  if (Array.isArray(value)) return 'an Array';
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'object') return 'an object';
  return withArticle(typeof value);
}

/** Collects the method name so every message says where it came from. */
class Checker {
  constructor(private readonly method: string) {}

  fail(kind: typeof RangeError | typeof TypeError, message: string): never {
    throw new kind(`${this.method}: ${message}`);
  }

  object(name: string, value: unknown): void {
    if (typeof value !== 'object' || value === null) this.fail(TypeError, `${name} must be an object, got ${describe(value)}`);
  }

  integer(name: string, value: number, min: number, max = MAX_SIZE): void {
    if (typeof value !== 'number') this.fail(TypeError, `${name} must be an integer in [${min}, ${max}], got ${describe(value)}`);
    if (!Number.isInteger(value) || value < min || value > max) {
      this.fail(RangeError, `${name} must be an integer in [${min}, ${max}], got ${value}`);
    }
  }

  /** Outputs written while inputs are still being read must not share memory with them. */
  disjoint(name: string, a: ArrayBufferView, otherName: string, b: ArrayBufferView | null | undefined): void {
    if (b == null || a.buffer !== b.buffer || a.byteLength === 0 || b.byteLength === 0) return;
    if (a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength) {
      this.fail(RangeError, `${name} must not share memory with ${otherName}`);
    }
  }

  /** Typed-array type, checked by its internal tag so arrays from other realms pass too. */
  array(name: string, value: unknown, type: ArrayName): void {
    if (!ArrayBuffer.isView(value) || Object.prototype.toString.call(value) !== `[object ${type}]`) {
      this.fail(TypeError, `${name} must be ${withArticle(type)}, got ${describe(value)}`);
    }
  }

  length(name: string, value: { length: number }, expected: number, formula: string): void {
    if (value.length !== expected) {
      this.fail(RangeError, `${name}.length must be ${formula} = ${expected}, got ${value.length}`);
    }
  }

  /** Row-major (n × ld) output with `width` columns written from `offset`. */
  output(out: Float32Array, n: number, ldOut: number, offset: number, width: number, widthFormula: string): void {
    this.integer('offset', offset, 0);
    this.integer('ldOut', ldOut, 1);
    if (offset + width > ldOut) {
      this.fail(RangeError, `offset + ${widthFormula} = ${offset + width} must be ≤ ldOut = ${ldOut}`);
    }
    if (n > 0 && out.length < (n - 1) * ldOut + offset + width) {
      this.fail(
        RangeError,
        `out.length must be at least (n-1)*ldOut + offset + ${widthFormula} = ${(n - 1) * ldOut + offset + width}, got ${out.length}`,
      );
    }
  }

  /** A prefix-offset array: length steps + 1, non-decreasing, within [0, limit]. */
  offsets(name: string, value: Int32Array, steps: number, limit: number, limitName: string): void {
    this.array(name, value, 'Int32Array');
    this.length(name, value, steps + 1, 'steps + 1');
    if (value[0]! < 0) this.fail(RangeError, `${name}[0] must be ≥ 0, got ${value[0]}`);
    for (let s = 0; s < steps; s++) {
      if (value[s + 1]! < value[s]!) {
        this.fail(RangeError, `${name} must be non-decreasing, got ${name}[${s}] = ${value[s]} > ${name}[${s + 1}] = ${value[s + 1]}`);
      }
    }
    if (value[steps]! > limit) {
      this.fail(RangeError, `${name}[steps] = ${value[steps]} must be ≤ ${limitName} = ${limit}`);
    }
  }
}

function checkKey(check: Checker, prefix: string, seed: number, block: number, distribution: Distribution): void {
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0) {
    check.fail(typeof seed === 'number' ? RangeError : TypeError, `${prefix}seed must be an integer in [0, 2^53), got ${describe(seed)}`);
  }
  check.integer(`${prefix}block`, block, 0, MAX_BLOCK);
  if (distribution !== 'gaussian' && distribution !== 'rademacher') {
    check.fail(RangeError, `${prefix}distribution must be 'gaussian' or 'rademacher', got ${describe(distribution)}`);
  }
}

function checkKronecker(a: KroneckerArgs): void {
  const check = new Checker('projectKronecker');
  check.object('args', a);
  checkKey(check, '', a.seed, a.block, a.distribution);
  if (a.form !== 'factors' && a.form !== 'gradient') {
    check.fail(RangeError, `form must be 'factors' or 'gradient', got ${describe(a.form)}`);
  }
  if (typeof a.bias !== 'boolean') check.fail(TypeError, `bias must be a boolean, got ${describe(a.bias)}`);
  check.integer('n', a.n, 0);
  check.integer('tokens', a.tokens, 1);
  check.integer('dIn', a.dIn, 1, MAX_SIZE - 1); // plus the bias column
  check.integer('dOut', a.dOut, 1);
  check.integer('kIn', a.kIn, 1);
  check.integer('kOut', a.kOut, 1);
  check.array('inputs', a.inputs, 'Float32Array');
  check.array('out', a.out, 'Float32Array');
  if (a.form === 'factors') {
    check.array('outputGrads', a.outputGrads, 'Float32Array');
    check.length('inputs', a.inputs, a.n * a.tokens * a.dIn, 'n*tokens*dIn');
    check.length('outputGrads', a.outputGrads, a.n * a.tokens * a.dOut, 'n*tokens*dOut');
  } else {
    // unused in this form: any Float32Array, or null
    if (a.outputGrads != null) check.array('outputGrads', a.outputGrads, 'Float32Array');
    const width = a.dIn + (a.bias ? 1 : 0);
    check.length('inputs', a.inputs, a.n * a.dOut * width, a.bias ? 'n*dOut*(dIn+1)' : 'n*dOut*dIn');
  }
  check.output(a.out, a.n, a.ldOut, a.offset, a.kOut * a.kIn, 'kOut*kIn');
  check.disjoint('out', a.out, 'inputs', a.inputs);
  if (a.form === 'factors') check.disjoint('out', a.out, 'outputGrads', a.outputGrads);
}

function checkDense(a: DenseArgs): void {
  const check = new Checker('projectDense');
  check.object('args', a);
  checkKey(check, '', a.seed, a.block, a.distribution);
  check.integer('n', a.n, 0);
  check.integer('d', a.d, 1);
  check.integer('k', a.k, 1);
  check.array('grads', a.grads, 'Float32Array');
  check.array('out', a.out, 'Float32Array');
  check.length('grads', a.grads, a.n * a.d, 'n*d');
  check.output(a.out, a.n, a.ldOut, a.offset, a.k, 'k');
  check.disjoint('out', a.out, 'grads', a.grads);
}

function checkPropagate(a: PropagateArgs): void {
  const check = new Checker('propagate');
  check.object('args', a);
  if (a.precision !== 'fp32' && a.precision !== 'fp64') {
    check.fail(RangeError, `precision must be 'fp32' or 'fp64', got ${describe(a.precision)}`);
  }
  check.integer('dim', a.dim, 1);
  check.integer('steps', a.steps, 0, MAX_SIZE - 1);

  check.array('blocks', a.blocks, 'Int32Array');
  if (a.blocks.length === 0 || a.blocks.length % 2 !== 0) {
    check.fail(RangeError, `blocks must hold one or more [offset, k] pairs, got length ${a.blocks.length}`);
  }
  let propagatorSize = 0;
  for (let b = 0; b < a.blocks.length; b += 2) {
    const off = a.blocks[b]!;
    const k = a.blocks[b + 1]!;
    if (off < 0 || k < 1 || off + k > a.dim) {
      const rule = `0 ≤ offset, 1 ≤ k, offset + k ≤ dim = ${a.dim}`;
      check.fail(RangeError, `block ${b / 2} must satisfy ${rule}; got offset ${off}, k ${k}`);
    }
    propagatorSize += k * k;
  }
  const spans = Array.from({ length: a.blocks.length / 2 }, (_, b) => [a.blocks[2 * b]!, a.blocks[2 * b + 1]!] as const);
  spans.sort((x, y) => x[0] - y[0]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i]![0] < spans[i - 1]![0] + spans[i - 1]![1]) {
      check.fail(RangeError, `blocks must cover disjoint column ranges, got column ${spans[i]![0]} in two blocks`);
    }
  }
  check.array('propagators', a.propagators, a.precision === 'fp64' ? 'Float64Array' : 'Float32Array');
  check.length('propagators', a.propagators, propagatorSize, 'Σ k_b²');

  check.array('rows', a.rows, 'Float32Array');
  if (a.rows.length % a.dim !== 0) {
    check.fail(RangeError, `rows.length must be a multiple of dim = ${a.dim}, got ${a.rows.length}`);
  }
  const nRows = a.rows.length / a.dim;
  check.offsets('stepRows', a.stepRows, a.steps, nRows, 'rows.length/dim');
  check.array('weights', a.weights, 'Float64Array');
  check.length('weights', a.weights, nRows, 'rows.length/dim');
  check.array('embeddings', a.embeddings, 'Float32Array');
  check.length('embeddings', a.embeddings, a.rows.length, 'rows.length');

  if (a.curvature == null) {
    for (const name of ['stepCurvature', 'curvatureWeights'] as const) {
      if (a[name] != null) check.fail(TypeError, `${name} must be null when curvature is null, got ${describe(a[name])}`);
    }
  } else {
    check.array('curvature', a.curvature, 'Float32Array');
    if (a.curvature.length % a.dim !== 0) {
      check.fail(RangeError, `curvature.length must be a multiple of dim = ${a.dim}, got ${a.curvature.length}`);
    }
    const nCurvature = a.curvature.length / a.dim;
    check.offsets('stepCurvature', a.stepCurvature!, a.steps, nCurvature, 'curvature.length/dim');
    check.array('curvatureWeights', a.curvatureWeights, 'Float64Array');
    check.length('curvatureWeights', a.curvatureWeights!, nCurvature, 'curvature.length/dim');
  }

  check.array('lr', a.lr, 'Float64Array');
  check.length('lr', a.lr, a.steps, 'steps');
  check.array('decay', a.decay, 'Float64Array');
  check.length('decay', a.decay, a.steps, 'steps');

  check.disjoint('embeddings', a.embeddings, 'rows', a.rows);
  check.disjoint('embeddings', a.embeddings, 'curvature', a.curvature);
  check.disjoint('embeddings', a.embeddings, 'propagators', a.propagators);
}

function checkScore(a: ScoreArgs): void {
  const check = new Checker('score');
  check.object('args', a);
  check.integer('n', a.n, 0);
  check.integer('m', a.m, 0);
  check.integer('dim', a.dim, 1);
  check.array('embeddings', a.embeddings, 'Float32Array');
  check.array('tests', a.tests, 'Float32Array');
  check.array('out', a.out, 'Float32Array');
  check.length('embeddings', a.embeddings, a.n * a.dim, 'n*dim');
  check.length('tests', a.tests, a.m * a.dim, 'm*dim');
  check.length('out', a.out, a.n * a.m, 'n*m');
  check.disjoint('out', a.out, 'embeddings', a.embeddings);
  check.disjoint('out', a.out, 'tests', a.tests);
}
