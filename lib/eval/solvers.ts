// Dense and matrix-free solvers for the influence function (REFERENCE §6): an LU solve with
// partial pivoting (the damped Hessian of an MLP may be indefinite) and conjugate gradients over
// several right-hand sides sharing one batched operator call per iteration. Float64 throughout.
import { DvembError } from '../errors.js';

/** Solves A x = b for each b by LU with partial pivoting (A is p × p row-major, copied). */
export function luSolve(Ain: Float64Array, p: number, bs: readonly Float64Array[]): Float64Array[] {
  const A = Ain.slice();
  const piv = new Int32Array(p);
  for (let k = 0; k < p; k++) {
    let best = k;
    for (let r = k + 1; r < p; r++) if (Math.abs(A[r * p + k] as number) > Math.abs(A[best * p + k] as number)) best = r;
    piv[k] = best;
    if (A[best * p + k] === 0) throw new DvembError('NON_FINITE', `the damped Hessian is singular (pivot ${k})`, 'increase the damping δ');
    if (best !== k) for (let c = 0; c < p; c++) [A[k * p + c], A[best * p + c]] = [A[best * p + c] as number, A[k * p + c] as number];
    const d = A[k * p + k] as number;
    for (let r = k + 1; r < p; r++) {
      const f = (A[r * p + k] as number) / d;
      A[r * p + k] = f;
      if (f === 0) continue;
      for (let c = k + 1; c < p; c++) A[r * p + c] = (A[r * p + c] as number) - f * (A[k * p + c] as number);
    }
  }
  return bs.map((b) => {
    const x = b.slice();
    for (let k = 0; k < p; k++) {
      const q = piv[k] as number;
      if (q !== k) [x[k], x[q]] = [x[q] as number, x[k] as number];
    }
    for (let r = 0; r < p; r++) {
      let s = x[r] as number;
      for (let c = 0; c < r; c++) s -= (A[r * p + c] as number) * (x[c] as number);
      x[r] = s;
    }
    for (let r = p - 1; r >= 0; r--) {
      let s = x[r] as number;
      for (let c = r + 1; c < p; c++) s -= (A[r * p + c] as number) * (x[c] as number);
      x[r] = s / (A[r * p + r] as number);
    }
    return x;
  });
}

/** Conjugate gradients for several right-hand sides at once (one batched operator call per iteration). */
export function conjugateGradients(apply: (vs: Float64Array[]) => Float64Array[], bs: readonly Float64Array[], tolerance: number, maxIterations: number): { x: Float64Array[]; iterations: number } {
  const dot = (a: Float64Array, b: Float64Array) => {
    let s = 0;
    for (let k = 0; k < a.length; k++) s += (a[k] as number) * (b[k] as number);
    return s;
  };
  const x = bs.map((b) => new Float64Array(b.length));
  const r = bs.map((b) => b.slice());
  const d = bs.map((b) => b.slice());
  const rr = r.map((v) => dot(v, v));
  const stop = bs.map((b) => tolerance * tolerance * dot(b, b));
  const active = bs.map((_, j) => (rr[j] as number) > (stop[j] as number));
  let it = 0;
  for (; it < maxIterations && active.some(Boolean); it++) {
    const idx = active.flatMap((a, j) => (a ? [j] : []));
    const Ad = apply(idx.map((j) => d[j] as Float64Array));
    idx.forEach((j, q) => {
      const ad = Ad[q] as Float64Array;
      const dj = d[j] as Float64Array;
      const curv = dot(dj, ad);
      if (!(curv > 0)) {
        throw new DvembError('NON_FINITE', `conjugate gradients met non-positive curvature dᵀ(H + (λ+δ)I)d = ${curv} at iteration ${it}: the damped Hessian is not positive definite`, 'increase the damping δ, or use the exact solver');
      }
      const alpha = (rr[j] as number) / curv;
      const xj = x[j] as Float64Array;
      const rj = r[j] as Float64Array;
      for (let k = 0; k < xj.length; k++) {
        xj[k] = (xj[k] as number) + alpha * (dj[k] as number);
        rj[k] = (rj[k] as number) - alpha * (ad[k] as number);
      }
      const rrNew = dot(rj, rj);
      const beta = rrNew / (rr[j] as number);
      rr[j] = rrNew;
      for (let k = 0; k < dj.length; k++) dj[k] = (rj[k] as number) + beta * (dj[k] as number);
      if (rrNew <= (stop[j] as number)) active[j] = false;
    });
  }
  if (active.some(Boolean)) {
    throw new DvembError('NON_FINITE', `conjugate gradients did not converge in ${maxIterations} iterations`, 'raise maxIterations or the damping δ, or use the exact solver for a small model');
  }
  return { x, iterations: it };
}
