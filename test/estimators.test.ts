// The estimators against independent references: the engine's own output (the unrolled adjoint
// with the recorded Fisher must BE DVEmb unprojected), exact replay (the first-order unrolling
// with the exact Hessian), REFERENCE §5 (DVEmb with A = I is per-step TracIn at θ_T), and the two
// influence-function solvers against each other.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadBackend } from '../lib/backend/loader.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { FILES } from '../lib/embeddings/store.js';
import { outerProductApply } from '../lib/eval/curvature.js';
import { dvemb, dvembScores, influenceFunction, occurrenceTable, predict, removalOf, testGradients, tracinCP, tracinStep, unrolled, unrolledAdjoint, type EvalContext, type Target } from '../lib/eval/estimators.js';
import { spearman } from '../lib/eval/metrics.js';
import { Replayer } from '../lib/eval/replay.js';
import { Trainer, layerGradientRows, type TrainerConfig } from '../lib/eval/trainer.js';
import { npyView, parseNpyHeader } from '../lib/trajectory/npy.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { Trajectory } from '../lib/trajectory/trajectory.js';
import { gaussian, relErr, rng, tempDir } from './helpers.js';

function data(seed: number, n: number, d: number, C: number) {
  const r = rng(seed);
  return { x: Float64Array.from({ length: n * d }, () => gaussian(r)), y: Int32Array.from({ length: n }, () => Math.floor(r() * C)), n, d };
}

const config: TrainerConfig = {
  widths: [5, 7, 3],
  activation: 'tanh',
  initSeed: 2,
  data: data(3, 48, 5, 3),
  batchSize: 8,
  epochs: 4,
  orderSeed: 9,
  schedule: { kind: 'warmup-cosine', peak: 0.4, warmupSteps: 3, floor: 0.02 },
  weightDecay: 0.005,
  checkpointEvery: 6,
  keepEveryStep: true,
};
const tests = data(4, 4, 5, 3);
const { backend } = loadBackend();

/** The recorded float32 rows of every step (unprojected 'full' trajectory), as float64 (b × p). */
async function recordedRows(dir: string): Promise<Float64Array[]> {
  const traj = Trajectory.open(dir);
  const out: Float64Array[] = [];
  for (let c = 0; c < traj.chunks.length; c++) {
    const ch = await traj.readChunk(c);
    const dim = traj.layout.dim;
    for (let s = 0; s < ch.steps; s++) out.push(Float64Array.from(ch.rows.subarray(ch.stepRows[s]! * dim, ch.stepRows[s + 1]! * dim)));
  }
  return out;
}

describe('estimators', () => {
  it('the unrolled adjoint with the recorded empirical Fisher equals the engine’s unprojected DVEmb (global, fp64)', async () => {
    const dir = tempDir();
    const trainer = new Trainer(config);
    const run = await trainer.train({ record: [{ dir: join(dir, 'full'), blocks: 'full', backend }] });
    const ctx: EvalContext = { trainer, run, tests };
    const rows = await recordedRows(join(dir, 'full'));
    const p = trainer.initialModel().numParams;
    // Test vectors rounded to float32 like the engine's projected tests, then carried in float64.
    const V = testGradients(trainer.modelAt(run.theta), tests).map((v) => Float64Array.from(Float32Array.from(v)));
    const adj = unrolledAdjoint(ctx, {
      testVectors: V,
      gradients: (t) => rows[t]!,
      curvature: (t, _m, batch, vs) => vs.map((v) => outerProductApply(rows[t]!, batch.weights as Float64Array, batch.n, p, v)),
    });
    await computeEmbeddings(join(dir, 'full'), { out: join(dir, 'emb'), mode: 'global', precision: 'fp64', backend });
    // The engine's whole-run propagator P = A_{T−1}⋯A_0: our carried vectors must be Pᵀ v, to 1e-9.
    const buf = readFileSync(join(dir, 'emb', FILES.propagator));
    const P = npyView(buf, parseNpyHeader(buf, 'propagator')) as Float64Array;
    expect(P.length).toBe(p * p);
    V.forEach((v, j) => {
      const ptv = new Float64Array(p);
      for (let r = 0; r < p; r++) for (let c = 0; c < p; c++) ptv[c]! += P[r * p + c]! * v[r]!;
      expect(relErr(adj.final[j]!, ptv)).toBeLessThan(1e-9);
    });
    // Every occurrence's score: equal up to the float32 storage of embeddings and scores.
    const engine = await dvembScores(ctx, join(dir, 'emb'), backend);
    const scale = Math.max(...adj.scores.map(Math.abs));
    let worst = 0;
    for (let i = 0; i < engine.length; i++) worst = Math.max(worst, Math.abs(engine[i]! - adj.scores[i]!));
    expect(worst).toBeLessThan(2e-6 * scale);
    // The exact-gradient Fisher adjoint is the same thing without the float32 rounding of the rows.
    expect(relErr(unrolled(ctx, { curvature: 'empirical-fisher' }), adj.scores)).toBeLessThan(1e-5);
  });

  it('the unrolled exact Hessian agrees with replay on a small tanh model with a small learning rate', async () => {
    const trainer = new Trainer({ ...config, schedule: { kind: 'constant', lr: 0.05 } });
    const run = await trainer.train();
    const ctx: EvalContext = { trainer, run, tests };
    const targets: Target[] = [];
    for (let t = 0; t < trainer.steps; t += 2) targets.push({ example: trainer.batch(t)[t % 8]!, step: t });
    for (let e = 0; e < 8; e++) targets.push({ example: e * 5, step: null });
    const truth = (await new Replayer(trainer, run, tests).replayMany(targets.map(removalOf), { workers: 0 })).map((r) => r.deltas);
    const pred = predict(occurrenceTable(trainer), unrolled(ctx, { curvature: 'hessian' }), tests.n, targets);
    for (let j = 0; j < tests.n; j++) {
      const t = truth.map((d) => d[j]!);
      const e = targets.map((_, r) => pred[r * tests.n + j]!);
      expect(spearman(e, t)).toBeGreaterThan(0.99);
      expect(relErr(e, t)).toBeLessThan(0.05);
    }
  });

  it('with every A_k = I (no curvature, λ = 0), the engine’s DVEmb is per-step TracIn with the test gradient at θ_T (REFERENCE §5)', async () => {
    const dir = tempDir();
    const trainer = new Trainer({ ...config, weightDecay: 0 });
    const model = trainer.initialModel();
    // Record like a harness, with all-zero curvature rows so that P stays I.
    const p = model.numParams;
    const blocks = model.layers.map(({ dIn, dOut }, l) => ({ name: `fc${l + 1}`, kind: 'projected' as const, k: dOut * (dIn + 1) }));
    const rec = TrajectoryRecorder.create(join(dir, 't'), { projection: { seed: 1, distribution: 'gaussian' }, blocks, curvature: { draws: 1 }, backend });
    const thetas = [model.parameters()];
    for (let t = 0; t < trainer.steps; t++) {
      const res = trainer.step(model, t);
      const gradients = Object.fromEntries(model.layers.map((info, l) => [`fc${l + 1}`, { projected: Float32Array.from(layerGradientRows(info, res.layers[l]!, res.ids.length)) }]));
      const zero = Object.fromEntries(blocks.map((b) => [b.name, { projected: new Float32Array(res.ids.length * b.k) }]));
      await rec.record({ step: t, lr: res.lr, ids: res.ids, reduction: 'mean', gradients, curvature: zero });
      thetas.push(model.parameters());
    }
    await rec.close();
    const run = { theta: model.parameters(), thetas, checkpoints: { every: trainer.steps, steps: [0, trainer.steps], thetas: [thetas[0]!, model.parameters()] }, losses: new Float64Array(0) };
    const ctx: EvalContext = { trainer, run, tests };
    const engine = await dvemb(ctx, join(dir, 't'), join(dir, 'emb'), { mode: 'global', precision: 'fp64', curvature: 'recorded', backend });
    const tracin = tracinStep(ctx, { testAt: 'final' });
    expect(relErr(engine.scores, tracin)).toBeLessThan(1e-5);
    expect(relErr(unrolled(ctx, { curvature: 'none' }), tracin)).toBeLessThan(1e-14);
    // ...and it differs from TracIn with the test gradient at θ_t, which is the point of DVEmb.
    expect(relErr(tracinStep(ctx), tracin)).toBeGreaterThan(1e-3);
    expect(p).toBe(66);
  });

  it('the influence function: the exact LU solve and conjugate gradients agree; TracIn-CP forms agree with each other', async () => {
    const trainer = new Trainer({ ...config, widths: [5, 3], schedule: { kind: 'constant', lr: 0.3 }, epochs: 6 });
    const run = await trainer.train();
    const ctx: EvalContext = { trainer, run, tests };
    const exact = influenceFunction(ctx, { solver: 'exact', damping: 0.01 });
    const cg = influenceFunction(ctx, { solver: 'cg', damping: 0.01, tolerance: 1e-12 });
    expect(exact.solver).toBe('exact');
    expect(cg.iterations).toBeGreaterThan(0);
    expect(relErr(cg.examples, exact.examples)).toBeLessThan(1e-8);
    // And an MLP (indefinite Hessian in general) with enough damping.
    const mlp = new Trainer({ ...config, keepEveryStep: false });
    const mrun = await mlp.train();
    const mctx: EvalContext = { trainer: mlp, run: mrun, tests };
    const e2 = influenceFunction(mctx, { solver: 'exact', damping: 0.5 });
    const c2 = influenceFunction(mctx, { solver: 'cg', damping: 0.5, tolerance: 1e-12 });
    expect(relErr(c2.examples, e2.examples)).toBeLessThan(1e-8);
    // TracIn-CP: for logistic regression the whole model is the last layer, so the factorised
    // ⟨δ,δ'⟩(⟨a,a'⟩+1) form equals the exact one; TracIn-RP is unbiased: averaged over projection
    // seeds it approaches the exact scores.
    expect(relErr(await tracinCP(ctx, { form: 'last-layer' }), await tracinCP(ctx))).toBeLessThan(1e-12);
    const full = await tracinCP(mctx);
    const seeds = 24;
    const mean = new Float64Array(full.length);
    for (let seed = 0; seed < seeds; seed++) {
      const rp = await tracinCP(mctx, { form: 'projected', kIn: 4, kOut: 4, projection: { seed, distribution: 'gaussian' }, backend });
      rp.forEach((v, i) => (mean[i]! += v / seeds));
    }
    const one = await tracinCP(mctx, { form: 'projected', kIn: 4, kOut: 4, backend });
    expect(relErr(mean, full)).toBeLessThan(0.5 * relErr(one, full));
  });
});
