// Dense matrix products for the TypeScript backend, row-major like cblas_?gemm(CblasRowMajor):
//   C = alpha · op(A) · op(B) + beta · C,  op(X) = X or Xᵀ,
// with leading dimensions and element offsets so that sub-blocks of larger arrays (a block's
// columns of a row, one example's slice of a batch) are used where they lie.
//
// Layout of the computation (the Goto/BLIS scheme, scaled down to what V8 can do):
// - op(B) is packed, KC rows × NC columns at a time, into NR-wide micro-panels, and op(A),
//   MC × KC at a time, into MR-tall micro-panels, both as Float64Array. The inner loop then reads
//   two unit-stride streams of doubles: no float32→float64 conversion, no strided access, no
//   transposes left to handle.
// - A 4 × 4 micro-kernel keeps its 16 accumulators in local variables (registers): each step of
//   the inner loop loads 8 numbers and does 16 multiply-adds. Accumulating in float64 is also
//   more accurate than a float32 BLAS.
// - beta is applied where each tile of C is stored after the first KC-deep pass (later passes
//   add), so C is read and written once per pass and never in a separate sweep. beta = 0
//   writes C without reading it (NaN already in C does not leak through), as BLAS does.
// Scratch panels are module-level and grown on demand: nothing is allocated per call once warm.

export type Matrix = Float32Array | Float64Array;

const MR = 4;
const NR = 4;
const KC = 256;
const MC = 128;
const NC = 1024;
/** Below this many multiply-adds, packing costs more than it saves: use the plain loop. */
const SMALL = 4096;

let packedA: Float64Array = new Float64Array(0);
let packedB: Float64Array = new Float64Array(0);
/** Accumulators of a partial (edge) tile. */
const edge = new Float64Array(MR * NR);

function roundUp(x: number, to: number): number {
  return Math.ceil(x / to) * to;
}

/** C = alpha · op(A) · op(B) + beta · C for Float32Array operands (accumulated in float64). */
export function sgemm(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Float32Array,
  aOff: number,
  lda: number,
  b: Float32Array,
  bOff: number,
  ldb: number,
  beta: number,
  c: Float32Array,
  cOff: number,
  ldc: number,
): void {
  gemm(transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
}

/** C = alpha · op(A) · op(B) + beta · C for Float64Array operands. */
export function dgemm(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Float64Array,
  aOff: number,
  lda: number,
  b: Float64Array,
  bOff: number,
  ldb: number,
  beta: number,
  c: Float64Array,
  cOff: number,
  ldc: number,
): void {
  gemm(transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
}

/** The shared driver: any mix of element types, since every operand is packed into float64. */
export function gemm(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Matrix,
  aOff: number,
  lda: number,
  b: Matrix,
  bOff: number,
  ldb: number,
  beta: number,
  c: Matrix,
  cOff: number,
  ldc: number,
): void {
  checkSize('m', m);
  checkSize('n', n);
  checkSize('k', k);
  checkOperand('A', a, aOff, lda, transA ? k : m, transA ? m : k);
  checkOperand('B', b, bOff, ldb, transB ? n : k, transB ? k : n);
  checkOperand('C', c, cOff, ldc, m, n);
  if (m === 0 || n === 0) return;

  if (k === 0 || alpha === 0) {
    scaleC(m, n, beta, c, cOff, ldc);
    return;
  }

  // op(X)[i, p] = x[off + i * rowStride + p * colStride]
  const aRow = transA ? 1 : lda;
  const aCol = transA ? lda : 1;
  const bRow = transB ? 1 : ldb;
  const bCol = transB ? ldb : 1;

  if (m * n * k <= SMALL) {
    smallGemm(m, n, k, alpha, a, aOff, aRow, aCol, b, bOff, bRow, bCol, beta, c, cOff, ldc);
    return;
  }

  for (let jc = 0; jc < n; jc += NC) {
    const nc = Math.min(NC, n - jc);
    for (let pc = 0; pc < k; pc += KC) {
      const kc = Math.min(KC, k - pc);
      packB(kc, nc, b, bOff + pc * bRow + jc * bCol, bRow, bCol);
      for (let ic = 0; ic < m; ic += MC) {
        const mc = Math.min(MC, m - ic);
        packA(mc, kc, alpha, a, aOff + ic * aRow + pc * aCol, aRow, aCol);
        macroKernel(mc, nc, kc, pc === 0 ? beta : 1, c, cOff + ic * ldc + jc, ldc);
      }
    }
  }
}

function checkSize(name: string, size: number): void {
  if (!Number.isInteger(size) || size < 0) throw new RangeError(`gemm: ${name} must be an integer ≥ 0, got ${size}`);
}

/** Throws when a rows × cols operand at (off, ld) would reach outside its array. */
function checkOperand(name: string, x: Matrix, off: number, ld: number, rows: number, cols: number): void {
  if (!Number.isInteger(off) || off < 0 || !Number.isInteger(ld) || ld < 0) {
    throw new RangeError(`gemm: ${name} needs an integer offset and leading dimension ≥ 0, got offset ${off}, ld ${ld}`);
  }
  if (rows === 0 || cols === 0) return;
  if (ld < cols) {
    throw new RangeError(`gemm: ${name} has ${cols} columns, so its leading dimension must be ≥ ${cols}, got ${ld}`);
  }
  const end = off + (rows - 1) * ld + cols;
  if (end > x.length) {
    throw new RangeError(
      `gemm: ${name} (${rows} × ${cols}, offset ${off}, ld ${ld}) reaches element ${end - 1}, but its array has length ${x.length}`,
    );
  }
}

function scaleC(m: number, n: number, beta: number, c: Matrix, cOff: number, ldc: number): void {
  if (beta === 1) return;
  for (let i = 0; i < m; i++) {
    const row = cOff + i * ldc;
    if (beta === 0) {
      c.fill(0, row, row + n);
    } else {
      for (let j = row; j < row + n; j++) c[j] = beta * c[j]!;
    }
  }
}

function smallGemm(
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Matrix,
  aOff: number,
  aRow: number,
  aCol: number,
  b: Matrix,
  bOff: number,
  bRow: number,
  bCol: number,
  beta: number,
  c: Matrix,
  cOff: number,
  ldc: number,
): void {
  for (let i = 0; i < m; i++) {
    const ai = aOff + i * aRow;
    for (let j = 0; j < n; j++) {
      const bj = bOff + j * bCol;
      let sum = 0;
      for (let p = 0; p < k; p++) sum += a[ai + p * aCol]! * b[bj + p * bRow]!;
      const at = cOff + i * ldc + j;
      c[at] = beta === 0 ? alpha * sum : beta * c[at]! + alpha * sum;
    }
  }
}

/**
 * Packs op(B)[0..kc, 0..nc) (at `off`) into NR-wide micro-panels: panel q holds, for each p,
 * the NR entries op(B)[p, q·NR ..]; columns past nc are zero.
 */
function packB(kc: number, nc: number, b: Matrix, off: number, rowStride: number, colStride: number): void {
  const size = roundUp(nc, NR) * kc;
  if (packedB.length < size) packedB = new Float64Array(size);
  const dst = packedB;
  let d = 0;
  for (let j0 = 0; j0 < nc; j0 += NR) {
    const w = Math.min(NR, nc - j0);
    if (w === NR && colStride === 1) {
      // op(B) rows are contiguous: copy NR at a time
      let s = off + j0;
      for (let p = 0; p < kc; p++, s += rowStride, d += NR) {
        dst[d] = b[s]!;
        dst[d + 1] = b[s + 1]!;
        dst[d + 2] = b[s + 2]!;
        dst[d + 3] = b[s + 3]!;
      }
    } else if (w === NR) {
      // op(B) = Bᵀ: each of the NR columns is a contiguous run of B
      const s0 = off + j0 * colStride;
      const s1 = s0 + colStride;
      const s2 = s1 + colStride;
      const s3 = s2 + colStride;
      for (let p = 0, s = 0; p < kc; p++, s += rowStride, d += NR) {
        dst[d] = b[s0 + s]!;
        dst[d + 1] = b[s1 + s]!;
        dst[d + 2] = b[s2 + s]!;
        dst[d + 3] = b[s3 + s]!;
      }
    } else {
      for (let p = 0; p < kc; p++, d += NR) {
        const s = off + p * rowStride + j0 * colStride;
        for (let j = 0; j < NR; j++) dst[d + j] = j < w ? b[s + j * colStride]! : 0;
      }
    }
  }
}

/**
 * Packs alpha · op(A)[0..mc, 0..kc) (at `off`) into MR-tall micro-panels: panel q holds, for
 * each p, the MR entries op(A)[q·MR .., p]; rows past mc are zero. alpha is folded in here so
 * the kernels never multiply by it.
 */
function packA(mc: number, kc: number, alpha: number, a: Matrix, off: number, rowStride: number, colStride: number): void {
  const size = roundUp(mc, MR) * kc;
  if (packedA.length < size) packedA = new Float64Array(size);
  const dst = packedA;
  let d = 0;
  for (let i0 = 0; i0 < mc; i0 += MR) {
    const h = Math.min(MR, mc - i0);
    if (h === MR) {
      const s0 = off + i0 * rowStride;
      const s1 = s0 + rowStride;
      const s2 = s1 + rowStride;
      const s3 = s2 + rowStride;
      for (let p = 0, s = 0; p < kc; p++, s += colStride, d += MR) {
        dst[d] = alpha * a[s0 + s]!;
        dst[d + 1] = alpha * a[s1 + s]!;
        dst[d + 2] = alpha * a[s2 + s]!;
        dst[d + 3] = alpha * a[s3 + s]!;
      }
    } else {
      for (let p = 0; p < kc; p++, d += MR) {
        const s = off + i0 * rowStride + p * colStride;
        for (let i = 0; i < MR; i++) dst[d + i] = i < h ? alpha * a[s + i * rowStride]! : 0;
      }
    }
  }
}

/** C[0..mc, 0..nc) = beta · C + packedA · packedB, tile by tile. */
function macroKernel(mc: number, nc: number, kc: number, beta: number, c: Matrix, cOff: number, ldc: number): void {
  for (let j0 = 0; j0 < nc; j0 += NR) {
    const w = Math.min(NR, nc - j0);
    const bPanel = j0 * kc;
    for (let i0 = 0; i0 < mc; i0 += MR) {
      const h = Math.min(MR, mc - i0);
      const aPanel = i0 * kc;
      const cTile = cOff + i0 * ldc + j0;
      if (h === MR && w === NR) {
        kernel4x4(kc, packedA, aPanel, packedB, bPanel, beta, c, cTile, ldc);
      } else {
        kernel4x4(kc, packedA, aPanel, packedB, bPanel, 0, edge, 0, NR);
        for (let i = 0; i < h; i++) {
          for (let j = 0; j < w; j++) {
            const at = cTile + i * ldc + j;
            c[at] = beta === 0 ? edge[i * NR + j]! : beta * c[at]! + edge[i * NR + j]!;
          }
        }
      }
    }
  }
}

/** C[4 × 4 tile at cOff] = beta · C + Σ_p a(:, p) b(p, :) over kc packed steps (beta = 0: C not read). */
function kernel4x4(
  kc: number,
  pa: Float64Array,
  ia: number,
  pb: Float64Array,
  ib: number,
  beta: number,
  c: Matrix,
  cOff: number,
  ldc: number,
): void {
  let c00 = 0, c01 = 0, c02 = 0, c03 = 0;
  let c10 = 0, c11 = 0, c12 = 0, c13 = 0;
  let c20 = 0, c21 = 0, c22 = 0, c23 = 0;
  let c30 = 0, c31 = 0, c32 = 0, c33 = 0;
  for (let p = 0; p < kc; p++, ia += MR, ib += NR) {
    const a0 = pa[ia]!, a1 = pa[ia + 1]!, a2 = pa[ia + 2]!, a3 = pa[ia + 3]!;
    const b0 = pb[ib]!, b1 = pb[ib + 1]!, b2 = pb[ib + 2]!, b3 = pb[ib + 3]!;
    c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
    c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
    c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
    c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
  }
  if (beta === 0) {
    setRow4(c, cOff, c00, c01, c02, c03);
    setRow4(c, cOff + ldc, c10, c11, c12, c13);
    setRow4(c, cOff + 2 * ldc, c20, c21, c22, c23);
    setRow4(c, cOff + 3 * ldc, c30, c31, c32, c33);
  } else {
    updateRow4(c, cOff, beta, c00, c01, c02, c03);
    updateRow4(c, cOff + ldc, beta, c10, c11, c12, c13);
    updateRow4(c, cOff + 2 * ldc, beta, c20, c21, c22, c23);
    updateRow4(c, cOff + 3 * ldc, beta, c30, c31, c32, c33);
  }
}

function setRow4(c: Matrix, at: number, x0: number, x1: number, x2: number, x3: number): void {
  c[at] = x0;
  c[at + 1] = x1;
  c[at + 2] = x2;
  c[at + 3] = x3;
}

function updateRow4(c: Matrix, at: number, beta: number, x0: number, x1: number, x2: number, x3: number): void {
  c[at] = beta * c[at]! + x0;
  c[at + 1] = beta * c[at + 1]! + x1;
  c[at + 2] = beta * c[at + 2]! + x2;
  c[at + 3] = beta * c[at + 3]! + x3;
}
