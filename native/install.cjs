// The package's install script: builds the CPU addon with node-gyp. A failed build never fails
// the install: dvemb then runs on its pure-TypeScript backend and `dvemb doctor` says why.
const { spawnSync } = require('node:child_process');
const { existsSync } = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
if (process.env.DVEMB_SKIP_NATIVE) {
  console.log('dvemb: DVEMB_SKIP_NATIVE is set; not building the native addon');
  process.exit(0);
}
const local = path.join(root, 'node_modules', '.bin', 'node-gyp');
const cmd = existsSync(local) ? local : 'node-gyp';
const result = spawnSync(cmd, ['rebuild'], { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
if (result.status !== 0) {
  console.warn(
    '\ndvemb: the native addon did not build, so dvemb will use its pure-TypeScript backend (slower).\n' +
      '  Most often OpenBLAS or libdeflate is missing: `sudo apt-get install libopenblas-dev libdeflate-dev`,\n' +
      '  then `npm rebuild dvemb`.\n' +
      '  `npx dvemb doctor` shows which backend runs and why.\n',
  );
}
process.exit(0);
