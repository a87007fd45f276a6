// Ground truth and comparison for group attribution (REFERENCE §7, §2, §5).
//
// Truth: for each removal mask, retrain the reference model from scratch with the same
// initialisation, batch order and schedule, the removed groups' examples dropped from every batch
// they are in by w = 0 (no renormalisation: the other examples keep w = 1/|B|, as in the TSLOO
// definition of REFERENCE §2), and evaluate the same target function f_j = ℓ(θ'_T, z_j).
//
// Predictions of f(m) − f(∅), all with the sign "positive = the removed groups helped":
//   - DDM:           m·W (the ridge datamodel; its intercept does not matter to a rank correlation);
//   - DVEmb-grouped: Σ_{k removed} score_k, score_k = Σ_{z∈D_k} (the engine's all-epoch score of z:
//                    perExample of the embeddings with the final model's test gradients);
//   - TracIn-grouped: the same sum of TracInCP scores over the saved checkpoints (REFERENCE §5),
//                    Σ_i ν ⟨∇ℓ(θ_{t_i}, z), ∇ℓ(θ_{t_i}, z')⟩ with each occurrence scored at the
//                    checkpoint that ends its interval and weighted by its own η_t w_z
//                    (lib/eval/estimators.ts tracinCP, exact gradients).
// LDS (the linear datamodeling score) per target = Spearman over the masks between the prediction
// and the retrained f; reported as the mean over targets.

import { loadBackend } from '../backend/loader.js';
import type { Backend } from '../backend/surface.js';
import { perExample, projectTests } from '../embeddings/query.js';
import { EmbeddingSet } from '../embeddings/store.js';
import { DvembError } from '../errors.js';
import { exampleScores, occurrenceTable, tracinCP, type EvalContext } from '../eval/estimators.js';
import { spearman } from '../eval/metrics.js';
import type { LayerFactors, MLP } from '../eval/mlp.js';
import { layerGradientRows, type Trainer } from '../eval/trainer.js';
import type { BatchGradients, BlockGradient } from '../projection.js';
import type { Groups } from './groups.js';
import type { Examples } from './synset.js';

export interface RetrainResult {
  /** f for every mask: count × T. */
  outputs: Float64Array;
  count: number;
  /** f(∅), the reference run's target losses. */
  baseline: Float64Array;
  /** Wall-clock seconds of the retraining (this thread, one mask after the other). */
  seconds: number;
}

/** The training examples of the removed groups of one mask row. */
export function removedExamples(groups: Groups, mask: ArrayLike<number>): number[] {
  if (mask.length !== groups.K) throw new DvembError('SHAPE_MISMATCH', `a mask has ${mask.length} entries for ${groups.K} groups`);
  const out: number[] = [];
  for (let k = 0; k < groups.K; k++) if (mask[k]) for (const i of groups.members[k]!) out.push(i);
  return out.sort((a, b) => a - b);
}

/**
 * Retrains from θ_0 for every mask (count × K) with the removed groups' examples at w = 0, and
 * evaluates every target's loss. Sequential in this thread, so its wall clock compares fairly with
 * the (also single-threaded) online stage.
 */
export function retrainMasks(trainer: Trainer, groups: Groups, masks: Uint8Array, targets: Examples, onProgress?: (done: number, total: number) => void): RetrainResult {
  if (trainer.config.data.n !== groups.n) throw new DvembError('SHAPE_MISMATCH', `the groups cover ${groups.n} examples, the trainer's data have ${trainer.config.data.n}`);
  const K = groups.K;
  const count = masks.length / K;
  if (!Number.isInteger(count)) throw new DvembError('SHAPE_MISMATCH', `${masks.length} mask entries are not whole rows of ${K}`);
  const T = targets.n;
  const theta0 = trainer.initialModel().parameters();
  const model = trainer.initialModel();
  const outputs = new Float64Array(count * T);
  const t0 = performance.now();
  for (let r = 0; r < count; r++) {
    const examples = removedExamples(groups, masks.subarray(r * K, (r + 1) * K));
    model.setParameters(trainer.runFrom(0, theta0, examples.length ? { examples } : undefined));
    outputs.set(model.losses(targets.x, targets.y, T), r * T);
    onProgress?.(r + 1, count);
  }
  const seconds = (performance.now() - t0) / 1000;
  model.setParameters(trainer.runFrom(0, theta0));
  return { outputs, count, baseline: model.losses(targets.x, targets.y, T), seconds };
}

/** Sums per-example scores (n × T, row = training example id) over each group's members: K × T. */
export function groupScores(scores: ArrayLike<number>, T: number, groups: Groups): Float64Array {
  if (scores.length !== groups.n * T) throw new DvembError('SHAPE_MISMATCH', `${scores.length} scores are not ${groups.n} examples × ${T} targets`);
  const out = new Float64Array(groups.K * T);
  for (let i = 0; i < groups.n; i++) {
    const k = groups.assignment[i] as number;
    for (let j = 0; j < T; j++) out[k * T + j]! += scores[i * T + j] as number;
  }
  return out;
}

/** Predicted f(m) − f(∅) = Σ_{k removed} score_k for every mask: count × T. */
export function predictFromScores(scores: ArrayLike<number>, K: number, T: number, masks: Uint8Array): Float64Array {
  const count = masks.length / K;
  const out = new Float64Array(count * T);
  for (let r = 0; r < count; r++) {
    for (let k = 0; k < K; k++) {
      if (!masks[r * K + k]) continue;
      for (let j = 0; j < T; j++) out[r * T + j]! += scores[k * T + j] as number;
    }
  }
  return out;
}

export interface Lds {
  /** Mean over the targets whose Spearman is defined. */
  mean: number;
  /** Spearman over the masks, per target (NaN when either side is constant). */
  perTarget: Float64Array;
}

/** LDS: per target, Spearman over the masks between predicted and actual (both count × T). */
export function lds(predicted: ArrayLike<number>, actual: ArrayLike<number>, count: number, T: number): Lds {
  if (predicted.length !== count * T || actual.length !== count * T) {
    throw new DvembError('SHAPE_MISMATCH', `lds: ${predicted.length} predictions and ${actual.length} outcomes for ${count} masks × ${T} targets`);
  }
  const perTarget = new Float64Array(T);
  let sum = 0;
  let defined = 0;
  const a = new Float64Array(count);
  const b = new Float64Array(count);
  for (let j = 0; j < T; j++) {
    for (let r = 0; r < count; r++) {
      a[r] = predicted[r * T + j] as number;
      b[r] = actual[r * T + j] as number;
    }
    const s = spearman(a, b);
    perTarget[j] = s;
    if (Number.isFinite(s)) {
      sum += s;
      defined++;
    }
  }
  return { mean: defined ? sum / defined : NaN, perTarget };
}

/** Test-loss factors at θ_T in the block form of the embeddings' layout (blocks fc1, fc2, ...). */
function targetGradients(set: EmbeddingSet, model: MLP, targets: Examples): BatchGradients {
  const pe = model.perExample(targets.x, targets.y, targets.n);
  const out: Record<string, BlockGradient> = {};
  model.layers.forEach((info, l) => {
    const name = `fc${l + 1}`;
    const block = set.layout.blocks.find((b) => b.name === name);
    if (!block) throw new DvembError('UNKNOWN_BLOCK', `the embeddings have no block ${name} (blocks: ${set.layout.blocks.map((b) => b.name).join(', ')})`, 'record one block per linear layer, named fc1, fc2, ...');
    const f = pe.layers[l] as LayerFactors;
    if (block.kind === 'kronecker') out[name] = { inputs: f.inputs, outputGrads: f.outputGrads };
    else if (block.kind === 'dense') out[name] = { gradient: layerGradientRows(info, f, targets.n) };
    else out[name] = { projected: Float32Array.from(layerGradientRows(info, f, targets.n)) };
  });
  return out;
}

/**
 * DVEmb aggregated to groups: the engine's all-epoch per-example scores (perExample with the final
 * model's projected test gradients), summed over each group's members. K × T.
 */
export async function dvembGroupScores(embeddingsDir: string, model: MLP, targets: Examples, groups: Groups, backend?: Backend): Promise<Float64Array> {
  const be = backend ?? loadBackend().backend;
  const set = EmbeddingSet.open(embeddingsDir);
  const tests = await projectTests(set, targetGradients(set, model, targets), targets.n, be);
  const { ids, scores, m } = await perExample(set, tests, { backend: be });
  const T = m;
  const out = new Float64Array(groups.K * T);
  for (let e = 0; e < ids.length; e++) {
    const id = ids[e] as number;
    if (id >= groups.n) throw new DvembError('UNKNOWN_ID', `the embeddings hold example ${id}, but the groups cover only 0..${groups.n - 1}`, 'group the same training set the trajectory recorded');
    const k = groups.assignment[id] as number;
    for (let j = 0; j < T; j++) out[k * T + j]! += scores[e * T + j] as number;
  }
  return out;
}

/** TracInCP (exact gradients, lib/eval/estimators.ts) aggregated to groups. K × T. */
export async function tracinGroupScores(ctx: EvalContext, groups: Groups): Promise<Float64Array> {
  const T = ctx.tests.n;
  const table = ctx.table ?? occurrenceTable(ctx.trainer);
  const occ = await tracinCP({ ...ctx, table }, { form: 'exact' });
  return groupScores(exampleScores(table, occ, T, groups.n), T, groups);
}
