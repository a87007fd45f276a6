// A small seeded PRNG for the reference models and the evaluation harness: xoshiro128**
// (Blackman & Vigna) over uint32 arithmetic, seeded through a splitmix32-style mixer. Every
// operation is integer arithmetic or an IEEE-754 correctly rounded float64 operation (plus one
// Math.log in normal(), which V8 computes with its fdlibm port on every platform), so a given
// seed yields the same stream on every machine. It is NOT the projection generator: projection
// entries come from the counter-based Philox in lib/backend/ts/philox.ts.

/** A seed: a non-negative safe integer, or a string (hashed). */
export type Seed = number | string;

const GOLDEN = 0x9e3779b9;
const TWO_POW_26 = 67108864;
const TWO_POW_53 = 9007199254740992;

/** murmur3's 32-bit finaliser: a bijection with good avalanche. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** FNV-1a over the string's UTF-16 code units, then finalised. */
function hashString(s: string, basis: number): number {
  let h = (0x811c9dc5 ^ basis) >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return fmix32(h);
}

/** Two 32-bit key words from a seed; rejects anything that is not an exact, portable seed. */
function seedToKey(seed: Seed): [number, number] {
  if (typeof seed === 'string') return [hashString(seed, 0x5eed), hashString(seed, 0xc0ffee)];
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`seed must be a non-negative safe integer or a string, got ${String(seed)}`);
  }
  return [seed >>> 0, Math.floor(seed / 4294967296) >>> 0];
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/**
 * Deterministic random stream. `fork(label)` derives an independent child stream from this
 * stream's key and the label only (not from how many numbers were drawn), so adding draws in
 * one place does not perturb the streams forked elsewhere.
 */
export class Rng {
  private key: [number, number];
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;
  private spareNormal: number | null = null;

  constructor(seed: Seed) {
    this.key = seedToKey(seed);
    this.reset();
  }

  /** Restarts the stream from its seed. */
  reset(): void {
    // splitmix32-style expansion of the two key words into the 128-bit state.
    let c = (this.key[0] ^ fmix32(this.key[1] ^ 0x6a09e667)) >>> 0;
    const words: number[] = [];
    for (let i = 0; i < 4; i++) {
      c = (c + GOLDEN) >>> 0;
      words.push(fmix32(c ^ Math.imul(this.key[1], i + 1)));
    }
    [this.s0, this.s1, this.s2, this.s3] = words as [number, number, number, number];
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // all-zero state is a fixed point
    this.spareNormal = null;
  }

  /** The next uniform 32-bit unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits (two uint32 draws). */
  next(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * TWO_POW_26 + lo) / TWO_POW_53;
  }

  /** Standard normal N(0, 1), Marsaglia's polar method (no trigonometry). */
  normal(): number {
    if (this.spareNormal !== null) {
      const z = this.spareNormal;
      this.spareNormal = null;
      return z;
    }
    for (;;) {
      const u = 2 * this.next() - 1;
      const v = 2 * this.next() - 1;
      const s = u * u + v * v;
      if (s > 0 && s < 1) {
        const f = Math.sqrt((-2 * Math.log(s)) / s);
        this.spareNormal = v * f;
        return u * f;
      }
    }
  }

  /** Uniform integer in [0, n), unbiased. n must be a positive safe integer. */
  int(n: number): number {
    if (!Number.isSafeInteger(n) || n <= 0) throw new RangeError(`int(n): n must be a positive safe integer, got ${n}`);
    if (n <= 4294967296) {
      // Rejection sampling on uint32: reject the top partial block so every residue is equally likely.
      const limit = 4294967296 - (4294967296 % n);
      for (;;) {
        const r = this.nextUint32();
        if (r < limit) return r % n;
      }
    }
    return Math.floor(this.next() * n); // n > 2^32: 53-bit resolution is plenty for our sizes
  }

  /** Shuffles `array` in place (Fisher–Yates) and returns it. */
  shuffle<T extends { length: number; [i: number]: unknown }>(array: T): T {
    for (let i = array.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = array[i];
      array[i] = array[j];
      array[j] = tmp;
    }
    return array;
  }

  /** A random permutation of 0..n-1. */
  permutation(n: number): Int32Array {
    const p = new Int32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    return this.shuffle(p);
  }

  /** An independent child stream, a pure function of this stream's seed and `label`. */
  fork(label: string | number): Rng {
    const text = String(label);
    const child = new Rng(0);
    child.key = [
      hashString(text, fmix32(this.key[0] ^ 0x243f6a88)),
      hashString(text, fmix32(this.key[1] ^ 0x85a308d3) ^ this.key[0]),
    ];
    child.reset();
    return child;
  }
}
