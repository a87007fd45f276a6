#!/usr/bin/env node
// The `dvemb` command line: doctor, inspect, compute, query. Exit codes: 0 success, 1 usage
// error, 2 bad or damaged data, 3 an integrity check found problems, 130 interrupted.
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { topK, type ProjectedTests } from '../embeddings/query.js';
import { EmbeddingSet } from '../embeddings/store.js';
import { DvembError } from '../errors.js';
import { guarded, print, UsageError } from './common.js';
import { doctor } from './doctor.js';
import { cmdCompose, cmdCompute, COMPOSE_USAGE, COMPUTE_USAGE } from './segments.js';
import { cmdReport, REPORT_USAGE } from './report.js';
import { cmdEval, EVAL_USAGE } from './eval.js';
import { cmdEvalDdm, DDM_USAGE } from './ddm.js';
import { Progress } from './progress.js';
import { npyView, readNpyHeaderFile } from '../trajectory/npy.js';
import { Trajectory } from '../trajectory/trajectory.js';

const USAGE: Record<string, string> = {
  doctor: `dvemb doctor [--json]
  Which backend runs here (CUDA, native CPU, or pure TypeScript), the BLAS and its threads,
  and, for every faster backend that is not in use, why and the command that fixes it.`,
  inspect: `dvemb inspect <trajectory> [--json] [--quick]
  Summarises a recorded trajectory and checks its integrity: every chunk's crc32, every shape,
  step order, finite values. --quick skips the full read. Exit code 3 when problems are found.`,
  compute: COMPUTE_USAGE,
  compose: COMPOSE_USAGE,
  report: REPORT_USAGE,
  eval: `${EVAL_USAGE}

${DDM_USAGE}`,
  query: `dvemb query <embeddings> --test <file.npy> [--top k] [--per example|occurrence] [--json]
  Scores projected test gradients (a float32 .npy of shape (m, dim), written with the trajectory's
  projection; a sidecar <file>.json with {"fingerprint": ...} lets dvemb check that) and prints
  the top-k proponents and opponents of each test row.`,
};

function usage(cmd?: string): string {
  if (cmd && USAGE[cmd]) return USAGE[cmd];
  return `dvemb — data value embeddings: which training examples made the model do this, and when.

Commands:
${Object.values(USAGE)
  .map((u) => '  ' + u.split('\n')[0])
  .join('\n')}

Run \`dvemb <command> --help\` for details.`;
}

async function cmdDoctor(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' } } });
  const report = doctor();
  print(!!values.json, report, report.text);
  return 0;
}

async function cmdInspect(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean' }, quick: { type: 'boolean' } } });
  const dir = positionals[0];
  if (!dir) throw new UsageError('inspect needs a trajectory directory');
  const traj = Trajectory.open(dir);
  const m = traj.manifest;
  const summary = {
    dir,
    dim: traj.layout.dim,
    blocks: traj.layout.blocks.map((b) => ({ name: b.name, kind: b.kind, dim: b.dim, offset: b.offset })),
    projection: m.projection,
    curvature: m.curvature,
    chunks: traj.chunks.length,
    sealedChunks: m.chunks.length,
    steps: traj.steps,
    occurrences: traj.rows,
    firstStep: traj.chunks[0]?.firstStep ?? null,
    lastStep: traj.chunks.at(-1)?.lastStep ?? null,
    meta: m.meta,
  };
  let report = null;
  if (!values.quick) {
    const bar = new Progress('verifying');
    report = await traj.verify((d, t) => bar.update(d, t));
    bar.done();
  }
  const ok = !report || report.problems.length === 0;
  const lines = [
    `trajectory ${dir}`,
    `  blocks: ${summary.blocks.map((b) => `${b.name} (${b.kind}, ${b.dim})`).join(', ')}; dim ${summary.dim}`,
    `  projection: ${m.projection.distribution}, seed ${m.projection.seed}; curvature rows: ${m.curvature ? `${m.curvature.draws} draw(s)` : 'none'}`,
    `  ${summary.steps} steps (${summary.firstStep}..${summary.lastStep}), ${summary.occurrences} occurrences, ${summary.chunks} chunks (${summary.sealedChunks} sealed)`,
    report ? (ok ? '  integrity: OK (every checksum, shape and value checked)' : `  integrity: ${report.problems.length} problem(s):\n${report.problems.map((p) => '    - ' + p).join('\n')}`) : '  integrity: not checked (--quick)',
  ];
  print(!!values.json, { ...summary, integrity: report }, lines.join('\n'));
  return ok ? 0 : 3;
}

async function cmdQuery(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { test: { type: 'string' }, top: { type: 'string', default: '10' }, per: { type: 'string', default: 'example' }, json: { type: 'boolean' } },
  });
  const dir = positionals[0];
  if (!dir) throw new UsageError('query needs an embeddings directory');
  if (!values.test) throw new UsageError('query needs --test <file.npy>');
  const k = Number(values.top);
  if (!Number.isSafeInteger(k) || k < 1) throw new UsageError(`--top must be a positive integer, got ${values.top}`);
  const set = EmbeddingSet.open(dir);
  const header = readNpyHeaderFile(values.test);
  if (header.dtype !== '<f4' || header.shape.length !== 2 || header.shape[1] !== set.dim) {
    throw new DvembError('SHAPE_MISMATCH', `${values.test} has shape (${header.shape.join(', ')}) ${header.dtype}; these embeddings need float32 rows of width ${set.dim}`, `project the test gradients with the trajectory's projection (seed ${set.layout.seed}, blocks ${set.layout.blocks.map((b) => b.name).join(', ')})`);
  }
  const rows = npyView(readFileSync(values.test), header) as Float32Array;
  let tests: ProjectedTests | Float32Array = rows;
  const sidecar = `${values.test}.json`;
  if (existsSync(sidecar)) {
    const meta = JSON.parse(readFileSync(sidecar, 'utf8')) as { fingerprint?: string };
    tests = { rows, n: header.shape[0]!, fingerprint: String(meta.fingerprint) };
  } else if (!values.json) {
    process.stderr.write(`note: no ${sidecar}, so the projection seed of the test gradients cannot be checked\n`);
  }
  const result = await topK(set, tests, k, values.per as 'example' | 'occurrence');
  const text = result
    .map((r, j) => {
      const f = (a: { id: number; step?: number; score: number }) => `    #${a.id}${a.step !== undefined ? ` @ step ${a.step}` : ''}  ${a.score.toExponential(3)}`;
      return [`test ${j}:`, '  proponents:', ...r.proponents.map(f), '  opponents:', ...r.opponents.map(f)].join('\n');
    })
    .join('\n');
  print(!!values.json, result, text);
  return 0;
}

/** Each command gets its arguments and the dispatcher's Ctrl-C signal. */
const COMMANDS: Record<string, (args: string[], signal: AbortSignal) => Promise<number>> = {
  doctor: cmdDoctor,
  inspect: cmdInspect,
  compute: cmdCompute,
  compose: cmdCompose,
  query: cmdQuery,
  report: cmdReport,
  eval: evalOrDdm,
};

/** `dvemb eval --ddm` is the distilled-datamodel experiment; plain `dvemb eval` the fidelity one. */
function evalOrDdm(args: string[]): Promise<number> {
  return args.includes('--ddm') ? cmdEvalDdm(args) : cmdEval(args);
}

export async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(usage(rest[0]) + '\n');
    return cmd ? 0 : 1;
  }
  const handler = COMMANDS[cmd];
  if (!handler) {
    process.stderr.write(`dvemb: unknown command "${cmd}"\n\n${usage()}\n`);
    return 1;
  }
  return guarded(cmd, usage(cmd), rest, (signal) => handler(rest, signal));
}

// Run only when executed (also through the npm bin symlink), not when imported by tests.
const invoked = process.argv[1] ? pathToFileURL(realpathSync(process.argv[1])).href : '';
if (invoked === import.meta.url) {
  run(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`dvemb: internal error: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(70);
    },
  );
}


