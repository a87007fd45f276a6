// Exact trajectory-specific leave-one-out by replay (REFERENCE §2, §8): restart from the nearest
// checkpoint at or before the first removed step, drop the removed occurrences (w = 0, nothing
// renormalised), train to T with everything else identical, and compare test losses:
//
//     Δ_j = ℓ(θ'_T, z_test_j) − ℓ(θ_T, z_test_j)        (> 0: the removed data helped z_test_j)
//
// Everything is float64 and runs in a fixed order, so a replay that removes nothing reproduces
// θ_T bit for bit. Many replays run on a small pool of worker threads, each rebuilding the
// trainer from its plain config and the checkpoints (sent as transferable buffers).

import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { DvembError } from '../errors.js';
import { Trajectory } from '../trajectory/trajectory.js';
import { gatherRows, Trainer, type Removal, type TrainerConfig, type TrainRun } from './trainer.js';

export interface TestSet {
  x: Float64Array;
  y: ArrayLike<number>;
  n: number;
}

export interface ReplayResult {
  /** ℓ(θ'_T, z_test_j) − ℓ(θ_T, z_test_j) per test point. */
  deltas: Float64Array;
  /** The change of the mean test loss (the mean of deltas). */
  mean: number;
  /** When the removal concerns exactly one example z: ℓ(θ'_T, z) − ℓ(θ_T, z) (self-influence truth). */
  self: number | null;
  /** The checkpoint step the replay started from. */
  fromStep: number;
}

/** The checkpoints a replay may start from: θ at increasing steps (always including 0). */
export interface ReplayCheckpoints {
  steps: number[];
  thetas: Float64Array[];
}

/** Every step's θ when the run kept them (replays then start exactly at the removal), else the K-interval ones. */
export function replayCheckpoints(run: TrainRun): ReplayCheckpoints {
  if (run.thetas) return { steps: run.thetas.map((_, t) => t), thetas: run.thetas };
  return { steps: run.checkpoints.steps, thetas: run.checkpoints.thetas };
}

export interface ReplayManyOptions {
  /** Worker threads (default: available cores, at most the number of removals); 0 runs in this thread. */
  workers?: number;
  onProgress?: (done: number, total: number) => void;
}

export class Replayer {
  readonly trainer: Trainer;
  private readonly checkpoints: ReplayCheckpoints;
  private readonly thetaT: Float64Array;
  private readonly tests: TestSet;
  private readonly baseLosses: Float64Array;

  constructor(trainer: Trainer, run: { theta: Float64Array } & Partial<TrainRun>, tests: TestSet, checkpoints?: ReplayCheckpoints) {
    this.trainer = trainer;
    if (!checkpoints && !run.thetas && !run.checkpoints) throw new RangeError('Replayer needs the run’s checkpoints (a TrainRun from Trainer.train) or explicit checkpoints');
    this.checkpoints = checkpoints ?? replayCheckpoints(run as TrainRun);
    const { steps, thetas } = this.checkpoints;
    if (steps.length === 0 || steps[0] !== 0 || steps.length !== thetas.length) {
      throw new RangeError('checkpoints must start at step 0 and give one θ per step listed');
    }
    this.thetaT = run.theta;
    this.tests = tests;
    this.baseLosses = trainer.modelAt(run.theta).losses(tests.x, tests.y, tests.n);
  }

  /** The nearest checkpoint at or before `step`. */
  private checkpointFor(step: number): { step: number; theta: Float64Array } {
    const { steps, thetas } = this.checkpoints;
    let lo = 0;
    let hi = steps.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if ((steps[mid] as number) <= step) lo = mid;
      else hi = mid - 1;
    }
    return { step: steps[lo] as number, theta: thetas[lo] as Float64Array };
  }

  /** θ'_T of a replay with `removal` (nothing removed: θ_T itself, recomputed from θ_0). */
  replayTheta(removal: Removal = {}): { theta: Float64Array; fromStep: number } {
    const first = this.trainer.firstRemovalStep(removal);
    const start = first >= this.trainer.steps ? this.checkpointFor(0) : this.checkpointFor(first);
    return { theta: this.trainer.runFrom(start.step, start.theta, removal), fromStep: start.step };
  }

  /** Exact TSLOO of one removal for every test point. */
  replay(removal: Removal): ReplayResult {
    const { theta, fromStep } = this.replayTheta(removal);
    const model = this.trainer.modelAt(theta);
    const after = model.losses(this.tests.x, this.tests.y, this.tests.n);
    const deltas = new Float64Array(this.tests.n);
    let mean = 0;
    for (let j = 0; j < deltas.length; j++) {
      deltas[j] = (after[j] as number) - (this.baseLosses[j] as number);
      mean += deltas[j] as number;
    }
    mean = deltas.length ? mean / deltas.length : 0;
    return { deltas, mean, self: this.selfDelta(removal, model), fromStep };
  }

  private selfDelta(removal: Removal, after: ReturnType<Trainer['modelAt']>): number | null {
    const ids = new Set([...(removal.occurrences ?? []).map((o) => o.example), ...(removal.examples ?? [])]);
    if (ids.size !== 1) return null;
    const id = [...ids][0] as number;
    const { data } = this.trainer.config;
    const x = gatherRows(data.x, data.d, [id]);
    const y = [data.y[id] as number];
    return (after.losses(x, y, 1)[0] as number) - (this.trainer.modelAt(this.thetaT).losses(x, y, 1)[0] as number);
  }

  /** Many replays, on worker threads (default: one per core). Results are in the order of `removals`. */
  async replayMany(removals: Removal[], options: ReplayManyOptions = {}): Promise<ReplayResult[]> {
    for (const r of removals) this.trainer.firstRemovalStep(r); // fail fast, in this thread, with the clear error
    const total = removals.length;
    const workers = Math.min(options.workers ?? availableParallelism(), total);
    if (workers <= 0) {
      return removals.map((r, i) => {
        const res = this.replay(r);
        options.onProgress?.(i + 1, total);
        return res;
      });
    }
    return runPool(workerScript(), workers, this.workerInit(), removals, options.onProgress);
  }

  /** What a worker needs: plain data only, the checkpoints packed into one transferable buffer. */
  private workerInit(): { init: WorkerInit; transfer: ArrayBuffer[] } {
    const { steps, thetas } = this.checkpoints;
    const p = this.thetaT.length;
    const packed = new Float64Array(thetas.length * p);
    thetas.forEach((t, i) => packed.set(t, i * p));
    const init: WorkerInit = {
      config: this.trainer.config,
      steps,
      packed,
      theta: this.thetaT.slice(),
      tests: { x: this.tests.x, y: Array.from(this.tests.y), n: this.tests.n },
    };
    return { init, transfer: [packed.buffer as ArrayBuffer] };
  }

  /**
   * Checks that a recorded trajectory is the run this trainer replays: the same steps, batches
   * (sample ids in order), learning rates and weight decay. A replay of a different run would be
   * silently meaningless, so this throws naming the first difference.
   */
  async checkTrajectory(dir: string): Promise<void> {
    await checkTrajectory(this.trainer, dir);
  }
}

/** See Replayer.checkTrajectory. */
export async function checkTrajectory(trainer: Trainer, dir: string): Promise<void> {
  const traj = Trajectory.open(dir);
  const fix = 'replay with the trainer configuration (data, batch size, epochs, order seed, schedule, weight decay) that recorded this trajectory';
  if (traj.steps !== trainer.steps) {
    throw new DvembError('BAD_INPUT', `the trajectory ${dir} holds ${traj.steps} steps, the trainer runs ${trainer.steps}`, fix);
  }
  let expected = 0;
  for (let c = 0; c < traj.chunks.length; c++) {
    const chunk = await traj.readChunk(c, false);
    for (let s = 0; s < chunk.steps; s++, expected++) {
      const t = chunk.step[s] as number;
      if (t !== expected) throw new DvembError('BAD_INPUT', `the trajectory ${dir} records step ${t} where the trainer has step ${expected}`, fix);
      const lr = trainer.lr(t);
      if (chunk.lr[s] !== lr) throw new DvembError('BAD_INPUT', `the trajectory ${dir} recorded learning rate ${chunk.lr[s]} at step ${t}, the trainer applies ${lr}`, fix);
      if (chunk.weightDecay[s] !== trainer.weightDecay) {
        throw new DvembError('BAD_INPUT', `the trajectory ${dir} recorded weight decay ${chunk.weightDecay[s]} at step ${t}, the trainer applies ${trainer.weightDecay}`, fix);
      }
      const ids = trainer.batch(t);
      const from = chunk.stepRows[s] as number;
      const to = chunk.stepRows[s + 1] as number;
      const same = to - from === ids.length && ids.every((id, i) => chunk.ids[from + i] === id);
      if (!same) {
        const got = Array.from(chunk.ids.subarray(from, Math.min(to, from + 6))).join(', ');
        throw new DvembError('BAD_INPUT', `the trajectory ${dir} recorded batch [${got}${to - from > 6 ? ', ...' : ''}] at step ${t}, the trainer's batch is [${Array.from(ids.subarray(0, 6)).join(', ')}${ids.length > 6 ? ', ...' : ''}]`, fix);
      }
    }
  }
}

// ---- worker pool --------------------------------------------------------------------------

export interface WorkerInit {
  config: TrainerConfig;
  steps: number[];
  packed: Float64Array;
  theta: Float64Array;
  tests: { x: Float64Array; y: number[]; n: number };
}

export type WorkerRequest = { kind: 'init'; init: WorkerInit } | { kind: 'job'; index: number; removal: Removal } | { kind: 'stop' };
export type WorkerReply = { kind: 'ready' } | { kind: 'result'; index: number; result: ReplayResult } | { kind: 'error'; index: number; message: string; code?: string };

/** Rebuilds a Replayer inside a worker from the init message. */
export function replayerFromInit(init: WorkerInit): Replayer {
  const trainer = new Trainer(init.config);
  const p = init.theta.length;
  const thetas = init.steps.map((_, i) => init.packed.subarray(i * p, (i + 1) * p));
  return new Replayer(trainer, { theta: init.theta }, init.tests, { steps: init.steps, thetas });
}

/** The compiled worker: next to this module when running from dist/, else dist/ of the package. */
function workerScript(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, 'replay-worker.js')];
  for (let dir = here; ; ) {
    if (existsSync(join(dir, 'package.json'))) {
      candidates.push(join(dir, 'dist', 'lib', 'eval', 'replay-worker.js'));
      break;
    }
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  const found = candidates.find((c) => existsSync(c));
  if (!found) {
    throw new DvembError('BAD_INPUT', `the replay worker script is missing (looked for ${candidates.join(' and ')})`, 'build the package first (`npm run build:ts`), or pass {workers: 0} to replay in this thread');
  }
  return found;
}

async function runPool(script: string, size: number, { init, transfer }: { init: WorkerInit; transfer: ArrayBuffer[] }, removals: Removal[], onProgress?: (done: number, total: number) => void): Promise<ReplayResult[]> {
  const results: ReplayResult[] = new Array<ReplayResult>(removals.length);
  let next = 0;
  let done = 0;
  const workers: Worker[] = [];
  try {
    await Promise.all(
      Array.from({ length: size }, (_, w) =>
        new Promise<void>((resolve, reject) => {
          const worker = new Worker(script);
          workers.push(worker);
          const send = () => {
            if (next >= removals.length) {
              worker.postMessage({ kind: 'stop' } satisfies WorkerRequest);
              resolve();
              return;
            }
            const index = next++;
            worker.postMessage({ kind: 'job', index, removal: removals[index] as Removal } satisfies WorkerRequest);
          };
          worker.on('message', (msg: WorkerReply) => {
            if (msg.kind === 'ready') send();
            else if (msg.kind === 'result') {
              results[msg.index] = msg.result;
              onProgress?.(++done, removals.length);
              send();
            } else reject(new DvembError('BAD_INPUT', `replay ${msg.index} failed in worker ${w}: ${msg.message}`));
          });
          worker.on('error', reject);
          worker.on('exit', (code) => (next < removals.length || done < removals.length) && code !== 0 && reject(new Error(`replay worker ${w} exited with code ${code}`)));
          // Each worker gets its own copy of the packed checkpoints to take ownership of.
          const own = w === size - 1 ? { init, transfer } : copyInit(init);
          worker.postMessage({ kind: 'init', init: own.init } satisfies WorkerRequest, own.transfer);
        }),
      ),
    );
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
  return results;
}

function copyInit(init: WorkerInit): { init: WorkerInit; transfer: ArrayBuffer[] } {
  const packed = init.packed.slice();
  return { init: { ...init, packed }, transfer: [packed.buffer as ArrayBuffer] };
}
