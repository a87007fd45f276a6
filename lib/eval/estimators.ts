// Every estimator of trajectory-specific leave-one-out on one recorded run of the reference
// trainer. Each returns the PREDICTED CHANGE OF THE TEST LOSS WHEN THE TRAINING DATA ARE REMOVED,
// the sign convention of TSLOO (REFERENCE §2): Δ̂ > 0 means the removed data helped.
//
// Scores are computed for every occurrence (example, step) of the run, in the run's occurrence
// order (step by step, each batch in order), for m test points: an (occurrences × m) matrix.
// The all-epoch prediction for an example is the sum over its occurrences (REFERENCE §2).
//
// Derivation of the signs. Removing z at step t sets w_z = 0, so θ_{t+1} moves by +η_t w_z g_t(z)
// (the step no longer subtracts it). To first order that perturbation reaches θ_T as
// A_{T−1}⋯A_{t+1} η_t w_z g_t(z) with A_k = c_k I − η_k H_k, and the test loss changes by
// ∇ℓ(θ_T, z_test)ᵀ of that: positive when g_t(z) and the test gradient align, i.e. when z helped.
//   - unrolled-*     : exactly that product, run on the test side (the adjoint form, REFERENCE §3):
//                      v_{T−1} = ∇ℓ(θ_T, z_test), score(z, t) = η_t w_z ⟨g_t(z), v_t⟩, v_{t−1} = A_tᵀ v_t.
//   - dvemb-*        : the engine's embeddings (same product with the recorded Fisher, projected).
//   - tracin-step    : every A = I and the test gradient at θ_t: η_t w_z ⟨g_t(z), ∇ℓ(θ_t, z_test)⟩.
//   - tracin-cp/-rp/-last-layer : the same with both gradients at the checkpoint that ends the
//                      occurrence's checkpoint interval (θ_{K⌈(t+1)/K⌉}), exact / projected / last layer.
//   - grad-dot       : both gradients at θ_T: η_t w_z ⟨g_T(z), ∇ℓ(θ_T, z_test)⟩.
//   - self-influence : tracin-cp with z as its own test point: η_t w_z ‖g_c(z)‖² (predicts z's own
//                      loss change; it ranks mislabelled data first).
//   - influence-function : (1/n) ∇ℓ_testᵀ (H + (λ+δ)I)⁻¹ ∇ℓ(θ_T, z) (REFERENCE §6): removing z from
//                      the mean objective moves its minimiser by +(1/n)(H + λI)⁻¹∇ℓ(z); it cannot
//                      tell occurrences apart, so each occurrence gets IF / (number of occurrences).

import { loadBackend } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { computeEmbeddings, type ComputeOptions } from '../embeddings/backward.js';
import { perOccurrence, projectTests } from '../embeddings/query.js';
import { EmbeddingSet } from '../embeddings/store.js';
import { DvembError } from '../errors.js';
import { Layout, Projector, type BatchGradients, type BlockGradient, type BlockSpec, type ProjectionSpec } from '../projection.js';
import { ggnVectorProducts, hessianVectorProducts, outerProductApply, type WeightedBatch } from './curvature.js';
import type { MLP, LayerFactors } from './mlp.js';
import type { TestSet } from './replay.js';
import { conjugateGradients, luSolve } from './solvers.js';
import { gatherRows, layerGradientRows, type Removal, type Trainer, type TrainRun } from './trainer.js';

/** A removal target: one occurrence (example at step), or every occurrence (step: null). */
export interface Target {
  example: number;
  step: number | null;
}

export function removalOf(target: Target): Removal {
  return target.step === null ? { examples: [target.example] } : { occurrences: [{ example: target.example, step: target.step }] };
}

/** Where each step's occurrences sit in the (occurrences × m) score matrices. */
export interface OccurrenceTable {
  /** offsets[t] .. offsets[t+1]: the rows of step t. */
  offsets: Int32Array;
  ids: Int32Array;
  count: number;
}

export function occurrenceTable(trainer: Trainer): OccurrenceTable {
  const offsets = new Int32Array(trainer.steps + 1);
  const ids: number[] = [];
  for (let t = 0; t < trainer.steps; t++) {
    const b = trainer.batch(t);
    for (const id of b) ids.push(id);
    offsets[t + 1] = (offsets[t] as number) + b.length;
  }
  return { offsets, ids: Int32Array.from(ids), count: ids.length };
}

/** The step of occurrence row o. */
function stepOfRow(table: OccurrenceTable, o: number): number {
  let lo = 0;
  let hi = table.offsets.length - 2;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if ((table.offsets[mid] as number) <= o) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** Predicted Δ of each target for each test point: (targets × m), from occurrence scores. */
export function predict(table: OccurrenceTable, scores: Float64Array, m: number, targets: readonly Target[]): Float64Array {
  const out = new Float64Array(targets.length * m);
  targets.forEach((tg, r) => {
    const [from, to] = tg.step === null ? [0, table.count] : [table.offsets[tg.step] as number, table.offsets[tg.step + 1] as number];
    let found = false;
    for (let o = from; o < to; o++) {
      if (table.ids[o] !== tg.example) continue;
      found = true;
      for (let j = 0; j < m; j++) out[r * m + j]! += scores[o * m + j] as number;
    }
    if (!found) throw new DvembError('UNKNOWN_ID', `example ${tg.example} does not occur ${tg.step === null ? 'in the run' : `at step ${tg.step}`}`);
  });
  return out;
}

/** All-epoch scores per training example (n × m): the sum over each example's occurrences. */
export function exampleScores(table: OccurrenceTable, scores: Float64Array, m: number, n: number): Float64Array {
  const out = new Float64Array(n * m);
  for (let o = 0; o < table.count; o++) {
    const id = table.ids[o] as number;
    for (let j = 0; j < m; j++) out[id * m + j]! += scores[o * m + j] as number;
  }
  return out;
}

/** What the estimators read: the trainer, its run (every step kept for the per-step ones) and the tests. */
export interface EvalContext {
  trainer: Trainer;
  run: TrainRun;
  tests: TestSet;
  table?: OccurrenceTable;
}

function tableOf(ctx: EvalContext): OccurrenceTable {
  return (ctx.table ??= occurrenceTable(ctx.trainer));
}

function thetaAt(ctx: EvalContext, t: number, who: string): Float64Array {
  const th = ctx.run.thetas;
  if (!th) throw new DvembError('BAD_INPUT', `${who} needs θ_t at every step`, 'train with keepEveryStep: true');
  return th[t] as Float64Array;
}

/** The batch of step t as the curvature functions take it. */
export function stepBatch(trainer: Trainer, t: number): WeightedBatch & { ids: Int32Array; w: Float64Array } {
  const ids = trainer.batch(t);
  const { data } = trainer.config;
  const w = trainer.weights(t, ids);
  return { ids, x: gatherRows(data.x, data.d, ids), y: Array.from(ids, (i) => data.y[i] as number), n: ids.length, weights: w, w };
}

/** Test-loss gradients at θ as m vectors of length p. */
export function testGradients(model: MLP, tests: TestSet): Float64Array[] {
  const G = model.perExampleGradients(tests.x, tests.y, tests.n);
  const p = model.numParams;
  return Array.from({ length: tests.n }, (_, j) => G.slice(j * p, (j + 1) * p));
}

/** out[i·m + j] = scale_i ⟨G_i, V_j⟩ for the rows of G (b × p). */
function rowDots(G: Float64Array, b: number, p: number, V: readonly Float64Array[], scale: ArrayLike<number>, out: Float64Array, at: number): void {
  const m = V.length;
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < m; j++) {
      const v = V[j] as Float64Array;
      let s = 0;
      for (let k = 0; k < p; k++) s += (G[i * p + k] as number) * (v[k] as number);
      out[(at + i) * m + j] = (scale[i] as number) * s;
    }
  }
}

function etaW(trainer: Trainer, t: number, w: Float64Array): Float64Array {
  const eta = trainer.lr(t);
  return w.map((x) => eta * x);
}

// ---- unrolled (adjoint) ---------------------------------------------------------------------

/** H_t v for the step's batch at θ_t (WITHOUT the η_t and c_t of A_t). */
export type StepCurvature = (t: number, model: MLP, batch: WeightedBatch, vs: Float64Array[], gradients: Float64Array) => Float64Array[];

export type CurvatureKind = 'hessian' | 'ggn' | 'empirical-fisher' | 'none';

const CURVATURE: Record<CurvatureKind, StepCurvature> = {
  hessian: (_t, model, batch, vs) => hessianVectorProducts(model, batch, vs),
  ggn: (_t, model, batch, vs) => ggnVectorProducts(model, batch, vs),
  // The per-example gradients are at hand already: curvature.ts's empiricalFisherVectorProducts without recomputing them.
  'empirical-fisher': (_t, model, batch, vs, G) => vs.map((v) => outerProductApply(G, batch.weights as Float64Array, batch.n, model.numParams, v)),
  none: (_t, model, _b, vs) => vs.map(() => new Float64Array(model.numParams)),
};

export interface UnrolledOptions {
  curvature: CurvatureKind | StepCurvature;
  /** Per-example gradients of step t's batch (b × p); default: exact float64 ones at θ_t. */
  gradients?: (t: number, model: MLP, batch: WeightedBatch) => Float64Array;
  /** Test vectors v_{T−1}; default ∇ℓ(θ_T, z_test_j). */
  testVectors?: Float64Array[];
  onStep?: (done: number, total: number) => void;
}

/**
 * The first-order unrolling with the chosen curvature in the adjoint form (REFERENCE §3): one
 * curvature-vector product per step and test point, no p × p matrix. With the empirical Fisher it
 * is the engine's DVEmb, unprojected; with the exact Hessian it is the exact first-order TSLOO.
 * Returns (occurrences × m) scores.
 */
export function unrolled(ctx: EvalContext, options: UnrolledOptions): Float64Array {
  return unrolledAdjoint(ctx, options).scores;
}

/**
 * unrolled(), also returning the test vectors carried through every step, A_0ᵀ ⋯ A_{T−1}ᵀ v_{T−1}
 * = Pᵀ v_{T−1} with P the whole run's propagator (the engine writes P to propagator.npy).
 */
export function unrolledAdjoint(ctx: EvalContext, options: UnrolledOptions): { scores: Float64Array; final: Float64Array[] } {
  const { trainer, run, tests } = ctx;
  const table = tableOf(ctx);
  const curvature = typeof options.curvature === 'function' ? options.curvature : CURVATURE[options.curvature];
  if (!curvature) throw new DvembError('BAD_INPUT', `unknown curvature ${String(options.curvature)}`, "use 'hessian', 'ggn', 'empirical-fisher' or 'none'");
  let V = options.testVectors ?? testGradients(trainer.modelAt(run.theta), tests);
  const m = V.length;
  const out = new Float64Array(table.count * m);
  const T = trainer.steps;
  for (let t = T - 1; t >= 0; t--) {
    const model = trainer.modelAt(thetaAt(ctx, t, 'the unrolled estimator'));
    const batch = stepBatch(trainer, t);
    const G = options.gradients ? options.gradients(t, model, batch) : model.perExampleGradients(batch.x, batch.y, batch.n);
    const p = model.numParams;
    // Influence at step t uses v_t = P_tᵀ ∇ℓ_test, before A_tᵀ is applied.
    rowDots(G, batch.n, p, V, etaW(trainer, t, batch.w), out, table.offsets[t] as number);
    const eta = trainer.lr(t);
    const c = 1 - eta * trainer.weightDecay;
    const HV = eta === 0 ? null : curvature(t, model, batch, V, G);
    V = V.map((v, j) => {
      const hv = HV?.[j];
      const next = new Float64Array(p);
      for (let k = 0; k < p; k++) next[k] = c * (v[k] as number) - (hv ? eta * (hv[k] as number) : 0);
      return next;
    });
    options.onStep?.(T - t, T);
  }
  return { scores: out, final: V };
}

// ---- TracIn family, grad-dot, self-influence -----------------------------------------------

/** Per-step TracIn: η_t w ⟨g_t(z), ∇ℓ(θ_t, z_test)⟩; testAt 'final' takes the test gradient at θ_T (REFERENCE §5). */
export function tracinStep(ctx: EvalContext, options: { testAt?: 'step' | 'final' } = {}): Float64Array {
  const { trainer, run, tests } = ctx;
  const table = tableOf(ctx);
  const m = tests.n;
  const out = new Float64Array(table.count * m);
  const finalV = options.testAt === 'final' ? testGradients(trainer.modelAt(run.theta), tests) : null;
  for (let t = 0; t < trainer.steps; t++) {
    const model = trainer.modelAt(thetaAt(ctx, t, 'per-step TracIn'));
    const batch = stepBatch(trainer, t);
    const G = model.perExampleGradients(batch.x, batch.y, batch.n);
    rowDots(G, batch.n, model.numParams, finalV ?? testGradients(model, tests), etaW(trainer, t, batch.w), out, table.offsets[t] as number);
  }
  return out;
}

/** grad·grad at θ_T, weighted like an occurrence: η_t w ⟨∇ℓ(θ_T, z), ∇ℓ(θ_T, z_test)⟩. */
export function gradDot(ctx: EvalContext): Float64Array {
  const { trainer, run, tests } = ctx;
  const table = tableOf(ctx);
  const model = trainer.modelAt(run.theta);
  const V = testGradients(model, tests);
  const out = new Float64Array(table.count * tests.n);
  for (let t = 0; t < trainer.steps; t++) {
    const batch = stepBatch(trainer, t);
    rowDots(model.perExampleGradients(batch.x, batch.y, batch.n), batch.n, model.numParams, V, etaW(trainer, t, batch.w), out, table.offsets[t] as number);
  }
  return out;
}

/** The checkpoint that ends occurrence step t's interval, θ_{K⌈(t+1)/K⌉}, and its index. */
function checkpointOf(run: TrainRun, t: number): Float64Array {
  const K = run.checkpoints.every;
  return run.checkpoints.thetas[Math.floor(t / K) + 1] as Float64Array;
}

export interface TracinCpOptions {
  /** 'exact': full gradients; 'projected': TracIn-RP through the engine's Kronecker projection; 'last-layer': ⟨δ,δ'⟩⟨a,a'⟩. */
  form?: 'exact' | 'projected' | 'last-layer';
  /** Projection for 'projected' (default kIn = kOut = 8, Gaussian, seed 0). */
  kIn?: number;
  kOut?: number;
  projection?: ProjectionSpec;
  backend?: Backend;
  /** Score each occurrence against itself (self-influence); the result then has m = 1. */
  self?: boolean;
}

/** Kronecker blocks fc1.. of the model, as a 'kronecker' recording would declare them. */
function kroneckerBlocks(model: MLP, kIn: number, kOut: number): BlockSpec[] {
  return model.layers.map(({ dIn, dOut }, l) => ({ name: `fc${l + 1}`, kind: 'kronecker', dIn, dOut, bias: true, kIn: Math.min(kIn, dIn + 1), kOut: Math.min(kOut, dOut) }));
}

function factorsOf(layers: LayerFactors[]): BatchGradients {
  return Object.fromEntries(layers.map((f, l) => [`fc${l + 1}`, { inputs: f.inputs, outputGrads: f.outputGrads } satisfies BlockGradient]));
}

/**
 * Gradient features of n examples at one model, with their inner product: full gradients (n × p),
 * engine-projected rows (n × k), or the last layer's factors [a, 1 | δ] whose product is the
 * factorised ⟨δ, δ'⟩ (⟨a, a'⟩ + 1) = ⟨δ aᵀ, δ' a'ᵀ⟩ + ⟨δ, δ'⟩ (REFERENCE §5, bias included).
 */
interface Features {
  n: number;
  dot: (i: number, other: Features, j: number) => number;
}

async function features(model: MLP, x: Float64Array, y: ArrayLike<number>, n: number, form: 'exact' | 'projected' | 'last-layer', projector: Projector | null): Promise<Features> {
  const dense = (rows: Float64Array, width: number): Features & { rows: Float64Array } => ({
    n,
    rows,
    dot: (i, other, j) => {
      const o = (other as Features & { rows: Float64Array }).rows;
      let s = 0;
      for (let k = 0; k < width; k++) s += (rows[i * width + k] as number) * (o[j * width + k] as number);
      return s;
    },
  });
  if (form === 'exact') return dense(model.perExampleGradients(x, y, n), model.numParams);
  const pe = model.perExample(x, y, n);
  if (form === 'projected') {
    const p = projector as Projector;
    return dense(Float64Array.from(await p.project(factorsOf(pe.layers), n, 'tracin-rp gradients')), p.layout.dim);
  }
  const { dIn, dOut } = model.layers[model.layers.length - 1]!;
  const { inputs: a, outputGrads: d } = pe.layers[pe.layers.length - 1] as LayerFactors;
  const f: Features & { a: Float64Array; d: Float64Array } = {
    n,
    a,
    d,
    dot: (i, other, j) => {
      const o = other as typeof f;
      return lastLayerDot(a.subarray(i * dIn, (i + 1) * dIn), d.subarray(i * dOut, (i + 1) * dOut), o.a.subarray(j * dIn, (j + 1) * dIn), o.d.subarray(j * dOut, (j + 1) * dOut));
    },
  };
  return f;
}

/** ⟨δ, δ'⟩ (⟨a, a'⟩ + 1) without forming δ aᵀ: the factorised last-layer product (REFERENCE §5). */
export function lastLayerDot(a: Float64Array, delta: Float64Array, a2: Float64Array, delta2: Float64Array): number {
  let dd = 0;
  for (let o = 0; o < delta.length; o++) dd += (delta[o] as number) * (delta2[o] as number);
  let aa = 1;
  for (let k = 0; k < a.length; k++) aa += (a[k] as number) * (a2[k] as number);
  return dd * aa;
}

/**
 * TracIn over the saved checkpoints (REFERENCE §5). Each occurrence at step t is scored with the
 * checkpoint that ends its interval and its own η_t w_z (the canonical TracInCP's "η_i per
 * checkpoint, one visit per interval" made exact by the recorded visits); the all-epoch score is
 * then Σ_i over checkpoints, as in the paper.
 */
export async function tracinCP(ctx: EvalContext, options: TracinCpOptions = {}): Promise<Float64Array> {
  const { trainer, run, tests } = ctx;
  const table = tableOf(ctx);
  const form = options.form ?? 'exact';
  const m = options.self ? 1 : tests.n;
  const out = new Float64Array(table.count * m);
  const probe = trainer.initialModel();
  const projector = form === 'projected' ? new Projector(new Layout(options.projection ?? { seed: 0, distribution: 'gaussian' }, kroneckerBlocks(probe, options.kIn ?? 8, options.kOut ?? 8)), options.backend ?? loadBackend().backend) : null;
  const K = run.checkpoints.every;
  for (let c = 1; c < run.checkpoints.steps.length; c++) {
    const model = trainer.modelAt(checkpointOf(run, (c - 1) * K));
    const test = options.self ? null : await features(model, tests.x, tests.y, tests.n, form, projector);
    for (let t = (c - 1) * K; t < c * K; t++) {
      const batch = stepBatch(trainer, t);
      const f = await features(model, batch.x, batch.y, batch.n, form, projector);
      const scale = etaW(trainer, t, batch.w);
      const at = table.offsets[t] as number;
      for (let i = 0; i < batch.n; i++) {
        if (test) for (let j = 0; j < m; j++) out[(at + i) * m + j] = (scale[i] as number) * f.dot(i, test, j);
        else out[at + i] = (scale[i] as number) * f.dot(i, f, i);
      }
    }
  }
  return out;
}

// ---- DVEmb through the engine -----------------------------------------------------------------

export interface DvembOptions extends Pick<ComputeOptions, 'mode' | 'precision' | 'curvature'> {
  backend?: Backend;
}

/** Test gradients at θ_T in the block form of the trajectory's layout (the harness's job at query time). */
function testBlockGradients(layout: Layout, model: MLP, tests: TestSet): BatchGradients {
  const pe = model.perExample(tests.x, tests.y, tests.n);
  const out: Record<string, BlockGradient> = {};
  model.layers.forEach((info, l) => {
    const block = layout.block(`fc${l + 1}`);
    const f = pe.layers[l] as LayerFactors;
    if (block.kind === 'kronecker') out[block.name] = { inputs: f.inputs, outputGrads: f.outputGrads };
    else if (block.kind === 'dense') out[block.name] = { gradient: layerGradientRows(info, f, tests.n) };
    else out[block.name] = { projected: Float32Array.from(layerGradientRows(info, f, tests.n)) };
  });
  return out;
}

/**
 * Scores from embeddings the engine computed (EmbeddingSet at `embeddingsDir`): the test gradients
 * at θ_T are projected with the embeddings' own layout and scored by the engine's perOccurrence.
 */
export async function dvembScores(ctx: EvalContext, embeddingsDir: string, backend?: Backend): Promise<Float64Array> {
  const set = EmbeddingSet.open(embeddingsDir);
  const table = tableOf(ctx);
  if (set.count !== table.count) throw new DvembError('SHAPE_MISMATCH', `${embeddingsDir} holds ${set.count} occurrences, the run has ${table.count}`, 'compute the embeddings of this run’s trajectory');
  for (let o = 0; o < table.count; o++) {
    if (set.ids[o] !== table.ids[o] || set.occurrenceSteps[o] !== stepOfRow(table, o)) throw new DvembError('BAD_INPUT', `${embeddingsDir}: occurrence ${o} is example ${set.ids[o]} at step ${set.occurrenceSteps[o]}, the run has example ${table.ids[o]} at step ${stepOfRow(table, o)}`, 'compute the embeddings of this run’s trajectory');
  }
  const be = backend ?? loadBackend().backend;
  const model = ctx.trainer.modelAt(ctx.run.theta);
  const tests = await projectTests(set, testBlockGradients(set.layout, model, ctx.tests), ctx.tests.n, be);
  return Float64Array.from(await perOccurrence(set, tests, { backend: be }));
}

/** Runs the engine's backward pass on a recorded trajectory, then scores it. */
export async function dvemb(ctx: EvalContext, trajectoryDir: string, outDir: string, options: DvembOptions = {}): Promise<{ scores: Float64Array; seconds: number }> {
  const be = options.backend ?? loadBackend().backend;
  const manifest = await computeEmbeddings(trajectoryDir, { out: outDir, mode: options.mode ?? 'per-block', precision: options.precision ?? 'fp32', curvature: options.curvature ?? 'empirical-fisher', backend: be });
  return { scores: await dvembScores(ctx, outDir, be), seconds: manifest.seconds };
}

// ---- the classical influence function ------------------------------------------------------------

export interface InfluenceOptions {
  /** δ ≥ 0, added to λ (default 0.01). */
  damping?: number;
  /** 'exact': dense Hessian and an LU solve (small models); 'cg': conjugate gradients with HVPs; 'auto': exact when p ≤ 600. */
  solver?: 'exact' | 'cg' | 'auto';
  /** CG: stop when ‖r‖ ≤ tolerance·‖b‖ (default 1e-8), or after maxIterations (default 1000). */
  tolerance?: number;
  maxIterations?: number;
  /** Examples per HVP pass over the training set (default 512). */
  chunk?: number;
}

export interface InfluenceResult {
  /** Occurrence scores (occurrences × m): IF / occurrences of the example. */
  scores: Float64Array;
  /** Per example (n × m): IF(z, z_test). */
  examples: Float64Array;
  solver: 'exact' | 'cg';
  iterations: number;
}

/**
 * IF(z, z_test) = s ∇ℓ(θ_T, z_test)ᵀ (s H_Σ + (λ' + δ) I)⁻¹ ∇ℓ(θ_T, z), H_Σ = Σ_i ∇²ℓ(θ_T, z_i) over the
 * training set. For a mean-reduced run s = 1/n and λ' = λ (REFERENCE §6). For a summed run the
 * objective the SGD steps follow is Σ_i ℓ_i + (nλ/2|B|)‖θ‖², so s = 1 and λ' = nλ/|B|. The system is
 * solved once per test point (the test side), then dotted with every training gradient.
 */
export function influenceFunction(ctx: EvalContext, options: InfluenceOptions = {}): InfluenceResult {
  const { trainer, run, tests } = ctx;
  const table = tableOf(ctx);
  const { data, batchSize } = trainer.config;
  const model = trainer.modelAt(run.theta);
  const p = model.numParams;
  const n = data.n;
  const delta = options.damping ?? 0.01;
  if (!Number.isFinite(delta) || delta < 0) throw new DvembError('BAD_INPUT', `damping must be a finite number ≥ 0, got ${delta}`);
  const mean = trainer.reduction === 'mean';
  const s = mean ? 1 / n : 1;
  const shift = (mean ? trainer.weightDecay : (n * trainer.weightDecay) / batchSize) + delta;
  const chunk = options.chunk ?? 512;
  const all = Int32Array.from({ length: n }, (_, i) => i);
  // A v = s Σ_i ∇²ℓ_i v + shift·v, summed over the training set in fixed chunks.
  const apply = (vs: Float64Array[]): Float64Array[] => {
    const acc = vs.map(() => new Float64Array(p));
    for (let from = 0; from < n; from += chunk) {
      const ids = all.subarray(from, Math.min(n, from + chunk));
      const hv = hessianVectorProducts(model, { x: gatherRows(data.x, data.d, ids), y: Array.from(ids, (i) => data.y[i] as number), n: ids.length, weights: s }, vs);
      hv.forEach((h, j) => {
        const a = acc[j] as Float64Array;
        for (let k = 0; k < p; k++) a[k] = (a[k] as number) + (h[k] as number);
      });
    }
    return acc.map((a, j) => {
      const v = vs[j] as Float64Array;
      for (let k = 0; k < p; k++) a[k] = (a[k] as number) + shift * (v[k] as number);
      return a;
    });
  };
  const B = testGradients(model, tests);
  const solver = options.solver === 'exact' || options.solver === 'cg' ? options.solver : p <= 600 ? 'exact' : 'cg';
  let U: Float64Array[];
  let iterations = 0;
  if (solver === 'exact') {
    const A = new Float64Array(p * p);
    for (let start = 0; start < p; start += 64) {
      const count = Math.min(64, p - start);
      const units = Array.from({ length: count }, (_, c) => {
        const e = new Float64Array(p);
        e[start + c] = 1;
        return e;
      });
      apply(units).forEach((col, c) => {
        for (let r = 0; r < p; r++) A[r * p + start + c] = col[r] as number;
      });
    }
    U = luSolve(A, p, B);
  } else {
    const res = conjugateGradients(apply, B, options.tolerance ?? 1e-8, options.maxIterations ?? 1000);
    U = res.x;
    iterations = res.iterations;
  }
  // IF per example: s ⟨u_j, ∇ℓ(θ_T, z)⟩.
  const m = tests.n;
  const examples = new Float64Array(n * m);
  for (let from = 0; from < n; from += chunk) {
    const ids = all.subarray(from, Math.min(n, from + chunk));
    const G = model.perExampleGradients(gatherRows(data.x, data.d, ids), Array.from(ids, (i) => data.y[i] as number), ids.length);
    rowDots(G, ids.length, p, U, new Float64Array(ids.length).fill(s), examples, from);
  }
  const counts = new Float64Array(n);
  for (let o = 0; o < table.count; o++) counts[table.ids[o] as number]! += 1;
  const scores = new Float64Array(table.count * m);
  for (let o = 0; o < table.count; o++) {
    const id = table.ids[o] as number;
    for (let j = 0; j < m; j++) scores[o * m + j] = (examples[id * m + j] as number) / (counts[id] as number);
  }
  return { scores, examples, solver, iterations };
}
