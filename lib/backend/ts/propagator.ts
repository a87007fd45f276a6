// The backward recursion of REFERENCE §3, one chunk of steps at a time, walked from the chunk's
// last step to its first. For each step and each propagator block (columns [off, off + k) with
// its k × k matrix P):
//   E = diag(η w) G Pᵀ            the step's embeddings, written where G's rows lie
//   F = C Pᵀ                      (with C = G and w_C = w when there are no curvature rows)
//   P ← c P − η (diag(w_C) F)ᵀ C   i.e. P ← P A_t with A_t = c I − η Σ w_C c cᵀ
// G and C are used in place: a block is a column range of the dim-wide rows, addressed through
// the leading dimension, so nothing is copied. gemm packs every operand into float64 anyway, so
// the fp64 path reads the float32 rows directly too. E and F live in float64 scratch: E reaches
// the update unrounded and the embeddings rounded once, in both precisions.
// Arguments are assumed valid here; index.ts checks them.
import type { PropagateArgs } from '../surface.js';
import { gemm, type Matrix } from './gemm.js';

let scratchE: Float64Array = new Float64Array(0);
let scratchF: Float64Array = new Float64Array(0);

/**
 * Runs the chunk; returns −1, or the position s of the first step (in walking order) after
 * which E or P was not finite, and stops there. E rows are checked after every step (cheap:
 * they were just written); P is not scanned per step, since a non-finite P shows in the next
 * step's E. So when E of step s is bad, P (still as step s + 1 left it) tells whether step s
 * itself or step s + 1 went wrong; and at the end of the chunk a bad P means the last walked
 * step, 0, did. (The native backend reports the same positions.)
 */
export function propagate(args: PropagateArgs): number {
  const { blocks, propagators, steps } = args;
  for (let s = steps - 1; s >= 0; s--) {
    let pOff = 0;
    for (let b = 0; b < blocks.length; b += 2) {
      const off = blocks[b]!;
      const k = blocks[b + 1]!;
      if (!stepBlock(args, s, off, k, propagators, pOff)) {
        const pWasBad = !allFinite(propagators, pOff, k * k);
        return pWasBad && s + 1 < steps ? s + 1 : s;
      }
      pOff += k * k;
    }
  }
  if (steps > 0 && !allFinite(propagators, 0, propagators.length)) return 0;
  return -1;
}

/** One step s on one block; returns false, leaving P as it was, when E is not finite. */
function stepBlock(args: PropagateArgs, s: number, off: number, k: number, p: Matrix, pOff: number): boolean {
  const { dim, rows, stepRows, weights, embeddings, curvature } = args;
  const eta = args.lr[s]!;
  const decay = args.decay[s]!;
  const r0 = stepRows[s]!;
  const count = stepRows[s + 1]! - r0;
  const g = r0 * dim + off; // G: count × k at g, leading dimension dim

  // E = diag(η w) G Pᵀ, kept in float64 scratch until the update has used it, and rounded once
  // into the embeddings at G's rows and columns.
  if (scratchE.length < count * k) scratchE = new Float64Array(count * k);
  const e = scratchE;
  if (count > 0) {
    gemm(false, true, count, k, k, 1, rows, g, dim, p, pOff, k, 0, e, 0, k);
    for (let i = 0; i < count; i++) {
      const scale = eta * weights[r0 + i]!;
      const src = i * k;
      const dst = g + i * dim;
      for (let j = 0; j < k; j++) {
        const v = scale * e[src + j]!;
        e[src + j] = v;
        embeddings[dst + j] = v;
      }
    }
    if (!rowsFinite(embeddings, g, count, k, dim)) return false;
  }

  // P ← c P − η (diag(w_C) F)ᵀ C
  if (curvature == null) {
    // C = G and w_C = w: the scaled F is E itself
    if (count > 0) gemm(true, false, k, k, count, -1, e, 0, k, rows, g, dim, decay, p, pOff, k);
    else scaleRange(p, pOff, k * k, decay);
  } else {
    const c0 = args.stepCurvature![s]!;
    const cCount = args.stepCurvature![s + 1]! - c0;
    const cOff = c0 * dim + off;
    if (cCount > 0) {
      if (scratchF.length < cCount * k) scratchF = new Float64Array(cCount * k);
      const f = scratchF;
      gemm(false, true, cCount, k, k, 1, curvature, cOff, dim, p, pOff, k, 0, f, 0, k);
      for (let i = 0; i < cCount; i++) scaleRange(f, i * k, k, eta * args.curvatureWeights![c0 + i]!);
      gemm(true, false, k, k, cCount, -1, f, 0, k, curvature, cOff, dim, decay, p, pOff, k);
    } else {
      scaleRange(p, pOff, k * k, decay);
    }
  }
  return true;
}

function scaleRange(x: Matrix, start: number, length: number, factor: number): void {
  if (factor === 1) return;
  for (let j = start; j < start + length; j++) x[j] = factor * x[j]!;
}

/** Whether count rows of k entries (at start, leading dimension ld) are all finite. */
function rowsFinite(x: Float32Array, start: number, count: number, k: number, ld: number): boolean {
  for (let i = 0; i < count; i++) {
    const row = start + i * ld;
    for (let j = row; j < row + k; j++) {
      const v = x[j]!;
      if (v - v !== 0) return false; // NaN and ±Inf both give NaN
    }
  }
  return true;
}

function allFinite(x: Matrix, start: number, length: number): boolean {
  for (let j = start; j < start + length; j++) {
    const v = x[j]!;
    if (v - v !== 0) return false;
  }
  return true;
}
