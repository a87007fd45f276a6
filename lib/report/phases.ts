// The phases of data influence over training (Wang et al. 2024, §5: a high-impact warm-up, a
// low-impact basin, a late ascent), found by one fixed, documented rule (docs/REPORT.md), and
// what they say about when data selection pays. Pure functions, so the rule is testable alone.

export interface PhaseRule {
  /** Centred moving-average window as a fraction of the steps (at least 3 steps, odd). */
  window: number;
  /** "High" level, as a fraction of the smoothed curve's maximum. */
  high: number;
  /** "Low" level, as a fraction of the smoothed curve's maximum. */
  low: number;
  /** The warm-up's high run must start within this fraction of the steps... */
  warmupStartsBy: number;
  /** ...and end before this fraction, or it is not a warm-up but a flat curve. */
  warmupEndsBy: number;
  /** The basin is the longest run at or below `low`; it must cover this fraction of the steps. */
  minBasin: number;
  /** The ascent: everything after the basin, when the mean of the last `tail` fraction is above `low`. */
  tail: number;
  /** Fewer steps than this: no phases are looked for. */
  minSteps: number;
}

export const DEFAULT_PHASE_RULE: PhaseRule = {
  window: 0.05,
  high: 0.5,
  low: 0.25,
  warmupStartsBy: 0.25,
  warmupEndsBy: 0.5,
  minBasin: 0.2,
  tail: 0.05,
  minSteps: 10,
};

export type PhaseName = 'warm-up' | 'basin' | 'ascent';

export interface Phase {
  name: PhaseName;
  /** Positions in the step table (0-based, inclusive), not step numbers. */
  from: number;
  to: number;
}

export interface PhaseResult {
  /** The smoothed curve divided by its maximum (all zero when the curve is). */
  level: Float64Array;
  window: number;
  phases: Phase[];
  /** Why no phase was found, when none was. */
  none?: string;
}

/** Centred moving average; near the ends the window shrinks to the steps that exist. */
export function movingAverage(values: ArrayLike<number>, window: number): Float64Array {
  const n = values.length;
  const half = Math.floor(window / 2);
  const prefix = new Float64Array(n + 1);
  for (let i = 0; i < n; i++) prefix[i + 1] = prefix[i]! + values[i]!;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const a = Math.max(0, i - half);
    const b = Math.min(n, i + half + 1);
    out[i] = (prefix[b]! - prefix[a]!) / (b - a);
  }
  return out;
}

export function smoothingWindow(steps: number, fraction: number): number {
  const w = Math.max(3, Math.round(steps * fraction));
  return w % 2 === 1 ? w : w + 1;
}

/** Runs of consecutive positions where `test` holds, as [from, to] inclusive. */
function runs(level: Float64Array, test: (v: number) => boolean, from = 0): [number, number][] {
  const out: [number, number][] = [];
  let start = -1;
  for (let i = from; i <= level.length; i++) {
    const inside = i < level.length && test(level[i]!);
    if (inside && start < 0) start = i;
    if (!inside && start >= 0) {
      out.push([start, i - 1]);
      start = -1;
    }
  }
  return out;
}

/**
 * Applies the phase rule to a non-negative per-step signal (influence magnitude):
 * 1. smooth with a centred moving average and divide by the maximum → level ∈ [0, 1];
 * 2. warm-up: positions 0 … e, where e ends the first run with level ≥ high, if that run starts
 *    within `warmupStartsBy` of the steps and ends before `warmupEndsBy`;
 * 3. basin: the longest run with level ≤ low after the warm-up, if it covers ≥ `minBasin`;
 * 4. ascent: everything after the basin, if the basin ends before the last step and the mean
 *    level over the last `tail` of the steps is above `low`.
 */
export function findPhases(signal: ArrayLike<number>, rule: PhaseRule = DEFAULT_PHASE_RULE): PhaseResult {
  const T = signal.length;
  const window = smoothingWindow(T, rule.window);
  const smooth = movingAverage(signal, window);
  let max = 0;
  for (const v of smooth) if (v > max) max = v;
  const level = smooth.map((v) => (max > 0 ? v / max : 0));
  if (T < rule.minSteps) return { level, window, phases: [], none: `too few steps (${T} < ${rule.minSteps}) to look for phases` };
  if (!(max > 0)) return { level, window, phases: [], none: 'the influence is zero at every step' };

  const phases: Phase[] = [];
  let after = 0;
  const firstHigh = runs(level, (v) => v >= rule.high)[0];
  if (firstHigh && firstHigh[0] <= rule.warmupStartsBy * (T - 1) && firstHigh[1] < rule.warmupEndsBy * (T - 1)) {
    phases.push({ name: 'warm-up', from: 0, to: firstHigh[1] });
    after = firstHigh[1] + 1;
  }
  let basin: [number, number] | undefined;
  for (const r of runs(level, (v) => v <= rule.low, after)) if (!basin || r[1] - r[0] > basin[1] - basin[0]) basin = r;
  if (basin && basin[1] - basin[0] + 1 >= rule.minBasin * T) {
    phases.push({ name: 'basin', from: basin[0], to: basin[1] });
    if (basin[1] < T - 1) {
      const tail = Math.max(1, Math.round(rule.tail * T));
      let s = 0;
      for (let i = T - tail; i < T; i++) s += level[i]!;
      if (s / tail > rule.low) phases.push({ name: 'ascent', from: basin[1] + 1, to: T - 1 });
    }
  }
  return phases.length > 0 ? { level, window, phases } : { level, window, phases, none: 'no phases found: the curve has no early high span, no long low span and no late rise under this rule' };
}

/** Share of the signal's total in positions [from, to]. */
export function share(signal: ArrayLike<number>, from: number, to: number): number {
  let part = 0;
  let all = 0;
  for (let i = 0; i < signal.length; i++) {
    const v = signal[i]!;
    all += v;
    if (i >= from && i <= to) part += v;
  }
  return all > 0 ? part / all : 0;
}

export interface SelectionReading {
  /** One short paragraph per finding, plain text. */
  lines: string[];
  /** Share of the influence magnitude in each quarter of the steps. */
  quarters: number[];
}

const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
const stepShareOf = (p: Phase, T: number) => (p.to - p.from + 1) / T;

/**
 * The data-selection-timing reading: where in training the data that reach the final model were
 * seen, and so where choosing data carefully pays. `steps` maps positions to step numbers.
 */
export function selectionReading(magnitude: ArrayLike<number>, phases: PhaseResult, steps: ArrayLike<number>): SelectionReading {
  const T = magnitude.length;
  const quarters = [0, 1, 2, 3].map((q) => share(magnitude, Math.floor((q * T) / 4), Math.floor(((q + 1) * T) / 4) - 1));
  const span = (p: Phase) => `steps ${steps[p.from]}–${steps[p.to]}`;
  const stepShare = (p: Phase) => (p.to - p.from + 1) / T;
  const lines: string[] = [];
  for (const p of phases.phases) {
    const s = share(magnitude, p.from, p.to);
    const ratio = stepShare(p) > 0 ? s / stepShare(p) : 0;
    if (p.name === 'warm-up') {
      lines.push(
        `High-impact warm-up (${span(p)}): ${pct(stepShare(p))} of the steps carry ${pct(s)} of the influence (${ratio.toFixed(1)}× their share). ` +
          'Selection pays most here: curate, de-duplicate and balance the data fed early, because what the model sees first is not washed out.',
      );
    } else if (p.name === 'basin') {
      lines.push(
        `Low-impact basin (${span(p)}): ${pct(stepShare(p))} of the steps carry ${pct(s)} of the influence. ` +
          'Selection buys least here: cheaper or less filtered data cost little, and online selection in this span is the first to drop when compute is short.',
      );
    } else {
      lines.push(
        `Late ascent (${span(p)}): ${pct(stepShare(p))} of the steps carry ${pct(s)} of the influence. ` +
          'Data seen last are forgotten least: put the highest-quality or target-domain data here (annealing).',
      );
    }
  }
  const warm = phases.phases.find((p) => p.name === 'warm-up');
  if (warm && !phases.phases.some((p) => p.name === 'basin') && warm.to < T - 1) {
    lines.push(
      `No low-impact basin: after step ${steps[warm.to]} the influence never stays low (≤ the rule's low level) for long, ` +
        `so the remaining ${pct(1 - stepShareOf(warm, T))} of the steps still carry ${pct(1 - share(magnitude, warm.from, warm.to))} of it: selection keeps paying through the run.`,
    );
  }
  if (phases.phases.length === 0) {
    const top = quarters.indexOf(Math.max(...quarters));
    lines.push(
      `No phases found (${phases.none ?? 'the rule did not fire'}). The influence is spread over the run ` +
        `(quarters: ${quarters.map(pct).join(' / ')}); the largest share is in quarter ${top + 1}, so selection there pays a little more, but no span can be skipped.`,
    );
  }
  return { lines, quarters };
}
