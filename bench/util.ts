// Small helpers every benchmark suite shares.

/**
 * Serialises benchmark operations: benny calls a case function a couple of times while it works
 * out whether the case is async, without awaiting the first call, and probes every case of a
 * suite as it is built. Chaining every operation of every case behind the previous one means two
 * operations never overlap (they share buffers and the two cores, and overlap would skew the
 * timing); those first calls simply become warm-up runs.
 */
let last: Promise<unknown> = Promise.resolve();
export function serial(op: () => Promise<unknown>): () => Promise<void> {
  return () => {
    const p = last.then(op);
    last = p.catch(() => undefined);
    return p.then(() => undefined);
  };
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

/** `count` batches of seeded rows in ±scale/2 (a fixed LCG, so every run records the same data). */
export function rowPool(count: number, length: number, scale = 0.1): Float32Array[] {
  const pool: Float32Array[] = [];
  let s = 12345;
  for (let p = 0; p < count; p++) {
    const rows = new Float32Array(length);
    for (let i = 0; i < rows.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      rows[i] = (s / 4294967296 - 0.5) * scale;
    }
    pool.push(rows);
  }
  return pool;
}
