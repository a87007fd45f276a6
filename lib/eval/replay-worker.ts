// A replay worker thread (lib/eval/replay.ts): rebuilds the trainer and the checkpoints from the
// init message, then answers one job (a removal) at a time with its exact TSLOO.
import { parentPort } from 'node:worker_threads';
import { DvembError } from '../errors.js';
import { replayerFromInit, type Replayer, type WorkerReply, type WorkerRequest } from './replay.js';

const port = parentPort;
if (!port) throw new Error('replay-worker.js runs as a worker thread (see lib/eval/replay.ts)');

let replayer: Replayer | null = null;
port.on('message', (msg: WorkerRequest) => {
  if (msg.kind === 'stop') {
    port.close();
    return;
  }
  if (msg.kind === 'init') {
    replayer = replayerFromInit(msg.init);
    port.postMessage({ kind: 'ready' } satisfies WorkerReply);
    return;
  }
  try {
    if (!replayer) throw new Error('job before init');
    const result = replayer.replay(msg.removal);
    port.postMessage({ kind: 'result', index: msg.index, result } satisfies WorkerReply, [result.deltas.buffer as ArrayBuffer]);
  } catch (err) {
    const e = err as Error;
    port.postMessage({ kind: 'error', index: msg.index, message: e.message, ...(err instanceof DvembError ? { code: err.code } : {}) } satisfies WorkerReply);
  }
});
