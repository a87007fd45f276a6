// The TensorFlow.js adapter on the shipped digits: a tfjs MLP trained with its own loop (plain
// SGD, warm-up + cosine) through TfjsRecorder, which records each step's per-example factors;
// then data value embeddings, and for three test digits the training images that helped and
// hurt them most, drawn as 8×8 ASCII images.
//
//   node dist/lib/demo/tfjs-digits.js [--curvature]     (--curvature: sampled-label rows, m = 1)
import * as tf from '@tensorflow/tfjs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TfjsRecorder } from '../adapters/tfjs.js';
import { loadBackend } from '../backend/loader.js';
import { bucket, signedBars } from '../cli/chart.js';
import { computeEmbeddings } from '../embeddings/backward.js';
import { EmbeddingSet } from '../embeddings/store.js';
import { influenceProfile, projectTests, topK, type Attribution } from '../embeddings/query.js';
import { loadDigits, split, type Dataset } from '../eval/datasets.js';
import { Rng } from '../eval/rng.js';
import { warmupCosine } from '../eval/schedule.js';

const EPOCHS = 6;
const BATCH = 32;
const SHADES = ' .:-=+*#%@';

function batchOf(ds: Dataset, idx: ArrayLike<number>): tf.Tensor2D {
  const out = new Float32Array(idx.length * ds.d);
  for (let i = 0; i < idx.length; i++) out.set(ds.x.subarray(idx[i]! * ds.d, (idx[i]! + 1) * ds.d), i * ds.d);
  return tf.tensor2d(out, [idx.length, ds.d]);
}

/** 8 text rows of an 8×8 digit (raw pixels in [0, 1]). */
function picture(ds: Dataset, i: number): string[] {
  const px = ds.rawX ?? ds.x;
  return Array.from({ length: 8 }, (_, r) =>
    Array.from({ length: 8 }, (_, c) => SHADES[Math.min(9, Math.max(0, Math.round(px[i * 64 + r * 8 + c]! * 9)))]!.repeat(2)).join(''),
  );
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const curvature = process.argv.includes('--curvature');
  await tf.setBackend('cpu');
  const { name: backendName, backend } = loadBackend();
  const { train, test } = split(loadDigits(), 0.2, 0);
  const model = tf.sequential({
    layers: [
      tf.layers.dense({ inputShape: [64], units: 32, activation: 'tanh', kernelInitializer: tf.initializers.glorotNormal({ seed: 1 }) }),
      tf.layers.dense({ units: 10, kernelInitializer: tf.initializers.glorotNormal({ seed: 2 }) }), // logits
    ],
  });
  const stepsPerEpoch = Math.floor(train.n / BATCH);
  const total = EPOCHS * stepsPerEpoch;
  const schedule = warmupCosine({ peak: 0.8, warmupSteps: Math.round(total * 0.1), totalSteps: total, floor: 0.01 });
  const dir = mkdtempSync(join(tmpdir(), 'dvemb-tfjs-demo-'));
  const trajectory = join(dir, 'trajectory');
  const trainer = await TfjsRecorder.create(model, {
    dir: trajectory,
    projection: { seed: 2024 },
    k: (b) => ({ in: 16, out: Math.min(16, b.dOut) }),
    lr: schedule,
    loss: 'softmaxCrossEntropy',
    curvature: curvature ? { draws: 1 } : undefined,
    backend,
    meta: { dataset: 'digits (UCI, CC BY 4.0)', demo: 'tfjs-digits' },
  });
  console.log(
    `dvemb tfjs demo — tfjs ${tf.version.tfjs} (${tf.getBackend()}), projection backend: ${backendName}; digits: ${train.n} train / ${test.n} test; ` +
      `MLP 64-32-10 (tanh); ${total} SGD steps; blocks ${trainer.blocks.map((b) => b.name).join(', ')}${curvature ? '; sampled-label curvature rows' : ''}`,
  );

  // The training loop is the user's own: the adapter only replaces "compute gradients and update".
  const rng = new Rng(7);
  let last = 0;
  for (let epoch = 0; epoch < EPOCHS; epoch++) {
    const order = rng.permutation(train.n);
    let sum = 0;
    for (let b = 0; b < stepsPerEpoch; b++) {
      const ids = order.subarray(b * BATCH, (b + 1) * BATCH);
      const x = batchOf(train, ids);
      sum += await trainer.step({ x, y: Array.from(ids, (i) => train.y[i]!), ids });
      x.dispose();
    }
    last = sum / stepsPerEpoch;
  }
  await trainer.close();
  const xTest = batchOf(test, Array.from({ length: test.n }, (_, i) => i));
  const predicted = tf.tidy(() => (model.predict(xTest) as tf.Tensor).argMax(-1).dataSync());
  let correct = 0;
  for (let i = 0; i < test.n; i++) if (predicted[i] === test.y[i]) correct++;
  const accuracy = correct / test.n;
  const tm = trainer.timings();
  console.log(
    `trained: last-epoch loss ${last.toFixed(4)}, test accuracy ${(100 * accuracy).toFixed(1)}%; ` +
      `${((tm.passMs + tm.readMs + tm.curvatureMs + tm.updateMs + tm.recordWaitMs) / tm.steps).toFixed(2)} ms a step; trajectory in ${trajectory}`,
  );

  const out = join(dir, 'embeddings');
  const m = await computeEmbeddings(trajectory, { out, backend });
  console.log(`embeddings: ${m.occurrences} occurrences × ${m.dim} dims (${m.examples} examples, ${m.steps} steps) in ${m.seconds.toFixed(2)} s\n`);

  const set = EmbeddingSet.open(out);
  const picks = [0, 3, 8].map((c) => Array.from(test.y).indexOf(c));
  const xs = batchOf(test, picks);
  const ys = picks.map((i) => test.y[i]!);
  const g = trainer.gradients({ x: xs, y: ys }); // at the final model, inference mode
  xs.dispose();
  xTest.dispose();
  const tests = await projectTests(set, g.gradients, g.n, backend);
  const top = await topK(set, tests, 5, 'example', { backend });
  const profile = await influenceProfile(set, tests, { backend });
  const fmt = (a: Attribution) => `#${a.id} (label ${train.y[a.id]}) ${a.score >= 0 ? '+' : ''}${a.score.toExponential(2)}`;
  picks.forEach((p, j) => {
    const t = top[j]!;
    console.log(`test digit #${p} (label ${ys[j]}, loss ${g.losses[j]!.toFixed(4)})`);
    console.log(`  proponents (all epochs): ${t.proponents.map(fmt).join(', ')}`);
    console.log(`  opponents  (all epochs): ${t.opponents.map(fmt).join(', ')}`);
    const shown: [string, string[]][] = [[`test #${p}`, picture(test, p)]];
    if (t.proponents[0]) shown.push([`top proponent #${t.proponents[0].id}`, picture(train, t.proponents[0].id)]);
    if (t.opponents[0]) shown.push([`top opponent #${t.opponents[0].id}`, picture(train, t.opponents[0].id)]);
    console.log('    ' + shown.map(([title]) => title.padEnd(18)).join('  '));
    for (let r = 0; r < 8; r++) console.log('    ' + shown.map(([, rows]) => `|${rows[r]}|`.padEnd(18)).join('  '));
    const series = Array.from({ length: profile.steps.length }, (_, s) => profile.values[s * profile.m + j]!);
    console.log(`  influence by step (sum over each step's batch; ${total} steps in ${Math.min(60, total)} columns):`);
    console.log(signedBars(bucket(series, 60), 4).replace(/^/gm, '    '));
    console.log('');
  });
  console.log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s. Files: ${dir}`);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
