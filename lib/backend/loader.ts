// Finds the fastest backend that works here: the CUDA build, then the CPU build, then pure
// TypeScript. Each candidate is tried on its own so a broken one falls through to the next, and
// every reason a faster one was passed over is kept with the command that fixes it.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DvembError } from '../errors.js';
import type { Backend, NativeAddon } from './surface.js';
import { createTsBackend } from './ts/index.js';

export type BackendName = 'cuda' | 'native-cpu' | 'ts';
export type BackendChoice = 'auto' | 'cuda' | 'native' | 'ts';

export interface LoadedBackend {
  name: BackendName;
  backend: Backend;
  /** Why each faster backend is not in use, each with the command that fixes it. */
  passedOver: { name: BackendName; reason: string; fix: string }[];
}

/** The package root: the nearest ancestor of this file that holds package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('dvemb: cannot find its package.json');
    dir = parent;
  }
  return dir;
}

const require = createRequire(import.meta.url);

export const ADDON_PATHS = {
  cuda: 'build/Release/dvemb_cuda.node',
  'native-cpu': 'build/Release/dvemb.node',
} as const;

const BUILD_FIX =
  'build it with `npm run build:native` in the dvemb package folder; if dvemb is a dependency ' +
  'of your project and its install script did not run (npm 11 blocks or warns about dependency ' +
  'install scripts not listed in allowScripts): run `npm install-scripts approve dvemb` and then ' +
  '`npm rebuild dvemb`';

function explainLoadFailure(name: BackendName, path: string, err: unknown): { reason: string; fix: string } {
  const message = err instanceof Error ? err.message : String(err);
  if (/libdeflate/.test(message)) {
    return {
      reason: `${path} cannot find libdeflate (${message.split('\n')[0]})`,
      fix: 'install it: `sudo apt-get install libdeflate0` (Debian/Ubuntu; libdeflate-dev to build)',
    };
  }
  if (/libopenblas|libcblas|libblas/.test(message)) {
    return {
      reason: `${path} cannot find OpenBLAS (${message.split('\n')[0]})`,
      fix: 'install it: `sudo apt-get install libopenblas-dev` (Debian/Ubuntu)',
    };
  }
  if (name === 'cuda' && /libcuda|libcublas|libcudart|CUDA|no CUDA device/i.test(message)) {
    return {
      reason: `${path} is built but CUDA is not usable here (${message.split('\n')[0]})`,
      fix: 'run on a machine with an NVIDIA GPU and driver, or use the CPU build (`--backend native`)',
    };
  }
  return {
    reason: `${path} failed to load (${message.split('\n')[0]})`,
    fix: `rebuild it: ${name === 'cuda' ? '`npm run build:cuda`' : '`npm run build:native`'}`,
  };
}

function tryAddon(name: Exclude<BackendName, 'ts'>, root: string): Backend | { reason: string; fix: string } {
  const path = join(root, ADDON_PATHS[name]);
  if (!existsSync(path)) {
    return name === 'cuda'
      ? {
          reason: `no CUDA build (${ADDON_PATHS.cuda} is absent)`,
          fix: 'on a machine with the CUDA toolkit: `npm run build:cuda`',
        }
      : { reason: `the native addon is not built (${ADDON_PATHS['native-cpu']} is absent)`, fix: BUILD_FIX };
  }
  try {
    const addon = require(path) as NativeAddon;
    // A CUDA build without a usable device says so through info(); treat it as a failed load.
    const info = addon.info();
    if (name === 'cuda' && info.backend !== 'cuda') {
      return { reason: `${ADDON_PATHS.cuda} loaded but found no GPU (${info.device ?? 'no device'})`, fix: 'run on a machine with an NVIDIA GPU' };
    }
    return addon;
  } catch (err) {
    return explainLoadFailure(name, ADDON_PATHS[name], err);
  }
}

let cpuAddon: NativeAddon | null | undefined;

/** The CPU addon when it loads here (for helpers such as crc32), else null; never warns. */
export function nativeAddon(): NativeAddon | null {
  if (cpuAddon === undefined) {
    const result = tryAddon('native-cpu', packageRoot());
    cpuAddon = 'info' in result ? (result as NativeAddon) : null;
  }
  return cpuAddon;
}

const cache = new Map<BackendChoice, LoadedBackend>();
let warned = false;

/**
 * Loads a backend. `choice` defaults to the DVEMB_BACKEND environment variable, then 'auto'.
 * An explicit choice that cannot load is an error; 'auto' falls through to the next candidate
 * and, when it lands on pure TypeScript, prints once how to get the native build.
 */
export function loadBackend(choice?: BackendChoice): LoadedBackend {
  const wanted = choice ?? (process.env.DVEMB_BACKEND as BackendChoice | undefined) ?? 'auto';
  if (!['auto', 'cuda', 'native', 'ts'].includes(wanted)) {
    throw new DvembError('BAD_INPUT', `unknown backend "${wanted}"`, 'choose one of auto, cuda, native, ts');
  }
  const cached = cache.get(wanted);
  if (cached) return cached;

  const root = packageRoot();
  const passedOver: LoadedBackend['passedOver'] = [];
  const order: BackendName[] =
    wanted === 'auto' ? ['cuda', 'native-cpu', 'ts'] : [wanted === 'native' ? 'native-cpu' : wanted];
  let loaded: LoadedBackend | undefined;
  for (const name of order) {
    if (name === 'ts') {
      loaded = { name, backend: createTsBackend(), passedOver };
      break;
    }
    const result = tryAddon(name, root);
    if ('info' in result) {
      loaded = { name, backend: result, passedOver };
      break;
    }
    passedOver.push({ name, ...result });
  }
  if (!loaded) {
    const why = passedOver.map((p) => `${p.reason}; ${p.fix}`).join('\n');
    throw new DvembError('BACKEND_UNAVAILABLE', `backend "${wanted}" is not available: ${why}`, 'use `--backend auto` to fall back');
  }
  if (loaded.name === 'ts' && wanted === 'auto' && !warned && !process.env.DVEMB_QUIET) {
    warned = true;
    const native = passedOver.find((p) => p.name === 'native-cpu');
    if (native) {
      process.stderr.write(
        `dvemb: using the pure-TypeScript backend (slower): ${native.reason}. To enable the native build, ${native.fix}. ` +
          'Run `npx dvemb doctor` for details; set DVEMB_QUIET=1 to silence this.\n',
      );
    }
  }
  cache.set(wanted, loaded);
  return loaded;
}

/** Every backend that loads here, for tests that compare them. */
export function availableBackends(): LoadedBackend[] {
  const out: LoadedBackend[] = [];
  for (const choice of ['cuda', 'native', 'ts'] as const) {
    try {
      out.push(loadBackend(choice));
    } catch {
      // not available here; doctor explains why
    }
  }
  return out;
}
