// A reference multilayer perceptron in float64: the small, exactly differentiable model on which
// every estimator is checked against replayed leave-one-out (REFERENCE §8). It is deliberately
// plain: loops in a fixed order (so two runs are bit-identical), no Math.random, and a forward
// pass that caches each layer's input and pre-activation so that backward passes (and later
// Hessian-/Gauss–Newton-vector products) reuse them.
//
// Model: a_0 = x;  z_l = W_l a_l + b_l;  a_{l+1} = σ(z_l) for hidden layers;  logits = z_{L−1};
// loss ℓ_i = −log softmax(logits_i)[y_i]  (softmax cross-entropy, one loss per example).
//
// Parameter layout (parameters(), setParameters(), gradient()): layer by layer, for each layer
// W_l (dOut × dIn, row-major: W[o·dIn + k]) followed by b_l (dOut). `layers[l]` gives the offsets.

import { Rng, type Seed } from './rng.js';

export type Activation = 'tanh' | 'relu';

export interface MLPOptions {
  /** Layer widths, input first and classes last, e.g. [64, 32, 10]. */
  widths: readonly number[];
  /** Hidden activation; default 'tanh' (smooth, so finite differences and Taylor checks work). */
  activation?: Activation;
  /** Initialisation seed (Glorot-uniform weights, zero biases); default 0. */
  seed?: Seed;
}

/** Where a linear layer lives in the flat parameter vector. */
export interface LayerInfo {
  dIn: number;
  dOut: number;
  /** Offset of W (dOut × dIn, row-major). */
  wOffset: number;
  /** Offset of b (dOut); equals wOffset + dOut·dIn. */
  bOffset: number;
}

/** Everything the forward pass computed, kept for backward passes. */
export interface ForwardCache {
  n: number;
  /** inputs[l]: a_l, the input of layer l (n × dIn_l); inputs[0] is a copy of x. */
  inputs: Float64Array[];
  /** pre[l]: z_l = W_l a_l + b_l (n × dOut_l). */
  pre: Float64Array[];
  /** The last pre-activation (n × classes); the same array as pre[L−1]. */
  logits: Float64Array;
  /** softmax(logits) row by row (n × classes). */
  probs: Float64Array;
}

/** Kronecker factors of one linear layer for a batch: example i's gradient is ∇W = δ_i a_iᵀ, ∇b = δ_i. */
export interface LayerFactors {
  /** a_i, the layer input (n × dIn). */
  inputs: Float64Array;
  /** δ_i = ∂ℓ_i/∂z_i of example i's OWN loss (n × dOut), not divided by the batch size. */
  outputGrads: Float64Array;
}

export interface PerExample {
  /** ℓ_i for each example. */
  losses: Float64Array;
  layers: LayerFactors[];
}

export interface SgdStepOptions {
  x: Float64Array;
  y: ArrayLike<number>;
  n: number;
  /** w_i per example (length n), or one weight for all (1/n for a mean loss, 1 for a sum). */
  weights: ArrayLike<number> | number;
  /** η_t, the learning rate actually applied at this step. */
  lr: number;
  /** λ in θ ← (1 − ηλ)θ − η Σ w_i ∇ℓ_i; applied to every parameter, biases included. Default 0. */
  weightDecay?: number;
}

/** The per-example factors at θ_t (before the update), plus the exact step that was applied. */
export interface SgdStepResult extends PerExample {
  weights: Float64Array;
  lr: number;
  weightDecay: number;
}

function checkWidths(widths: readonly number[]): void {
  if (widths.length < 2) throw new RangeError(`widths needs at least an input and an output width, got [${widths.join(', ')}]`);
  for (const w of widths) {
    if (!Number.isInteger(w) || w < 1) throw new RangeError(`widths must be positive integers, got [${widths.join(', ')}]`);
  }
}

function checkRate(name: string, v: number): void {
  if (!Number.isFinite(v) || v < 0) throw new RangeError(`${name} must be a finite non-negative number, got ${v}`);
}

/** Per-example weights as a Float64Array of length n (a scalar is broadcast). */
function expandWeights(weights: ArrayLike<number> | number, n: number): Float64Array {
  const w = typeof weights === 'number' ? new Float64Array(n).fill(weights) : Float64Array.from(weights);
  if (w.length !== n) throw new RangeError(`weights has length ${w.length}, expected n = ${n}`);
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(w[i] as number)) throw new RangeError(`weights[${i}] is not finite: ${w[i]}`);
  }
  return w;
}

/**
 * Σ_i w_i (δ_i a_iᵀ, δ_i) for every layer, in the flat parameter layout. Summation runs over
 * examples in index order, so the result is bit-reproducible.
 */
export function weightedGradient(info: readonly LayerInfo[], layers: readonly LayerFactors[], weights: Float64Array, numParams: number): Float64Array {
  const g = new Float64Array(numParams);
  const n = weights.length;
  info.forEach(({ dIn, dOut, wOffset, bOffset }, l) => {
    const { inputs: a, outputGrads: delta } = layers[l] as LayerFactors;
    for (let i = 0; i < n; i++) {
      const wi = weights[i] as number;
      for (let o = 0; o < dOut; o++) {
        const s = wi * (delta[i * dOut + o] as number);
        const row = wOffset + o * dIn;
        for (let k = 0; k < dIn; k++) g[row + k] = (g[row + k] as number) + s * (a[i * dIn + k] as number);
        g[bOffset + o] = (g[bOffset + o] as number) + s;
      }
    }
  });
  return g;
}

export class MLP {
  readonly widths: readonly number[];
  readonly activation: Activation;
  readonly layers: readonly LayerInfo[];
  readonly numParams: number;
  readonly inputDim: number;
  readonly classes: number;
  /** θ in the documented flat layout. */
  private readonly theta: Float64Array;

  constructor(options: MLPOptions) {
    checkWidths(options.widths);
    this.widths = [...options.widths];
    this.activation = options.activation ?? 'tanh';
    if (this.activation !== 'tanh' && this.activation !== 'relu') {
      throw new RangeError(`activation must be 'tanh' or 'relu', got '${String(this.activation)}'`);
    }
    const layers: LayerInfo[] = [];
    let offset = 0;
    for (let l = 0; l + 1 < this.widths.length; l++) {
      const dIn = this.widths[l] as number;
      const dOut = this.widths[l + 1] as number;
      layers.push({ dIn, dOut, wOffset: offset, bOffset: offset + dIn * dOut });
      offset += dIn * dOut + dOut;
    }
    this.layers = layers;
    this.numParams = offset;
    this.inputDim = this.widths[0] as number;
    this.classes = this.widths[this.widths.length - 1] as number;
    this.theta = new Float64Array(offset);
    this.init(new Rng(options.seed ?? 0));
  }

  /** Glorot-uniform W ~ U(−s, s), s = √(6 / (dIn + dOut)); b = 0. One forked stream per layer. */
  private init(rng: Rng): void {
    this.layers.forEach(({ dIn, dOut, wOffset }, l) => {
      const r = rng.fork(`layer${l}`);
      const s = Math.sqrt(6 / (dIn + dOut));
      for (let j = 0; j < dIn * dOut; j++) this.theta[wOffset + j] = (2 * r.next() - 1) * s;
    });
  }

  /** A copy of θ (flat layout above). */
  parameters(): Float64Array {
    return this.theta.slice();
  }

  /** Copies `flat` into θ. */
  setParameters(flat: ArrayLike<number>): void {
    if (flat.length !== this.numParams) throw new RangeError(`setParameters: length ${flat.length}, expected ${this.numParams}`);
    this.theta.set(flat);
  }

  /** An independent model with the same architecture and parameters. */
  clone(): MLP {
    const m = new MLP({ widths: this.widths, activation: this.activation });
    m.setParameters(this.theta);
    return m;
  }

  private checkBatch(x: Float64Array, n: number, y?: ArrayLike<number>): void {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`n must be a non-negative integer, got ${n}`);
    if (x.length !== n * this.inputDim) {
      throw new RangeError(`x has length ${x.length}, expected n·d = ${n}·${this.inputDim} = ${n * this.inputDim}`);
    }
    if (y === undefined) return;
    if (y.length !== n) throw new RangeError(`y has length ${y.length}, expected n = ${n}`);
    for (let i = 0; i < n; i++) {
      const c = y[i] as number;
      if (!Number.isInteger(c) || c < 0 || c >= this.classes) throw new RangeError(`y[${i}] = ${c} is not a class in 0..${this.classes - 1}`);
    }
  }

  /** Forward pass over n rows of x (n × inputDim), caching every layer's input and pre-activation. */
  forward(x: Float64Array, n: number): ForwardCache {
    this.checkBatch(x, n);
    const inputs: Float64Array[] = [];
    const pre: Float64Array[] = [];
    let a: Float64Array = x.slice();
    const last = this.layers.length - 1;
    this.layers.forEach((layer, l) => {
      inputs.push(a);
      const z = this.linear(layer, a, n);
      pre.push(z);
      if (l < last) a = this.activate(z);
    });
    const logits = pre[last] as Float64Array;
    return { n, inputs, pre, logits, probs: softmaxRows(logits, n, this.classes) };
  }

  /** z = W a + b for every row of a (n × dIn); dot product in k order, then the bias. */
  private linear({ dIn, dOut, wOffset, bOffset }: LayerInfo, a: Float64Array, n: number): Float64Array {
    const z = new Float64Array(n * dOut);
    const th = this.theta;
    for (let i = 0; i < n; i++) {
      for (let o = 0; o < dOut; o++) {
        let s = 0;
        const row = wOffset + o * dIn;
        for (let k = 0; k < dIn; k++) s += (th[row + k] as number) * (a[i * dIn + k] as number);
        z[i * dOut + o] = s + (th[bOffset + o] as number);
      }
    }
    return z;
  }

  private activate(z: Float64Array): Float64Array {
    const out = new Float64Array(z.length);
    if (this.activation === 'tanh') for (let j = 0; j < z.length; j++) out[j] = Math.tanh(z[j] as number);
    else for (let j = 0; j < z.length; j++) out[j] = Math.max(0, z[j] as number);
    return out;
  }

  /**
   * σ′ at hidden layer l (the activation that produced inputs[l+1]). tanh′ = 1 − a² from the cached
   * output; relu′ = [z > 0] (the kink at 0 gets derivative 0).
   */
  private activationDerivative(cache: ForwardCache, l: number, j: number): number {
    if (this.activation === 'tanh') {
      const a = (cache.inputs[l + 1] as Float64Array)[j] as number;
      return 1 - a * a;
    }
    return ((cache.pre[l] as Float64Array)[j] as number) > 0 ? 1 : 0;
  }

  /**
   * Back-propagates per-example output gradients. `logitGrads` (n × classes) holds ∂ℓ_i/∂logits_i
   * for each example; the result is δ_l = ∂ℓ_i/∂z_l for every layer (n × dOut_l), row i depending
   * only on example i. For cross-entropy with label y: logitGrads = p − onehot(y); any other
   * per-example output gradient (a sampled label for the true Fisher, a GGN column) works too.
   */
  backward(cache: ForwardCache, logitGrads: Float64Array): Float64Array[] {
    const { n } = cache;
    const L = this.layers.length;
    if (logitGrads.length !== n * this.classes) throw new RangeError(`logitGrads has length ${logitGrads.length}, expected ${n * this.classes}`);
    const deltas: Float64Array[] = new Array<Float64Array>(L);
    deltas[L - 1] = logitGrads.slice();
    for (let l = L - 1; l > 0; l--) {
      const { dIn, dOut, wOffset } = this.layers[l] as LayerInfo;
      const upper = deltas[l] as Float64Array;
      const lower = new Float64Array(n * dIn);
      for (let i = 0; i < n; i++) {
        // (W_lᵀ δ_l), accumulated over o in ascending order for every k.
        for (let o = 0; o < dOut; o++) {
          const d = upper[i * dOut + o] as number;
          const row = wOffset + o * dIn;
          for (let k = 0; k < dIn; k++) lower[i * dIn + k] = (lower[i * dIn + k] as number) + (this.theta[row + k] as number) * d;
        }
        for (let k = 0; k < dIn; k++) lower[i * dIn + k] = (lower[i * dIn + k] as number) * this.activationDerivative(cache, l - 1, i * dIn + k);
      }
      deltas[l - 1] = lower;
    }
    return deltas;
  }

  /** ℓ_i and the Kronecker factors (a_i, δ_i) of every example's own loss, per layer. */
  perExample(x: Float64Array, y: ArrayLike<number>, n: number): PerExample {
    this.checkBatch(x, n, y);
    const cache = this.forward(x, n);
    const losses = crossEntropyRows(cache.logits, y, n, this.classes);
    const g = cache.probs.slice();
    for (let i = 0; i < n; i++) g[i * this.classes + (y[i] as number)] = (g[i * this.classes + (y[i] as number)] as number) - 1;
    const deltas = this.backward(cache, g);
    const layers = deltas.map((outputGrads, l) => ({ inputs: cache.inputs[l] as Float64Array, outputGrads }));
    return { losses, layers };
  }

  /** Σ_i w_i ∇ℓ_i in the flat layout (weights: length n, or one scalar for all). */
  gradient(x: Float64Array, y: ArrayLike<number>, n: number, weights: ArrayLike<number> | number): Float64Array {
    const w = expandWeights(weights, n);
    return weightedGradient(this.layers, this.perExample(x, y, n).layers, w, this.numParams);
  }

  /** The n per-example gradients ∇ℓ_i as rows of an n × numParams matrix (flat layout). */
  perExampleGradients(x: Float64Array, y: ArrayLike<number>, n: number): Float64Array {
    const { layers } = this.perExample(x, y, n);
    const out = new Float64Array(n * this.numParams);
    this.layers.forEach(({ dIn, dOut, wOffset, bOffset }, l) => {
      const { inputs: a, outputGrads: delta } = layers[l] as LayerFactors;
      for (let i = 0; i < n; i++) {
        const base = i * this.numParams;
        for (let o = 0; o < dOut; o++) {
          const d = delta[i * dOut + o] as number;
          for (let k = 0; k < dIn; k++) out[base + wOffset + o * dIn + k] = d * (a[i * dIn + k] as number);
          out[base + bOffset + o] = d;
        }
      }
    });
    return out;
  }

  /**
   * One SGD step (REFERENCE §1): θ ← (1 − lr·λ) θ − lr Σ_i w_i ∇ℓ_i(θ). The decay multiplies every
   * parameter, biases included, so it is one scalar c = 1 − lr·λ per step, as the recorder assumes.
   * Returns the per-example losses and factors at the pre-update θ, for recording.
   */
  sgdStep({ x, y, n, weights, lr, weightDecay = 0 }: SgdStepOptions): SgdStepResult {
    checkRate('lr', lr);
    checkRate('weightDecay', weightDecay);
    const w = expandWeights(weights, n);
    const pe = this.perExample(x, y, n);
    const g = weightedGradient(this.layers, pe.layers, w, this.numParams);
    const c = 1 - lr * weightDecay;
    const th = this.theta;
    for (let j = 0; j < th.length; j++) th[j] = c * (th[j] as number) - lr * (g[j] as number);
    return { ...pe, weights: w, lr, weightDecay };
  }

  /** ℓ_i per example (forward pass only). */
  losses(x: Float64Array, y: ArrayLike<number>, n: number): Float64Array {
    this.checkBatch(x, n, y);
    return crossEntropyRows(this.forward(x, n).logits, y, n, this.classes);
  }

  /** Mean loss (1/n) Σ ℓ_i, summed in index order; 0 for an empty batch. */
  loss(x: Float64Array, y: ArrayLike<number>, n: number): number {
    const ls = this.losses(x, y, n);
    let s = 0;
    for (let i = 0; i < n; i++) s += ls[i] as number;
    return n === 0 ? 0 : s / n;
  }

  /** Arg-max class per row (the first on ties). */
  predict(x: Float64Array, n: number): Int32Array {
    const { logits } = this.forward(x, n);
    const C = this.classes;
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      let best = 0;
      for (let c = 1; c < C; c++) if ((logits[i * C + c] as number) > (logits[i * C + best] as number)) best = c;
      out[i] = best;
    }
    return out;
  }

  /** Fraction of rows whose predicted class equals y. */
  accuracy(x: Float64Array, y: ArrayLike<number>, n: number): number {
    this.checkBatch(x, n, y);
    const p = this.predict(x, n);
    let hits = 0;
    for (let i = 0; i < n; i++) if (p[i] === y[i]) hits++;
    return n === 0 ? 0 : hits / n;
  }
}

/** Row-wise softmax, shifted by the row maximum for stability. */
export function softmaxRows(logits: Float64Array, n: number, C: number): Float64Array {
  const p = new Float64Array(n * C);
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (let c = 0; c < C; c++) m = Math.max(m, logits[i * C + c] as number);
    let s = 0;
    for (let c = 0; c < C; c++) {
      const e = Math.exp((logits[i * C + c] as number) - m);
      p[i * C + c] = e;
      s += e;
    }
    for (let c = 0; c < C; c++) p[i * C + c] = (p[i * C + c] as number) / s;
  }
  return p;
}

/** ℓ_i = logsumexp(logits_i) − logits_i[y_i], computed stably. */
export function crossEntropyRows(logits: Float64Array, y: ArrayLike<number>, n: number, C: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (let c = 0; c < C; c++) m = Math.max(m, logits[i * C + c] as number);
    let s = 0;
    for (let c = 0; c < C; c++) s += Math.exp((logits[i * C + c] as number) - m);
    out[i] = m + Math.log(s) - (logits[i * C + (y[i] as number)] as number);
  }
  return out;
}
