// Exact TSLOO by replay: determinism to the bit, equality with an independent from-scratch loop,
// the worker pool, and the errors for bad requests.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DvembError } from '../lib/errors.js';
import { MLP } from '../lib/eval/mlp.js';
import { Replayer } from '../lib/eval/replay.js';
import { Rng } from '../lib/eval/rng.js';
import { warmupCosine } from '../lib/eval/schedule.js';
import { Trainer, type TrainerConfig } from '../lib/eval/trainer.js';
import { gaussian, rng, tempDir } from './helpers.js';

function data(seed: number, n: number, d: number, C: number) {
  const r = rng(seed);
  return { x: Float64Array.from({ length: n * d }, () => gaussian(r)), y: Int32Array.from({ length: n }, () => Math.floor(r() * C)), n, d };
}

const base: TrainerConfig = {
  widths: [6, 8, 3],
  activation: 'tanh',
  initSeed: 1,
  data: data(1, 40, 6, 3),
  batchSize: 8,
  epochs: 3,
  orderSeed: 5,
  schedule: { kind: 'warmup-cosine', peak: 0.5, warmupSteps: 2, floor: 0.01 },
  weightDecay: 0.01,
  checkpointEvery: 5,
};
const tests = { ...data(2, 5, 6, 3) };

describe('replay', () => {
  it('a replay that removes nothing reproduces θ_T bit for bit, from θ_0 and from any checkpoint', async () => {
    const trainer = new Trainer(base);
    const run = await trainer.train();
    const rep = new Replayer(trainer, run, tests);
    expect(Array.from(rep.replayTheta({}).theta)).toEqual(Array.from(run.theta));
    const c = run.checkpoints;
    expect(c.steps).toEqual([0, 5, 10, 15]);
    expect(Array.from(trainer.runFrom(c.steps[2]!, c.thetas[2]!))).toEqual(Array.from(run.theta));
    const r = rep.replay({});
    expect(Array.from(r.deltas)).toEqual([0, 0, 0, 0, 0]);
  });

  it('a replay equals an independent retraining from scratch without the occurrence (w = 0, no renormalisation)', async () => {
    const trainer = new Trainer(base);
    const run = await trainer.train();
    const rep = new Replayer(trainer, run, tests);
    const step = 11;
    const example = trainer.batch(step)[3]!;
    const { theta, fromStep } = rep.replayTheta({ occurrences: [{ example, step }] });
    expect(fromStep).toBe(10);
    // From scratch, written against the documented schedule, not through Trainer.
    const model = new MLP({ widths: base.widths, activation: 'tanh', seed: 1 });
    const lr = warmupCosine({ peak: 0.5, warmupSteps: 2, totalSteps: 15, floor: 0.01 });
    for (let t = 0; t < 15; t++) {
      const order = new Rng(5).fork(`epoch${Math.floor(t / 5)}`).permutation(40);
      const ids = Array.from(order.subarray((t % 5) * 8, (t % 5) * 8 + 8));
      const x = new Float64Array(8 * 6);
      ids.forEach((id, i) => x.set(base.data.x.subarray(id * 6, id * 6 + 6), i * 6));
      const w = ids.map((id) => (t === step && id === example ? 0 : 1 / 8));
      model.sgdStep({ x, y: ids.map((id) => base.data.y[id]!), n: 8, weights: w, lr: lr(t), weightDecay: 0.01 });
    }
    expect(Array.from(theta)).toEqual(Array.from(model.parameters()));
    // And all-occurrence removal equals its from-scratch run through the trainer.
    const all = rep.replayTheta({ examples: [example] });
    expect(Array.from(all.theta)).toEqual(Array.from(trainer.runFrom(0, run.checkpoints.thetas[0]!, { examples: [example] })));
    expect(all.fromStep).toBeLessThanOrEqual(trainer.occurrences(example)[0]!);
  });

  it('the worker pool returns exactly the in-process results, in order, with progress', async () => {
    const trainer = new Trainer({ ...base, keepEveryStep: true });
    const run = await trainer.train();
    const rep = new Replayer(trainer, run, tests);
    const removals = [3, 7, 12, 14].map((t) => ({ occurrences: [{ example: trainer.batch(t)[1]!, step: t }] }));
    removals.push({ examples: [trainer.batch(0)[0]!] } as never);
    const seen: number[] = [];
    const pooled = await rep.replayMany(removals, { workers: 2, onProgress: (d) => seen.push(d) });
    const local = await rep.replayMany(removals, { workers: 0 });
    expect(pooled.map((r) => Array.from(r.deltas))).toEqual(local.map((r) => Array.from(r.deltas)));
    expect(pooled.map((r) => r.self)).toEqual(local.map((r) => r.self));
    expect(seen).toEqual([1, 2, 3, 4, 5]);
    expect(local.some((r) => r.deltas.some((d) => d !== 0))).toBe(true);
  });

  it('clear errors: unknown occurrences, checkpoint intervals, mismatched trajectories', async () => {
    const trainer = new Trainer(base);
    const run = await trainer.train();
    const rep = new Replayer(trainer, run, tests);
    const absent = Array.from({ length: 40 }, (_, i) => i).find((i) => !trainer.batch(4).includes(i))!;
    expect(() => rep.replay({ occurrences: [{ example: absent, step: 4 }] })).toThrow(/does not occur at step 4/);
    expect(() => rep.replay({ occurrences: [{ example: 0, step: 99 }] })).toThrow(DvembError);
    expect(() => rep.replay({ examples: [1234] })).toThrow(/never occurs/);
    await expect(rep.replayMany([{ examples: [1234] }])).rejects.toThrow(/never occurs/);
    expect(() => new Trainer({ ...base, checkpointEvery: 4 })).toThrow(/does not divide the 15 steps/);

    const dir = tempDir();
    await new Trainer(base).train({ record: [{ dir: join(dir, 't'), blocks: 'kronecker', kIn: 4, kOut: 3 }] });
    await rep.checkTrajectory(join(dir, 't')); // the same run: accepted
    const otherLr = new Trainer({ ...base, schedule: { kind: 'constant', lr: 0.3 } });
    await expect(new Replayer(otherLr, run, tests).checkTrajectory(join(dir, 't'))).rejects.toThrow(/learning rate .* at step 0/);
    const otherOrder = new Trainer({ ...base, orderSeed: 6 });
    await expect(new Replayer(otherOrder, run, tests).checkTrajectory(join(dir, 't'))).rejects.toThrow(/recorded batch/);
    const longer = new Trainer({ ...base, epochs: 4 });
    await expect(new Replayer(longer, run, tests).checkTrajectory(join(dir, 't'))).rejects.toThrow(/holds 15 steps, the trainer runs 20/);
  });
});
