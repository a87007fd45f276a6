// Packaging: `npm pack`, then install the tarball into an empty project, as a user would.
// (a) With the dependency's install script blocked (npm 11's policy for unreviewed packages), the
//     package imports, `npx dvemb doctor` runs on the TypeScript backend and names the fix, and a
//     tiny record → compute → query works.
// (b) After `npm install-scripts approve dvemb` and `npm rebuild dvemb`, the native build is used
//     and gives the same answers.
// Slow (a TypeScript build and a native build): runs when CI or DVEMB_TEST_PACKAGING is set.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const enabled = !!(process.env.CI || process.env.DVEMB_TEST_PACKAGING);
if (!enabled) console.warn('packaging.test: SKIPPED (slow: npm pack + install + native build); set DVEMB_TEST_PACKAGING=1 or CI=1 to run it');

/** The environment of a user's shell: no npm_* variables from a surrounding `npm test`, no dvemb overrides. */
function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.toLowerCase().startsWith('npm_') || k.startsWith('DVEMB_') || k === 'NODE_OPTIONS' || k.startsWith('VITEST')) continue;
    env[k] = v;
  }
  return env;
}

function sh(cmd: string, args: string[], cwd: string, timeout = 180_000): { stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd, env: userEnv(), encoding: 'utf8', timeout });
  if (r.status !== 0) {
    throw new Error(`\`${cmd} ${args.join(' ')}\` in ${cwd} exited with ${r.status ?? r.signal}:\n${r.stdout}\n${r.stderr}`);
  }
  return { stdout: r.stdout, stderr: r.stderr };
}

// A user's program: record 6 steps of projected rows, compute, ask for the top 3 of one test row.
const SMOKE = `
import { TrajectoryRecorder, computeEmbeddings, EmbeddingSet, topK, loadBackend } from 'dvemb';
const dir = process.argv[2];
let s = 12345;
const rand = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) - 0.5;
const rec = TrajectoryRecorder.create(dir + '/traj', { projection: { seed: 7, distribution: 'gaussian' }, blocks: [{ name: 'all', kind: 'projected', k: 8 }] });
for (let step = 0; step < 6; step++) {
  const rows = Float32Array.from({ length: 4 * 8 }, rand);
  await rec.record({ step, lr: 0.1, ids: [0, 1, 2, 3].map((i) => (step * 4 + i) % 10), gradients: rows });
}
await rec.close();
const m = await computeEmbeddings(dir + '/traj', { out: dir + '/emb' });
const set = EmbeddingSet.open(dir + '/emb');
const top = await topK(set, Float32Array.from({ length: 8 }, rand), 3);
console.log(JSON.stringify({ backend: loadBackend().name, computedWith: m.backend, occurrences: m.occurrences, top: top[0] }));
`;

describe.skipIf(!enabled)('the npm package', () => {
  it('packs, installs into an empty project, runs on TypeScript when its install script is blocked and natively once approved', () => {
    const work = tempDir('dvemb-pack-');

    // 1. Pack from a copy of the package (what package.json "files" names, plus the TypeScript to
    //    build dist/lib from), so this test neither reads nor rewrites the repository's dist/.
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; files: string[] };
    const stage = join(work, 'stage');
    for (const entry of [...pkg.files.filter((f) => !f.startsWith('dist')), 'package.json', 'lib', 'tsconfig.json']) {
      if (existsSync(join(ROOT, entry))) cpSync(join(ROOT, entry), join(stage, entry), { recursive: true });
    }
    symlinkSync(join(ROOT, 'node_modules'), join(stage, 'node_modules'), 'dir');
    writeFileSync(join(stage, 'tsconfig.pack.json'), JSON.stringify({ extends: './tsconfig.json', include: ['lib/**/*.ts'] }));
    // Type errors are `npm run typecheck`'s business; here only the emitted JavaScript matters.
    spawnSync(join(ROOT, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.pack.json'], { cwd: stage, encoding: 'utf8', timeout: 120_000 });
    expect(existsSync(join(stage, 'dist', 'lib', 'index.js')), 'tsc emitted dist/lib').toBe(true);
    rmSync(join(stage, 'node_modules'));
    const packed = JSON.parse(sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], stage).stdout) as { filename: string; files: { path: string }[] }[];
    const files = new Set(packed[0]!.files.map((f) => f.path));
    for (const f of ['package.json', 'README.md', 'binding.gyp', 'native/install.cjs', 'native/addon/addon.cc', 'native/core/propagator.cc', 'data/digits.csv.gz', 'docs/FORMAT.md', 'docs/REPORT.md', 'dist/lib/index.js', 'dist/lib/index.d.ts', 'dist/lib/cli/dvemb.js', 'dist/lib/report/report.js']) {
      expect(files.has(f), `the tarball holds ${f}`).toBe(true);
    }
    for (const f of files) expect(f, 'no sources, tests or build output in the tarball').not.toMatch(/^(lib|test|build|node_modules)\//);
    const tarball = join(work, packed[0]!.filename);

    // 2. An empty project installs it with the install script blocked. npm 11 runs no install
    //    script of a dependency that allowScripts does not cover once its policy blocks (11.19
    //    still only warns); --ignore-scripts leaves exactly what a blocked script leaves.
    const app = join(work, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }, null, 2));
    sh('npm', ['install', tarball, '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund'], app);
    const installed = join(app, 'node_modules', pkg.name);
    expect(existsSync(join(installed, 'build', 'Release', 'dvemb.node'))).toBe(false);
    expect(sh('npm', ['install-scripts', 'ls'], app).stdout).toMatch(/dvemb@\d+\.\d+\.\d+ \(install: /); // npm names the script as it reads it: ours, or node-gyp rebuild from the lockfile

    const exported = sh('node', ['--input-type=module', '-e', "const m = await import('dvemb'); console.log(Object.keys(m).sort().join(' '))"], app).stdout;
    for (const name of ['TrajectoryRecorder', 'computeEmbeddings', 'EmbeddingSet', 'topK', 'doctor']) expect(exported.split(/\s+/)).toContain(name);

    const doctorTs = sh('npx', ['--no', 'dvemb', 'doctor'], app).stdout;
    expect(doctorTs).toMatch(/^backend in use: ts/m);
    expect(doctorTs).toContain('npm install-scripts approve dvemb');
    expect(doctorTs).toContain('npm rebuild dvemb');

    writeFileSync(join(app, 'smoke.mjs'), SMOKE);
    const tsRun = sh('node', ['smoke.mjs', join(app, 'out-ts')], app);
    const ts = JSON.parse(tsRun.stdout) as { backend: string; computedWith: string; occurrences: number; top: { proponents: { id: number; score: number }[]; opponents: { id: number; score: number }[] } };
    expect(ts.backend).toBe('ts');
    expect(ts.occurrences).toBe(24);
    expect(ts.top.proponents.length + ts.top.opponents.length).toBeGreaterThan(0);
    // The one-time notice on stderr says why and how to get the native build.
    expect(tsRun.stderr).toMatch(/using the pure-TypeScript backend.*npm install-scripts approve dvemb/s);

    // 3. Approve the script and rebuild: the install script builds the addon with node-gyp.
    sh('npm', ['install-scripts', 'approve', 'dvemb'], app);
    const allow = (JSON.parse(readFileSync(join(app, 'package.json'), 'utf8')) as { allowScripts?: Record<string, boolean> }).allowScripts ?? {};
    expect(Object.values(allow)).toContain(true);
    sh('npm', ['rebuild', 'dvemb', '--prefer-offline'], app, 240_000);
    expect(existsSync(join(installed, 'build', 'Release', 'dvemb.node'))).toBe(true);

    const doctorNative = JSON.parse(sh('npx', ['--no', 'dvemb', 'doctor', '--json'], app).stdout) as { backend: string; info: { blas: string } };
    expect(doctorNative.backend).toBe('native-cpu');
    expect(doctorNative.info.blas).toMatch(/BLAS/i);

    const native = JSON.parse(sh('node', ['smoke.mjs', join(app, 'out-native')], app).stdout) as typeof ts;
    expect(native.backend).toBe('native-cpu');
    expect(native.computedWith).toBe('native-cpu');
    // Same data, same answers: the ids agree and the scores to float32 precision.
    expect(native.top.proponents.map((a) => a.id)).toEqual(ts.top.proponents.map((a) => a.id));
    expect(native.top.opponents.map((a) => a.id)).toEqual(ts.top.opponents.map((a) => a.id));
    native.top.proponents.forEach((a, i) => expect(a.score).toBeCloseTo(ts.top.proponents[i]!.score, 4));
  }, 300_000);
});
