import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { DatasetError, loadBreastCancer, loadDigits, split } from '../lib/eval/datasets.js';
import { MLP } from '../lib/eval/mlp.js';
import { Rng } from '../lib/eval/rng.js';
import { constant, stepDecay, warmupCosine } from '../lib/eval/schedule.js';

/** A small random batch for a model with the given input width and classes. */
function batch(seed: number, n: number, d: number, classes: number): { x: Float64Array; y: Int32Array } {
  const r = new Rng(seed);
  const x = new Float64Array(n * d).map(() => r.normal());
  const y = new Int32Array(n).map(() => r.int(classes));
  return { x, y };
}

function expectClose(actual: number, expected: number, rel: number, abs: number, what: string): void {
  const err = Math.abs(actual - expected);
  if (err > rel * Math.abs(expected) + abs) {
    throw new Error(`${what}: ${actual} vs ${expected} (error ${err.toExponential(2)})`);
  }
}

describe('rng', () => {
  it('is a pure function of the seed, and fork depends on the label only', () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const seqA = Array.from({ length: 20 }, () => a.next());
    const seqB = Array.from({ length: 20 }, () => b.next());
    expect(seqA).toEqual(seqB);
    expect(seqA.every((v) => v >= 0 && v < 1)).toBe(true);
    expect(new Rng(43).next()).not.toBe(seqA[0]);
    const fresh = new Rng(42).fork('x').nextUint32();
    expect(a.fork('x').nextUint32()).toBe(fresh); // `a` has drawn 20 numbers; the fork is unaffected
    expect(a.fork('y').nextUint32()).not.toBe(fresh);
  });

  it('int is in range, shuffle is a permutation, normal has unit scale', () => {
    const r = new Rng('test');
    for (let i = 0; i < 1000; i++) {
      const v = r.int(7);
      expect(Number.isInteger(v) && v >= 0 && v < 7).toBe(true);
    }
    const p = r.permutation(50);
    expect([...p].sort((u, v) => u - v)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    let s = 0;
    let s2 = 0;
    const m = 20000;
    for (let i = 0; i < m; i++) {
      const z = r.normal();
      s += z;
      s2 += z * z;
    }
    expect(Math.abs(s / m)).toBeLessThan(0.05);
    expect(Math.abs(s2 / m - 1)).toBeLessThan(0.05);
    expect(() => new Rng(-1)).toThrow(RangeError);
    expect(() => r.int(0)).toThrow(RangeError);
  });
});

describe('mlp gradients', () => {
  const widths = [5, 4, 3, 3];
  const n = 4;
  const { x, y } = batch(7, n, widths[0] as number, widths[3] as number);

  it('per-example factors (δ aᵀ, δ) match central finite differences of each example’s own loss', () => {
    const model = new MLP({ widths, activation: 'tanh', seed: 1 });
    const theta = model.parameters();
    const grads = model.perExampleGradients(x, y, n);
    const { layers } = model.perExample(x, y, n);
    const h = 1e-6;
    const probe = model.clone();
    for (let j = 0; j < model.numParams; j++) {
      const plus = theta.slice();
      plus[j] = (plus[j] as number) + h;
      probe.setParameters(plus);
      const lp = probe.losses(x, y, n);
      const minus = theta.slice();
      minus[j] = (minus[j] as number) - h;
      probe.setParameters(minus);
      const lm = probe.losses(x, y, n);
      for (let i = 0; i < n; i++) {
        const fd = ((lp[i] as number) - (lm[i] as number)) / (2 * h);
        expectClose(grads[i * model.numParams + j] as number, fd, 1e-6, 1e-9, `example ${i} parameter ${j}`);
      }
    }
    // perExampleGradients is literally the outer products of the factors.
    model.layers.forEach(({ dIn, dOut, wOffset, bOffset }, l) => {
      const f = layers[l]!;
      for (let i = 0; i < n; i++) {
        for (let o = 0; o < dOut; o++) {
          const d = f.outputGrads[i * dOut + o]!;
          expect(grads[i * model.numParams + bOffset + o]).toBe(d);
          for (let k = 0; k < dIn; k++) expect(grads[i * model.numParams + wOffset + o * dIn + k]).toBe(d * f.inputs[i * dIn + k]!);
        }
      }
    });
  });

  it('relu layers give the analytic gradient away from kinks', () => {
    const model = new MLP({ widths, activation: 'relu', seed: 3 });
    const g = model.gradient(x, y, n, 1);
    const theta = model.parameters();
    const h = 1e-7;
    for (const j of [0, 7, 21, model.numParams - 1]) {
      const p = theta.slice();
      p[j] = (p[j] as number) + h;
      model.setParameters(p);
      const up = model.loss(x, y, n) * n;
      p[j] = (p[j] as number) - 2 * h;
      model.setParameters(p);
      const down = model.loss(x, y, n) * n;
      expectClose(g[j] as number, (up - down) / (2 * h), 1e-5, 1e-8, `parameter ${j}`);
    }
  });

  it('gradient(weights) equals Σ w_i δ_i a_iᵀ', () => {
    const model = new MLP({ widths, seed: 2 });
    const w = [0.5, -1, 2, 0.25];
    const g = model.gradient(x, y, n, w);
    const per = model.perExampleGradients(x, y, n);
    for (let j = 0; j < model.numParams; j++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += w[i]! * per[i * model.numParams + j]!;
      expectClose(g[j]!, s, 1e-12, 1e-15, `parameter ${j}`);
    }
    expect(() => model.gradient(x, y, n, [1, 2])).toThrow(/weights has length 2/);
  });

  it('sgdStep applies θ ← (1 − lr·λ)θ − lr·Σ w_i ∇ℓ_i and returns the pre-update factors', () => {
    const model = new MLP({ widths, seed: 4 });
    const before = model.parameters();
    const w = [0.25, 0.25, 0.25, 0.25];
    const g = model.gradient(x, y, n, w);
    const pre = model.perExample(x, y, n);
    const lr = 0.3;
    const weightDecay = 0.01;
    const res = model.sgdStep({ x, y, n, weights: 1 / n, lr, weightDecay });
    const after = model.parameters();
    for (let j = 0; j < model.numParams; j++) {
      expectClose(after[j]!, (1 - lr * weightDecay) * before[j]! - lr * g[j]!, 1e-14, 1e-15, `parameter ${j}`);
    }
    expect(res.losses).toEqual(pre.losses);
    expect(res.layers[1]!.outputGrads).toEqual(pre.layers[1]!.outputGrads);
    expect([...res.weights]).toEqual(w);
    expect(model.loss(x, y, n)).toBeLessThan(pre.losses.reduce((a, b) => a + b, 0) / n);
  });

  it('training is bit-identical for the same seed', () => {
    const run = (): Float64Array => {
      const model = new MLP({ widths: [6, 8, 3], activation: 'tanh', seed: 'det' });
      const data = batch(11, 40, 6, 3);
      const order = new Rng(5);
      for (let epoch = 0; epoch < 3; epoch++) {
        const perm = order.permutation(40);
        for (let s = 0; s < 40; s += 8) {
          const idx = perm.subarray(s, s + 8);
          const xb = new Float64Array(8 * 6);
          const yb = new Int32Array(8);
          idx.forEach((r, k) => {
            xb.set(data.x.subarray(r * 6, r * 6 + 6), k * 6);
            yb[k] = data.y[r]!;
          });
          model.sgdStep({ x: xb, y: yb, n: 8, weights: 1 / 8, lr: 0.1, weightDecay: 1e-3 });
        }
      }
      return model.parameters();
    };
    const a = run();
    const b = run();
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
    expect(new MLP({ widths: [6, 8, 3], seed: 1 }).parameters()).not.toEqual(new MLP({ widths: [6, 8, 3], seed: 2 }).parameters());
  });

  it('rejects malformed batches', () => {
    const model = new MLP({ widths });
    expect(() => model.perExample(x, [0, 1, 2, 3], n)).toThrow(/y\[3\] = 3/);
    expect(() => model.forward(x, n + 1)).toThrow(/x has length/);
    expect(() => model.sgdStep({ x, y, n, weights: 1, lr: -1 })).toThrow(/lr/);
  });
});

describe('datasets', () => {
  it('loads digits with the documented shape, range and labels', () => {
    const ds = loadDigits();
    expect([ds.n, ds.d, ds.classes, ds.x.length, ds.y.length]).toEqual([1797, 64, 10, 1797 * 64, 1797]);
    expect(Math.min(...ds.x)).toBe(0);
    expect(Math.max(...ds.x)).toBe(1);
    expect(new Set(ds.y).size).toBe(10);
    expect(Math.min(...ds.y)).toBe(0);
    expect(Math.max(...ds.y)).toBe(9);
  });

  it('loads breast cancer and standardises with the train split statistics', () => {
    const ds = loadBreastCancer();
    expect([ds.n, ds.d, ds.classes]).toEqual([569, 30, 2]);
    expect(ds.classNames).toEqual(['malignant', 'benign']);
    expect([...new Set(ds.y)].sort()).toEqual([0, 1]);
    const { train, test, trainIndex, testIndex, scaling } = split(ds, 0.25, 1);
    expect(train.n + test.n).toBe(569);
    expect(testIndex.length).toBe(test.n);
    expect(scaling).toBeDefined();
    for (let j = 0; j < ds.d; j++) {
      let s = 0;
      let s2 = 0;
      for (let i = 0; i < train.n; i++) {
        const v = train.x[i * ds.d + j]!;
        s += v;
        s2 += v * v;
      }
      expect(Math.abs(s / train.n)).toBeLessThan(1e-12);
      expect(Math.abs(s2 / train.n - 1)).toBeLessThan(1e-9);
    }
    // Rows keep their identity through the split.
    expect(train.y[5]).toBe(ds.y[trainIndex[5]!]);
  });

  it('splits deterministically and stratified', () => {
    const ds = loadDigits();
    const a = split(ds, 0.2, 9);
    const b = split(ds, 0.2, 9);
    expect(a.testIndex).toEqual(b.testIndex);
    expect(split(ds, 0.2, 10).testIndex).not.toEqual(a.testIndex);
    for (let c = 0; c < 10; c++) {
      const all = ds.y.filter((v) => v === c).length;
      const inTest = a.test.y.filter((v) => v === c).length;
      expect(inTest).toBe(Math.round(all * 0.2));
    }
    expect(() => split(ds, 1, 0)).toThrow(RangeError);
  });

  it('names the file, line and column of a damaged file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dvemb-ds-'));
    const row = Array(64).fill('1').join(',');
    const short = join(dir, 'short.csv.gz');
    writeFileSync(short, gzipSync(`${row},3\n1,2,3\n`));
    expect(() => loadDigits({ path: short })).toThrow(/short\.csv\.gz.*wrong column count at line 2/);
    const nan = join(dir, 'nan.csv');
    writeFileSync(nan, `2,3,a,b\n1,2,3,0\n1,x,3,1\n`);
    expect(() => loadBreastCancer({ path: nan })).toThrow(/nan\.csv.*non-numeric value 'x' at line 3 column 2/);
    expect(() => loadDigits({ path: join(dir, 'missing.csv.gz') })).toThrow(DatasetError);
    expect(() => loadDigits({ path: join(dir, 'missing.csv.gz') })).toThrow(/missing\.csv\.gz.*file not found/);
  });
});

describe('schedules', () => {
  it('constant and step decay', () => {
    expect(constant(0.1)(0)).toBe(0.1);
    expect(constant(0.1)(1000)).toBe(0.1);
    const s = stepDecay({ initial: 1, factor: 0.5, every: 10 });
    expect([s(0), s(9), s(10), s(25)]).toEqual([1, 1, 0.5, 0.25]);
  });

  it('warm-up reaches the peak at warmupSteps and cosine reaches the floor at totalSteps', () => {
    const s = warmupCosine({ peak: 0.5, warmupSteps: 10, totalSteps: 110, floor: 0.01 });
    expect(s(0)).toBe(0);
    expect(s(5)).toBeCloseTo(0.25, 15);
    expect(s(10)).toBe(0.5);
    expect(s(60)).toBeCloseTo(0.01 + 0.49 * 0.5, 14);
    expect(s(110)).toBe(0.01);
    expect(s(500)).toBe(0.01);
    for (let t = 11; t <= 110; t++) expect(s(t)).toBeLessThanOrEqual(s(t - 1));
    const noWarm = warmupCosine({ peak: 1, warmupSteps: 0, totalSteps: 4 });
    expect(noWarm(0)).toBe(1);
    expect(noWarm(4)).toBe(0);
  });

  it('rejects bad arguments with a RangeError naming the argument', () => {
    expect(() => constant(Number.NaN)).toThrow(/lr/);
    expect(() => warmupCosine({ peak: -1, warmupSteps: 1, totalSteps: 2 })).toThrow(/peak/);
    expect(() => warmupCosine({ peak: 1, warmupSteps: Infinity, totalSteps: 2 })).toThrow(/warmupSteps/);
    expect(() => warmupCosine({ peak: 1, warmupSteps: 5, totalSteps: 2 })).toThrow(/totalSteps/);
    expect(() => stepDecay({ initial: 1, factor: 0.5, every: 0 })).toThrow(/every/);
    expect(() => constant(1)(-1)).toThrow(/step/);
    expect(() => constant(1)(-1)).toThrow(RangeError);
  });
});
