// Scoring, native vs TypeScript: out (n × m) = E (n × dim) · Tᵀ (m × dim), one call, as
// scoreBlocks issues it for a block of stored embeddings against a batch of tests.
// Flops: 2·n·m·dim per call.
import type { Backend, ScoreArgs } from '../lib/backend/surface.js';
import type { BenchContext, CaseSpec, SuiteReport } from './run.js';

function fill(a: Float32Array, seed: number): Float32Array {
  let s = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 4294967296 - 0.5) * 0.1;
  }
  return a;
}

export async function runScoring(ctx: BenchContext): Promise<SuiteReport> {
  const n = 8192;
  const m = 64;
  const dim = 1024;
  const flops = 2 * n * m * dim;
  const embeddings = fill(new Float32Array(n * dim), 1);
  const tests = fill(new Float32Array(m * dim), 2);
  const backends: [string, Backend][] = [];
  if (ctx.native) backends.push(['native', ctx.native]);
  backends.push(['ts', ctx.ts]);
  const label = `score ${n} embeddings × ${dim} dims × ${m} tests`;
  const cases: CaseSpec[] = backends.map(([name, backend]) => {
    const a: ScoreArgs = { n, m, dim, embeddings, tests, out: new Float32Array(n * m) };
    return { name: `${name}: ${label}`, op: () => backend.score(a), slow: name === 'ts' };
  });
  const stats = await ctx.runSuite('Scoring (native vs TS)', 'scoring', cases);

  const figures: Record<string, unknown> = { shape: { n, m, dim }, flopsPerCall: flops, nativeUnavailable: ctx.nativeError };
  const table: SuiteReport['table'] = [];
  const gflops: Record<string, number> = {};
  for (const [name] of backends) {
    const s = stats.get(`${name}: ${label}`)!;
    gflops[name] = flops / s.median / 1e9;
    figures[name] = { gflops: +gflops[name]!.toFixed(2), medianMs: +(s.median * 1e3).toFixed(3), bennyOps: s.ops, marginPct: s.margin, samples: s.samples };
    table.push({ figure: `${name} GFLOP/s`, value: gflops[name]!.toFixed(2), note: label });
  }
  if (gflops.native !== undefined) {
    const r = gflops.native / gflops.ts!;
    figures.nativeOverTs = +r.toFixed(2);
    table.push({ figure: 'native / TS', value: `${r.toFixed(1)}×` });
  }
  return { figures, table };
}
