// Learning-rate schedules as pure functions of the (0-based) step index. The trainer calls
// schedule(t) for the η_t it applies at step t and must hand the same η_t to the recorder
// (REFERENCE §1): a schedule is therefore a plain deterministic function, with no hidden state.

/** η_t as a function of the 0-based step index t. */
export type Schedule = (step: number) => number;

/** Throws a RangeError naming `name` unless `value` is finite and ≥ 0. */
function nonNegative(name: string, value: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`${name} must be a finite non-negative number, got ${String(value)}`);
  }
  return value;
}

/** Same as nonNegative, and an integer. */
function count(name: string, value: number): number {
  nonNegative(name, value);
  if (!Number.isInteger(value)) throw new RangeError(`${name} must be an integer, got ${value}`);
  return value;
}

/** Validates the argument every schedule receives. Steps are integers ≥ 0. */
function checkStep(step: number): number {
  return count('step', step);
}

/** η_t = lr for every step. */
export function constant(lr: number): Schedule {
  nonNegative('lr', lr);
  return (step) => {
    checkStep(step);
    return lr;
  };
}

export interface StepDecayOptions {
  /** η at step 0. */
  initial: number;
  /** Multiplier applied every `every` steps (0 ≤ factor; typically < 1). */
  factor: number;
  /** Period of the decay, in steps (≥ 1). */
  every: number;
}

/** η_t = initial · factor^⌊t / every⌋. */
export function stepDecay({ initial, factor, every }: StepDecayOptions): Schedule {
  nonNegative('initial', initial);
  nonNegative('factor', factor);
  count('every', every);
  if (every < 1) throw new RangeError(`every must be at least 1, got ${every}`);
  return (step) => initial * Math.pow(factor, Math.floor(checkStep(step) / every));
}

export interface WarmupCosineOptions {
  /** η reached at the end of the warm-up (step warmupSteps). */
  peak: number;
  /** Length of the linear warm-up; 0 starts at the peak. */
  warmupSteps: number;
  /** Step at which the cosine reaches `floor` (≥ warmupSteps); η stays at floor afterwards. */
  totalSteps: number;
  /** Final learning rate (0 ≤ floor ≤ peak); default 0. */
  floor?: number;
}

/**
 * Linear warm-up then cosine decay:
 *   t < W:      η_t = peak · t / W                          (so η_0 = 0 when W > 0)
 *   W ≤ t ≤ T:  η_t = floor + (peak − floor) · ½ (1 + cos(π (t − W) / (T − W)))
 *   t ≥ T:      η_t = floor
 * Hence η_W = peak and η_T = floor exactly. Note that a step with η_t = 0 (the first warm-up
 * step) contributes nothing, so its batch has zero influence under every estimator.
 */
export function warmupCosine({ peak, warmupSteps, totalSteps, floor = 0 }: WarmupCosineOptions): Schedule {
  nonNegative('peak', peak);
  count('warmupSteps', warmupSteps);
  count('totalSteps', totalSteps);
  nonNegative('floor', floor);
  if (totalSteps < warmupSteps) {
    throw new RangeError(`totalSteps (${totalSteps}) must be at least warmupSteps (${warmupSteps})`);
  }
  if (floor > peak) throw new RangeError(`floor (${floor}) must not exceed peak (${peak})`);
  const decaySteps = totalSteps - warmupSteps;
  return (step) => {
    checkStep(step);
    if (step < warmupSteps) return (peak * step) / warmupSteps;
    if (step === warmupSteps) return peak; // also when totalSteps = warmupSteps (no decay phase)
    if (step >= totalSteps) return floor;
    const progress = (step - warmupSteps) / decaySteps;
    return floor + (peak - floor) * 0.5 * (1 + Math.cos(Math.PI * progress));
  };
}
