// One error type for everything a user can get wrong. The message names the problem and the
// fix; `code` is stable for programs that branch on it.

export type ErrorCode =
  | 'BAD_INPUT'
  | 'SHAPE_MISMATCH'
  | 'NON_FINITE'
  | 'STEP_ORDER'
  | 'UNKNOWN_BLOCK'
  | 'UNKNOWN_ID'
  | 'PROJECTION_MISMATCH'
  | 'NOT_A_TRAJECTORY'
  | 'NOT_EMBEDDINGS'
  | 'CORRUPT'
  | 'TRUNCATED'
  | 'BACKEND_UNAVAILABLE'
  | 'ABORTED'
  | 'CLOSED';

export class DvembError extends Error {
  readonly code: ErrorCode;
  readonly fix: string | undefined;

  constructor(code: ErrorCode, problem: string, fix?: string) {
    super(fix ? `${problem}. Fix: ${fix}` : problem);
    this.name = 'DvembError';
    this.code = code;
    this.fix = fix;
  }
}

/** Throws NON_FINITE naming the first bad entry of `values`, if any. */
export function assertFinite(values: ArrayLike<number>, what: string, fix?: string): void {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isFinite(v)) {
      throw new DvembError(
        'NON_FINITE',
        `${what} holds ${v} at index ${i}`,
        fix ?? 'check the training loop for a diverging loss or an overflow before recording',
      );
    }
  }
}
