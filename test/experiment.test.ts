// A miniature fidelity experiment end to end: the shape `dvemb eval --json` promises, and the
// exact-Hessian unrolling agreeing with replay on a smooth model.
import { describe, expect, it } from 'vitest';
import { runExperiment, SETTINGS } from '../lib/eval/experiment.js';

describe('fidelity experiment', () => {
  it('produces every setting and estimator, the decomposition and the figures', async () => {
    const r = await runExperiment({
      preset: 'quick',
      dataset: 'breast-cancer',
      workers: 0,
      overrides: { epochs: 3, tests: 2, targetsFirstLast: 10, targetsMiddle: 4, targetsAll: 10, projection: [4], draws: [1], ldsSubsets: 6, infinitesimalTargets: 4 },
    });
    expect(Object.keys(r.settings)).toEqual([...SETTINGS]);
    for (const s of SETTINGS) {
      for (const name of ['dvemb-empirical-fisher', 'dvemb-sampled-fisher', 'unrolled-exact-hessian', 'tracin-step', 'tracin-cp', 'influence-function', 'grad-dot', 'self-influence']) {
        const a = r.settings[s][name]!;
        expect(Object.keys(a).sort()).toEqual(['kendall', 'pearson', 'signAgreement', 'spearman', 'topOverlap']);
      }
      expect(r.settings[s]['unrolled-exact-hessian']!.spearman).toBeGreaterThan(0.9);
      expect(r.infinitesimal.settings[s].spearman).toBeGreaterThan(0.99);
    }
    expect(r.decomposition[0]!.estimator).toBe('unrolled-exact-hessian');
    expect(r.replay.count).toBe(10 + 4 + 10 + 10);
    expect(Object.keys(r.figures)).toContain('spearman-vs-dimension.svg');
    for (const svg of Object.values(r.figures)) expect(svg.startsWith('<svg')).toBe(true);
    expect(JSON.parse(JSON.stringify(r.settings))['first-epoch']['tracin-cp'].spearman).toBeTypeOf('number');
  });
});
