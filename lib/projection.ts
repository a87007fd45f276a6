// The projected gradient space of a trajectory (REFERENCE §4): which blocks there are, where
// each sits in a projected row, and how raw per-example data become rows. Recording and
// querying both go through one Projector, so a test gradient lands in the very same space as
// the training gradients it is compared with.
import { createHash } from 'node:crypto';
import type { Backend, Distribution } from './backend/surface.js';
import { DvembError, assertFinite } from './errors.js';

export type BlockSpec =
  | { name: string; kind: 'kronecker'; dIn: number; dOut: number; bias?: boolean; kIn: number; kOut: number }
  | { name: string; kind: 'dense'; d: number; k: number }
  | { name: string; kind: 'projected'; k: number };

export type LayoutBlock = BlockSpec & { index: number; offset: number; dim: number };

export interface ProjectionSpec {
  seed: number;
  distribution: Distribution;
}

type Floats = Float32Array | Float64Array;

/** One block's data for n examples, in whichever form the training loop has it. */
export type BlockGradient =
  | { inputs: Floats; outputGrads: Floats; tokens?: number } // Kronecker factors (a, δ)
  | { gradient: Floats } // raw per-example gradient, projected here
  | { projected: Float32Array }; // already projected (n × block dim)

/** Per-example gradients of a batch: all blocks already projected (n × dim), or per block. */
export type BatchGradients = Float32Array | Record<string, BlockGradient>;

const NAME = /^[A-Za-z0-9_.:/-]{1,128}$/;

function positiveInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new DvembError('BAD_INPUT', `${what} must be a positive integer, got ${String(v)}`);
  }
  return v;
}

export class Layout {
  readonly seed: number;
  readonly distribution: Distribution;
  readonly blocks: readonly LayoutBlock[];
  readonly dim: number;
  readonly fingerprint: string;

  constructor(projection: ProjectionSpec, blocks: readonly BlockSpec[]) {
    if (!Number.isSafeInteger(projection.seed) || projection.seed < 0) {
      throw new DvembError('BAD_INPUT', `projection seed must be an integer in [0, 2^53), got ${projection.seed}`);
    }
    if (projection.distribution !== 'gaussian' && projection.distribution !== 'rademacher') {
      throw new DvembError('BAD_INPUT', `projection distribution must be "gaussian" or "rademacher", got ${String(projection.distribution)}`);
    }
    if (!Array.isArray(blocks) || blocks.length === 0) {
      throw new DvembError('BAD_INPUT', 'a trajectory needs at least one block', 'describe each linear layer as {name, kind: "kronecker", dIn, dOut, bias, kIn, kOut}');
    }
    const seen = new Set<string>();
    let offset = 0;
    this.blocks = blocks.map((spec, index) => {
      if (typeof spec.name !== 'string' || !NAME.test(spec.name)) {
        throw new DvembError('BAD_INPUT', `block ${index} has an invalid name ${JSON.stringify(spec.name)}`, 'use 1-128 characters from A-Z a-z 0-9 _ . : / -');
      }
      if (seen.has(spec.name)) throw new DvembError('BAD_INPUT', `block name "${spec.name}" is used twice`);
      seen.add(spec.name);
      let dim: number;
      let clean: BlockSpec;
      const where = `block "${spec.name}"`;
      switch (spec.kind) {
        case 'kronecker':
          clean = {
            name: spec.name,
            kind: 'kronecker',
            dIn: positiveInt(spec.dIn, `${where}.dIn`),
            dOut: positiveInt(spec.dOut, `${where}.dOut`),
            bias: spec.bias ?? false,
            kIn: positiveInt(spec.kIn, `${where}.kIn`),
            kOut: positiveInt(spec.kOut, `${where}.kOut`),
          };
          dim = clean.kIn * clean.kOut;
          break;
        case 'dense':
          clean = { name: spec.name, kind: 'dense', d: positiveInt(spec.d, `${where}.d`), k: positiveInt(spec.k, `${where}.k`) };
          dim = clean.k;
          break;
        case 'projected':
          clean = { name: spec.name, kind: 'projected', k: positiveInt(spec.k, `${where}.k`) };
          dim = clean.k;
          break;
        default:
          throw new DvembError('BAD_INPUT', `${where} has unknown kind ${JSON.stringify((spec as { kind: unknown }).kind)}`, 'use "kronecker", "dense" or "projected"');
      }
      const block = { ...clean, index, offset, dim } as LayoutBlock;
      offset += dim;
      return block;
    });
    this.dim = offset;
    this.seed = projection.seed;
    this.distribution = projection.distribution;
    this.fingerprint = createHash('sha256')
      .update(JSON.stringify({ projection: { seed: this.seed, distribution: this.distribution }, blocks: this.specs() }))
      .digest('hex')
      .slice(0, 16);
  }

  specs(): BlockSpec[] {
    return this.blocks.map(({ index: _i, offset: _o, dim: _d, ...spec }) => spec as BlockSpec);
  }

  block(name: string): LayoutBlock {
    const b = this.blocks.find((x) => x.name === name);
    if (!b) {
      throw new DvembError('UNKNOWN_BLOCK', `unknown block "${name}"`, `the trajectory's blocks are: ${this.blocks.map((x) => x.name).join(', ')}`);
    }
    return b;
  }

  /** [off_0, k_0, off_1, k_1, ...]: one propagator per block, or one over everything. */
  propagatorBlocks(mode: 'per-block' | 'global'): Int32Array {
    if (mode === 'global') return Int32Array.from([0, this.dim]);
    return Int32Array.from(this.blocks.flatMap((b) => [b.offset, b.dim]));
  }
}

function f32(a: Floats): Float32Array {
  return a instanceof Float32Array ? a : Float32Array.from(a);
}

function expectLength(a: ArrayLike<number>, n: number, what: string, shape: string): void {
  if (a.length !== n) {
    throw new DvembError('SHAPE_MISMATCH', `${what} has ${a.length} values, expected ${shape} = ${n}`, 'pass one row per example of the batch, in the layout the trajectory was created with');
  }
}

export class Projector {
  constructor(
    readonly layout: Layout,
    readonly backend: Backend,
  ) {}

  /** Projects n examples' gradients into rows (n × layout.dim). `what` names them in errors. */
  async project(gradients: BatchGradients, n: number, what = 'gradients'): Promise<Float32Array> {
    const { layout } = this;
    positiveInt(n, `${what}: number of examples`);
    if (gradients instanceof Float32Array) {
      expectLength(gradients, n * layout.dim, what, `n × dim = ${n} × ${layout.dim}`);
      assertFinite(gradients, what);
      return gradients;
    }
    if (gradients === null || typeof gradients !== 'object' || ArrayBuffer.isView(gradients)) {
      throw new DvembError('BAD_INPUT', `${what} must be a Float32Array of projected rows or an object keyed by block name`);
    }
    for (const name of Object.keys(gradients)) layout.block(name);
    const out = new Float32Array(n * layout.dim);
    for (const block of layout.blocks) {
      if (!gradients[block.name]) {
        throw new DvembError('BAD_INPUT', `${what} has no entry for block "${block.name}"`, 'give every block of the trajectory, every step');
      }
    }
    // Blocks write disjoint columns of `out`, so they are projected concurrently: one round trip
    // through the addon's thread pool per step instead of one per block.
    await Promise.all(layout.blocks.map((block) => this.projectBlock(block, gradients[block.name]!, n, out, `${what}.${block.name}`)));
    return out;
  }

  private async projectBlock(block: LayoutBlock, g: BlockGradient, n: number, out: Float32Array, where: string): Promise<void> {
    const { layout, backend } = this;
    const common = { seed: layout.seed, block: block.index, distribution: layout.distribution, n, out, ldOut: layout.dim, offset: block.offset };
    if ('projected' in g) {
      expectLength(g.projected, n * block.dim, `${where}.projected`, `n × ${block.dim}`);
      assertFinite(g.projected, `${where}.projected`);
      for (let e = 0; e < n; e++) out.set(g.projected.subarray(e * block.dim, (e + 1) * block.dim), e * layout.dim + block.offset);
      return;
    }
    if ('inputs' in g) {
      if (block.kind !== 'kronecker') {
        throw new DvembError('BAD_INPUT', `${where}: Kronecker factors given for a ${block.kind} block`, 'give {gradient} or {projected} for this block');
      }
      const tokens = g.tokens ?? 1;
      positiveInt(tokens, `${where}.tokens`);
      expectLength(g.inputs, n * tokens * block.dIn, `${where}.inputs`, `n × tokens × dIn = ${n} × ${tokens} × ${block.dIn}`);
      expectLength(g.outputGrads, n * tokens * block.dOut, `${where}.outputGrads`, `n × tokens × dOut = ${n} × ${tokens} × ${block.dOut}`);
      assertFinite(g.inputs, `${where}.inputs`);
      assertFinite(g.outputGrads, `${where}.outputGrads`);
      await backend.projectKronecker({
        ...common,
        form: 'factors',
        tokens,
        dIn: block.dIn,
        dOut: block.dOut,
        bias: block.bias ?? false,
        kIn: block.kIn,
        kOut: block.kOut,
        inputs: f32(g.inputs),
        outputGrads: f32(g.outputGrads),
      });
      return;
    }
    if ('gradient' in g) {
      assertFinite(g.gradient, `${where}.gradient`);
      if (block.kind === 'kronecker') {
        const cols = block.dIn + (block.bias ? 1 : 0);
        expectLength(g.gradient, n * block.dOut * cols, `${where}.gradient`, `n × dOut × (dIn${block.bias ? ' + 1' : ''}) = ${n} × ${block.dOut} × ${cols}`);
        await backend.projectKronecker({
          ...common,
          form: 'gradient',
          tokens: 1,
          dIn: block.dIn,
          dOut: block.dOut,
          bias: block.bias ?? false,
          kIn: block.kIn,
          kOut: block.kOut,
          inputs: f32(g.gradient),
          outputGrads: new Float32Array(0),
        });
      } else if (block.kind === 'dense') {
        expectLength(g.gradient, n * block.d, `${where}.gradient`, `n × d = ${n} × ${block.d}`);
        await backend.projectDense({ ...common, d: block.d, k: block.k, grads: f32(g.gradient) });
      } else {
        throw new DvembError('BAD_INPUT', `${where}: block "${block.name}" is declared as already projected`, 'give {projected: Float32Array} for it');
      }
      return;
    }
    throw new DvembError('BAD_INPUT', `${where} must be {inputs, outputGrads}, {gradient} or {projected}`);
  }
}
