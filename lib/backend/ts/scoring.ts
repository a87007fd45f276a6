// Scores of training embeddings against test gradients: out (n × m) = embeddings · testsᵀ, the
// first-order TSLOO estimates of REFERENCE §2 (one dot product per pair).
// Arguments are assumed valid here; index.ts checks them.
import type { ScoreArgs } from '../surface.js';
import { sgemm } from './gemm.js';

export function score(args: ScoreArgs): void {
  const { n, m, dim, embeddings, tests, out } = args;
  sgemm(false, true, n, m, dim, 1, embeddings, 0, dim, tests, 0, dim, 0, out, 0, m);
}
