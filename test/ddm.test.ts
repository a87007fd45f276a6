// Distilled datamodels (lib/ddm): the exact input gradient of the gradient-matching loss against
// central finite differences, groups and their validation, ridge regression against closed forms,
// the sign convention on a tiny problem checked against real retraining, and bad input.
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import {
  GradientMatcher,
  OnlineEvaluator,
  attribute,
  checkSynsetsFit,
  classKMeansGroups,
  distill,
  evaluateMasks,
  groupClasses,
  groupGradients,
  groupsFromIds,
  groupsFromMembers,
  loadSynsets,
  masksFrom,
  randomMasks,
  referenceRun,
  removedLists,
  retrainMasks,
  reverseSchedule,
  ridge,
  saveAttribution,
  saveSynsets,
  splitAcrossClasses,
  stepsFromTrajectory,
  synsetLabels,
  type Groups,
} from '../lib/ddm/index.js';
import { cmdEvalDdm, runDdmEval } from '../lib/cli/ddm.js';
import { DvembError } from '../lib/errors.js';
import { MLP } from '../lib/eval/mlp.js';
import { Rng } from '../lib/eval/rng.js';
import { Trainer } from '../lib/eval/trainer.js';
import { npyView, readNpyHeaderFile } from '../lib/trajectory/npy.js';
import { gaussian, rng, tempDir } from './helpers.js';

function randomProblem(widths: number[], n: number, K: number, seed: number) {
  const r = rng(seed);
  const d = widths[0]!;
  const C = widths[widths.length - 1]!;
  const model = new MLP({ widths, activation: 'tanh', seed });
  const x = Float64Array.from({ length: n * d }, () => gaussian(r));
  const y = Int32Array.from({ length: n }, () => Math.floor(r() * C));
  const groups = groupsFromIds(Int32Array.from({ length: n }, (_, i) => i % K));
  const checkpoints = [1, 2].map((step) => ({ step, theta: Float64Array.from({ length: model.numParams }, () => 0.6 * gaussian(r)) }));
  const targets = checkpoints.map((c) => {
    const m = model.clone();
    m.setParameters(c.theta);
    return groupGradients(m, { x, y, n }, groups);
  });
  return { model, x, y, n, groups, checkpoints, targets, r, d, C };
}

function sum(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]!;
  return s;
}

function expectCode(fn: () => unknown, code: string, message?: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(DvembError);
    expect((err as DvembError).code).toBe(code);
    if (message) expect((err as Error).message).toMatch(message);
    return;
  }
  throw new Error(`expected a DvembError ${code}`);
}

describe('gradient matching: exact ∂D/∂x', () => {
  for (const distance of ['cosine', 'squared'] as const) {
    for (const widths of [[5, 4, 3, 3], [4, 3]]) {
      test(`${distance}, widths ${widths.join('-')}: matches central finite differences`, () => {
        const p = randomProblem(widths, 12, 3, 7);
        const matcher = new GradientMatcher(p.model, p.checkpoints, p.targets, 3, distance);
        const rows = 6;
        const sx = Float64Array.from({ length: rows * p.d }, () => gaussian(p.r));
        const sy = Int32Array.from({ length: rows }, (_, i) => i % p.C);
        const rowGroup = Int32Array.from([0, 0, 1, 1, 2, 2]);
        const rowWeight = Float64Array.from([2, 2, 1.5, 1.5, 3, 3]);
        const { gradX, loss } = matcher.evaluate(sx, sy, rowGroup, rowWeight);
        expect(loss.every((v) => Number.isFinite(v) && v >= 0)).toBe(true);
        const h = 1e-5;
        const fd = new Float64Array(sx.length);
        for (let j = 0; j < sx.length; j++) {
          const up = sx.slice();
          const down = sx.slice();
          up[j]! += h;
          down[j]! -= h;
          fd[j] = (sum(matcher.evaluate(up, sy, rowGroup, rowWeight).loss) - sum(matcher.evaluate(down, sy, rowGroup, rowWeight).loss)) / (2 * h);
        }
        let num = 0;
        let den = 0;
        for (let j = 0; j < fd.length; j++) {
          num += (gradX[j]! - fd[j]!) ** 2;
          den += fd[j]! ** 2;
        }
        expect(Math.sqrt(den)).toBeGreaterThan(1e-3);
        expect(Math.sqrt(num / den)).toBeLessThan(1e-6);
      });
    }
  }

  test('the synthetic gradient is Σ weight · ∇ℓ, as MLP.gradient computes it', () => {
    const p = randomProblem([5, 4, 3], 9, 3, 3);
    const matcher = new GradientMatcher(p.model, p.checkpoints, p.targets, 3, 'cosine');
    const sx = Float64Array.from({ length: 6 * p.d }, () => gaussian(p.r));
    const sy = Int32Array.from([0, 1, 2, 0, 1, 2]);
    const rowGroup = Int32Array.from([0, 0, 1, 1, 2, 2]);
    const w = Float64Array.from([1, 2, 3, 4, 5, 6]);
    const g = matcher.synsetGradients(1, sx, sy, rowGroup, w);
    const ref = p.model.clone();
    ref.setParameters(p.checkpoints[1]!.theta);
    const P = p.model.numParams;
    for (let k = 0; k < 3; k++) {
      const rows = [2 * k, 2 * k + 1];
      const expected = ref.gradient(sx.slice(rows[0]! * p.d, (rows[1]! + 1) * p.d), [sy[rows[0]!]!, sy[rows[1]!]!], 2, [w[rows[0]!]!, w[rows[1]!]!]);
      for (let j = 0; j < P; j++) expect(g[k * P + j]).toBeCloseTo(expected[j]!, 12);
    }
  });

  test('groupGradients sums the members’ per-example gradients', () => {
    const p = randomProblem([4, 3, 2], 10, 3, 5);
    const G = groupGradients(p.model, { x: p.x, y: p.y, n: p.n }, p.groups);
    const rows = p.model.perExampleGradients(p.x, p.y, p.n);
    const P = p.model.numParams;
    for (let k = 0; k < 3; k++) {
      for (let j = 0; j < P; j++) {
        let s = 0;
        for (const i of p.groups.members[k]!) s += rows[i * P + j]!;
        expect(G[k * P + j]).toBeCloseTo(s, 12);
      }
    }
  });

  test('distillation lowers the matching loss and is seeded', () => {
    const p = randomProblem([4, 5, 3], 30, 3, 11);
    const opts = { perGroup: 2, iterations: 40, lr: 0.05, seed: 1 };
    const a = distill({ model: p.model, train: { x: p.x, y: p.y, n: p.n }, checkpoints: p.checkpoints, lr: [0.1, 0.1] }, p.groups, opts);
    const b = distill({ model: p.model, train: { x: p.x, y: p.y, n: p.n }, checkpoints: p.checkpoints, lr: [0.1, 0.1] }, p.groups, opts);
    expect(Array.from(a.x)).toEqual(Array.from(b.x));
    expect(sum(a.finalLoss)).toBeLessThan(sum(a.initialLoss));
    expect(a.widths).toEqual([4, 5, 3]);
  });

  test('synset labels: largest-remainder apportionment, majority first', () => {
    expect(Array.from(synsetLabels([0, 10, 0], 3))).toEqual([1, 1, 1]);
    expect(Array.from(synsetLabels([3, 6, 1], 2))).toEqual([1, 0]);
    expect(Array.from(synsetLabels([5, 5], 1))).toEqual([0]);
  });
});

describe('groups', () => {
  function blobs(n: number, seed: number) {
    const r = rng(seed);
    const x = new Float64Array(n * 2);
    const y = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      y[i] = i % 3;
      x[2 * i] = (i % 3) * 10 + (r() < 0.5 ? -3 : 3) + 0.3 * gaussian(r);
      x[2 * i + 1] = 0.3 * gaussian(r);
    }
    return { x, y };
  }

  test('class k-means is deterministic, class-pure, and covers every example once', () => {
    const { x, y } = blobs(90, 2);
    const a = classKMeansGroups(x, y, 90, 2, 6, { seed: 4 });
    const b = classKMeansGroups(x, y, 90, 2, 6, { seed: 4 });
    expect(Array.from(a.assignment)).toEqual(Array.from(b.assignment));
    expect(a.K).toBe(6);
    expect(sum(a.sizes)).toBe(90);
    const { histogram } = groupClasses(a, y, 3);
    for (let k = 0; k < 6; k++) expect(Array.from(histogram.subarray(3 * k, 3 * k + 3)).filter((v) => v > 0).length).toBe(1);
    // Two clear blobs per class: each k-means group is one blob (all x on one side of the class centre).
    for (let k = 0; k < 6; k++) {
      const members = Array.from(a.members[k]!);
      const c = y[members[0]!]! * 10;
      const sides = new Set(members.map((i) => Math.sign(x[2 * i]! - c)));
      expect(sides.size).toBe(1);
    }
  });

  test('K is split across classes in proportion, at least one each', () => {
    expect(Array.from(splitAcrossClasses([50, 30, 20], 10))).toEqual([5, 3, 2]);
    expect(Array.from(splitAcrossClasses([90, 5, 5], 4))).toEqual([2, 1, 1]);
    expect(Array.from(splitAcrossClasses([10, 0, 10], 3))).toEqual([2, 0, 1]);
    expect(sum(splitAcrossClasses([7, 11, 13, 2], 9))).toBe(9);
    expectCode(() => splitAcrossClasses([5, 5, 5], 2), 'BAD_INPUT', /cannot cover the 3 classes/);
  });

  test('user groups: an empty group, a duplicate, a missing example, a bad id are clear errors', () => {
    expectCode(() => groupsFromIds([0, 2, 2, 0]), 'BAD_INPUT', /group 1 is empty/);
    expectCode(() => groupsFromIds([0, 1], { K: 3 }), 'BAD_INPUT', /group 2 is empty/);
    expectCode(() => groupsFromIds([0, -1]), 'BAD_INPUT', /example 1/);
    expectCode(() => groupsFromIds([0, 5], { K: 2 }), 'UNKNOWN_ID', /group 5/);
    expectCode(() => groupsFromMembers([[0, 1], []], 2), 'BAD_INPUT', /group 1 is empty/);
    expectCode(() => groupsFromMembers([[0, 1], [1, 2]], 3), 'BAD_INPUT', /example 1 is in group 0 and in group 1/);
    expectCode(() => groupsFromMembers([[0], [2]], 3), 'BAD_INPUT', /example 1 is in no group/);
    const g = groupsFromMembers([[2, 0], [1]], 3);
    expect(Array.from(g.assignment)).toEqual([0, 1, 0]);
    expect(Array.from(g.members[0]!)).toEqual([0, 2]);
  });
});

describe('ridge regression', () => {
  test('λ = 0 recovers an exact linear model', () => {
    const r = rng(9);
    const M = 30;
    const K = 4;
    const T = 2;
    const W = [1.5, -2, 0.25, 3, -1, 0.5, 2, -0.75];
    const b = [0.3, -0.2];
    const X = Uint8Array.from({ length: M * K }, () => (r() < 0.5 ? 1 : 0));
    const Y = new Float64Array(M * T);
    for (let i = 0; i < M; i++) for (let j = 0; j < T; j++) Y[i * T + j] = b[j]! + [0, 1, 2, 3].reduce((s, k) => s + X[i * K + k]! * W[k * T + j]!, 0);
    const fit = ridge(X, Y, M, K, T, { lambda: 0 });
    W.forEach((v, i) => expect(fit.W[i]).toBeCloseTo(v, 10));
    b.forEach((v, j) => expect(fit.b[j]).toBeCloseTo(v, 10));
  });

  test('λ > 0 equals the closed form (X_cᵀX_c + λI)⁻¹ X_cᵀ y_c on a 2-feature case', () => {
    const X = [1, 0, 0, 1, 1, 1, 0, 0, 1, 0];
    const y = [2, -1, 0.5, 0, 3];
    const lambda = 0.7;
    const fit = ridge(X, y, 5, 2, 1, { lambda });
    // Independent closed form with the 2×2 inverse written out.
    const x1 = [1, 0, 1, 0, 1];
    const x2 = [0, 1, 1, 0, 0];
    const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
    const c1 = x1.map((v) => v - mean(x1));
    const c2 = x2.map((v) => v - mean(x2));
    const cy = y.map((v) => v - mean(y));
    const dot = (a: number[], b2: number[]) => a.reduce((s, v, i) => s + v * b2[i]!, 0);
    const a11 = dot(c1, c1) + lambda;
    const a12 = dot(c1, c2);
    const a22 = dot(c2, c2) + lambda;
    const r1 = dot(c1, cy);
    const r2 = dot(c2, cy);
    const det = a11 * a22 - a12 * a12;
    const w1 = (a22 * r1 - a12 * r2) / det;
    const w2 = (a11 * r2 - a12 * r1) / det;
    expect(fit.W[0]).toBeCloseTo(w1, 12);
    expect(fit.W[1]).toBeCloseTo(w2, 12);
    expect(fit.b[0]).toBeCloseTo(mean(y) - w1 * mean(x1) - w2 * mean(x2), 12);
    expect(fit.lambda).toBe(lambda);
  });

  test('a group that never varies is singular without λ', () => {
    expectCode(() => ridge([1, 0, 1, 1, 1, 0], [1, 2, 3], 3, 2, 1, { lambda: 0 }), 'BAD_INPUT', /singular at group 0/);
  });
});

describe('online stage', () => {
  test('reverse schedule: per-segment step mass / n, last segment first', () => {
    const lr = [1, 1, 2, 2, 4, 4];
    const ws = [1, 1, 1, 1, 0.5, 0.5];
    const s = reverseSchedule(lr, ws, [0, 2, 4, 6], 10, { scale: 1 });
    expect(Array.from(s.sizes)).toEqual([0.4, 0.4, 0.2]);
    expect(s.segments).toEqual([
      { from: 4, to: 6 },
      { from: 2, to: 4 },
      { from: 0, to: 2 },
    ]);
    expect(Array.from(reverseSchedule(lr, ws, [2, 4, 6], 10, { scale: 0.5, steps: 2 }).sizes)).toEqual([0.2, 0.2]);
  });

  test('masks: lists ↔ rows, and unknown groups or wrong widths are errors', () => {
    const { masks, count } = masksFrom([[0, 2], [], [1]], 3);
    expect(count).toBe(3);
    expect(Array.from(masks)).toEqual([1, 0, 1, 0, 0, 0, 0, 1, 0]);
    expect(removedLists(masks, 3)).toEqual([[0, 2], [], [1]]);
    expectCode(() => masksFrom([[0, 3]], 3), 'UNKNOWN_ID', /removes group 3, but there are only 3 groups/);
    expectCode(() => masksFrom(new Uint8Array(5), 3), 'SHAPE_MISMATCH');
    expectCode(() => masksFrom(Uint8Array.from([0, 2, 1]), 3), 'BAD_INPUT');
    const r = randomMasks(4, 50, 0.5, 1);
    expect(Array.from(r)).toEqual(Array.from(randomMasks(4, 50, 0.5, 1)));
    expect(r.length).toBe(200);
  });

  test('per-group displacements: a mask moves θ_T by the sum of its removed groups’ D_k', () => {
    const model = new MLP({ widths: [2, 2], seed: 0 });
    const P = model.numParams;
    const D = Float64Array.from({ length: 3 * P }, (_, i) => 0.01 * (i + 1));
    const ev = new OnlineEvaluator(model, { displacements: D, K: 3 }, { x: new Float64Array(2), y: [0], n: 1 });
    const theta = ev.reversedParameters([1, 0, 1]);
    const base = model.parameters();
    for (let j = 0; j < P; j++) expect(theta[j]).toBeCloseTo(base[j]! + D[j]! + D[2 * P + j]!, 14);
    expectCode(() => ev.evaluate([1, 0]), 'SHAPE_MISMATCH');
  });
});

describe('end to end on a tiny problem: sign convention, files, bad input', () => {
  // Two classes in 2-D; class 0 has two well-separated clusters (left, far right), class 1 sits
  // in the middle. The target is a class-0 point in the LEFT cluster: removing the left group
  // takes away everything that taught the model "left is class 0", so its loss must rise.
  const r = rng(21);
  const n = 96;
  const x = new Float64Array(n * 2);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const kind = i % 3; // 0: class 0 left, 1: class 0 right, 2: class 1 middle
    y[i] = kind === 2 ? 1 : 0;
    x[2 * i] = (kind === 0 ? -3 : kind === 1 ? 3 : 0) + 0.5 * gaussian(r);
    x[2 * i + 1] = (kind === 2 ? 1 : -1) + 0.5 * gaussian(r);
  }
  const trainer = new Trainer({
    widths: [2, 6, 2],
    activation: 'tanh',
    initSeed: 3,
    data: { x, y, n, d: 2 },
    batchSize: 8,
    epochs: 6,
    orderSeed: 5,
    schedule: { kind: 'constant', lr: 0.5 },
    checkpointEvery: 12,
  });
  const targets = { x: Float64Array.from([-3, -1, 0, 1]), y: [0, 1], n: 2 };

  test('W > 0 for the group whose removal raises the target loss, confirmed by retraining', async () => {
    const trajectory = join(tempDir('dvemb-ddm-traj-'), 'trajectory');
    const trun = await trainer.train({ record: [{ dir: trajectory, blocks: 'kronecker', kIn: 3, kOut: 2 }] });
    const run = referenceRun(trainer, trun);
    // The step sizes a recorded trajectory gives are the trainer's own.
    const steps = await stepsFromTrajectory(trajectory);
    expect(Array.from(steps.lr)).toEqual(Array.from(run.lr));
    Array.from(steps.weightSum).forEach((v, t) => expect(v).toBeCloseTo(run.weightSum![t]!, 12));
    const groups: Groups = classKMeansGroups(x, y, n, 2, 3, { seed: 0 });
    const left = groups.assignment[0]!; // example 0 is a left class-0 point
    const synsets = distill(run, groups, { perGroup: 2, iterations: 60, lr: 0.05 });
    const result = attribute(run, synsets, targets, { count: 200, removeProbability: 0.4, seed: 1 });
    const T = 2;
    expect(result.W[left * T + 0]).toBeGreaterThan(0);
    // Left is the most helpful group for the target; the class-1 group for the class-1 target.
    for (let k = 0; k < 3; k++) if (k !== left) expect(result.W[left * T]).toBeGreaterThan(result.W[k * T]!);
    const middle = groups.assignment[2]!; // example 2 is a class-1 point
    for (let k = 0; k < 3; k++) if (k !== middle) expect(result.W[middle * T + 1]).toBeGreaterThan(result.W[k * T + 1]!);
    // Ground truth: retraining without the left group raises the target's loss.
    const mask = new Uint8Array(3);
    mask[left] = 1;
    const truth = retrainMasks(trainer, groups, mask, targets);
    expect(truth.outputs[0]).toBeGreaterThan(truth.baseline[0]!);

    // Files: attribution.npy (float32 K × T), groups.npy (int64), groups.json.
    const dir = tempDir('dvemb-ddm-');
    const files = saveAttribution(dir, result, groups, y, 2);
    const h = readNpyHeaderFile(files.attribution);
    expect(h.dtype).toBe('<f4');
    expect(h.shape).toEqual([3, 2]);
    const W = npyView(readFileSync(files.attribution), h) as Float32Array;
    expect(W[left * T]).toBeCloseTo(result.W[left * T]!, 5);
    const gh = readNpyHeaderFile(files.groups);
    expect(gh.shape).toEqual([n]);
    expect(Number((npyView(readFileSync(files.groups), gh) as BigInt64Array)[0])).toBe(left);
    const table = JSON.parse(readFileSync(files.table, 'utf8')) as { sizes: number[]; labels: number[] };
    expect(table.sizes.reduce((a, b) => a + b, 0)).toBe(n);
    expect(table.labels[left]).toBe(0);

    // Synsets round-trip and refuse another model shape.
    saveSynsets(join(dir, 'syn'), synsets);
    const back = loadSynsets(join(dir, 'syn'), run.model);
    expect(Array.from(back.x)).toEqual(Array.from(synsets.x));
    const other = new MLP({ widths: [2, 7, 2], activation: 'tanh' });
    expectCode(() => loadSynsets(join(dir, 'syn'), other), 'SHAPE_MISMATCH', /distilled for an MLP 2-6-2 \(tanh\), but the model is 2-7-2/);
    expectCode(() => checkSynsetsFit(synsets, new MLP({ widths: [2, 6, 2], activation: 'relu' })), 'SHAPE_MISMATCH');
    expectCode(() => attribute({ ...run, model: other }, synsets, targets), 'SHAPE_MISMATCH');

    // A mask over unknown groups.
    expectCode(() => evaluateMasks(run, synsets, targets, [[0, 7]]), 'UNKNOWN_ID', /group 7/);
    expectCode(() => evaluateMasks(run, synsets, targets, Uint8Array.from([1, 0])), 'SHAPE_MISMATCH');
    // Groups for another training set.
    expectCode(() => distill(run, groupsFromIds([0, 1, 0])), 'SHAPE_MISMATCH');
    // No checkpoint after step 0.
    expectCode(() => distill({ ...run, checkpoints: run.checkpoints.slice(0, 1) }, groups), 'BAD_INPUT', /checkpoint after step 0/);
  });

  test('k-means in the tiny problem is seeded: another seed still covers everything', () => {
    const g = classKMeansGroups(x, y, n, 2, 3, { seed: 99 });
    expect(sum(g.sizes)).toBe(n);
    expect(new Rng(0).int(5)).toBe(new Rng(0).int(5));
  });
});

describe('dvemb eval --ddm: arguments and the output directory', () => {
  test('a bad --masks is a usage error (node parseArgs code), before any work', async () => {
    await expect(cmdEvalDdm(['--ddm', '--masks', '0'])).rejects.toMatchObject({ code: 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' });
    await expect(cmdEvalDdm(['--ddm', '--bogus'])).rejects.toMatchObject({ code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' });
  });

  test('never deletes a trajectory/ it did not write', async () => {
    const dir = tempDir('dvemb-ddm-out-');
    mkdirSync(join(dir, 'trajectory'));
    await expect(runDdmEval({ out: dir, quick: true, log: () => undefined })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/did not write/) });
  });
});
