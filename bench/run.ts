// `npm run bench`: runs the benny suites (Kronecker projection, backward pass, scoring; and on
// request the 2 GB memory test), writes each suite's benny JSON under bench/results/, merges the
// derived figures (GFLOP/s, ratios, machine info) into bench/results/summary.json and prints a
// short table. Every ratio it reports is taken between cases measured in the same suite run.
//
//   node dist/bench/run.js [--quick] [--only kronecker|backward|scoring|segments|tfjs|memory] [--memory]
//
// --quick   few samples (CI smoke test, well under 60 s)
// --only    one suite
// --memory  also run the 2 GB test (writes ~4.3 GB under os.tmpdir(), deletes it afterwards)
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { add, complete, cycle, save, suite } from 'benny';
import { loadBackend, packageRoot } from '../lib/backend/loader.js';
import type { Backend, BackendInfo } from '../lib/backend/surface.js';
import { median, serial } from './util.js';

export type SuiteName = 'kronecker' | 'backward' | 'scoring' | 'segments' | 'tfjs' | 'memory';
const DEFAULT_SUITES: SuiteName[] = ['kronecker', 'backward', 'scoring', 'segments', 'tfjs'];
const ALL_SUITES: SuiteName[] = [...DEFAULT_SUITES, 'memory'];

/** One benchmark case: `op` is run (awaited) once per benny operation. */
export interface CaseSpec {
  name: string;
  op: () => Promise<unknown>;
  /** Slow cases (≥ 100 ms an operation) get fewer samples. */
  slow?: boolean;
}

/** What a suite keeps of one case: benny's ops/s and the median time of one operation. */
export interface CaseStat {
  name: string;
  /** benny's ops/s (1 / mean time of an operation). */
  ops: number;
  /** ± % margin of error benny reports. */
  margin: number;
  samples: number;
  /** Median time of one operation, seconds (what the derived figures use: robust to noise). */
  median: number;
  mean: number;
}

export interface BenchContext {
  quick: boolean;
  root: string;
  resultsDir: string;
  version: string;
  /** The native CPU addon, or null where it does not load (its suites then say so). */
  native: Backend | null;
  nativeError: string | null;
  ts: Backend;
  /** Runs cases as one benny suite, saves `<file>.json` in resultsDir, returns the stats by name. */
  runSuite(title: string, file: string, cases: CaseSpec[]): Promise<Map<string, CaseStat>>;
  log(message: string): void;
}

/** A suite's section of summary.json: free-form figures plus rows for the printed table. */
export interface SuiteReport {
  figures: Record<string, unknown>;
  table: { figure: string; value: string; note?: string }[];
}

export { packageRoot } from '../lib/backend/loader.js';

function parseArgs(argv: string[]): { quick: boolean; suites: SuiteName[] } {
  let quick = false;
  let only: SuiteName | null = null;
  let memory = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') quick = true;
    else if (a === '--memory') memory = true;
    else if (a === '--only' || a.startsWith('--only=')) {
      const v = a === '--only' ? argv[++i] : a.slice('--only='.length);
      if (!v || !ALL_SUITES.includes(v as SuiteName)) {
        throw new Error(`--only takes one of ${ALL_SUITES.join(', ')}, got ${String(v)}`);
      }
      only = v as SuiteName;
    } else if (a === '--help' || a === '-h') {
      process.stdout.write(
        'usage: npm run bench -- [--quick] [--only kronecker|backward|scoring|segments|tfjs|memory] [--memory]\n' +
          '  --quick   fewer samples (CI smoke test)\n' +
          '  --only    run one suite\n' +
          '  --memory  also run the 2 GB memory test (writes ~4.3 GB to a temp dir, then deletes it)\n',
      );
      process.exit(0);
    } else {
      throw new Error(`unknown argument ${a} (try --help)`);
    }
  }
  const suites = only ? [only] : memory ? ALL_SUITES : DEFAULT_SUITES;
  return { quick, suites };
}

function makeContext(quick: boolean): BenchContext {
  const root = packageRoot();
  const resultsDir = join(root, 'bench', 'results');
  mkdirSync(resultsDir, { recursive: true });
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
  let native: Backend | null = null;
  let nativeError: string | null = null;
  try {
    native = loadBackend('native').backend;
  } catch (err) {
    nativeError = err instanceof Error ? err.message : String(err);
  }
  const ts = loadBackend('ts').backend;
  const log = (m: string) => process.stdout.write(m + '\n');

  const runSuite = async (title: string, file: string, cases: CaseSpec[]): Promise<Map<string, CaseStat>> => {
    const fast = quick ? { minSamples: 3, maxTime: 0.4 } : { minSamples: 10, maxTime: 3 };
    const slow = quick ? { minSamples: 2, maxTime: 0.3 } : { minSamples: 5, maxTime: 4 };
    const summary = await suite(
      title,
      ...cases.map((c) => add(c.name, serial(c.op), c.slow ? slow : fast)),
      cycle(),
      complete(),
      save({ file, folder: resultsDir, version, details: true }),
    );
    const out = new Map<string, CaseStat>();
    for (const r of summary.results) {
      out.set(r.name, {
        name: r.name,
        ops: r.ops,
        margin: r.margin,
        samples: r.samples,
        median: median(r.details.sampleResults),
        mean: r.details.mean,
      });
    }
    return out;
  };
  return { quick, root, resultsDir, version, native, nativeError, ts, runSuite, log };
}

function machineInfo(ctx: BenchContext): Record<string, unknown> {
  const cpu = cpus();
  let nativeInfo: BackendInfo | null = null;
  try {
    nativeInfo = ctx.native?.info() ?? null;
  } catch {
    nativeInfo = null;
  }
  return {
    cpuModel: cpu[0]?.model ?? 'unknown',
    cores: cpu.length,
    totalMemoryGiB: +(totalmem() / 2 ** 30).toFixed(1),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    OPENBLAS_CORETYPE: process.env.OPENBLAS_CORETYPE ?? null,
    OPENBLAS_NUM_THREADS: process.env.OPENBLAS_NUM_THREADS ?? null,
    native: nativeInfo,
    nativeUnavailable: ctx.nativeError,
    ts: ctx.ts.info(),
  };
}

/** Busy CPU ticks of the whole machine and of this process plus its waited-for children. */
function cpuTicks(): { machine: number; self: number; hz: number } | null {
  try {
    const stat = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number); // guest time is already in user
    // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    const machine = stat.reduce((a, x) => a + x, 0) - stat[3]! - (stat[4] ?? 0);
    // /proc/self/stat: fields after the ")" of the command name; utime is the 14th field overall
    const self = readFileSync('/proc/self/stat', 'utf8');
    const f = self.slice(self.lastIndexOf(')') + 2).split(' ').map(Number);
    const ticks = f[11]! + f[12]! + f[13]! + f[14]!; // utime stime cutime cstime
    return { machine, self: ticks, hz: 100 }; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}

function printTable(sections: [SuiteName, SuiteReport][]): void {
  const rows: string[][] = [['suite', 'figure', 'value', 'note']];
  for (const [name, rep] of sections) for (const r of rep.table) rows.push([name, r.figure, r.value, r.note ?? '']);
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const line = (r: string[]) => r.map((x, c) => x.padEnd(widths[c]!)).join('  ').trimEnd();
  process.stdout.write('\n' + line(rows[0]!) + '\n' + widths.map((w) => '-'.repeat(w)).join('  ') + '\n');
  for (const r of rows.slice(1)) process.stdout.write(line(r) + '\n');
}

async function main(): Promise<void> {
  const { quick, suites } = parseArgs(process.argv.slice(2));
  const ctx = makeContext(quick);
  const started = new Date();
  const load0 = loadavg();
  ctx.log(`dvemb bench${quick ? ' (quick)' : ''}: ${suites.join(', ')}; results in ${ctx.resultsDir}`);
  if (!ctx.native) ctx.log(`native addon unavailable, native cases are skipped: ${ctx.nativeError}`);

  const sections: [SuiteName, SuiteReport][] = [];
  const cores = cpus().length;
  for (const name of suites) {
    const t0 = performance.now();
    const loadBefore = loadavg()[0]!;
    const cpu0 = cpuTicks();
    let report: SuiteReport;
    switch (name) {
      case 'kronecker':
        report = await (await import('./kronecker.js')).runKronecker(ctx);
        break;
      case 'backward':
        report = await (await import('./backward.js')).runBackward(ctx);
        break;
      case 'scoring':
        report = await (await import('./scoring.js')).runScoring(ctx);
        break;
      case 'memory':
        report = await (await import('./memory.js')).runMemory(ctx);
        break;
      case 'segments': {
        const r = await (await import('./segments.js')).runSegmentsBench({ quick });
        report = {
          figures: { ...r },
          table: [{ figure: 'segments K=2 / sequential (1 BLAS thread each)', value: `${r.speedup.toFixed(2)}×`, note: `sequential ${r.sequentialMs.toFixed(0)} ms, parallel + lazy compose ${r.parallelMs.toFixed(0)} ms; target ≥ 1.5×` }],
        };
        break;
      }
      case 'tfjs': {
        const r = await (await import('./tfjs.js')).runTfjsBench({ quick });
        report = {
          figures: { ...r },
          table: [{ figure: 'tfjs step with capture / plain step', value: r.ratio.toFixed(2), note: `plain ${r.plainMs.toFixed(2)} ms, capture ${r.captureMs.toFixed(2)} ms; target ≤ 1.3` }],
        };
        break;
      }
    }
    const cpu1 = cpuTicks();
    const seconds = (performance.now() - t0) / 1000;
    report.figures.seconds = +seconds.toFixed(1);
    report.figures.quick = quick;
    report.figures.runAt = started.toISOString();
    const loadAfter = loadavg()[0]!;
    report.figures.loadAverage1m = { before: +loadBefore.toFixed(2), after: +loadAfter.toFixed(2) };
    // CPU the rest of the machine used while the suite ran, in cores on average: all CPU time
    // (/proc/stat) minus this process's and its children's (/proc/self/stat).
    const neighbours = cpu0 && cpu1 ? Math.max(0, cpu1.machine - cpu0.machine - (cpu1.self - cpu0.self)) / (cpu1.hz * seconds) : null;
    report.figures.neighbourCpuCores = neighbours === null ? null : +neighbours.toFixed(2);
    report.figures.noisy = neighbours !== null && neighbours > 0.2;
    if (report.figures.noisy) {
      report.table.push({
        figure: 'WARNING',
        value: 'noisy',
        note: `other processes used ${neighbours!.toFixed(2)} of ${cores} cores on average during this suite: its figures are disturbed; rerun when the machine is quiet`,
      });
    }
    sections.push([name, report]);
  }

  // Merge into summary.json: a suite's section is replaced as a whole, so every ratio in it comes
  // from one run; sections of suites not run now are kept with their own runAt.
  const path = join(ctx.resultsDir, 'summary.json');
  let previous: { suites?: Record<string, unknown> } = {};
  try {
    previous = JSON.parse(readFileSync(path, 'utf8')) as typeof previous;
  } catch {
    previous = {};
  }
  const merged = {
    updated: new Date().toISOString(),
    package: `dvemb ${ctx.version}`,
    machine: machineInfo(ctx),
    loadAverage: { start: load0, end: loadavg() },
    suites: { ...(previous.suites ?? {}), ...Object.fromEntries(sections.map(([n, r]) => [n, r.figures])) },
  };
  writeFileSync(path, JSON.stringify(merged, null, 2) + '\n');
  printTable(sections);
  ctx.log(`\nsummary: ${path}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
