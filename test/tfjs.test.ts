// The TensorFlow.js adapter: per-example factors captured in one backward pass against
// per-example tf.variableGrads calls (each example's own loss, one example at a time), the
// applied update against θ − η(Σ w g + λθ), the optimizer and layer checks, and record → embed.
import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { TfjsRecorder, describeTfjsModel, tfjsGradients, type TfjsBlockInfo, type TfjsLoss } from '../lib/adapters/tfjs.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { projectTests, topK } from '../lib/embeddings/query.js';
import { EmbeddingSet } from '../lib/embeddings/store.js';
import { DvembError } from '../lib/errors.js';
import { Projector, type BlockGradient } from '../lib/projection.js';
import type { StepRecord } from '../lib/trajectory/recorder.js';
import { Trajectory } from '../lib/trajectory/trajectory.js';
import { relErr, rng, randomF32, tempDir } from './helpers.js';

type Layer = tf.LayersModel['layers'][number];

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function seeded(seed: number) {
  return { kernelInitializer: tf.initializers.glorotNormal({ seed }), biasInitializer: tf.initializers.randomNormal({ seed: seed + 100, stddev: 0.3 }) };
}

function sequentialModel(bias: boolean): tf.LayersModel {
  return tf.sequential({
    layers: [
      tf.layers.dense({ inputShape: [6], units: 5, activation: 'tanh', useBias: bias, ...seeded(1) }),
      tf.layers.dropout({ rate: 0.5 }), // inactive in inference, active in training
      tf.layers.dense({ units: 4, activation: 'relu', useBias: bias, ...seeded(2) }),
      tf.layers.dense({ units: 3, useBias: bias, ...seeded(3) }),
    ],
  });
}

/** input → dense (no bias) → nested sequential → concat with the input → dense softmax. */
function functionalModel(): tf.LayersModel {
  const input = tf.input({ shape: [6] });
  const h = tf.layers.dense({ units: 5, activation: 'tanh', useBias: false, ...seeded(4) }).apply(input) as tf.SymbolicTensor;
  const inner = tf.sequential({ layers: [tf.layers.dense({ inputShape: [5], units: 4, activation: 'sigmoid', ...seeded(5) })] });
  const g = inner.apply(h) as tf.SymbolicTensor;
  const cat = tf.layers.concatenate().apply([g, input]) as tf.SymbolicTensor;
  const out = tf.layers.dense({ units: 3, activation: 'softmax', ...seeded(6) }).apply(cat) as tf.SymbolicTensor;
  return tf.model({ inputs: input, outputs: out });
}

/** Tokens: a Dense applied to each of 3 positions, then flattened. */
function sequenceModel(): tf.LayersModel {
  return tf.sequential({
    layers: [
      tf.layers.dense({ inputShape: [3, 4], units: 5, activation: 'tanh', ...seeded(7) }),
      tf.layers.flatten(),
      tf.layers.dense({ units: 3, ...seeded(8) }),
    ],
  });
}

function findLayer(model: tf.LayersModel, name: string): Layer {
  const walk = (layers: Layer[]): Layer | undefined => {
    for (const l of layers) {
      if (l.name === name) return l;
      const inner = (l as { layers?: Layer[] }).layers;
      if (Array.isArray(inner)) {
        const f = walk(inner);
        if (f) return f;
      }
    }
    return undefined;
  };
  const l = walk(model.layers);
  if (!l) throw new Error(`no layer ${name}`);
  return l;
}

function vars(model: tf.LayersModel, b: TfjsBlockInfo): tf.Variable[] {
  return findLayer(model, b.layer).trainableWeights.map((w) => w.read() as tf.Variable);
}

function data(n: number, shape: number[], seed: number): { x: tf.Tensor; labels: number[]; y: tf.Tensor2D } {
  const r = rng(seed);
  const size = n * shape.reduce((a, b) => a * b, 1);
  const x = tf.tensor(randomF32(size, r), [n, ...shape]);
  const labels = Array.from({ length: n }, () => Math.floor(r() * 3));
  return { x, labels, y: tf.oneHot(tf.tensor1d(labels, 'int32'), 3).toFloat() as tf.Tensor2D };
}

/** Each example's own loss, computed by tfjs's own loss functions (independent of the adapter). */
function refLoss(loss: TfjsLoss, y: tf.Tensor, out: tf.Tensor): tf.Scalar {
  if (loss === 'softmaxCrossEntropy') return tf.losses.softmaxCrossEntropy(y, out) as tf.Scalar;
  return tf.sum(tf.metrics.categoricalCrossentropy(y, out)) as tf.Scalar;
}

/** Per example, the gradient of its own loss w.r.t. every block's [kernel (dIn×dOut), bias]. */
function perExampleRef(model: tf.LayersModel, blocks: TfjsBlockInfo[], x: tf.Tensor, y: tf.Tensor, loss: TfjsLoss): Float32Array[][][] {
  const n = x.shape[0]!;
  const out: Float32Array[][][] = [];
  for (let i = 0; i < n; i++) {
    const xi = tf.slice(x, i, 1);
    const yi = tf.slice(y, i, 1);
    const byBlock: Float32Array[][] = [];
    for (const b of blocks) {
      const { grads, value } = tf.variableGrads(() => refLoss(loss, yi, model.apply(xi) as tf.Tensor), vars(model, b));
      byBlock.push(vars(model, b).map((v) => grads[v.name]!.dataSync() as Float32Array));
      tf.dispose([value, ...Object.values(grads)]);
    }
    out.push(byBlock);
    tf.dispose([xi, yi]);
  }
  return out;
}

/** Kernel (dIn × dOut) and bias gradients of example i from the captured factors. */
function fromFactors(g: BlockGradient, b: TfjsBlockInfo, i: number): Float64Array[] {
  if (!('inputs' in g)) throw new Error('expected factors');
  const T = g.tokens ?? 1;
  const K = new Float64Array(b.dIn * b.dOut);
  const B = new Float64Array(b.dOut);
  for (let t = 0; t < T; t++) {
    const row = i * T + t;
    for (let o = 0; o < b.dOut; o++) {
      const d = g.outputGrads[row * b.dOut + o]!;
      B[o]! += d;
      for (let j = 0; j < b.dIn; j++) K[j * b.dOut + o]! += g.inputs[row * b.dIn + j]! * d;
    }
  }
  return b.bias ? [K, B] : [K];
}

function expectError(fn: () => unknown, code: string, pattern: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(DvembError);
    expect((err as DvembError).code).toBe(code);
    expect((err as Error).message).toMatch(pattern);
    return;
  }
  throw new Error('expected an error');
}

async function expectRejection(p: Promise<unknown>, code: string, pattern: RegExp): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DvembError);
  expect((err as DvembError).code).toBe(code);
  expect((err as Error).message).toMatch(pattern);
}

const CASES: { name: string; make: () => tf.LayersModel; loss: TfjsLoss; shape: number[]; blocks: number }[] = [
  { name: 'sequential with bias', make: () => sequentialModel(true), loss: 'softmaxCrossEntropy', shape: [6], blocks: 3 },
  { name: 'sequential without bias', make: () => sequentialModel(false), loss: 'softmaxCrossEntropy', shape: [6], blocks: 3 },
  { name: 'functional, nested, probabilities', make: functionalModel, loss: 'categoricalCrossentropy', shape: [6], blocks: 3 },
  { name: 'per-token Dense (rank-3 input)', make: sequenceModel, loss: 'softmaxCrossEntropy', shape: [3, 4], blocks: 2 },
];

describe('tfjs adapter: captured per-example gradients', () => {
  for (const c of CASES) {
    it(`match per-example tf.variableGrads: ${c.name}`, () => {
      const model = c.make();
      const plan = describeTfjsModel(model);
      expect(plan.blocks).toHaveLength(c.blocks);
      const n = 5;
      const { x, labels, y } = data(n, c.shape, 11);
      const got = tfjsGradients(model, { x, y: labels }, { loss: c.loss });
      const ref = perExampleRef(model, plan.blocks, x, y, c.loss);
      plan.blocks.forEach((b, k) => {
        for (let i = 0; i < n; i++) {
          const mine = fromFactors(got.gradients[b.name]!, b, i);
          mine.forEach((g, v) => expect(relErr(g, ref[i]![k]![v]!), `${b.name} example ${i} weight ${v}`).toBeLessThan(2e-5));
        }
      });
      const refLosses = Array.from({ length: n }, (_, i) => tf.tidy(() => refLoss(c.loss, tf.slice(y, i, 1), model.apply(tf.slice(x, i, 1)) as tf.Tensor).dataSync()[0]!));
      expect(relErr(got.losses, refLosses)).toBeLessThan(1e-5);
      tf.dispose([x, y]);
    });
  }

  it('records the projected per-example gradients and applies θ ← (1 − ηλ)θ − η Σ w g', async () => {
    const runs = [
      { mode: 'mean', make: functionalModel, loss: 'categoricalCrossentropy', shape: [6] },
      { mode: 'sum', make: functionalModel, loss: 'categoricalCrossentropy', shape: [6] },
      { mode: 'weights', make: functionalModel, loss: 'categoricalCrossentropy', shape: [6] },
      { mode: 'weights', make: sequenceModel, loss: 'softmaxCrossEntropy', shape: [3, 4] }, // weights per token row
    ] as const;
    for (const { mode, make, loss: lossName, shape } of runs) {
      const model = make();
      const plan = describeTfjsModel(model);
      const n = 4;
      const { x, labels, y } = data(n, [...shape], 21);
      const ref = perExampleRef(model, plan.blocks, x, y, lossName);
      const before = plan.blocks.map((b) => vars(model, b).map((v) => Float64Array.from(v.dataSync())));
      const eta = 0.7;
      const lambda = 0.05;
      const w = mode === 'mean' ? [0.25, 0.25, 0.25, 0.25] : mode === 'sum' ? [1, 1, 1, 1] : [0.1, 0.7, 0, 0.4];
      const dir = join(tempDir(), 't');
      const trainer = await TfjsRecorder.create(model, {
        dir,
        projection: { seed: 5 },
        k: { in: 3, out: 2 },
        lr: eta,
        weightDecay: lambda,
        loss: lossName,
        reduction: mode === 'sum' ? 'sum' : 'mean',
        training: false,
      });
      expect(trainer.decayExact).toBe(true);
      const loss = await trainer.step({ x, y: labels, ids: [3, 1, 4, 1], ...(mode === 'weights' ? { weights: w } : {}) });
      await trainer.close();
      expect(Number.isFinite(loss)).toBe(true);

      plan.blocks.forEach((b, k) => {
        vars(model, b).forEach((v, j) => {
          const theta = before[k]![j]!;
          const expected = new Float64Array(theta.length);
          for (let e = 0; e < theta.length; e++) {
            let g = 0;
            for (let i = 0; i < n; i++) g += w[i]! * ref[i]![k]![j]![e]!;
            expected[e] = -eta * (g + lambda * theta[e]!);
          }
          const after = v.dataSync();
          const delta = Float64Array.from(theta, (t, e) => after[e]! - t);
          expect(relErr(delta, expected), `${mode} ${b.name} weight ${j}`).toBeLessThan(1e-4);
        });
      });

      // The recorded rows are the projections of each example's own gradient (not of w·g).
      const traj = Trajectory.open(dir);
      const chunk = await traj.readChunk(0);
      expect(Array.from(chunk.lr)).toEqual([eta]);
      expect(Array.from(chunk.weightDecay)).toEqual([lambda]);
      expect(Array.from(chunk.weights)).toEqual(w);
      const grads: Record<string, BlockGradient> = {};
      plan.blocks.forEach((b, k) => {
        const cols = b.dIn + (b.bias ? 1 : 0);
        const g = new Float32Array(n * b.dOut * cols);
        for (let i = 0; i < n; i++) {
          const [K, B] = ref[i]![k]!;
          for (let o = 0; o < b.dOut; o++) {
            for (let j = 0; j < b.dIn; j++) g[(i * b.dOut + o) * cols + j] = K![j * b.dOut + o]!;
            if (b.bias) g[(i * b.dOut + o) * cols + b.dIn] = B![o]!;
          }
        }
        grads[b.name] = { gradient: g };
      });
      const expectedRows = await new Projector(traj.layout, trainer.recorder.projector.backend).project(grads, n);
      expect(relErr(chunk.rows, expectedRows)).toBeLessThan(1e-4);
      tf.dispose([x, y]);
    }
  });

  it('takes the same step as tf.train.sgd on the mean loss', async () => {
    const a = sequentialModel(true);
    const b = sequentialModel(true); // same seeds, same weights
    const { x, labels, y } = data(8, [6], 31);
    const opt = tf.train.sgd(0.3);
    const trainer = await TfjsRecorder.create(a, { dir: join(tempDir(), 't'), projection: { seed: 1 }, optimizer: opt, loss: 'softmaxCrossEntropy', training: false });
    for (let s = 0; s < 3; s++) {
      await trainer.step({ x, y, ids: [0, 1, 2, 3, 4, 5, 6, 7] });
      opt.minimize(() => tf.losses.softmaxCrossEntropy(y, b.apply(x) as tf.Tensor) as tf.Scalar);
    }
    await trainer.close();
    a.trainableWeights.forEach((w, i) => expect(relErr(w.read().dataSync(), b.trainableWeights[i]!.read().dataSync())).toBeLessThan(1e-5));
    tf.dispose([x, y]);
  });
});

describe('tfjs adapter: optimizer and layer checks', () => {
  it('rejects momentum and Adam unless approximation is allowed, and labels it', async () => {
    const model = sequentialModel(true);
    const base = { projection: { seed: 1 }, loss: 'softmaxCrossEntropy' as const, lr: 0.1 };
    await expectRejection(TfjsRecorder.create(model, { ...base, dir: join(tempDir(), 't'), optimizer: tf.train.adam(0.01) }), 'BAD_INPUT', /optimizer is Adam.*allowApproximateOptimizer/);
    await expectRejection(TfjsRecorder.create(model, { ...base, dir: join(tempDir(), 't'), optimizer: tf.train.momentum(0.1, 0.9) }), 'BAD_INPUT', /optimizer is Momentum/);
    model.compile({ optimizer: tf.train.rmsprop(0.01), loss: 'categoricalCrossentropy' });
    await expectRejection(TfjsRecorder.create(model, { ...base, dir: join(tempDir(), 't') }), 'BAD_INPUT', /optimizer is RMSProp/);
    const exact = await TfjsRecorder.create(model, { ...base, dir: join(tempDir(), 't'), optimizer: tf.train.momentum(0.1, 0) });
    expect(exact.optimizerExact).toBe(true);
    await exact.close();

    // Approximate: Adam's own update on Σ w g, recorded with its nominal rate and labelled.
    const a = sequentialModel(true);
    const b = sequentialModel(true);
    const { x, labels, y } = data(6, [6], 41);
    const dir = join(tempDir(), 't');
    const trainer = await TfjsRecorder.create(a, { dir, projection: { seed: 1 }, loss: 'softmaxCrossEntropy', optimizer: tf.train.adam(0.02), allowApproximateOptimizer: true, training: false });
    expect(trainer.optimizerExact).toBe(false);
    const adam = tf.train.adam(0.02);
    for (let s = 0; s < 2; s++) {
      await trainer.step({ x, y: labels, ids: [0, 1, 2, 3, 4, 5] });
      adam.minimize(() => tf.losses.softmaxCrossEntropy(y, b.apply(x) as tf.Tensor) as tf.Scalar);
    }
    await trainer.close();
    a.trainableWeights.forEach((w, i) => expect(relErr(w.read().dataSync(), b.trainableWeights[i]!.read().dataSync())).toBeLessThan(1e-5));
    const meta = Trajectory.open(dir).manifest.meta as { adapter: { optimizer: { class: string; exact: boolean; approximation?: string } } };
    expect(meta.adapter.optimizer).toMatchObject({ class: 'Adam', exact: false });
    expect(meta.adapter.optimizer.approximation).toMatch(/approximation/);
    expect(Array.from((await Trajectory.open(dir).readChunk(0)).lr)).toEqual([0.02, 0.02]);
    tf.dispose([x, y]);
  });

  it('records kernel-only L2 as the kernel λ, labelled approximate, and applies it per weight', async () => {
    const model = tf.sequential({
      layers: [
        tf.layers.dense({ inputShape: [6], units: 4, activation: 'tanh', kernelRegularizer: tf.regularizers.l2({ l2: 0.01 }), ...seeded(9) }),
        tf.layers.dense({ units: 3, kernelRegularizer: tf.regularizers.l2({ l2: 0.01 }), ...seeded(10) }),
      ],
    });
    const plan = describeTfjsModel(model);
    const dir = join(tempDir(), 't');
    const { x, labels, y } = data(4, [6], 51);
    const ref = perExampleRef(model, plan.blocks, x, y, 'softmaxCrossEntropy');
    const before = plan.blocks.map((b) => vars(model, b).map((v) => Float64Array.from(v.dataSync())));
    const trainer = await TfjsRecorder.create(model, { dir, projection: { seed: 2 }, loss: 'softmaxCrossEntropy', lr: 0.5, training: false });
    expect(trainer.decayExact).toBe(false);
    expect(trainer.weightDecay).toBeCloseTo(0.02, 12);
    await trainer.step({ x, y: labels, ids: [0, 1, 2, 3] });
    await trainer.close();
    const meta = Trajectory.open(dir).manifest.meta as { adapter: { decay: { exact: boolean; recorded: number; approximation?: string; perBlock: Record<string, { kernel: number; bias?: number }> } } };
    expect(meta.adapter.decay.exact).toBe(false);
    expect(meta.adapter.decay.approximation).toMatch(/biases/);
    expect(Object.values(meta.adapter.decay.perBlock)[0]).toEqual({ kernel: 0.02, bias: 0 });
    expect(Array.from((await Trajectory.open(dir).readChunk(0)).weightDecay)).toEqual([0.02]);
    plan.blocks.forEach((b, k) => {
      vars(model, b).forEach((v, j) => {
        const lambda = j === 0 ? 0.02 : 0; // Keras: l2·‖W‖² in the loss, so λ = 2·l2, kernel only
        const theta = before[k]![j]!;
        const after = v.dataSync();
        const expected = Float64Array.from(theta, (t, e) => -0.5 * ((ref[0]![k]![j]![e]! + ref[1]![k]![j]![e]! + ref[2]![k]![j]![e]! + ref[3]![k]![j]![e]!) / 4 + lambda * t));
        expect(relErr(Float64Array.from(theta, (t, e) => after[e]! - t), expected)).toBeLessThan(1e-4);
      });
    });
    expectError(
      () => describeTfjsModel(tf.sequential({ layers: [tf.layers.dense({ inputShape: [3], units: 2, kernelRegularizer: tf.regularizers.l1({ l1: 0.1 }) })] })),
      'BAD_INPUT',
      /L1 regularizer/,
    );
    tf.dispose([x, y]);
  });

  it('names unsupported layers and says what is supported', () => {
    const input = tf.input({ shape: [4, 4, 1] });
    const conv = tf.layers.conv2d({ filters: 2, kernelSize: 2, name: 'myconv' }).apply(input) as tf.SymbolicTensor;
    const bn = tf.layers.batchNormalization({ name: 'mybn' }).apply(conv) as tf.SymbolicTensor;
    const flat = tf.layers.flatten().apply(bn) as tf.SymbolicTensor;
    const out = tf.layers.dense({ units: 3 }).apply(flat) as tf.SymbolicTensor;
    const model = tf.model({ inputs: input, outputs: out });
    expectError(() => describeTfjsModel(model), 'BAD_INPUT', /myconv \(Conv2D\): trainable weights.*mybn \(BatchNormalization\): mixes the examples.*Supported: trainable Dense/);
    // Frozen per-example layers are fixed functions: supported.
    model.getLayer('myconv').trainable = false;
    expectError(() => describeTfjsModel(model), 'BAD_INPUT', /mybn/);
    const ok = tf.sequential({
      layers: [
        tf.layers.conv2d({ inputShape: [4, 4, 1], filters: 2, kernelSize: 2, trainable: false }),
        tf.layers.flatten(),
        tf.layers.dense({ units: 3 }),
      ],
    });
    const plan = describeTfjsModel(ok);
    expect(plan.blocks).toHaveLength(1);
    expect(plan.frozen[0]).toMatch(/Conv2D/);
    // A shared Dense is named too.
    const i2 = tf.input({ shape: [3] });
    const shared = tf.layers.dense({ units: 3, name: 'shared' });
    const twice = shared.apply(shared.apply(i2)) as tf.SymbolicTensor;
    expectError(() => describeTfjsModel(tf.model({ inputs: i2, outputs: twice })), 'BAD_INPUT', /shared \(Dense\): called more than once/);
  });
});

describe('tfjs adapter: recording', () => {
  it('records sampled-label curvature rows drawn from the model softmax', async () => {
    const model = sequentialModel(true);
    const plan = describeTfjsModel(model);
    const dir = join(tempDir(), 't');
    const trainer = await TfjsRecorder.create(model, { dir, projection: { seed: 3 }, loss: 'softmaxCrossEntropy', lr: 0.2, curvature: { draws: 3, seed: 9 }, training: false });
    const spy = vi.spyOn(trainer.recorder, 'record');
    const { x, labels } = data(5, [6], 61);
    const probs = tf.tidy(() => tf.softmax(model.apply(x) as tf.Tensor).dataSync());
    await trainer.step({ x, y: labels, ids: [0, 1, 2, 3, 4] });
    await trainer.close();
    const rec = spy.mock.calls[0]![0] as StepRecord;
    const last = plan.blocks[2]!;
    const curv = (rec.curvature as Record<string, { inputs: Float32Array; outputGrads: Float32Array }>)[last.name]!;
    const main = (rec.gradients as Record<string, { inputs: Float32Array; outputGrads: Float32Array }>)[last.name]!;
    expect(curv.outputGrads).toHaveLength(5 * 3 * 3);
    for (let r = 0; r < 15; r++) {
      const i = Math.floor(r / 3); // rows are example-major, draws inner
      const d = Array.from(curv.outputGrads.subarray(r * 3, r * 3 + 3));
      const label = d.findIndex((v, c) => v < probs[i * 3 + c]! - 0.5);
      expect(label).toBeGreaterThanOrEqual(0);
      d.forEach((v, c) => expect(v).toBeCloseTo(probs[i * 3 + c]! - (c === label ? 1 : 0), 5)); // δ = p − e_ỹ
      expect(Array.from(curv.inputs.subarray(r * last.dIn, (r + 1) * last.dIn))).toEqual(Array.from(main.inputs.subarray(i * last.dIn, (i + 1) * last.dIn)));
    }
    const chunk = await Trajectory.open(dir).readChunk(0);
    expect(chunk.curvature!.length).toBe(15 * Trajectory.open(dir).layout.dim);
    x.dispose();
  });

  it('records, computes embeddings and answers a query end to end', async () => {
    const model = sequentialModel(true);
    const root = tempDir();
    const trainer = await TfjsRecorder.create(model, {
      dir: join(root, 't'),
      projection: { seed: 4 },
      k: (b) => ({ in: 4, out: Math.min(3, b.dOut) }),
      lr: (s) => 0.3 / (1 + s),
      loss: 'softmaxCrossEntropy',
      curvature: { draws: 1 },
    });
    const { x, labels } = data(24, [6], 71);
    const r = rng(5);
    for (let s = 0; s < 12; s++) {
      const ids = Array.from({ length: 6 }, () => Math.floor(r() * 24));
      const xb = tf.gather(x, ids);
      await trainer.step({ x: xb, y: ids.map((i) => labels[i]!), ids });
      xb.dispose();
    }
    expect(trainer.stepIndex).toBe(12);
    await trainer.close();
    const m = await computeEmbeddings(join(root, 't'), { out: join(root, 'e') });
    expect(m.steps).toBe(12);
    const set = EmbeddingSet.open(join(root, 'e'));
    const test = trainer.gradients({ x: tf.slice(x, 0, 2), y: labels.slice(0, 2) });
    const tests = await projectTests(set, test.gradients, test.n);
    const top = await topK(set, tests, 3);
    expect(top).toHaveLength(2);
    expect(top[0]!.proponents.length + top[0]!.opponents.length).toBeGreaterThan(0);
    for (const t of top) for (const a of [...t.proponents, ...t.opponents]) expect(Number.isFinite(a.score)).toBe(true);
    x.dispose();
  });

  it('reports a failed record at the next step, stops, and keeps the steps before it', async () => {
    const model = sequentialModel(true);
    const dir = join(tempDir(), 't');
    const trainer = await TfjsRecorder.create(model, { dir, projection: { seed: 6 }, loss: 'softmaxCrossEntropy', lr: 0.1 });
    const good = data(3, [6], 81);
    await trainer.step({ x: good.x, y: good.labels, ids: [0, 1, 2] });
    const bad = tf.tensor2d(randomF32(18, rng(1)).map((v, i) => (i === 4 ? NaN : v)), [3, 6]);
    await trainer.step({ x: bad, y: good.labels, ids: [3, 4, 5] }); // its record fails in the background
    await expectRejection(trainer.step({ x: good.x, y: good.labels, ids: [0, 1, 2] }), 'NON_FINITE', /step 1/);
    await expectRejection(trainer.step({ x: good.x, y: good.labels, ids: [0, 1, 2] }), 'ABORTED', /earlier step failed/);
    await trainer.close();
    expect(Trajectory.open(dir).steps).toBe(1);
    await expectRejection(trainer.step({ x: good.x, y: good.labels, ids: [0, 1, 2] }), 'CLOSED', /closed/);
    tf.dispose([good.x, good.y, bad]);
  });

  it('holds no tensors beyond the model between steps', async () => {
    for (const variant of ['sgd', 'adam', 'curvature'] as const) {
      const model = sequentialModel(true);
      const trainer = await TfjsRecorder.create(model, {
        dir: join(tempDir(), 't'),
        projection: { seed: 8 },
        loss: 'softmaxCrossEntropy',
        lr: 0.1,
        weightDecay: 0.01,
        ...(variant === 'adam' ? { optimizer: tf.train.adam(0.01), allowApproximateOptimizer: true } : {}),
        ...(variant === 'curvature' ? { curvature: { draws: 2 } } : {}),
      });
      const { x, y } = data(4, [6], 95);
      const step = (i: number) => trainer.step({ x, y, ids: [0, 1, 2, 3], ...(i % 2 ? { weights: [0.1, 0.2, 0.3, 0.4] } : {}) });
      await step(0);
      await step(1); // optimizer slots and kernels are created by now
      const before = tf.memory().numTensors;
      for (let i = 0; i < 4; i++) await step(i);
      trainer.gradients({ x, y });
      expect(tf.memory().numTensors, variant).toBe(before);
      await trainer.close();
      tf.dispose([x, y]);
    }
  });

  it('checks batch shapes and concurrent steps', async () => {
    const model = sequentialModel(true);
    const trainer = await TfjsRecorder.create(model, { dir: join(tempDir(), 't'), projection: { seed: 7 }, loss: 'softmaxCrossEntropy', lr: 0.1 });
    const { x, labels } = data(3, [6], 91);
    await expectRejection(trainer.step({ x, y: labels, ids: [0, 1] }), 'SHAPE_MISMATCH', /2 ids for a batch of 3/);
    await expectRejection(trainer.step({ x, y: [0, 1], ids: [0, 1, 2] }), 'SHAPE_MISMATCH', /2 labels/);
    const first = trainer.step({ x, y: labels, ids: [0, 1, 2] });
    await expectRejection(trainer.step({ x, y: labels, ids: [0, 1, 2] }), 'BAD_INPUT', /another step/);
    await first;
    await trainer.close();
    await expectRejection(TfjsRecorder.create(model, { dir: join(tempDir(), 't'), projection: { seed: 7 }, loss: 'softmaxCrossEntropy' }), 'BAD_INPUT', /no learning rate/);
    x.dispose();
  });
});
