// A TensorFlow.js training step with capture and recording (TfjsRecorder.step) against the plain
// tfjs step (tf.train.sgd(η).minimize on the mean loss), in one benny suite: MLP 64-128-128-10,
// batch 64, three Kronecker blocks of kIn = kOut = 16 (256 projected dims each, 768 a row).
// Both models start from the same weights and take the same kind of step on the same batch.
//
//   node dist/bench/tfjs.js [--quick]
//
// Writes bench/results/tfjs.json (benny) and bench/results/tfjs-breakdown.json (where the
// capture step's time goes, from TfjsRecorder.timings(), plus an interleaved A/B check).
import * as tf from '@tensorflow/tfjs';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { add, complete, cycle, save, suite } from 'benny';
import { TfjsRecorder, type TfjsTimings } from '../lib/adapters/tfjs.js';
import { loadBackend } from '../lib/backend/loader.js';
import { median, serial } from './util.js';

export interface TfjsBenchResult {
  /** Median ms of one plain tfjs SGD step. */
  plainMs: number;
  /** Median ms of one step with capture, projection and recording. */
  captureMs: number;
  /** captureMs / plainMs (target ≤ 1.3). */
  ratio: number;
  /** The same ratio from alternating plain and capture steps (drift-free cross-check). */
  interleavedRatio: number;
  /** Mean ms per capture step by phase (projection + write run beside the next step). */
  breakdown: Record<string, number>;
  backend: string;
}

const WIDTHS = [64, 128, 128, 10];
const BATCH = 64;
const K = 16;
const LR = 0.05;

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('bench: cannot find the package.json above ' + fileURLToPath(import.meta.url));
    dir = parent;
  }
  return dir;
}

function mlp(): tf.Sequential {
  const layers = WIDTHS.slice(1).map((units, i) =>
    tf.layers.dense({
      ...(i === 0 ? { inputShape: [WIDTHS[0]!] } : {}),
      units,
      activation: i < WIDTHS.length - 2 ? 'relu' : 'linear',
      kernelInitializer: tf.initializers.glorotNormal({ seed: 10 + i }),
    }),
  );
  return tf.sequential({ layers });
}

export async function runTfjsBench(opts: { quick: boolean }): Promise<TfjsBenchResult> {
  await tf.setBackend('cpu');
  await tf.ready();
  const root = packageRoot();
  const resultsDir = join(root, 'bench', 'results');
  mkdirSync(resultsDir, { recursive: true });
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
  const { name: backendName, backend } = loadBackend();

  const plainModel = mlp();
  const captureModel = mlp();
  captureModel.setWeights(plainModel.getWeights());
  const x = tf.randomNormal([BATCH, WIDTHS[0]!], 0, 1, 'float32', 1);
  const y = tf.tidy(() => tf.oneHot(tf.randomUniform([BATCH], 0, WIDTHS.at(-1)!, 'int32', 2), WIDTHS.at(-1)!).toFloat());
  const sgd = tf.train.sgd(LR);
  const plainStep = (): void => {
    sgd.minimize(() => tf.losses.softmaxCrossEntropy(y, plainModel.apply(x, { training: true }) as tf.Tensor) as tf.Scalar);
  };

  const work = mkdtempSync(join(tmpdir(), 'dvemb-bench-tfjs-'));
  const trainer = await TfjsRecorder.create(captureModel, {
    dir: join(work, 'trajectory'),
    projection: { seed: 1 },
    k: { in: K, out: K },
    lr: LR,
    loss: 'softmaxCrossEntropy',
    backend,
  });
  const ids = Array.from({ length: BATCH }, (_, i) => i);
  const captureStep = () => trainer.step({ x, y, ids });

  try {
    // Warm both paths (kernel caches, shape dry run, addon threads) before anything is timed.
    for (let i = 0; i < 20; i++) {
      plainStep();
      await captureStep();
    }
    const t0 = trainer.timings();

    const fast = opts.quick ? { minSamples: 5, maxTime: 0.6 } : { minSamples: 20, maxTime: 4 };
    const plainName = `plain tfjs SGD step (MLP ${WIDTHS.join('-')}, batch ${BATCH})`;
    const captureName = `tfjs step with capture + record (3 Kronecker blocks ${K}×${K}, ${backendName})`;
    const summary = await suite(
      'TensorFlow.js training step: capture vs plain',
      add(plainName, serial(async () => plainStep()), fast),
      add(captureName, serial(captureStep), fast),
      cycle(),
      complete(),
      save({ file: 'tfjs', folder: resultsDir, version, details: true }),
    );
    const med = (name: string) => median(summary.results.find((r) => r.name === name)!.details.sampleResults) * 1e3;
    const plainMs = med(plainName);
    const captureMs = med(captureName);
    const t1 = trainer.timings();

    // Interleaved A/B: same number of each, alternating, so slow drift hits both alike.
    const rounds = opts.quick ? 30 : 150;
    const a: number[] = [];
    const b: number[] = [];
    for (let i = 0; i < rounds; i++) {
      let s = performance.now();
      plainStep();
      a.push(performance.now() - s);
      s = performance.now();
      await captureStep();
      b.push(performance.now() - s);
    }
    await trainer.flush();
    const steps = t1.steps - t0.steps;
    const per = (k: keyof TfjsTimings) => +((t1[k] - t0[k]) / steps).toFixed(3);
    const breakdown = {
      passMs: per('passMs'),
      readMs: per('readMs'),
      updateMs: per('updateMs'),
      recordWaitMs: per('recordWaitMs'),
      recordAsyncMs: per('recordMs'),
    };
    const result: TfjsBenchResult = {
      plainMs: +plainMs.toFixed(3),
      captureMs: +captureMs.toFixed(3),
      ratio: +(captureMs / plainMs).toFixed(3),
      interleavedRatio: +(median(b) / median(a)).toFixed(3),
      breakdown,
      backend: backendName,
    };
    writeFileSync(
      join(resultsDir, 'tfjs-breakdown.json'),
      JSON.stringify(
        {
          ...result,
          runAt: new Date().toISOString(),
          quick: opts.quick,
          model: `MLP ${WIDTHS.join('-')} relu, batch ${BATCH}, softmax cross-entropy (mean), SGD η = ${LR}`,
          blocks: `3 Kronecker blocks, kIn = kOut = ${K} (dim ${3 * K * K})`,
          note: 'breakdown: mean ms per capture step; recordAsyncMs (projection + write) overlaps the next step, recordWaitMs is the part that did not',
        },
        null,
        2,
      ) + '\n',
    );
    return result;
  } finally {
    await trainer.close().catch(() => undefined);
    tf.dispose([x, y]);
    plainModel.dispose();
    captureModel.dispose();
    sgd.dispose();
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes('--quick');
  runTfjsBench({ quick })
    .then((r) => {
      process.stdout.write(
        `\nplain ${r.plainMs.toFixed(2)} ms, capture ${r.captureMs.toFixed(2)} ms: ratio ${r.ratio.toFixed(2)} (target ≤ 1.3; interleaved ${r.interleavedRatio.toFixed(2)})\n` +
          `capture step breakdown (ms): ${Object.entries(r.breakdown).map(([k, v]) => `${k} ${v}`).join(', ')}\n`,
      );
    })
    .catch((err: unknown) => {
      process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    });
}
