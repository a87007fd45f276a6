// `npm run demo`: train a small MLP on the shipped digits with plain SGD and a warm-up + cosine
// schedule, record the trajectory, compute data value embeddings, and show for three test
// digits which training images helped and hurt them, and when in training they mattered.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBackend } from '../backend/loader.js';
import { bucket, signedBars } from '../cli/chart.js';
import { computeEmbeddings } from '../embeddings/backward.js';
import { EmbeddingSet } from '../embeddings/store.js';
import { influenceProfile, projectTests, topK } from '../embeddings/query.js';
import { loadDigits, split } from '../eval/datasets.js';
import { MLP } from '../eval/mlp.js';
import { Rng } from '../eval/rng.js';
import { warmupCosine } from '../eval/schedule.js';
import { prepareReport, writeReport } from '../report/report.js';
import type { BlockSpec } from '../projection.js';
import { TrajectoryRecorder } from '../trajectory/recorder.js';

const EPOCHS = 6;
const BATCH = 32;

function rowsOf(x: Float64Array, d: number, idx: ArrayLike<number>): Float64Array {
  const out = new Float64Array(idx.length * d);
  for (let i = 0; i < idx.length; i++) out.set(x.subarray(idx[i]! * d, (idx[i]! + 1) * d), i * d);
  return out;
}

function factorsByBlock(layers: { inputs: Float64Array; outputGrads: Float64Array }[]) {
  return Object.fromEntries(layers.map((l, i) => [`fc${i + 1}`, { inputs: l.inputs, outputGrads: l.outputGrads }]));
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const { name: backendName, backend } = loadBackend();
  const { train, test } = split(loadDigits(), 0.2, 0);
  const widths = [64, 32, 10];
  const model = new MLP({ widths, activation: 'tanh', seed: 1 });
  const stepsPerEpoch = Math.floor(train.n / BATCH);
  const total = EPOCHS * stepsPerEpoch;
  const schedule = warmupCosine({ peak: 0.8, warmupSteps: Math.round(total * 0.1), totalSteps: total, floor: 0.01 });
  const blocks: BlockSpec[] = [
    { name: 'fc1', kind: 'kronecker', dIn: 64, dOut: 32, bias: true, kIn: 16, kOut: 16 },
    { name: 'fc2', kind: 'kronecker', dIn: 32, dOut: 10, bias: true, kIn: 16, kOut: 10 },
  ];
  const dir = mkdtempSync(join(tmpdir(), 'dvemb-demo-'));
  const trajectory = join(dir, 'trajectory');
  const recorder = TrajectoryRecorder.create(trajectory, {
    projection: { seed: 2024, distribution: 'gaussian' },
    blocks,
    backend,
    meta: { model: `MLP ${widths.join('-')} tanh`, dataset: 'digits (UCI, CC BY 4.0)', optimizer: 'SGD, warm-up + cosine' },
  });
  console.log(`dvemb demo — backend: ${backendName}; digits: ${train.n} train / ${test.n} test; MLP ${widths.join('-')} (tanh); ${total} SGD steps`);

  const rng = new Rng(7);
  let step = 0;
  for (let epoch = 0; epoch < EPOCHS; epoch++) {
    const order = rng.permutation(train.n);
    for (let b = 0; b < stepsPerEpoch; b++, step++) {
      const ids = order.subarray(b * BATCH, (b + 1) * BATCH);
      const x = rowsOf(train.x, train.d, ids);
      const y = Array.from(ids, (i) => train.y[i]!);
      const lr = schedule(step);
      const res = model.sgdStep({ x, y, n: ids.length, weights: 1 / ids.length, lr });
      await recorder.record({ step, lr, ids, reduction: 'mean', gradients: factorsByBlock(res.layers) });
    }
  }
  await recorder.close();
  console.log(`trained: test accuracy ${(100 * model.accuracy(test.x, test.y, test.n)).toFixed(1)}%; trajectory in ${trajectory}`);

  const out = join(dir, 'embeddings');
  const m = await computeEmbeddings(trajectory, { out, backend });
  console.log(`embeddings: ${m.occurrences} occurrences × ${m.dim} dims (${m.examples} examples, ${m.steps} steps) in ${m.seconds.toFixed(2)} s\n`);

  const set = EmbeddingSet.open(out);
  const picks = [0, 1, 2].map((c) => Array.from(test.y).indexOf(c));
  const xs = rowsOf(test.x, test.d, picks);
  const ys = picks.map((i) => test.y[i]!);
  const g = model.perExample(xs, ys, picks.length);
  const tests = await projectTests(set, factorsByBlock(g.layers), picks.length, backend);
  const top = await topK(set, tests, 5, 'example', { backend });
  const occ = await topK(set, tests, 3, 'occurrence', { backend });
  const profile = await influenceProfile(set, tests, { backend, divideByLr: false });
  const label = (id: number) => train.y[id]!;
  picks.forEach((p, j) => {
    console.log(`test digit #${p} (label ${ys[j]}, loss ${g.losses[j]!.toFixed(4)})`);
    const fmt = (a: { id: number; score: number; step?: number }) =>
      `#${a.id} (label ${label(a.id)}${a.step !== undefined ? `, step ${a.step}` : ''}) ${a.score >= 0 ? '+' : ''}${a.score.toExponential(2)}`;
    console.log(`  proponents (all epochs): ${top[j]!.proponents.map(fmt).join(', ')}`);
    console.log(`  opponents  (all epochs): ${top[j]!.opponents.map(fmt).join(', ')}`);
    console.log(`  strongest single occurrences: ${occ[j]!.proponents.map(fmt).join(', ')}`);
    const series = Array.from({ length: profile.steps.length }, (_, t) => profile.values[t * profile.m + j]!);
    console.log(`  influence by step (sum over each step's batch; ${total} steps in ${Math.min(60, total)} columns):`);
    console.log(signedBars(bucket(series, 60), 4).replace(/^/gm, '    '));
    console.log(`    step 0${' '.repeat(Math.max(1, Math.min(60, total) - 6 - String(total - 1).length))}${total - 1}\n`);
  });
  prepareReport(out, {
    tests,
    testNames: picks.map((p) => `test digit #${p}`),
    testLabels: ys,
    testImages: xs,
    images: train.x,
    image: { height: 8, width: 8, range: [0, 1], invert: true },
    labels: train.y,
    classNames: train.classNames!,
    title: `Digits: MLP ${widths.join('-')} (tanh), ${EPOCHS} epochs`,
  });
  console.log(`report: ${await writeReport(out, { backend })} (open it in a browser)`);
  console.log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s. Files: ${dir}`);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
