// Agreement metrics between an estimator's predictions and the exact values (REFERENCE §8), plus
// the two downstream benchmarks: mislabel detection and the linear datamodeling score (LDS).
// Every function is deterministic and handles ties explicitly.

function check(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  if (a.length !== b.length) throw new RangeError(`${what}: the two series have lengths ${a.length} and ${b.length}`);
}

/** Pearson correlation; NaN when either series is constant or shorter than 2. */
export function pearson(a: ArrayLike<number>, b: ArrayLike<number>): number {
  check(a, b, 'pearson');
  const n = a.length;
  if (n < 2) return NaN;
  let ma = 0;
  let mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i] as number;
    mb += b[i] as number;
  }
  ma /= n;
  mb /= n;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    const x = (a[i] as number) - ma;
    const y = (b[i] as number) - mb;
    sab += x * y;
    saa += x * x;
    sbb += y * y;
  }
  return saa > 0 && sbb > 0 ? sab / Math.sqrt(saa * sbb) : NaN;
}

/** Ranks 1..n, tied values sharing the average of their ranks. */
export function averageRanks(a: ArrayLike<number>): Float64Array {
  const n = a.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => (a[i] as number) - (a[j] as number) || i - j);
  const ranks = new Float64Array(n);
  for (let s = 0; s < n; ) {
    let e = s;
    while (e + 1 < n && a[order[e + 1] as number] === a[order[s] as number]) e++;
    const r = (s + e) / 2 + 1;
    for (let k = s; k <= e; k++) ranks[order[k] as number] = r;
    s = e + 1;
  }
  return ranks;
}

/** Spearman's ρ: Pearson correlation of the average ranks (so ties are handled exactly). */
export function spearman(a: ArrayLike<number>, b: ArrayLike<number>): number {
  check(a, b, 'spearman');
  return pearson(averageRanks(a), averageRanks(b));
}

/**
 * Kendall's τ_b = (C − D) / √((n₀ − n₁)(n₀ − n₂)), n₀ = n(n−1)/2, n₁ and n₂ the pairs tied in a and
 * in b. O(n²): fine for the few hundred points of a fidelity experiment.
 */
export function kendallTauB(a: ArrayLike<number>, b: ArrayLike<number>): number {
  check(a, b, 'kendall');
  const n = a.length;
  let concordant = 0;
  let discordant = 0;
  let tiesA = 0;
  let tiesB = 0;
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const da = Math.sign((a[i] as number) - (a[j] as number));
      const db = Math.sign((b[i] as number) - (b[j] as number));
      if (da === 0) tiesA++;
      if (db === 0) tiesB++;
      if (da !== 0 && db !== 0) {
        if (da === db) concordant++;
        else discordant++;
      }
    }
  }
  const n0 = (n * (n - 1)) / 2;
  const den = Math.sqrt((n0 - tiesA) * (n0 - tiesB));
  return den > 0 ? (concordant - discordant) / den : NaN;
}

/** Indices of the ⌈fraction·n⌉ largest |values| (ties broken by the lower index). */
function topByMagnitude(values: ArrayLike<number>, count: number): Set<number> {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((i, j) => Math.abs(values[j] as number) - Math.abs(values[i] as number) || i - j);
  return new Set(idx.slice(0, count));
}

/**
 * Top-k overlap: with k = ⌈fraction · n⌉ (at least 1), the fraction of the k points with the
 * largest true |Δ| that are also among the k largest predicted |Δ|. 1 = the estimator finds
 * exactly the most influential points; a random ranking scores about `fraction`.
 */
export function topOverlap(estimate: ArrayLike<number>, truth: ArrayLike<number>, fraction = 0.1): number {
  check(estimate, truth, 'topOverlap');
  if (!(fraction > 0 && fraction <= 1)) throw new RangeError(`fraction must be in (0, 1], got ${fraction}`);
  const n = truth.length;
  if (n === 0) return NaN;
  const k = Math.max(1, Math.ceil(fraction * n));
  const t = topByMagnitude(truth, k);
  let hit = 0;
  for (const i of topByMagnitude(estimate, k)) if (t.has(i)) hit++;
  return hit / k;
}

/** Fraction of the points with a non-zero true Δ whose prediction has the same sign (a zero prediction disagrees). */
export function signAgreement(estimate: ArrayLike<number>, truth: ArrayLike<number>): number {
  check(estimate, truth, 'signAgreement');
  let counted = 0;
  let agree = 0;
  for (let i = 0; i < truth.length; i++) {
    const t = truth[i] as number;
    if (t === 0) continue;
    counted++;
    if (Math.sign(estimate[i] as number) === Math.sign(t)) agree++;
  }
  return counted ? agree / counted : NaN;
}

/**
 * ROC AUC of `scores` for the binary `labels` (1 = positive): the probability that a random
 * positive scores above a random negative, ties counting one half (Mann–Whitney U / (n₊ n₋)).
 */
export function auc(scores: ArrayLike<number>, labels: ArrayLike<number | boolean>): number {
  if (scores.length !== labels.length) throw new RangeError(`auc: ${scores.length} scores for ${labels.length} labels`);
  const ranks = averageRanks(scores);
  let pos = 0;
  let rankSum = 0;
  for (let i = 0; i < scores.length; i++) {
    if (labels[i]) {
      pos++;
      rankSum += ranks[i] as number;
    }
  }
  const neg = scores.length - pos;
  if (pos === 0 || neg === 0) return NaN;
  return (rankSum - (pos * (pos + 1)) / 2) / (pos * neg);
}

export interface Agreement {
  spearman: number;
  pearson: number;
  kendall: number;
  /** topOverlap at 10%. */
  topOverlap: number;
  signAgreement: number;
}

/** All five agreement metrics of one estimate against the truth. */
export function agreement(estimate: ArrayLike<number>, truth: ArrayLike<number>, topFraction = 0.1): Agreement {
  return {
    spearman: spearman(estimate, truth),
    pearson: pearson(estimate, truth),
    kendall: kendallTauB(estimate, truth),
    topOverlap: topOverlap(estimate, truth, topFraction),
    signAgreement: signAgreement(estimate, truth),
  };
}

/** The mean of each metric over several series (NaNs skipped), e.g. one series per test point. */
export function meanAgreement(parts: readonly Agreement[]): Agreement {
  const keys: (keyof Agreement)[] = ['spearman', 'pearson', 'kendall', 'topOverlap', 'signAgreement'];
  const out = {} as Agreement;
  for (const k of keys) {
    const vals = parts.map((p) => p[k]).filter((v) => Number.isFinite(v));
    out[k] = vals.length ? vals.reduce((a, v) => a + v, 0) / vals.length : NaN;
  }
  return out;
}

export interface DetectionCurve {
  /** Fraction of the training set inspected (in decreasing score order) at each point. */
  inspected: number[];
  /** Fraction of the flipped labels found by then. */
  found: number[];
  /** ROC AUC of the scores for "is flipped". */
  auc: number;
}

/**
 * Mislabel detection: inspect training points from the highest score down (self-influence ranks
 * mislabelled data first) and report the fraction of flipped labels found against the fraction
 * inspected, at `points` evenly spaced fractions, plus the AUC.
 */
export function detectionCurve(scores: ArrayLike<number>, flipped: ArrayLike<number | boolean>, points = 20): DetectionCurve {
  if (scores.length !== flipped.length) throw new RangeError(`detectionCurve: ${scores.length} scores for ${flipped.length} labels`);
  const n = scores.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => (scores[j] as number) - (scores[i] as number) || i - j);
  let total = 0;
  for (let i = 0; i < n; i++) if (flipped[i]) total++;
  const inspected: number[] = [0];
  const found: number[] = [0];
  let seen = 0;
  let next = 1;
  for (let r = 0; r < n; r++) {
    if (flipped[order[r] as number]) seen++;
    if ((r + 1) / n >= next / points - 1e-12) {
      inspected.push((r + 1) / n);
      found.push(total ? seen / total : NaN);
      next++;
    }
  }
  return { inspected, found, auc: auc(scores, flipped) };
}

/** Labels with a `fraction` of them moved to a different class, chosen by a seeded stream. */
export function flipLabels(y: Int32Array, classes: number, fraction: number, next: () => number): { y: Int32Array; flipped: Uint8Array } {
  if (!(fraction >= 0 && fraction < 1)) throw new RangeError(`fraction must be in [0, 1), got ${fraction}`);
  const n = y.length;
  const out = y.slice();
  const flipped = new Uint8Array(n);
  const idx = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [idx[i], idx[j]] = [idx[j] as number, idx[i] as number];
  }
  for (const i of idx.slice(0, Math.round(fraction * n))) {
    out[i] = ((y[i] as number) + 1 + Math.floor(next() * (classes - 1))) % classes;
    flipped[i] = 1;
  }
  return { y: out, flipped };
}

/**
 * Linear datamodeling score (LDS): for M random subsets S_k (the complement removed), an
 * estimator's prediction is the sum of the removed examples' all-epoch scores, Σ_{z∉S_k} Δ̂(z),
 * and the truth is the actual change Δ_k of the target after retraining without them. LDS is the
 * Spearman correlation of the two over the M subsets.
 */
export function lds(exampleScores: ArrayLike<number>, removedSets: readonly (readonly number[])[], actual: ArrayLike<number>): number {
  if (removedSets.length !== actual.length) throw new RangeError(`lds: ${removedSets.length} subsets but ${actual.length} outcomes`);
  const predicted = removedSets.map((s) => s.reduce((a, id) => a + (exampleScores[id] as number), 0));
  return spearman(predicted, actual);
}
