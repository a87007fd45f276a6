// The report shows a distilled datamodel's group attribution when it lies beside the embeddings.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { groupsFromIds } from '../lib/ddm/groups.js';
import { saveAttribution } from '../lib/ddm/index.js';
import { computeEmbeddings } from '../lib/embeddings/backward.js';
import { buildReport } from '../lib/report/report.js';
import { TrajectoryRecorder } from '../lib/trajectory/recorder.js';
import { randomF32, rng, tempDir } from './helpers.js';

it('draws attribution.npy as a group × target heatmap, and says "not computed" without it', async () => {
  const dir = tempDir();
  const rec = TrajectoryRecorder.create(join(dir, 'trajectory'), { projection: { seed: 1, distribution: 'gaussian' }, blocks: [{ name: 'm', kind: 'projected', k: 8 }], backend: 'ts' });
  const r = rng(5);
  for (let step = 0; step < 6; step++) await rec.record({ step, lr: 0.1, ids: [step % 4, (step + 1) % 4], gradients: randomF32(16, r) });
  await rec.close();
  const emb = join(dir, 'embeddings');
  await computeEmbeddings(join(dir, 'trajectory'), { out: emb, backend: 'ts' });

  await buildReport(emb, { out: join(dir, 'a.html') });
  expect(readFileSync(join(dir, 'a.html'), 'utf8')).toMatch(/data-absent="groups"><strong>Not computed\./);

  // Two groups of two examples, three targets; W[1, 2] is the strongest help.
  const W = Float64Array.from([0.1, -0.2, 0.0, 0.05, 0.3, 0.9]);
  saveAttribution(dir, { W, K: 2, T: 3 }, groupsFromIds([0, 0, 1, 1]), [0, 0, 1, 1], 2);
  await buildReport(emb, { out: join(dir, 'b.html') });
  const html = readFileSync(join(dir, 'b.html'), 'utf8');
  expect(html).toContain('data-chart="groups"');
  expect(html).toContain('2 groups × 3 evaluation targets');
  expect(html).toMatch(/group 1 \(label 1\), 2 ex\./);
  expect(html).not.toContain('data-absent="groups"');
});
