// `dvemb eval --ddm [--quick] [--json] [--out dir]`: the distilled datamodel (REFERENCE §7) on the
// shipped digits, from ONE recorded run of the reference MLP: groups (per class, then k-means),
// synsets distilled at the per-epoch checkpoints, the online datamodel, and — on the same held-out
// removal masks — retraining as ground truth, with the LDS of DDM, DVEmb-grouped and
// TracIn-grouped side by side and the wall-clock speed-up of DDM's online stage over retraining.
// docs/DDM.md explains every choice.
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadBackend } from '../backend/loader.js';
import { computeEmbeddings } from '../embeddings/backward.js';
import { DvembError } from '../errors.js';
import { loadDigits, split } from '../eval/datasets.js';
import { Trainer, type TrainerConfig } from '../eval/trainer.js';
import {
  OnlineEvaluator,
  attribute,
  exactDisplacements,
  onlineEvaluator,
  classKMeansGroups,
  distill,
  dvembGroupScores,
  groupClasses,
  lds,
  predictFromScores,
  randomMasks,
  referenceRun,
  retrainMasks,
  runReverseSchedule,
  saveAttribution,
  saveSynsets,
  tracinGroupScores,
  type MatchDistance,
} from '../ddm/index.js';
import { Progress } from './progress.js';

export interface DdmEvalOptions {
  out: string;
  quick?: boolean;
  /** Groups (default 20). */
  K?: number;
  perGroup?: number;
  distance?: MatchDistance;
  iterations?: number;
  /** Random masks for the datamodel fit (online only) and for the LDS (online and retrained). */
  fitMasks?: number;
  ldsMasks?: number;
  removeProbability?: number;
  targets?: number;
  epochs?: number;
  /** Progress and stage lines go here (stderr by default). */
  log?: (line: string) => void;
  progress?: boolean;
}

export interface DdmEvalResult {
  dataset: string;
  model: string;
  setting: Record<string, unknown>;
  lds: { ddm: number; 'ddm-online-direct': number; 'dvemb-grouped': number; 'tracin-grouped': number };
  /** LDS of DDM variants on the same masks (docs/DDM.md). */
  diagnostics: Record<string, number>;
  timing: {
    retrainSeconds: number;
    retrainPerMask: number;
    onlineSeconds: number;
    onlinePerMask: number;
    speedup: number;
    distillSeconds: number;
    fitSeconds: number;
    trainSeconds: number;
    embeddingsSeconds: number;
    tracinSeconds: number;
  };
  synsets: { meanCosine: number; meanRelativeError: number; meanInitialLoss: number; meanFinalLoss: number };
  testAccuracy: number;
  files: Record<string, string>;
}

function mean(a: ArrayLike<number>): number {
  let s = 0;
  let c = 0;
  for (let i = 0; i < a.length; i++) {
    if (Number.isFinite(a[i] as number)) {
      s += a[i] as number;
      c++;
    }
  }
  return c ? s / c : NaN;
}

/** Runs the whole comparison and writes it under options.out. */
export async function runDdmEval(options: DdmEvalOptions): Promise<DdmEvalResult> {
  const quick = options.quick ?? false;
  const log = options.log ?? ((s: string) => process.stderr.write(s + '\n'));
  const bar = (label: string) => new Progress(label, options.progress ?? process.stderr.isTTY === true);
  const K = options.K ?? 20;
  const perGroup = options.perGroup ?? 2;
  const distance = options.distance ?? 'cosine';
  const iterations = options.iterations ?? (quick ? 150 : 300);
  const fitMasks = options.fitMasks ?? (quick ? 500 : 2000);
  const ldsMasks = options.ldsMasks ?? (quick ? 60 : 200);
  const removeProbability = options.removeProbability ?? 0.25;
  const nTargets = options.targets ?? (quick ? 40 : 100);
  const epochs = options.epochs ?? 6;
  const out = resolve(options.out);
  // Re-running into the same --out replaces our own earlier outputs, never someone else's files.
  const marker = join(out, '.dvemb-eval-ddm');
  for (const sub of ['trajectory', 'embeddings', 'synsets']) {
    if (!existsSync(join(out, sub))) continue;
    if (!existsSync(marker)) {
      throw new DvembError('BAD_INPUT', `${out} already holds ${sub}/, which an earlier \`dvemb eval --ddm\` did not write`, 'choose a new or empty --out directory');
    }
    rmSync(join(out, sub), { recursive: true, force: true });
  }
  mkdirSync(out, { recursive: true });
  writeFileSync(marker, 'written by dvemb eval --ddm; its subdirectories are replaced on the next run\n');
  const { name: backendName, backend } = loadBackend();

  // One reference run: digits, MLP 64-32-10 tanh, SGD with warm-up + cosine, one checkpoint per epoch.
  const { train, test } = split(loadDigits(), 0.2, 0);
  const batchSize = 32;
  const stepsPerEpoch = Math.floor(train.n / batchSize);
  const total = stepsPerEpoch * epochs;
  const config: TrainerConfig = {
    widths: [64, 32, 10],
    activation: 'tanh',
    initSeed: 1,
    data: { x: train.x, y: train.y, n: train.n, d: train.d },
    batchSize,
    epochs,
    orderSeed: 7,
    schedule: { kind: 'warmup-cosine', peak: 0.8, warmupSteps: Math.round(total * 0.1), floor: 0.01 },
    checkpointEvery: stepsPerEpoch,
  };
  const trainer = new Trainer(config);
  log(`dvemb eval --ddm${quick ? ' --quick' : ''}: digits ${train.n} train / ${test.n} test, MLP 64-32-10 tanh, ${total} SGD steps, backend ${backendName}`);
  let t = performance.now();
  const trajectory = join(out, 'trajectory');
  const trainBar = bar('training + recording');
  const trainRun = await trainer.train({
    record: [{ dir: trajectory, blocks: 'kronecker', kIn: 32, kOut: 32, projection: { seed: 2024, distribution: 'gaussian' }, backend }],
    onStep: (s, n) => trainBar.update(s, n),
  });
  trainBar.done();
  const trainSeconds = (performance.now() - t) / 1000;
  const run = referenceRun(trainer, trainRun);
  const testAccuracy = run.model.accuracy(test.x, test.y, test.n);

  t = performance.now();
  const embeddings = join(out, 'embeddings');
  await computeEmbeddings(trajectory, { out: embeddings, backend });
  const embeddingsSeconds = (performance.now() - t) / 1000;

  // Groups and targets.
  const groups = classKMeansGroups(train.x, train.y, train.n, train.d, K, { seed: 0 });
  const T = Math.min(nTargets, test.n);
  const targets = { x: test.x.subarray(0, T * test.d), y: test.y.subarray(0, T), n: T };

  // Offline: synsets.
  const distillBar = bar('distilling synsets');
  const synsets = distill(run, groups, { perGroup, distance, iterations, seed: 0, onProgress: (p) => distillBar.update(p.iteration, p.iterations) });
  distillBar.done();
  saveSynsets(join(out, 'synsets'), synsets);
  log(`synsets: ${K} groups × ${perGroup}, ${distance} matching at steps ${synsets.checkpointSteps.join(', ')}: D ${mean(synsets.initialLoss).toFixed(3)} → ${mean(synsets.finalLoss).toFixed(3)}, cos(g_S, G) ${mean(synsets.cosine).toFixed(3)} (${synsets.seconds.toFixed(1)} s)`);

  // Online: the datamodel on its own fit masks.
  const fitBar = bar('online datamodel');
  const fit = attribute(run, synsets, targets, { masks: randomMasks(K, fitMasks, removeProbability, 'fit'), onProgress: (d, n) => fitBar.update(d, n) });
  fitBar.done();

  // Held-out masks: DDM online (timed), then retraining (timed) on exactly the same masks.
  const masks = randomMasks(K, ldsMasks, removeProbability, 'lds');
  // The online stage's cost per run includes its setup (the per-group displacements D_k).
  const warm = onlineEvaluator(run, synsets, targets); // warm the JIT before timing
  warm.evaluateMany(masks.subarray(0, Math.min(masks.length, 5 * K)));
  t = performance.now();
  const evaluator = onlineEvaluator(run, synsets, targets);
  const online = evaluator.evaluateMany(masks);
  const onlineSeconds = (performance.now() - t) / 1000;
  const retrainBar = bar('retraining (ground truth)');
  const truth = retrainMasks(trainer, groups, masks, targets, (d, n) => retrainBar.update(d, n));
  retrainBar.done();
  log(`retrained ${ldsMasks} masks in ${truth.seconds.toFixed(1)} s; DDM online on the same masks ${onlineSeconds.toFixed(3)} s`);

  // Baselines aggregated to groups.
  const dvembScores = await dvembGroupScores(embeddings, run.model, targets, groups, backend);
  t = performance.now();
  const tracinScores = await tracinGroupScores({ trainer, run: trainRun, tests: targets }, groups);
  const tracinSeconds = (performance.now() - t) / 1000;

  const M = ldsMasks;
  const ldsDdm = lds(predictFromScores(fit.W, K, T, masks), truth.outputs, M, T);
  const ldsDirect = lds(online, truth.outputs, M, T);
  const ldsDvemb = lds(predictFromScores(dvembScores, K, T, masks), truth.outputs, M, T);
  const ldsTracin = lds(predictFromScores(tracinScores, K, T, masks), truth.outputs, M, T);

  // Diagnostics on the same masks (online outputs, no refit): perfect distillation (each group's
  // exact gradient in place of its synset), the full recorded step mass, and plain ascent from θ_T.
  const schedule = runReverseSchedule(run, synsets);
  const exact = new OnlineEvaluator(run.model, { displacements: exactDisplacements(run.model, run.train, groups, schedule, run.checkpoints), K }, targets);
  const diagnostics = {
    'ddm-exact-group-gradients': lds(exact.evaluateMany(masks), truth.outputs, M, T).mean,
    'ddm-scale-1': lds(onlineEvaluator(run, synsets, targets, { scale: 1 }).evaluateMany(masks), truth.outputs, M, T).mean,
    'ddm-ascent-from-thetaT': lds(onlineEvaluator(run, synsets, targets, { anchor: 'current' }).evaluateMany(masks), truth.outputs, M, T).mean,
    'ddm-ascent-from-thetaT-scale-1': lds(onlineEvaluator(run, synsets, targets, { anchor: 'current', scale: 1 }).evaluateMany(masks), truth.outputs, M, T).mean,
  };

  const { majority } = groupClasses(groups, train.y, train.classes);
  const files = saveAttribution(out, fit, groups, train.y, train.classes, {
    dataset: 'digits',
    model: 'MLP 64-32-10 tanh',
    targetRows: 'the first T rows of the digits test split (split(loadDigits(), 0.2, 0))',
  });
  const speedup = truth.seconds / onlineSeconds;
  const result: DdmEvalResult = {
    dataset: `digits (${train.n} train, ${T} targets from ${test.n} test)`,
    model: `MLP 64-32-10 tanh, ${epochs} epochs × ${stepsPerEpoch} steps, batch ${batchSize}, warm-up + cosine (peak 0.8)`,
    setting: {
      quick,
      K,
      perGroup,
      distance,
      iterations,
      fitMasks,
      ldsMasks,
      removeProbability,
      targets: T,
      checkpoints: synsets.checkpointSteps,
      reverseSteps: Array.from(fit.schedule.sizes),
      lambda: fit.lambda,
      groupSizes: Array.from(groups.sizes),
      groupLabels: Array.from(majority),
      dvemb: 'engine embeddings, empirical Fisher, per-block P, Kronecker projection kIn = kOut = 32 (dim 1344)',
      tracin: 'TracInCP over the 6 epoch checkpoints, exact gradients, each occurrence weighted by its η_t w_z',
    },
    lds: { ddm: ldsDdm.mean, 'ddm-online-direct': ldsDirect.mean, 'dvemb-grouped': ldsDvemb.mean, 'tracin-grouped': ldsTracin.mean },
    diagnostics,
    timing: {
      retrainSeconds: truth.seconds,
      retrainPerMask: truth.seconds / M,
      onlineSeconds,
      onlinePerMask: onlineSeconds / M,
      speedup,
      distillSeconds: synsets.seconds,
      fitSeconds: fit.evaluateSeconds + fit.fitSeconds,
      trainSeconds,
      embeddingsSeconds,
      tracinSeconds,
    },
    synsets: { meanCosine: mean(synsets.cosine), meanRelativeError: mean(synsets.relativeError), meanInitialLoss: mean(synsets.initialLoss), meanFinalLoss: mean(synsets.finalLoss) },
    testAccuracy,
    files: { ...files, synsets: join(out, 'synsets'), trajectory, embeddings, results: join(out, 'results.json') },
  };
  writeFileSync(
    join(out, 'results.json'),
    JSON.stringify({ ...result, perTarget: { ddm: Array.from(ldsDdm.perTarget), 'ddm-online-direct': Array.from(ldsDirect.perTarget), 'dvemb-grouped': Array.from(ldsDvemb.perTarget), 'tracin-grouped': Array.from(ldsTracin.perTarget) } }, null, 2) + '\n',
  );
  return result;
}

function table(r: DdmEvalResult): string {
  const f = (v: number) => (Number.isFinite(v) ? v.toFixed(3) : 'n/a');
  const s = r.setting;
  return [
    `DDM on ${r.dataset}; ${r.model}; test accuracy ${(100 * r.testAccuracy).toFixed(1)}%`,
    `${s.K} groups (per class, then k-means), ${s.perGroup} synthetic examples each, ${s.distance} matching; masks remove each group with p = ${s.removeProbability}`,
    '',
    `LDS over ${s.ldsMasks} held-out masks (Spearman of predicted vs retrained per-target loss, mean over ${s.targets} targets):`,
    ...(
      [
        [`DDM (ridge datamodel, ${s.fitMasks} online masks)`, r.lds.ddm],
        ['DDM online outputs, same masks', r.lds['ddm-online-direct']],
        ['DVEmb, summed over group members', r.lds['dvemb-grouped']],
        ['TracInCP, summed over group members', r.lds['tracin-grouped']],
      ] as [string, number][]
    ).map(([name, v]) => `  ${name.padEnd(44)}${f(v)}`),
    '',
    `DDM variants (same masks): exact group gradients ${f(r.diagnostics['ddm-exact-group-gradients']!)}, full recorded step mass ${f(r.diagnostics['ddm-scale-1']!)}, ascent from θ_T ${f(r.diagnostics['ddm-ascent-from-thetaT']!)}`,
    '',
    `Online stage vs retraining on the same ${s.ldsMasks} masks: ${(1000 * r.timing.onlinePerMask).toFixed(2)} ms vs ${(1000 * r.timing.retrainPerMask).toFixed(0)} ms per mask — ${r.timing.speedup.toFixed(0)}× faster`,
    `Offline distillation ${r.timing.distillSeconds.toFixed(1)} s (once per run); datamodel fit ${r.timing.fitSeconds.toFixed(2)} s; synsets match the group gradients at cos ${f(r.synsets.meanCosine)}`,
    `Results: ${r.files.results}`,
  ].join('\n');
}

/** Help text for `dvemb eval --ddm`. */
export const DDM_USAGE = `dvemb eval --ddm [--quick] [--json] [--out <dir>] [--groups K] [--masks M]
  Distilled datamodel (DDM) on the shipped digits: K groups (per class, then k-means; default 20),
  synsets distilled at the per-epoch checkpoints, the ridge datamodel from online reverse steps,
  and retraining on M held-out removal masks (default 200, 60 with --quick) as ground truth. Prints
  the LDS of DDM, DVEmb-grouped and TracIn-grouped side by side and the online stage's speed-up over
  retraining; writes attribution.npy, groups.npy, groups.json, synsets/ and results.json to <dir>
  (default ./dvemb-eval-ddm). --quick takes well under 3 minutes; --json prints one JSON object.`;

/** `dvemb eval --ddm [--quick] [--json] [--out dir]`; returns the exit code. */
export async function cmdEvalDdm(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    allowPositionals: false,
    options: {
      ddm: { type: 'boolean' },
      quick: { type: 'boolean' },
      json: { type: 'boolean' },
      out: { type: 'string', default: './dvemb-eval-ddm' },
      groups: { type: 'string' },
      masks: { type: 'string' },
    },
  });
  const num = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 1) {
      // The code node's own parseArgs uses, so the CLI reports it as a usage error (exit 1).
      throw Object.assign(new TypeError(`--${name} must be a positive integer, got ${v}`), { code: 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' });
    }
    return n;
  };
  const json = !!values.json;
  const opts: DdmEvalOptions = { out: values.out as string, quick: !!values.quick, log: json ? () => undefined : (s) => process.stderr.write(s + '\n') };
  const K = num(values.groups, 'groups');
  if (K !== undefined) opts.K = K;
  const masks = num(values.masks, 'masks');
  if (masks !== undefined) opts.ldsMasks = masks;
  const result = await runDdmEval(opts);
  process.stdout.write(json ? JSON.stringify(result, null, 2) + '\n' : table(result) + '\n');
  return 0;
}
