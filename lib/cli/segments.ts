// `dvemb compute` with segments (--segment j/K, --segments K) and `dvemb compose`: the command
// functions dvemb.ts registers; its dispatcher maps their errors and Ctrl-C to exit codes.
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { BackendChoice } from '../backend/loader.js';
import { computeEmbeddings, type ComputeOptions } from '../embeddings/backward.js';
import { compose, computeSegment, computeSegments } from '../embeddings/segments.js';
import { print, UsageError } from './common.js';
import { Progress } from './progress.js';

export const COMPUTE_USAGE = `dvemb compute <trajectory> --out <dir> [--segment j/K | --segments K [--lazy]] [--ends s1,s2,...]
              [--mode per-block|global] [--precision fp32|fp64]
              [--curvature auto|empirical-fisher|recorded] [--backend auto|cuda|native|ts]
              [--no-verify] [--json]
  Runs the backward pass and writes one embedding per (example, step) occurrence to <dir>.
  --segment j/K  computes segment j (0..K−1, in training order) of K alone into
                 <dir>/segment-j-of-K/, for a scheduler to spread over machines; join the
                 finished segments with \`dvemb compose <dir> --out <dir>\` (docs/SEGMENTS.md).
  --segments K   computes the K segments in parallel here (worker threads, one BLAS thread
                 each) into <dir>/segment-j-of-K/ and composes them into <dir> (--lazy: compose
                 on the test side at query time instead of rewriting every embedding).
  --ends s1,...  the step indices after which segments end (K − 1 of them; by default the split
                 balances occurrences): put them where checkpoints were saved, to compute data
                 value dynamics there. Every segment of one split needs the same --ends.
  Ctrl-C stops it and leaves no file that looks complete.`;

export const COMPOSE_USAGE = `dvemb compose <dir-with-segments | segment-dir ...> --out <dir> [--lazy]
              [--backend auto|cuda|native|ts] [--json]
  Joins the K finished segments of one trajectory (written by \`dvemb compute --segment j/K\`)
  into one embeddings directory, equal to what \`dvemb compute\` writes in one pass. Checks that
  every segment is there and that all come from the same trajectory. --lazy stores the local
  embeddings and each segment's composition S_j; queries then apply S_jᵀ to the test gradients.
  Ctrl-C stops it and leaves no file that looks complete.`;

function parseSegment(text: string): { j: number; K: number } {
  const m = /^(\d+)\/(\d+)$/.exec(text.trim());
  const j = m ? Number(m[1]) : NaN;
  const K = m ? Number(m[2]) : NaN;
  if (!m || !Number.isSafeInteger(j) || !Number.isSafeInteger(K) || K < 1 || j >= K) {
    throw new UsageError(`--segment takes j/K with 0 ≤ j < K (segments are numbered from 0), got "${text}"`);
  }
  return { j, K };
}

function parseEnds(text: string | undefined): number[] | undefined {
  if (text === undefined) return undefined;
  const ends = text.split(',').map((t) => t.trim());
  if (ends.some((t) => !/^\d+$/.test(t))) throw new UsageError(`--ends takes comma-separated step indices, e.g. 999,1999,2999; got "${text}"`);
  return ends.map(Number);
}

function parseCount(text: string, flag: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`${flag} takes a positive integer, got "${text}"`);
  return n;
}

/**
 * `dvemb compute`: the whole trajectory in one pass, one segment (--segment j/K), or K segments
 * in parallel then composed (--segments K).
 */
export async function cmdCompute(args: string[], signal: AbortSignal): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      out: { type: 'string' },
      segment: { type: 'string' },
      segments: { type: 'string' },
      lazy: { type: 'boolean' },
      ends: { type: 'string' },
      mode: { type: 'string', default: 'per-block' },
      precision: { type: 'string', default: 'fp32' },
      curvature: { type: 'string', default: 'auto' },
      backend: { type: 'string', default: 'auto' },
      'no-verify': { type: 'boolean' },
      json: { type: 'boolean' },
    },
  });
  const dir = positionals[0];
  if (!dir) throw new UsageError('compute needs a trajectory directory');
  if (positionals.length > 1) throw new UsageError(`compute takes one trajectory directory, got ${positionals.length}`);
  if (!values.out) throw new UsageError('compute needs --out <dir>');
  if (values.segment !== undefined && values.segments !== undefined) throw new UsageError('give either --segment j/K (one segment) or --segments K (all of them here), not both');
  const ends = parseEnds(values.ends);
  if (ends && values.segment === undefined && values.segments === undefined) throw new UsageError('--ends places segment boundaries: use it with --segment j/K or --segments K');
  if (values.lazy && values.segments === undefined) throw new UsageError('--lazy applies to --segments K (the composition); `dvemb compose --lazy` composes segments lazily');
  const json = !!values.json;
  const common: Omit<ComputeOptions, 'out'> = {
    mode: values.mode as 'per-block' | 'global',
    precision: values.precision as 'fp32' | 'fp64',
    curvature: values.curvature as 'auto',
    backend: values.backend as BackendChoice,
    verify: !values['no-verify'],
    signal,
  };

  if (values.segment !== undefined) {
    const { j, K } = parseSegment(values.segment);
    const bar = new Progress(`segment ${j}/${K}`);
    try {
      const { dir: segDir, manifest } = await computeSegment(dir, { ...common, out: values.out, j, K, ends, onProgress: (p) => bar.update(p.stepsDone, p.stepsTotal) });
      bar.done();
      const s = manifest.segment!;
      print(json, { dir: segDir, ...manifest }, `wrote segment ${j} of ${K} (steps ${s.firstStep}..${s.lastStep}, ${manifest.occurrences} local embeddings, its propagator Q_${j}) to ${segDir} in ${manifest.seconds.toFixed(2)} s with the ${manifest.backend} backend`);
      return 0;
    } finally {
      bar.done();
    }
  }

  if (values.segments !== undefined) {
    const K = parseCount(values.segments, '--segments');
    const bar = new Progress(`${K} segments`);
    let result;
    try {
      result = await computeSegments(dir, { ...common, out: values.out, K, ends, onProgress: (p) => bar.update(p.stepsDone, p.stepsTotal) });
    } finally {
      bar.done();
    }
    const cbar = new Progress('composing');
    try {
      const manifest = await compose(
        result.segments.map((s) => s.dir),
        { out: values.out, lazy: !!values.lazy, backend: common.backend, signal, onProgress: (p) => cbar.update(p.rowsDone, p.rowsTotal) },
      );
      cbar.done();
      const segSeconds = Math.max(...result.segments.map((s) => s.manifest.seconds));
      print(
        json,
        { ...manifest, segmentDirs: result.segments.map((s) => s.dir), runner: result.runner },
        `wrote ${manifest.occurrences} embeddings (${manifest.dim} dims, ${manifest.mode}, ${manifest.precision}, ${manifest.curvature}) to ${values.out} from ${K} segments ` +
          `(${result.runner}, slowest ${segSeconds.toFixed(2)} s; composed ${values.lazy ? 'lazily' : 'eagerly'} in ${manifest.seconds.toFixed(2)} s); the segments stay in ${join(values.out, `segment-*-of-${K}`)}`,
      );
      return 0;
    } finally {
      cbar.done();
    }
  }

  const bar = new Progress('backward pass');
  try {
    const result = await computeEmbeddings(dir, { ...common, out: values.out, onProgress: (p) => bar.update(p.stepsDone, p.stepsTotal) });
    bar.done();
    for (const w of result.warnings ?? []) process.stderr.write(`dvemb compute: warning: ${w}\n`);
    print(json, result, `wrote ${result.occurrences} embeddings (${result.dim} dims, ${result.mode}, ${result.precision}, ${result.curvature}) to ${values.out} in ${result.seconds.toFixed(2)} s with the ${result.backend} backend`);
    return 0;
  } finally {
    bar.done();
  }
}

/** `dvemb compose <dir-with-segments | segment-dir ...> --out <dir> [--lazy]`. */
export async function cmdCompose(args: string[], signal: AbortSignal): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      out: { type: 'string' },
      lazy: { type: 'boolean' },
      backend: { type: 'string', default: 'auto' },
      json: { type: 'boolean' },
    },
  });
  if (positionals.length === 0) throw new UsageError('compose needs the directory holding segment-j-of-K/ (or the segment directories)');
  if (!values.out) throw new UsageError('compose needs --out <dir>');
  const input = positionals.length === 1 ? positionals[0]! : positionals;
  const bar = new Progress('composing');
  try {
    const manifest = await compose(input, { out: values.out, lazy: !!values.lazy, backend: values.backend as BackendChoice, signal, onProgress: (p) => bar.update(p.rowsDone, p.rowsTotal) });
    bar.done();
    print(
      !!values.json,
      manifest,
      `composed ${manifest.composedFrom!.segments} segments into ${manifest.occurrences} embeddings (${manifest.dim} dims, ${manifest.mode}, ${manifest.precision}${values.lazy ? ', lazy: applied to the test gradients at query time' : ''}) in ${values.out} in ${manifest.seconds.toFixed(2)} s`,
    );
    return 0;
  } finally {
    bar.done();
  }
}
