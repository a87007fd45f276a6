// Scoring test gradients against embeddings (REFERENCE §2): influence = ⟨∇ℓ(θ_T, z_test), DVEmb⟩,
// positive when the training occurrence helped (removing it would raise the test loss).
// Embeddings are streamed from disk in blocks; nothing of size n_train × n_test is held unless
// a caller asks for it (perOccurrence, perExample).
import { loadBackend } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { DvembError, assertFinite } from '../errors.js';
import { Projector, type BatchGradients } from '../projection.js';
import { applyBlockMatrices, transposeBlocks, type EmbeddingSet } from './store.js';

/** Test gradients projected into a trajectory's space; the fingerprint names that space. */
export interface ProjectedTests {
  rows: Float32Array; // (n × dim)
  n: number;
  fingerprint: string;
}

/** Projects test gradients (of the final model's loss) with the embeddings' own projection. */
export async function projectTests(set: EmbeddingSet, gradients: BatchGradients, n: number, backend?: Backend): Promise<ProjectedTests> {
  const projector = new Projector(set.layout, backend ?? loadBackend().backend);
  const rows = await projector.project(gradients, n, 'test gradients');
  return { rows, n, fingerprint: set.layout.fingerprint };
}

function checkTests(set: EmbeddingSet, tests: ProjectedTests | Float32Array): { rows: Float32Array; m: number } {
  if (tests instanceof Float32Array) {
    if (tests.length === 0 || tests.length % set.dim !== 0) {
      throw new DvembError('SHAPE_MISMATCH', `test gradients have ${tests.length} values, not a whole number of rows of width ${set.dim}`, `project them with the trajectory's projection (projectTests) to width ${set.dim}`);
    }
    assertFinite(tests, 'test gradients');
    return { rows: tests, m: tests.length / set.dim };
  }
  if (tests.fingerprint !== set.layout.fingerprint) {
    throw new DvembError('PROJECTION_MISMATCH', `test gradients were projected for layout ${tests.fingerprint}, these embeddings use ${set.layout.fingerprint} (seed ${set.layout.seed})`, 'project the test gradients with projectTests(set, ...) so both use the same seed and blocks');
  }
  if (tests.rows.length !== tests.n * set.dim) {
    throw new DvembError('SHAPE_MISMATCH', `test gradients hold ${tests.rows.length} values for ${tests.n} rows of width ${set.dim}`);
  }
  assertFinite(tests.rows, 'test gradients');
  return { rows: tests.rows, m: tests.n };
}

export interface QueryOptions {
  backend?: Backend;
  /** Embedding rows per block read from disk (default: about 16 MB of rows). */
  rowsPerBlock?: number;
}

/** Calls visit(start, count, scores) for consecutive blocks; scores is (count × m), row-major. */
export async function scoreBlocks(
  set: EmbeddingSet,
  tests: ProjectedTests | Float32Array,
  visit: (start: number, count: number, scores: Float32Array, m: number) => void,
  options: QueryOptions = {},
): Promise<number> {
  const { rows, m } = checkTests(set, tests);
  const backend = options.backend ?? loadBackend().backend;
  const perBlock = options.rowsPerBlock ?? Math.max(1, Math.floor((16 << 20) / (set.dim * 4)));
  if (set.composition) return scoreLazily(set, rows, m, backend, perBlock, visit);
  for await (const block of set.rows(perBlock)) {
    const scores = new Float32Array(block.count * m);
    await backend.score({ n: block.count, m, dim: set.dim, embeddings: block.rows, tests: rows, out: scores });
    visit(block.start, block.count, scores, m);
  }
  return m;
}

/**
 * A lazily composed set (docs/SEGMENTS.md): ⟨S_j · local, g⟩ = ⟨local, S_jᵀ g⟩, so the tests are
 * carried back to each segment's end once (m × k² per block) and scored against the stored
 * local embeddings, instead of composing every embedding (k² per row).
 */
async function scoreLazily(
  set: EmbeddingSet,
  tests: Float32Array,
  m: number,
  backend: Backend,
  perBlock: number,
  visit: (start: number, count: number, scores: Float32Array, m: number) => void,
): Promise<number> {
  const comp = set.composition!;
  const carried = await Promise.all(
    comp.segments.map((s) => (s.identity ? tests : applyBlockMatrices(tests, m, set.dim, comp.blocks, transposeBlocks(s.matrices, comp.blocks), backend))),
  );
  for await (const block of set.storedRows(perBlock)) {
    const scores = new Float32Array(block.count * m);
    for (let j = 0; j < comp.segments.length; j++) {
      const s = comp.segments[j]!;
      const a = Math.max(s.rowStart, block.start) - block.start;
      const b = Math.min(s.rowStart + s.rows, block.start + block.count) - block.start;
      if (a >= b) continue;
      await backend.score({ n: b - a, m, dim: set.dim, embeddings: block.rows.subarray(a * set.dim, b * set.dim), tests: carried[j]!, out: scores.subarray(a * m, b * m) });
    }
    visit(block.start, block.count, scores, m);
  }
  return m;
}

/** Every occurrence's score for every test: (occurrences × m). Asked for explicitly. */
export async function perOccurrence(set: EmbeddingSet, tests: ProjectedTests | Float32Array, options: QueryOptions = {}): Promise<Float32Array> {
  const { m } = checkTests(set, tests);
  const out = new Float32Array(set.count * m);
  await scoreBlocks(set, tests, (start, _count, scores) => out.set(scores, start * m), options);
  return out;
}

/** Per example: the sum over its occurrences (all-epoch removal, REFERENCE §2). */
export async function perExample(set: EmbeddingSet, tests: ProjectedTests | Float32Array, options: QueryOptions = {}): Promise<{ ids: Float64Array; scores: Float64Array; m: number }> {
  const { m } = checkTests(set, tests);
  const { ids, slot } = exampleSlots(set);
  const scores = new Float64Array(ids.length * m);
  await scoreBlocks(
    set,
    tests,
    (start, count, block) => {
      for (let r = 0; r < count; r++) {
        const at = slot[start + r]! * m;
        for (let j = 0; j < m; j++) scores[at + j]! += block[r * m + j]!;
      }
    },
    options,
  );
  return { ids, scores, m };
}

/** Distinct sample ids in increasing order, and each occurrence's position among them. */
export function exampleSlots(set: EmbeddingSet): { ids: Float64Array; slot: Int32Array } {
  const ids = Float64Array.from(new Set(set.ids)).sort();
  const index = new Map<number, number>();
  ids.forEach((id, i) => index.set(id, i));
  const slot = new Int32Array(set.count);
  for (let i = 0; i < set.count; i++) slot[i] = index.get(set.ids[i]!)!;
  return { ids, slot };
}

export interface Attribution {
  id: number;
  /** The step, for per-occurrence results. */
  step?: number;
  score: number;
}

export interface TopK {
  proponents: Attribution[]; // largest positive scores first
  opponents: Attribution[]; // most negative first
}

/** Keeps the k largest values seen (a binary min-heap on score). */
class Best {
  private heap: Attribution[] = [];
  constructor(private readonly k: number) {}
  offer(a: Attribution): void {
    const h = this.heap;
    if (h.length < this.k) {
      h.push(a);
      let i = h.length - 1;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (h[p]!.score <= h[i]!.score) break;
        [h[p], h[i]] = [h[i]!, h[p]!];
        i = p;
      }
    } else if (this.k > 0 && a.score > h[0]!.score) {
      h[0] = a;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let s = i;
        if (l < h.length && h[l]!.score < h[s]!.score) s = l;
        if (r < h.length && h[r]!.score < h[s]!.score) s = r;
        if (s === i) break;
        [h[s], h[i]] = [h[i]!, h[s]!];
        i = s;
      }
    }
  }
  sorted(): Attribution[] {
    return [...this.heap].sort((a, b) => b.score - a.score);
  }
}

/** The k strongest proponents and opponents of each test point, per example or per occurrence. */
export async function topK(set: EmbeddingSet, tests: ProjectedTests | Float32Array, k: number, per: 'example' | 'occurrence' = 'example', options: QueryOptions = {}): Promise<TopK[]> {
  if (!Number.isSafeInteger(k) || k < 1) throw new DvembError('BAD_INPUT', `k must be a positive integer, got ${k}`);
  if (per !== 'example' && per !== 'occurrence') throw new DvembError('BAD_INPUT', `per must be "example" or "occurrence", got ${String(per)}`);
  const { m } = checkTests(set, tests);
  const pro = Array.from({ length: m }, () => new Best(k));
  const opp = Array.from({ length: m }, () => new Best(k));
  const offer = (j: number, a: Attribution) => {
    if (a.score > 0) pro[j]!.offer(a);
    if (a.score < 0) opp[j]!.offer({ ...a, score: -a.score });
  };
  if (per === 'occurrence') {
    await scoreBlocks(
      set,
      tests,
      (start, count, scores) => {
        for (let r = 0; r < count; r++) {
          for (let j = 0; j < m; j++) offer(j, { id: set.ids[start + r]!, step: set.occurrenceSteps[start + r]!, score: scores[r * m + j]! });
        }
      },
      options,
    );
  } else {
    const ex = await perExample(set, tests, options);
    for (let e = 0; e < ex.ids.length; e++) {
      for (let j = 0; j < m; j++) offer(j, { id: ex.ids[e]!, score: ex.scores[e * m + j]! });
    }
  }
  return pro.map((p, j) => ({
    proponents: p.sorted(),
    opponents: opp[j]!.sorted().map((a) => ({ ...a, score: -a.score })),
  }));
}

/** Influence by training step: the sum of each step's occurrence scores, per test (T × m). */
export async function influenceProfile(
  set: EmbeddingSet,
  tests: ProjectedTests | Float32Array,
  options: QueryOptions & { divideByLr?: boolean } = {},
): Promise<{ steps: Float64Array; lr: Float64Array; values: Float64Array; m: number }> {
  const { m } = checkTests(set, tests);
  const T = set.manifest.steps;
  const { step, lr, rowStart } = set.stepTable;
  const values = new Float64Array(T * m);
  let s = 0;
  await scoreBlocks(
    set,
    tests,
    (start, count, scores) => {
      for (let r = 0; r < count; r++) {
        const row = start + r;
        while (s + 1 < T && rowStart[s + 1]! <= row) s++;
        for (let j = 0; j < m; j++) values[s * m + j]! += scores[r * m + j]!;
      }
    },
    options,
  );
  if (options.divideByLr) {
    for (let t = 0; t < T; t++) {
      const eta = lr[t]!;
      for (let j = 0; j < m; j++) values[t * m + j] = eta > 0 ? values[t * m + j]! / eta : 0;
    }
  }
  return { steps: step, lr, values, m };
}
