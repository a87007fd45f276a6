// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the
// counter-based generator behind every projection entry. Must match native/core/philox.h bit
// for bit: both are checked against the published known-answer vectors in test/philox.test.ts.

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** High 32 bits of the 64-bit product a·b, exactly, in float64 arithmetic. */
function mulhi(a: number, b: number): number {
  const bl = b & 0xffff;
  const bh = b >>> 16;
  const t = a * bl; // < 2^48, exact
  const u = a * bh; // < 2^48, exact
  return Math.floor((u + Math.floor(t / 65536)) / 65536) >>> 0;
}

/** Writes the four output words for counter (c0..c3) and key (k0, k1) into out. */
export function philox4x32(
  c0: number,
  c1: number,
  c2: number,
  c3: number,
  k0: number,
  k1: number,
  out: Uint32Array,
): void {
  let x0 = c0 >>> 0;
  let x1 = c1 >>> 0;
  let x2 = c2 >>> 0;
  let x3 = c3 >>> 0;
  let key0 = k0 >>> 0;
  let key1 = k1 >>> 0;
  for (let round = 0; round < 10; round++) {
    if (round > 0) {
      key0 = (key0 + W0) >>> 0;
      key1 = (key1 + W1) >>> 0;
    }
    const hi0 = mulhi(M0, x0);
    const lo0 = Math.imul(M0, x0) >>> 0;
    const hi1 = mulhi(M1, x2);
    const lo1 = Math.imul(M1, x2) >>> 0;
    x0 = (hi1 ^ x1 ^ key0) >>> 0;
    x1 = lo1;
    x2 = (hi0 ^ x3 ^ key1) >>> 0;
    x3 = lo0;
  }
  out[0] = x0;
  out[1] = x1;
  out[2] = x2;
  out[3] = x3;
}

const TWO_PI = 6.283185307179586;
const INV_2_32 = 2.3283064365386963e-10; // 2^-32

/** Splits a seed in [0, 2^53) into the two key words. */
export function seedKey(seed: number): [number, number] {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`projection seed must be an integer in [0, 2^53), got ${seed}`);
  }
  return [seed % 4294967296 >>> 0, Math.floor(seed / 4294967296) >>> 0];
}

/**
 * Fills out (rows × cols, row-major, starting at column colStart of the full matrix, with
 * `cols` columns) with the entries of the projection matrix identified by the key words.
 * This is the single formula of surface.ts's ProjectionKey.
 */
export function fillProjection(
  k0: number,
  k1: number,
  block: number,
  factor: number,
  gaussian: boolean,
  rows: number,
  colStart: number,
  cols: number,
  out: Float32Array,
): void {
  const words = new Uint32Array(4);
  const scale = 1 / Math.sqrt(rows);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) {
      philox4x32(colStart + c, r, block, factor, k0, k1, words);
      let v: number;
      if (gaussian) {
        const u1 = (words[0]! + 1) * INV_2_32;
        const u2 = words[1]! * INV_2_32;
        v = Math.sqrt(-2 * Math.log(u1)) * Math.cos(TWO_PI * u2) * scale;
      } else {
        v = words[0]! & 1 ? -scale : scale;
      }
      out[base + c] = v; // one rounding, float64 -> float32
    }
  }
}
