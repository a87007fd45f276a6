// Metrics on small cases worked out by hand.
import { describe, expect, it } from 'vitest';
import { auc, averageRanks, detectionCurve, kendallTauB, lds, pearson, signAgreement, spearman, topOverlap } from '../lib/eval/metrics.js';

describe('metrics', () => {
  it('average ranks and Spearman with ties', () => {
    expect(Array.from(averageRanks([10, 20, 20, 30]))).toEqual([1, 2.5, 2.5, 4]);
    // a = [1, 2, 2, 3] → ranks [1, 2.5, 2.5, 4]; b = [1, 3, 2, 4] → ranks [1, 3, 2, 4].
    // Centered: a' = [−1.5, 0, 0, 1.5], b' = [−1.5, 0.5, −0.5, 1.5]; Σa'b' = 4.5, Σa'² = 4.5, Σb'² = 5.
    expect(spearman([1, 2, 2, 3], [1, 3, 2, 4])).toBeCloseTo(4.5 / Math.sqrt(4.5 * 5), 14);
    expect(spearman([1, 2, 3], [30, 20, 10])).toBeCloseTo(-1, 14);
    expect(Number.isNaN(spearman([1, 1, 1], [1, 2, 3]))).toBe(true);
  });

  it('Pearson', () => {
    expect(pearson([1, 2, 3], [2, 4, 6])).toBeCloseTo(1, 14);
    // x' = [−1, 0, 1], y' = [−1/3, −1/3, 2/3]: Σx'y' = 1, Σx'² = 2, Σy'² = 2/3.
    expect(pearson([1, 2, 3], [0, 0, 1])).toBeCloseTo(1 / Math.sqrt(2 * (2 / 3)), 14);
  });

  it('Kendall tau-b with ties', () => {
    // Pairs of a = [1, 2, 2, 3], b = [1, 3, 2, 4]: (0,1)+ (0,2)+ (0,3)+ (1,2) tie in a (1,3)+ (2,3)+
    // → C = 5, D = 0, ties in a: 1, in b: 0, n0 = 6 → τ_b = 5 / √(5·6).
    expect(kendallTauB([1, 2, 2, 3], [1, 3, 2, 4])).toBeCloseTo(5 / Math.sqrt(30), 14);
    // a = [1, 2, 3], b = [1, 3, 2]: C = 2, D = 1 → 1/3.
    expect(kendallTauB([1, 2, 3], [1, 3, 2])).toBeCloseTo(1 / 3, 14);
  });

  it('AUC with ties counts one half', () => {
    // positives score 0.9 and 0.5, negatives 0.5 and 0.1: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5 → ½) (0.5>0.1) → 3.5/4.
    expect(auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])).toBeCloseTo(0.875, 14);
    expect(auc([0.1, 0.2], [1, 0])).toBe(0);
  });

  it('top-k overlap, sign agreement, detection curve and LDS', () => {
    const truth = [10, -9, 1, 0.5, 0.1, 0, 0, 0, 0, 0];
    expect(topOverlap([5, 1, -4, 0, 0, 0, 0, 0, 0, 0], truth, 0.2)).toBe(0.5); // top-2 truth {0,1}, est {0,2}
    expect(signAgreement([1, 1, 1, -1, 1, 7, 7, 7, 7, 7], truth)).toBe(3 / 5); // zeros in truth are skipped
    const curve = detectionCurve([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0], 4);
    expect(curve.found).toEqual([0, 0.5, 1, 1, 1]);
    expect(curve.inspected).toEqual([0, 0.25, 0.5, 0.75, 1]);
    expect(curve.auc).toBe(1);
    expect(lds([1, 2, 3], [[0], [1, 2], [0, 2]], [0.1, 0.9, 0.5])).toBeCloseTo(1, 14);
  });
});
