// `dvemb eval`: the fidelity experiment (lib/eval/experiment.ts) from the command line. Prints the
// estimator × setting table and the error decomposition, writes results.json and the SVG figures
// to --out; with --json, stdout carries exactly one JSON object (progress goes to stderr).
import { mkdirSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { DvembError } from '../errors.js';
import { formatDecomposition, formatTable, runExperiment, type ExperimentResult } from '../eval/experiment.js';
import { Progress } from './progress.js';

export const EVAL_USAGE = `dvemb eval [--quick] [--json] [--dataset digits|breast-cancer] [--activation tanh|relu] [--out <dir>]
  Measures how faithful each estimator is: trains a small MLP on shipped data, computes the exact
  trajectory-specific leave-one-out by replay for occurrences from the first and the last epoch
  and for all-occurrence removals, and compares DVEmb (empirical / sampled Fisher, per-block /
  global, fp32 / fp64, projected / not), the exact-Hessian unrolling, TracIn, the influence
  function and grad·grad. Prints the table and an error decomposition; writes results.json and
  SVG figures to --out (default ./dvemb-eval). --quick takes about a minute on 2 cores.`;

/** Everything but the SVG text: what --json prints and results.json holds. */
function summary(r: ExperimentResult): Omit<ExperimentResult, 'figures'> & { figures: string[] } {
  const { figures, ...rest } = r;
  return { ...rest, figures: Object.keys(figures) };
}

export async function cmdEval(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: 'boolean' },
      json: { type: 'boolean' },
      dataset: { type: 'string', default: 'digits' },
      activation: { type: 'string', default: 'tanh' },
      out: { type: 'string', default: 'dvemb-eval' },
    },
  });
  const dataset = values.dataset as string;
  const activation = values.activation as string;
  if (dataset !== 'digits' && dataset !== 'breast-cancer') {
    throw new DvembError('BAD_INPUT', `--dataset must be digits or breast-cancer, got ${JSON.stringify(dataset)}`, 'pass --dataset digits (default) or --dataset breast-cancer');
  }
  if (activation !== 'tanh' && activation !== 'relu') {
    throw new DvembError('BAD_INPUT', `--activation must be tanh or relu, got ${JSON.stringify(activation)}`, 'pass --activation tanh (default) or --activation relu');
  }
  const out = values.out as string;
  const json = !!values.json;
  const bars = new Map<string, Progress>();
  const result = await runExperiment({
    preset: values.quick ? 'quick' : 'full',
    dataset,
    activation,
    log: (line) => process.stderr.write(`${line}\n`),
    onProgress: (stage, done, total) => {
      let bar = bars.get(stage);
      if (!bar) {
        for (const b of bars.values()) b.done();
        bars.set(stage, (bar = new Progress(stage.padEnd(16))));
      }
      bar.update(done, total);
    },
  });
  for (const b of bars.values()) b.done();
  mkdirSync(out, { recursive: true });
  const data = summary(result);
  writeFileSync(join(out, 'results.json'), JSON.stringify(data, null, 2) + '\n');
  for (const [name, svg] of Object.entries(result.figures)) writeFileSync(join(out, name), svg);
  if (json) {
    process.stdout.write(JSON.stringify(data) + '\n');
    return 0;
  }
  const m = result.model;
  const text = [
    `dvemb eval (${result.config.preset}): ${m.dataset}, MLP ${m.widths.join('-')} ${m.activation}, ${m.steps} SGD steps (${m.epochs} epochs × batch ${m.batchSize}), test accuracy ${(100 * m.testAccuracy).toFixed(1)}%, backend ${result.config.backend}`,
    `exact TSLOO: ${result.replay.count} replays in ${result.replay.seconds.toFixed(1)} s on ${result.replay.workers} worker(s) (${result.replay.perSecond.toFixed(1)} replays/s, ${Math.round(result.replay.stepsPerSecond)} SGD steps/s); agreement averaged over ${result.config.values.tests} test points`,
    '',
    formatTable(result),
    '  (self-influence is scored against the removed point’s own loss change, the others against the test losses)',
    '',
    formatDecomposition(result),
    '',
    `LDS (Spearman over ${result.lds.subsets} random halves removed and retrained): ${Object.entries(result.lds.estimators).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(', ')}`,
    `mislabel detection (${Math.round(100 * result.mislabel.fraction)}% flipped): AUC self-influence ${result.mislabel.selfInfluence.auc.toFixed(3)}, final loss ${result.mislabel.finalLoss.auc.toFixed(3)}`,
    `wall time ${result.wallSeconds.toFixed(1)} s; results.json and ${Object.keys(result.figures).length} SVG figures in ${out}`,
  ].join('\n');
  process.stdout.write(text + '\n');
  return 0;
}

// `node dist/lib/cli/eval.js [flags]` runs it directly (the `dvemb eval` command imports cmdEval).
const invoked = process.argv[1] ? pathToFileURL(realpathSync(process.argv[1])).href : '';
if (invoked === import.meta.url) {
  cmdEval(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`dvemb eval: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(err instanceof DvembError ? 2 : 1);
    },
  );
}
