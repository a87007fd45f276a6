// The numbers behind the report, from one streamed pass over the embeddings: influence by step
// (signed per test, and its magnitude), each example's total per test with its strongest
// occurrence, the phases, and TracIn-RP self-influence from the recorded trajectory.
import { existsSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import type { Backend } from '../backend/surface.js';
import { exampleSlots, scoreBlocks, type ProjectedTests } from '../embeddings/query.js';
import type { EmbeddingSet } from '../embeddings/store.js';
import { DvembError } from '../errors.js';
import { Trajectory } from '../trajectory/trajectory.js';
import type { ReportInput } from './input.js';
import { findPhases, selectionReading, type PhaseResult, type SelectionReading } from './phases.js';

export interface RankedExample {
  id: number;
  /** Sum over the example's occurrences (all-epoch removal). */
  score: number;
  /** Steps at which the example was used, in order. */
  steps: number[];
  /** The occurrence that pushed hardest in the direction of `score`. */
  strongestStep: number;
  strongestScore: number;
}

export interface Analysis {
  /** Step number, η and first row of each step (the embeddings' step table). */
  steps: Float64Array;
  lr: Float64Array;
  m: number;
  /** (T × m): the sum of each step's occurrence scores, per test. */
  signed: Float64Array;
  /** (T): mean over tests of Σ |score| over the step's occurrences. */
  magnitude: Float64Array;
  /** (T): magnitude / η_t (0 where η_t = 0). */
  perLr: Float64Array;
  phases: PhaseResult;
  phasesPerLr: PhaseResult;
  reading: SelectionReading;
  top: { proponents: RankedExample[]; opponents: RankedExample[] }[];
  selfInfluence: { ids: Float64Array; values: Float64Array; source: string } | { none: string };
  examples: number;
}

/** Finds the trajectory the embeddings were computed from; the manifest keeps the path as given. */
export function locateTrajectory(set: EmbeddingSet): string | null {
  const recorded = set.manifest.trajectory;
  const candidates = isAbsolute(recorded)
    ? [recorded, join(dirname(set.dir), basename(recorded))]
    : [resolve(recorded), join(set.dir, recorded), join(dirname(set.dir), basename(recorded))];
  return candidates.find((c) => existsSync(join(c, 'manifest.json'))) ?? null;
}

/**
 * TracIn-RP self-influence Σ_t η_t w_z ‖g_t(z)‖² per example, over its occurrences, in the
 * projected space (MATH.md §5; w_z carries the 1/|B| of a mean loss).
 */
export async function selfInfluenceFromTrajectory(set: EmbeddingSet, dir: string, onChunk?: (done: number, total: number) => void): Promise<{ ids: Float64Array; values: Float64Array }> {
  const traj = Trajectory.open(dir);
  if (traj.layout.fingerprint !== set.layout.fingerprint) {
    throw new DvembError('PROJECTION_MISMATCH', `the trajectory at ${dir} uses layout ${traj.layout.fingerprint}, the embeddings ${set.layout.fingerprint}`);
  }
  // A segment's set (docs/SEGMENTS.md) covers rows [rowStart, rowStart + count) of the trajectory.
  const segment = (set.manifest as { segment?: { rowStart: number; totalRows: number } }).segment;
  const offset = segment?.rowStart ?? 0;
  const expected = segment?.totalRows ?? set.count;
  if (traj.rows !== expected) {
    throw new DvembError('SHAPE_MISMATCH', `the trajectory at ${dir} now holds ${traj.rows} occurrences, the embeddings were computed from ${expected}`, 'recompute the embeddings, or pass precomputed self-influence values');
  }
  const { ids, slot } = exampleSlots(set);
  const values = new Float64Array(ids.length);
  const dim = set.dim;
  const offsets = traj.rowOffsets();
  for (let c = 0; c < traj.chunks.length; c++) {
    const info = traj.chunks[c]!;
    if (offsets[c]! + info.rows <= offset || offsets[c]! >= offset + set.count) continue;
    const chunk = await traj.readChunk(c, true);
    for (let s = 0; s < chunk.steps; s++) {
      const eta = chunk.lr[s]!;
      for (let r = chunk.stepRows[s]!; r < chunk.stepRows[s + 1]!; r++) {
        const row = offsets[c]! + r - offset;
        if (row < 0 || row >= set.count) continue;
        if (chunk.ids[r] !== set.ids[row]) throw new DvembError('CORRUPT', `occurrence ${row}: the trajectory has sample ${chunk.ids[r]}, the embeddings ${set.ids[row]}`, 'recompute the embeddings from this trajectory');
        let sq = 0;
        for (let k = r * dim; k < (r + 1) * dim; k++) sq += chunk.rows[k]! * chunk.rows[k]!;
        values[slot[row]!]! += eta * chunk.weights[r]! * sq;
      }
    }
    onChunk?.(c + 1, traj.chunks.length);
  }
  return { ids, values };
}

async function selfInfluence(input: ReportInput, onProgress?: (p: ReportProgress) => void): Promise<Analysis['selfInfluence']> {
  const si = input.selfInfluence;
  if (si.mode === 'off') return { none: 'left out (report.json sets "selfInfluence": null)' };
  const { ids } = exampleSlots(input.set);
  if (si.mode === 'file') {
    const values = new Float64Array(ids.length);
    for (let e = 0; e < ids.length; e++) {
      const v = si.values[ids[e]!];
      if (v === undefined) throw new DvembError('SHAPE_MISMATCH', `${si.path} holds ${si.values.length} values, but sample id ${ids[e]} is used in training`, 'store one value per sample id (index = id)');
      values[e] = v;
    }
    return { ids, values, source: `precomputed (${si.path})` };
  }
  const dir = locateTrajectory(input.set);
  if (!dir) return { none: `not computed: the trajectory ${input.set.manifest.trajectory} (named in embeddings.json) was not found; pass precomputed values to prepareReport` };
  try {
    return { ...(await selfInfluenceFromTrajectory(input.set, dir, onProgress && ((done, total) => onProgress({ stage: 'self-influence', done, total })))), source: `TracIn-RP from the trajectory ${dir}` };
  } catch (err) {
    if (err instanceof DvembError) return { none: `not computed: ${err.message}` };
    throw err;
  }
}

/** Where the report's two passes are: over the embeddings (rows), then the trajectory (chunks). */
export interface ReportProgress {
  stage: 'influence' | 'self-influence';
  done: number;
  total: number;
}

export async function analyze(input: ReportInput, options: { backend?: Backend; onProgress?: (p: ReportProgress) => void } = {}): Promise<Analysis> {
  const { set } = input;
  const T = set.manifest.steps;
  const { step: steps, lr, rowStart } = set.stepTable;
  const m = input.tests?.m ?? 0;
  const signed = new Float64Array(T * m);
  const magnitude = new Float64Array(T);
  const top: Analysis['top'] = [];
  const { ids, slot } = exampleSlots(set);
  if (input.tests) {
    const t = input.tests;
    const tests: ProjectedTests | Float32Array = t.fingerprint === null ? t.rows : { rows: t.rows, n: t.m, fingerprint: t.fingerprint };
    const total = new Float64Array(ids.length * m);
    const hi = new Float64Array(ids.length * m).fill(-Infinity);
    const lo = new Float64Array(ids.length * m).fill(Infinity);
    const hiRow = new Int32Array(ids.length * m);
    const loRow = new Int32Array(ids.length * m);
    let s = 0;
    await scoreBlocks(
      set,
      tests,
      (start, count, scores) => {
        for (let r = 0; r < count; r++) {
          const row = start + r;
          while (s + 1 < T && rowStart[s + 1]! <= row) s++;
          const e = slot[row]! * m;
          for (let j = 0; j < m; j++) {
            const v = scores[r * m + j]!;
            signed[s * m + j]! += v;
            magnitude[s]! += Math.abs(v) / m;
            total[e + j]! += v;
            if (v > hi[e + j]!) (hi[e + j] = v), (hiRow[e + j] = row);
            if (v < lo[e + j]!) (lo[e + j] = v), (loRow[e + j] = row);
          }
        }
        options.onProgress?.({ stage: 'influence', done: start + count, total: set.count });
      },
      options.backend ? { backend: options.backend } : {},
    );
    // Steps of the chosen examples only, from the occurrence table held in memory.
    const chosen = new Map<number, number[]>();
    const rank = (j: number) => {
      const order = Array.from(ids.keys()).sort((a, b) => total[b * m + j]! - total[a * m + j]!);
      const pick = (list: number[], sign: 1 | -1) => list.filter((e) => sign * total[e * m + j]! > 0).slice(0, input.top);
      return { pro: pick(order, 1), opp: pick([...order].reverse(), -1) };
    };
    const picks = Array.from({ length: m }, (_, j) => rank(j));
    for (const p of picks) for (const e of [...p.pro, ...p.opp]) chosen.set(ids[e]!, []);
    for (let i = 0; i < set.count; i++) chosen.get(set.ids[i]!)?.push(set.occurrenceSteps[i]!);
    picks.forEach((p, j) => {
      const make = (e: number, sign: 1 | -1): RankedExample => {
        const row = sign > 0 ? hiRow[e * m + j]! : loRow[e * m + j]!;
        return { id: ids[e]!, score: total[e * m + j]!, steps: chosen.get(ids[e]!)!, strongestStep: set.occurrenceSteps[row]!, strongestScore: sign > 0 ? hi[e * m + j]! : lo[e * m + j]! };
      };
      top.push({ proponents: p.pro.map((e) => make(e, 1)), opponents: p.opp.map((e) => make(e, -1)) });
    });
  }
  const perLr = magnitude.map((v, t) => (lr[t]! > 0 ? v / lr[t]! : 0));
  const phases = findPhases(magnitude, input.rule);
  const phasesPerLr = findPhases(perLr, input.rule);
  return {
    steps,
    lr,
    m,
    signed,
    magnitude,
    perLr,
    phases,
    phasesPerLr,
    reading: selectionReading(magnitude, phases, steps),
    top,
    selfInfluence: await selfInfluence(input, options.onProgress),
    examples: ids.length,
  };
}
