// The whole compute surface of dvemb, as one type. The native addon (CPU or CUDA build) and the
// pure-TypeScript backend both implement it, so nothing above lib/backend/ can tell them apart.
// Every array is row-major. Outputs are preallocated by the caller and written in place: typed
// arrays cross the native boundary without copies in either direction.
// Notation follows ../../docs/MATH.md (REFERENCE §3, §4).

export type Distribution = 'gaussian' | 'rademacher';

/** Which random matrix of a block: the dense R, or R_in / R_out of a Kronecker block. */
export const FACTOR_DENSE = 0;
export const FACTOR_IN = 1;
export const FACTOR_OUT = 2;
export type Factor = typeof FACTOR_DENSE | typeof FACTOR_IN | typeof FACTOR_OUT;

/**
 * Identifies one random projection matrix. Entry (r, c) of the matrix is a pure function of
 * (seed, block, factor, r, c): Philox4x32-10 with key (seed mod 2^32, floor(seed / 2^32)) and
 * counter (c, r, block, factor) gives words x0..x3, and
 *   rademacher: (x0 & 1 ? -1 : +1) / sqrt(rows)
 *   gaussian:   sqrt(-2 ln((x0 + 1) 2^-32)) * cos(6.283185307179586 * x1 2^-32) / sqrt(rows)
 * evaluated in float64 and rounded once to float32. `rows` is the projected dimension (k, k_in
 * or k_out), so every matrix has entries of variance 1/k as REFERENCE §4 requires.
 */
export interface ProjectionKey {
  seed: number; // integer in [0, 2^53)
  block: number; // the block's position in the trajectory layout
  factor: Factor;
  distribution: Distribution;
}

/**
 * Kronecker-factored projection of one linear layer y = W a (+ b) for n examples.
 * form 'factors': inputs is (n, tokens, dIn) and outputGrads is (n, tokens, dOut); per example
 *   out = Σ_τ (R_out δ_τ)(R_in ã_τ)ᵀ, ã_τ = [a_τ; 1] when bias, else a_τ.
 * form 'gradient': inputs is the raw per-example weight gradient (n, dOut, dIn + bias) (bias
 *   gradient as the last column) and outputGrads is unused; per example out = R_out ∇W R_inᵀ.
 * R_in is (kIn × (dIn + bias)), R_out is (kOut × dOut), keys (block, FACTOR_IN|FACTOR_OUT).
 * The (kOut × kIn) result is flattened row-major (index o * kIn + i) into
 * out[e * ldOut + offset + o * kIn + i]; other columns of out are left untouched.
 */
export interface KroneckerArgs {
  seed: number;
  block: number;
  distribution: Distribution;
  form: 'factors' | 'gradient';
  n: number;
  tokens: number;
  dIn: number;
  dOut: number;
  bias: boolean;
  kIn: number;
  kOut: number;
  inputs: Float32Array;
  outputGrads: Float32Array; // length 0 for form 'gradient'
  out: Float32Array;
  ldOut: number;
  offset: number;
}

/**
 * Dense projection: out[e * ldOut + offset + j] = Σ_c R[j, c] grads[e * d + c], R (k × d) with
 * key (block, FACTOR_DENSE). R is generated in column tiles and never held whole.
 */
export interface DenseArgs {
  seed: number;
  block: number;
  distribution: Distribution;
  n: number;
  d: number;
  k: number;
  grads: Float32Array;
  out: Float32Array;
  ldOut: number;
  offset: number;
}

/**
 * One chunk of the backward recursion (REFERENCE §3), steps walked from the chunk's last to its
 * first. Rows are K = dim wide; a propagator block b covers columns [off_b, off_b + k_b) and owns
 * a (k_b × k_b) matrix P_b stored at offset Σ_{b' < b} k_b'^2 of `propagators`.
 *
 * For step s (from steps − 1 down to 0) and each block b, with G the step's rows
 * rows[stepRows[s] .. stepRows[s+1]) restricted to the block's columns, C the curvature rows
 * likewise (C = G when curvature is absent), η = lr[s], c = decay[s]:
 *   E = diag(η w) G Pᵀ               -> embeddings, same row positions and columns as G
 *   F = C Pᵀ                          (with the P before the update; F = G Pᵀ when no curvature)
 *   P ← c P − η (diag(w_C) F)ᵀ C
 * `precision` is that of `propagators` (fp64: Float64Array, computed in float64, E rounded to
 * float32 on output). Returns −1, or the position s of the first step (in walking order) after
 * which E or P held a NaN/Inf; the walk stops there.
 */
export interface PropagateArgs {
  precision: 'fp32' | 'fp64';
  dim: number;
  blocks: Int32Array; // [off_0, k_0, off_1, k_1, ...]
  propagators: Float32Array | Float64Array;
  steps: number;
  rows: Float32Array;
  stepRows: Int32Array; // length steps + 1, prefix offsets (in rows) into `rows`
  weights: Float64Array; // w_z per row
  curvature: Float32Array | null;
  stepCurvature: Int32Array | null; // length steps + 1
  curvatureWeights: Float64Array | null; // w per curvature row
  lr: Float64Array; // η_t per step
  decay: Float64Array; // c_t = 1 − η_t λ_t per step
  embeddings: Float32Array; // (rows × dim), written
}

/** out (n × m) = embeddings (n × dim) · tests (m × dim)ᵀ. */
export interface ScoreArgs {
  n: number;
  m: number;
  dim: number;
  embeddings: Float32Array;
  tests: Float32Array;
  out: Float32Array;
}

export interface BackendInfo {
  backend: 'cuda' | 'native-cpu' | 'ts';
  /** Linear-algebra library and its configuration, e.g. "OpenBLAS 0.3.21 ... Haswell". */
  blas: string;
  threads: number;
  /** Device name for CUDA builds. */
  device?: string;
}

export interface Backend {
  info(): BackendInfo;
  /** Sets the BLAS thread count (native) — the TS backend is single-threaded and ignores it. */
  setThreads(threads: number): void;
  /** The (rows × cols) matrix of a key, generated whole: for tests and small factors only. */
  projectionMatrix(key: ProjectionKey, rows: number, cols: number): Float32Array;
  projectKronecker(args: KroneckerArgs): Promise<void>;
  projectDense(args: DenseArgs): Promise<void>;
  propagate(args: PropagateArgs): Promise<number>;
  score(args: ScoreArgs): Promise<void>;
}

/** What the compiled addon exports: the same surface, plus how it was built. */
export interface NativeAddon extends Backend {
  build: { cuda: boolean; openblas: string; compiler: string };
  /** Running CRC-32 (zlib polynomial) of `data`, as zlib.crc32(data, previous) computes it. */
  crc32(data: Uint8Array, previous?: number): number;
}
