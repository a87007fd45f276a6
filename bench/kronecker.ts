// Kronecker projection, native vs TypeScript: R_out ∇W R_inᵀ of a 256→256 linear layer with
// bias, from its factors (a, δ) and from the materialised gradient, plus a sequence layer whose
// examples have a token axis. Both backends cache R_in / R_out, and benny's warm-up runs fill the
// caches, so the figures are the steady state of a training loop (one call per step).
import type { Backend, KroneckerArgs } from '../lib/backend/surface.js';
import type { BenchContext, CaseSpec, SuiteReport } from './run.js';

interface Shape {
  id: string;
  label: string;
  form: 'factors' | 'gradient';
  n: number;
  tokens: number;
  dIn: number;
  dOut: number;
  kIn: number;
  kOut: number;
}

const SHAPES: Shape[] = [
  { id: 'layer', label: 'factors 256→256+bias, batch 32, k 16×16', form: 'factors', n: 32, tokens: 1, dIn: 256, dOut: 256, kIn: 16, kOut: 16 },
  { id: 'tokens', label: 'factors 256→256+bias, batch 8 × 128 tokens, k 16×16', form: 'factors', n: 8, tokens: 128, dIn: 256, dOut: 256, kIn: 16, kOut: 16 },
  { id: 'gradient', label: 'gradient 32 × (256×257), k 16×16', form: 'gradient', n: 32, tokens: 1, dIn: 256, dOut: 256, kIn: 16, kOut: 16 },
];

/** A small seeded generator (mulberry32), so both backends see the same inputs. */
function fill(a: Float32Array, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    a[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return a;
}

function args(shape: Shape): Omit<KroneckerArgs, 'out'> & { out: Float32Array } {
  const { n, tokens, dIn, dOut, kIn, kOut, form } = shape;
  const inputs =
    form === 'factors' ? fill(new Float32Array(n * tokens * dIn), 1) : fill(new Float32Array(n * dOut * (dIn + 1)), 3, 0.1);
  const outputGrads = form === 'factors' ? fill(new Float32Array(n * tokens * dOut), 2, 0.1) : new Float32Array(0);
  return {
    seed: 42,
    block: 0,
    distribution: 'gaussian',
    form,
    n,
    tokens,
    dIn,
    dOut,
    bias: true,
    kIn,
    kOut,
    inputs,
    outputGrads,
    out: new Float32Array(n * kIn * kOut),
    ldOut: kIn * kOut,
    offset: 0,
  };
}

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return den === 0 ? num : num / den;
}

export async function runKronecker(ctx: BenchContext): Promise<SuiteReport> {
  const backends: [string, Backend][] = [];
  if (ctx.native) backends.push(['native', ctx.native]);
  backends.push(['ts', ctx.ts]);

  const cases: CaseSpec[] = [];
  const agreement: Record<string, number> = {};
  for (const shape of SHAPES) {
    const outs: Float32Array[] = [];
    for (const [name, backend] of backends) {
      const a = args(shape);
      outs.push(a.out);
      cases.push({ name: `${name}: ${shape.label}`, op: () => backend.projectKronecker(a) });
    }
    // Sanity: the backends compute the same projection (checked once, before timing).
    if (backends.length === 2) {
      const [x, y] = [args(shape), args(shape)];
      await backends[0]![1].projectKronecker(x);
      await backends[1]![1].projectKronecker(y);
      agreement[shape.id] = maxRelDiff(x.out, y.out);
    }
  }
  const stats = await ctx.runSuite('Kronecker projection (native vs TS)', 'kronecker', cases);

  const figures: Record<string, unknown> = { nativeUnavailable: ctx.nativeError, maxRelDiffNativeVsTs: agreement, cases: {} };
  const table: SuiteReport['table'] = [];
  for (const shape of SHAPES) {
    const per: Record<string, unknown> = {};
    const medians: Record<string, number> = {};
    for (const [name] of backends) {
      const s = stats.get(`${name}: ${shape.label}`)!;
      medians[name] = s.median;
      per[name] = {
        callsPerSec: +(1 / s.median).toFixed(1),
        examplesPerSec: Math.round(shape.n / s.median),
        medianMs: +(s.median * 1e3).toFixed(4),
        bennyOps: s.ops,
        marginPct: s.margin,
        samples: s.samples,
      };
    }
    const ratio = medians.native !== undefined ? medians.ts! / medians.native : null;
    (figures.cases as Record<string, unknown>)[shape.id] = { shape: shape.label, ...per, nativeOverTs: ratio === null ? null : +ratio.toFixed(2) };
    table.push({
      figure: `${shape.id}: native / TS`,
      value: ratio === null ? 'n/a' : `${ratio.toFixed(1)}×`,
      note: `${shape.label}; native ${medians.native !== undefined ? (medians.native * 1e3).toFixed(3) : '-'} ms, TS ${(medians.ts! * 1e3).toFixed(3)} ms per call`,
    });
  }
  return { figures, table };
}
