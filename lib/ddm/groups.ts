// Groups of training examples for the distilled datamodel (REFERENCE §7): the unit that DDM,
// the grouped DVEmb and TracIn scores and the retraining ground truth all remove together.
//
// Two ways to get them:
//   - user-given: one group id per example (groupsFromIds) or one member list per group
//     (groupsFromMembers); every example must be in exactly one group and no group may be empty;
//   - per class, then k-means inside each class (classKMeansGroups): K groups in all, split across
//     the classes by largest-remainder apportionment of K in proportion to the class sizes, with at
//     least one group per class present and never more groups than a class has examples. Inside a
//     class, seeded k-means++ (D² sampling) then Lloyd iterations on the features; an emptied
//     cluster takes the point farthest from its centre. Groups are numbered class by class
//     (ascending class), and inside a class by their smallest member index, so the numbering does
//     not depend on the order k-means++ happened to pick centres in.
// Everything is deterministic: a fixed seed gives the same groups on every machine.

import { DvembError } from '../errors.js';
import { Rng, type Seed } from '../eval/rng.js';

export interface Groups {
  /** Number of groups K. */
  K: number;
  /** Number of training examples n. */
  n: number;
  /** Group id of each training example (length n, values 0..K−1). */
  assignment: Int32Array;
  /** Member example indices of each group, ascending. */
  members: Int32Array[];
  /** |D_k| per group. */
  sizes: Int32Array;
  /** How the groups were made. */
  method: 'user' | 'class-kmeans';
}

function fromAssignment(assignment: Int32Array, K: number, method: Groups['method']): Groups {
  const n = assignment.length;
  const sizes = new Int32Array(K);
  for (let i = 0; i < n; i++) sizes[assignment[i] as number]! += 1;
  for (let k = 0; k < K; k++) {
    if (sizes[k] === 0) {
      throw new DvembError('BAD_INPUT', `group ${k} is empty (no training example is assigned to it; ${K} groups, ${n} examples)`, 'renumber the groups 0..K−1 without gaps, or drop the empty group');
    }
  }
  const members = Array.from({ length: K }, (_, k) => new Int32Array(sizes[k] as number));
  const fill = new Int32Array(K);
  for (let i = 0; i < n; i++) {
    const k = assignment[i] as number;
    (members[k] as Int32Array)[fill[k]!++] = i;
  }
  return { K, n, assignment, members, sizes, method };
}

/**
 * Groups from one id per example. `K` defaults to max(id) + 1; an id in 0..K−1 that no example
 * carries is an empty group, an error.
 */
export function groupsFromIds(ids: ArrayLike<number>, options: { K?: number } = {}): Groups {
  const n = ids?.length;
  if (!Number.isSafeInteger(n) || n < 1) throw new DvembError('BAD_INPUT', 'group ids: give one group id per training example (at least one example)');
  let max = -1;
  const assignment = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const g = ids[i] as number;
    if (!Number.isSafeInteger(g) || g < 0) {
      throw new DvembError('BAD_INPUT', `group id of example ${i} is ${String(g)}`, 'group ids must be non-negative integers 0..K−1');
    }
    if (options.K !== undefined && g >= options.K) {
      throw new DvembError('UNKNOWN_ID', `example ${i} is in group ${g}, but there are only ${options.K} groups (0..${options.K - 1})`);
    }
    assignment[i] = g;
    max = Math.max(max, g);
  }
  const K = options.K ?? max + 1;
  if (!Number.isSafeInteger(K) || K < 1) throw new DvembError('BAD_INPUT', `the number of groups must be a positive integer, got ${String(options.K)}`);
  return fromAssignment(assignment, K, 'user');
}

/** Groups from one member list per group; every example 0..n−1 must appear in exactly one list. */
export function groupsFromMembers(lists: readonly ArrayLike<number>[], n: number): Groups {
  if (!Number.isSafeInteger(n) || n < 1) throw new DvembError('BAD_INPUT', `n must be a positive integer, got ${String(n)}`);
  if (!Array.isArray(lists) || lists.length === 0) throw new DvembError('BAD_INPUT', 'give at least one group');
  const assignment = new Int32Array(n).fill(-1);
  lists.forEach((list, k) => {
    if (list.length === 0) throw new DvembError('BAD_INPUT', `group ${k} is empty`, 'every group needs at least one member; drop it or move examples into it');
    for (let j = 0; j < list.length; j++) {
      const i = list[j] as number;
      if (!Number.isSafeInteger(i) || i < 0 || i >= n) throw new DvembError('UNKNOWN_ID', `group ${k} lists example ${String(i)}, outside 0..${n - 1}`);
      if (assignment[i] !== -1) {
        throw new DvembError('BAD_INPUT', `example ${i} is in group ${assignment[i]} and in group ${k}`, 'every example must be in exactly one group');
      }
      assignment[i] = k;
    }
  });
  const missing = assignment.indexOf(-1);
  if (missing >= 0) {
    const count = assignment.reduce((a, g) => a + (g === -1 ? 1 : 0), 0);
    throw new DvembError('BAD_INPUT', `example ${missing} is in no group (${count} of ${n} examples are unassigned)`, 'every example must be in exactly one group');
  }
  return fromAssignment(assignment, lists.length, 'user');
}

/**
 * How many of the K groups each class gets: largest-remainder apportionment of K in proportion to
 * the class sizes, at least 1 for every class that has examples (0 for absent classes) and at most
 * the class size. Ties go to the lower class index.
 */
export function splitAcrossClasses(classCounts: ArrayLike<number>, K: number): Int32Array {
  const C = classCounts.length;
  const present: number[] = [];
  let n = 0;
  for (let c = 0; c < C; c++) {
    if ((classCounts[c] as number) > 0) present.push(c);
    n += classCounts[c] as number;
  }
  if (!Number.isSafeInteger(K) || K < present.length) {
    throw new DvembError('BAD_INPUT', `K = ${String(K)} groups cannot cover the ${present.length} classes present (one group at least per class)`, `ask for at least ${present.length} groups`);
  }
  if (K > n) throw new DvembError('BAD_INPUT', `K = ${K} groups for only ${n} examples would leave groups empty`, `ask for at most ${n} groups`);
  const quota = Array.from({ length: C }, (_, c) => (K * (classCounts[c] as number)) / n);
  const out = new Int32Array(C);
  for (const c of present) out[c] = Math.min(classCounts[c] as number, Math.max(1, Math.floor(quota[c] as number)));
  let total = out.reduce((a, b) => a + b, 0);
  while (total < K) {
    let best = -1;
    for (const c of present) {
      if ((out[c] as number) >= (classCounts[c] as number)) continue;
      if (best < 0 || (quota[c] as number) - (out[c] as number) > (quota[best] as number) - (out[best] as number)) best = c;
    }
    out[best]! += 1;
    total++;
  }
  while (total > K) {
    // Only possible through the "at least one" floor: take from the most over-served class.
    let worst = -1;
    for (const c of present) {
      if ((out[c] as number) <= 1) continue;
      if (worst < 0 || (quota[c] as number) - (out[c] as number) < (quota[worst] as number) - (out[worst] as number)) worst = c;
    }
    out[worst]! -= 1;
    total--;
  }
  return out;
}

function sqDist(x: Float64Array, d: number, i: number, centre: Float64Array, k: number): number {
  let s = 0;
  for (let j = 0; j < d; j++) {
    const v = (x[i * d + j] as number) - (centre[k * d + j] as number);
    s += v * v;
  }
  return s;
}

/**
 * k-means on the rows `rows` of x (n × d): k-means++ seeding with `rng`, then Lloyd iterations
 * until no assignment changes (or maxIterations). Returns the cluster (0..k−1) of each listed row;
 * no cluster is empty. Requires 1 ≤ k ≤ rows.length.
 */
export function kmeans(x: Float64Array, d: number, rows: ArrayLike<number>, k: number, rng: Rng, maxIterations = 100): Int32Array {
  const m = rows.length;
  if (!Number.isSafeInteger(k) || k < 1 || k > m) throw new DvembError('BAD_INPUT', `k-means: k = ${String(k)} for ${m} points`);
  const centre = new Float64Array(k * d);
  const setCentre = (c: number, row: number) => centre.set(x.subarray(row * d, row * d + d), c * d);
  // k-means++: the first centre uniformly, each next one with probability ∝ D² to the nearest centre.
  setCentre(0, rows[rng.int(m)] as number);
  const dist = new Float64Array(m).fill(Infinity);
  for (let c = 1; c < k; c++) {
    let total = 0;
    for (let i = 0; i < m; i++) {
      dist[i] = Math.min(dist[i] as number, sqDist(x, d, rows[i] as number, centre, c - 1));
      total += dist[i] as number;
    }
    let pick = 0;
    if (total > 0) {
      let u = rng.next() * total;
      pick = m - 1;
      for (let i = 0; i < m; i++) {
        u -= dist[i] as number;
        if (u < 0) {
          pick = i;
          break;
        }
      }
    } else {
      pick = rng.int(m); // all points coincide with the centres so far
    }
    setCentre(c, rows[pick] as number);
  }
  const assign = new Int32Array(m).fill(-1);
  const count = new Int32Array(k);
  for (let iter = 0; iter < maxIterations; iter++) {
    let changed = false;
    for (let i = 0; i < m; i++) {
      let best = 0;
      let bestD = Infinity;
      for (let c = 0; c < k; c++) {
        const dd = sqDist(x, d, rows[i] as number, centre, c);
        if (dd < bestD) {
          bestD = dd;
          best = c;
        }
      }
      dist[i] = bestD;
      if (assign[i] !== best) {
        assign[i] = best;
        changed = true;
      }
    }
    // An empty cluster takes the point farthest from its own centre (lowest index on ties).
    count.fill(0);
    for (let i = 0; i < m; i++) count[assign[i] as number]! += 1;
    for (let c = 0; c < k; c++) {
      if (count[c] !== 0) continue;
      let far = -1;
      for (let i = 0; i < m; i++) if ((count[assign[i] as number] as number) > 1 && (far < 0 || (dist[i] as number) > (dist[far] as number))) far = i;
      count[assign[far] as number]! -= 1;
      assign[far] = c;
      count[c] = 1;
      dist[far] = 0;
      changed = true;
    }
    if (!changed) break;
    centre.fill(0);
    for (let i = 0; i < m; i++) {
      const c = assign[i] as number;
      const r = rows[i] as number;
      for (let j = 0; j < d; j++) centre[c * d + j]! += x[r * d + j] as number;
    }
    for (let c = 0; c < k; c++) for (let j = 0; j < d; j++) centre[c * d + j]! /= count[c] as number;
  }
  return assign;
}

export interface ClassKMeansOptions {
  /** Seed of k-means++ (class c uses Rng(seed).fork(`class${c}`)); default 0. */
  seed?: Seed;
  maxIterations?: number;
}

/** K groups: per class, then k-means inside each class (see the file comment for the rules). */
export function classKMeansGroups(x: Float64Array, y: ArrayLike<number>, n: number, d: number, K: number, options: ClassKMeansOptions = {}): Groups {
  if (!Number.isSafeInteger(n) || n < 1 || x.length !== n * d || y.length !== n) {
    throw new DvembError('SHAPE_MISMATCH', `class k-means: x has ${x.length} values and y ${y.length} labels for n = ${n}, d = ${d}`);
  }
  let classes = 0;
  for (let i = 0; i < n; i++) {
    const c = y[i] as number;
    if (!Number.isSafeInteger(c) || c < 0) throw new DvembError('BAD_INPUT', `label of example ${i} is ${String(c)}`, 'labels must be non-negative integers');
    classes = Math.max(classes, c + 1);
  }
  const byClass: number[][] = Array.from({ length: classes }, () => []);
  for (let i = 0; i < n; i++) (byClass[y[i] as number] as number[]).push(i);
  const perClass = splitAcrossClasses(byClass.map((r) => r.length), K);
  const root = new Rng(options.seed ?? 0);
  const assignment = new Int32Array(n);
  let next = 0;
  byClass.forEach((rows, c) => {
    const k = perClass[c] as number;
    if (k === 0) return;
    const local = kmeans(x, d, rows, k, root.fork(`class${c}`), options.maxIterations ?? 100);
    // Renumber clusters by their smallest member (rows are ascending, so first appearance).
    const order = new Int32Array(k).fill(-1);
    let seen = 0;
    for (let i = 0; i < rows.length; i++) if (order[local[i] as number] === -1) order[local[i] as number] = seen++;
    for (let i = 0; i < rows.length; i++) assignment[rows[i] as number] = next + (order[local[i] as number] as number);
    next += k;
  });
  return fromAssignment(assignment, K, 'class-kmeans');
}

/** Class histogram of each group (K × classes, row-major) and each group's majority class. */
export function groupClasses(groups: Groups, y: ArrayLike<number>, classes: number): { histogram: Int32Array; majority: Int32Array } {
  if (y.length !== groups.n) throw new DvembError('SHAPE_MISMATCH', `${y.length} labels for ${groups.n} grouped examples`);
  const histogram = new Int32Array(groups.K * classes);
  for (let i = 0; i < groups.n; i++) {
    const c = y[i] as number;
    if (!Number.isSafeInteger(c) || c < 0 || c >= classes) throw new DvembError('BAD_INPUT', `label of example ${i} is ${String(c)}, not a class in 0..${classes - 1}`);
    histogram[(groups.assignment[i] as number) * classes + c]! += 1;
  }
  const majority = new Int32Array(groups.K);
  for (let k = 0; k < groups.K; k++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if ((histogram[k * classes + c] as number) > (histogram[k * classes + best] as number)) best = c;
    majority[k] = best;
  }
  return { histogram, majority };
}
