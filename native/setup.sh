#!/usr/bin/env bash
# `npm run setup`: everything a fresh Debian/Ubuntu machine needs, then the build.
# Installs OpenBLAS and libdeflate (libopenblas-dev, libdeflate-dev) through apt-get when missing (with sudo when not
# root), runs `npm ci`, and builds the TypeScript and the native addon.
set -euo pipefail
cd "$(dirname "$0")/.."

# The native build needs OpenBLAS (cblas) and libdeflate (fast CRC-32 of trajectory chunks).
PACKAGES="libopenblas-dev libdeflate-dev"
have_headers() {
  { [ -f /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] || [ -f /usr/include/openblas/cblas.h ]; } &&
    [ -f /usr/include/libdeflate.h ]
}

if have_headers; then
  echo "setup: OpenBLAS and libdeflate found"
elif command -v apt-get >/dev/null; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "setup: $PACKAGES are missing and this user cannot install them. Ask an administrator to run: apt-get install $PACKAGES" >&2
      exit 1
    fi
  fi
  echo "setup: installing $PACKAGES with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $PACKAGES >/dev/null
else
  echo "setup: OpenBLAS or libdeflate is missing and there is no apt-get here: install OpenBLAS (with cblas.h) and libdeflate with your package manager, then rerun" >&2
  exit 1
fi

# npm ci also runs this package's own install script, which builds the addon (native/install.cjs).
# Some registry mirrors serve only this platform's optional packages (esbuild/rollup binaries for
# other systems answer 404), so the lock file cannot list them and npm ci refuses it; then install
# the same locked versions with npm install, without rewriting the lock file.
if ! npm ci --no-audit --no-fund 2>/tmp/dvemb-npm-ci.log; then
  if grep -q "in sync" /tmp/dvemb-npm-ci.log; then
    echo "setup: npm ci refused the lock file (optional packages of other platforms are missing from this registry); using npm install --no-save"
    npm install --no-audit --no-fund --no-save
  else
    cat /tmp/dvemb-npm-ci.log >&2
    exit 1
  fi
fi
npm run build:ts
if [ ! -f build/Release/dvemb.node ]; then
  npm run build:native
fi
node dist/lib/cli/dvemb.js doctor
