// `dvemb report <dir>`: writes the HTML report for a report directory (docs/REPORT.md). Exported
// as a command handler so the `dvemb` entry point can register it beside the others.
import { parseArgs } from 'node:util';
import { loadBackend, type BackendChoice } from '../backend/loader.js';
import { buildReport } from '../report/report.js';
import { Progress } from './progress.js';

export const REPORT_USAGE = `dvemb report <dir> [--out report.html] [--backend auto|cuda|native|ts] [--json]
  Writes one self-contained HTML file (no network): influence by training step with its phases
  and when data selection pays, top proponents and opponents of the chosen test points (drawn as
  images when the data are images), a self-influence histogram, and data value dynamics.
  <dir> holds embeddings (embeddings.json) and a report.json naming the test points; write it
  with prepareReport() (docs/REPORT.md). Default output: <dir>/report.html.`;

/** Exit codes as the other commands: 0 written, 1 usage error; data errors are thrown (DvembError). */
export async function cmdReport(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: { out: { type: 'string' }, backend: { type: 'string', default: 'auto' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (err) {
    process.stderr.write(`dvemb report: ${(err as Error).message}\n\n${REPORT_USAGE}\n`);
    return 1;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(REPORT_USAGE + '\n');
    return 0;
  }
  const dir = positionals[0];
  if (!dir || positionals.length > 1) {
    process.stderr.write(`dvemb report: ${dir ? `one directory expected, got ${positionals.length}` : 'report needs a directory'}\n\n${REPORT_USAGE}\n`);
    return 1;
  }
  const backend = loadBackend(values.backend as BackendChoice).backend;
  // One bar per pass; Progress draws only on a TTY and only after a second.
  const bars = { influence: new Progress('scoring embeddings'), 'self-influence': new Progress('self-influence') };
  let summary;
  let first = true;
  try {
    summary = await buildReport(dir, {
      ...(values.out ? { out: values.out } : {}),
      backend,
      onProgress: (p) => {
        if (p.stage === 'self-influence' && first) {
          bars.influence.done(); // end the first bar's line, once
          first = false;
        }
        bars[p.stage].update(p.done, p.total);
      },
    });
  } finally {
    if (first) bars.influence.done();
    bars['self-influence'].done();
  }
  if (values.json) {
    process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
    return 0;
  }
  const lines = [`wrote ${summary.out}`];
  for (const w of summary.warnings) lines.push(`  note: ${w}`);
  if (summary.tests > 0) {
    lines.push(
      summary.phases.length > 0
        ? `  phases: ${summary.phases.map((p) => `${p.name} steps ${p.fromStep}–${p.toStep} (${(100 * p.share).toFixed(0)}% of the influence)`).join('; ')}`
        : `  ${summary.noPhases ?? 'no phases found'}`,
    );
  }
  const si = summary.selfInfluence;
  lines.push(`  self-influence: ${'none' in si ? si.none : `${si.count} examples (${si.source})`}`);
  lines.push(`  data value dynamics: ${summary.dynamics ? `(${summary.dynamics.shape.join(' × ')})` : 'not computed'}`);
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}
