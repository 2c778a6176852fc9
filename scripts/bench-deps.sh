#!/usr/bin/env bash
# bench-deps.sh — installs the bench-only contenders (isolated-vm 5, a native build of a
# few minutes) into out/bench-deps, outside the package's dependencies and the test
# set-up. Idempotent: an installed copy that loads is kept. Never fails the bench: when
# the install fails, the bench reports isolated-vm as unavailable.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$here/out/bench-deps"
log="$prefix/install.log"
mkdir -p "$prefix"
loads() { (cd "$prefix" && node --no-node-snapshot -e "require('isolated-vm')" >/dev/null 2>&1); }
if loads; then
  echo "bench-deps: isolated-vm already installed in $prefix"
  exit 0
fi
echo "bench-deps: installing isolated-vm@5 into $prefix (native build, a few minutes; log: $log)"
if npm install --no-save --no-package-lock --no-audit --no-fund --prefix "$prefix" isolated-vm@5 >"$log" 2>&1 && loads; then
  echo "bench-deps: isolated-vm installed"
else
  echo "bench-deps: isolated-vm could not be installed (see $log); the bench reports it as unavailable"
fi
exit 0
