// Random projection of per-example gradients (REFERENCE §4): the Kronecker-factored form of a
// linear layer, R_out ∇W R_inᵀ, and the dense form R g. Every entry of every R comes from
// philox.ts's fillProjection, the single formula of surface.ts's ProjectionKey, so matrices
// generated whole, in column tiles, or by the native backend are the same matrices.
// Arguments are assumed valid here; index.ts checks them.
import {
  FACTOR_DENSE,
  FACTOR_IN,
  FACTOR_OUT,
  type DenseArgs,
  type Distribution,
  type Factor,
  type KroneckerArgs,
  type ProjectionKey,
} from '../surface.js';
import { gemm } from './gemm.js';
import { fillProjection, seedKey } from './philox.js';

/** The (rows × cols) projection matrix of a key, generated whole. */
export function projectionMatrix(key: ProjectionKey, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  fillTile(key.seed, key.block, key.factor, key.distribution, rows, 0, cols, out);
  return out;
}

function fillTile(
  seed: number,
  block: number,
  factor: Factor,
  distribution: Distribution,
  rows: number,
  colStart: number,
  cols: number,
  out: Float32Array,
): void {
  const [k0, k1] = seedKey(seed);
  fillProjection(k0, k1, block, factor, distribution === 'gaussian', rows, colStart, cols, out);
}

// --- Kronecker factors, cached ------------------------------------------------------------------

/**
 * R_in and R_out are small (k × d) but cost a Philox evaluation per entry, and the same few are
 * needed for every batch of a run: keep the most recently used ones, up to a byte budget.
 */
class FactorCache {
  private readonly entries = new Map<string, Float32Array>();
  private bytes = 0;

  constructor(private readonly budgetBytes: number) {}

  get(seed: number, block: number, factor: Factor, distribution: Distribution, rows: number, cols: number): Float32Array {
    const id = `${seed}/${block}/${factor}/${distribution}/${rows}x${cols}`;
    const hit = this.entries.get(id);
    if (hit) {
      // re-insert: Map iteration order is insertion order, so the first key is the least recent
      this.entries.delete(id);
      this.entries.set(id, hit);
      return hit;
    }
    const matrix = new Float32Array(rows * cols);
    fillTile(seed, block, factor, distribution, rows, 0, cols, matrix);
    if (matrix.byteLength <= this.budgetBytes) {
      while (this.bytes + matrix.byteLength > this.budgetBytes) {
        const [oldest, old] = this.entries.entries().next().value as [string, Float32Array];
        this.entries.delete(oldest);
        this.bytes -= old.byteLength;
      }
      this.entries.set(id, matrix);
      this.bytes += matrix.byteLength;
    }
    return matrix;
  }
}

const factorCache = new FactorCache(64 * 1024 * 1024);

// Scratch, grown on demand and reused across calls.
let scratchIn: Float64Array = new Float64Array(0);
let scratchOut: Float64Array = new Float64Array(0);

function grow(buffer: Float64Array, size: number): Float64Array {
  return buffer.length >= size ? buffer : new Float64Array(size);
}

/** How many float64s of intermediate results one batch of examples may use. */
export const BATCH_ENTRIES = 1 << 20;

/** Writes R_out ∇W_e R_inᵀ of each example into out (see KroneckerArgs). */
export function projectKronecker(args: KroneckerArgs, batchEntries: number = BATCH_ENTRIES): void {
  const { seed, block, distribution, n, dIn, dOut, kIn, kOut } = args;
  if (n === 0) return;
  const width = dIn + (args.bias ? 1 : 0); // columns of R_in and of ∇W
  const rIn = factorCache.get(seed, block, FACTOR_IN, distribution, kIn, width);
  const rOut = factorCache.get(seed, block, FACTOR_OUT, distribution, kOut, dOut);
  if (args.form === 'factors') projectFactors(args, rIn, rOut, width, batchEntries);
  else projectGradient(args, rIn, rOut, width, batchEntries);
}

/**
 * out_e = Σ_τ (R_out δ_τ)(R_in ã_τ)ᵀ = Vᵀ U with U = Ã R_inᵀ (tokens × kIn) and
 * V = Δ R_outᵀ (tokens × kOut): two batched products over all tokens of a batch of examples,
 * then one small product per example. The gradient itself is never formed.
 */
function projectFactors(args: KroneckerArgs, rIn: Float32Array, rOut: Float32Array, width: number, batchEntries: number): void {
  const { n, tokens, dIn, dOut, kIn, kOut, inputs, outputGrads, out, ldOut, offset } = args;
  const batch = Math.max(1, Math.floor(batchEntries / (tokens * (kIn + kOut))));
  scratchIn = grow(scratchIn, Math.min(n, batch) * tokens * kIn);
  scratchOut = grow(scratchOut, Math.min(n, batch) * tokens * kOut);
  const u = scratchIn;
  const v = scratchOut;
  for (let e0 = 0; e0 < n; e0 += batch) {
    const count = Math.min(batch, n - e0);
    const nRows = count * tokens;
    // U = A R_in[:, :dIn]ᵀ, then the bias column of R_in times the constant 1
    gemm(false, true, nRows, kIn, dIn, 1, inputs, e0 * tokens * dIn, dIn, rIn, 0, width, 0, u, 0, kIn);
    if (args.bias) {
      for (let r = 0; r < nRows; r++) {
        const row = r * kIn;
        for (let i = 0; i < kIn; i++) u[row + i] = u[row + i]! + rIn[i * width + dIn]!;
      }
    }
    gemm(false, true, nRows, kOut, dOut, 1, outputGrads, e0 * tokens * dOut, dOut, rOut, 0, dOut, 0, v, 0, kOut);
    for (let e = 0; e < count; e++) {
      const dst = (e0 + e) * ldOut + offset;
      if (tokens === 1) {
        // a single outer product: no packing for a rank-1 update
        const ue = e * kIn;
        const ve = e * kOut;
        for (let o = 0; o < kOut; o++) {
          const vo = v[ve + o]!;
          const row = dst + o * kIn;
          for (let i = 0; i < kIn; i++) out[row + i] = vo * u[ue + i]!;
        }
      } else {
        gemm(true, false, kOut, kIn, tokens, 1, v, e * tokens * kOut, kOut, u, e * tokens * kIn, kIn, 0, out, dst, kIn);
      }
    }
  }
}

/** out_e = R_out ∇W_e R_inᵀ from the materialised gradient, in the cheaper association order. */
function projectGradient(args: KroneckerArgs, rIn: Float32Array, rOut: Float32Array, width: number, batchEntries: number): void {
  const { n, dOut, kIn, kOut, inputs, out, ldOut, offset } = args;
  const inFirst = dOut * width * kIn + kOut * dOut * kIn <= kOut * dOut * width + kOut * width * kIn;
  if (inFirst) {
    // T = ∇W R_inᵀ for a batch of examples at once (their gradients are stacked rows), then R_out T
    const batch = Math.max(1, Math.floor(batchEntries / (dOut * kIn)));
    scratchIn = grow(scratchIn, Math.min(n, batch) * dOut * kIn);
    const t = scratchIn;
    for (let e0 = 0; e0 < n; e0 += batch) {
      const count = Math.min(batch, n - e0);
      gemm(false, true, count * dOut, kIn, width, 1, inputs, e0 * dOut * width, width, rIn, 0, width, 0, t, 0, kIn);
      for (let e = 0; e < count; e++) {
        gemm(false, false, kOut, kIn, dOut, 1, rOut, 0, dOut, t, e * dOut * kIn, kIn, 0, out, (e0 + e) * ldOut + offset, kIn);
      }
    }
  } else {
    // S = R_out ∇W per example, then S R_inᵀ
    scratchOut = grow(scratchOut, kOut * width);
    const s = scratchOut;
    for (let e = 0; e < n; e++) {
      gemm(false, false, kOut, width, dOut, 1, rOut, 0, dOut, inputs, e * dOut * width, width, 0, s, 0, width);
      gemm(false, true, kOut, kIn, width, 1, s, 0, width, rIn, 0, width, 0, out, e * ldOut + offset, kIn);
    }
  }
}

// --- Dense projection ---------------------------------------------------------------------------

let denseTile: Float32Array = new Float32Array(0);

/** Entries of R per column tile: large enough to keep the products efficient, small enough for cache. */
export const DENSE_TILE_ENTRIES = 1 << 18;

/**
 * out_e = R g_e with R (k × d) generated in column tiles R[:, c0..c0+w): out += G[:, tile] R_tileᵀ.
 * R is never held whole; each tile is generated once and applied to every example.
 */
export function projectDense(args: DenseArgs, tileEntries: number = DENSE_TILE_ENTRIES): void {
  const { seed, block, distribution, n, d, k, grads, out, ldOut, offset } = args;
  if (n === 0) return;
  const w = Math.min(d, Math.max(1, Math.floor(tileEntries / k)));
  if (denseTile.length < k * w) denseTile = new Float32Array(k * w);
  const tile = denseTile;
  for (let c0 = 0; c0 < d; c0 += w) {
    const cols = Math.min(w, d - c0);
    fillTile(seed, block, FACTOR_DENSE, distribution, k, c0, cols, tile);
    gemm(false, true, n, k, cols, 1, grads, c0, d, tile, 0, cols, c0 === 0 ? 0 : 1, out, offset, ldOut);
  }
}
