#!/usr/bin/env bash
# setup.sh — brings a fresh Debian machine with Node 20 (as root) to a built Airlock:
# apt packages, QuickJS source, npm dependencies, guest images, host addon, TypeScript.
# Idempotent: every step checks whether its output is current and skips if so, so a
# second run with nothing changed takes seconds. Called by `npm run setup|demo|test|bench`
# and by the justfile.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
started=$SECONDS
quiet="${AIRLOCK_SETUP_QUIET:-}"

step() { [[ -n "$quiet" ]] || printf '\033[1m[setup]\033[0m %s\n' "$*"; }
done_step() { [[ -n "$quiet" ]] || printf '        done in %ss\n' "$1"; }

# 1. Debian packages (compilers for both guest targets). Only when something is missing.
APT_PACKAGES=(make gcc g++ python3 xz-utils ca-certificates musl-tools clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing Debian packages: ${missing[*]}"
  t=$SECONDS
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  done_step $((SECONDS - t))
fi

# 2. QuickJS source from Debian's source package (pinned, checksum verified).
if [[ ! -f out/quickjs/.stamp ]]; then step "fetching QuickJS source"; fi
bash scripts/fetch-quickjs.sh

# 3. npm dependencies, when package.json or the lock file changed since the last install.
if [[ ! -f node_modules/.package-lock.json || package.json -nt node_modules/.package-lock.json || ( -f package-lock.json && package-lock.json -nt node_modules/.package-lock.json ) ]]; then
  step "installing npm dependencies"
  t=$SECONDS
  npm install --no-audit --no-fund --loglevel=error
  touch node_modules/.package-lock.json
  done_step $((SECONDS - t))
fi

# 4. Guest images (make rebuilds only what changed). QuickJS takes a minute the first time.
# (`make -q` cannot be used: `all` is phony, so it always looks out of date; the
# dry run lists commands, less the QuickJS presence check that always runs.)
# No pipe into `grep -q`: with pipefail, grep quitting early fails the pipeline.
pending="$(make -n -C guest --no-print-directory 2>/dev/null || echo "dry run failed")"
if grep -qv -e "Nothing to be done" -e "^test -f" <<<"$pending"; then
  step "building guest images (KVM image, WebAssembly module, native runner)"
  t=$SECONDS
  make -C guest -j"$(nproc)" --no-print-directory
  done_step $((SECONDS - t))
fi

# 5. Host addon (node-gyp through npm so npm's nodedir setting reaches it).
addon=host/build/Release/airlock.node
if [[ ! -f "$addon" ]] || [[ -n "$(find host guest/include -newer "$addon" \( -name '*.cc' -o -name '*.h' -o -name '*.gyp' \) -not -path 'host/build/*' -print -quit)" ]]; then
  step "building the host addon"
  t=$SECONDS
  npm run --silent build:addon >out/addon-build.log 2>&1 || { cat out/addon-build.log >&2; exit 1; }
  done_step $((SECONDS - t))
fi

# 6. TypeScript: ABI constants generated from abi.h, then dist/ for the package entry points.
node scripts/gen-abi-ts.mjs
if [[ ! -f dist/index.mjs ]] || [[ -n "$(find src -newer dist/index.mjs -name '*.ts' -print -quit)" ]]; then
  step "compiling TypeScript"
  t=$SECONDS
  npx tsc -p tsconfig.build.json
  node scripts/write-esm-entry.mjs
  done_step $((SECONDS - t))
fi

[[ -n "$quiet" ]] || printf '\033[1m[setup]\033[0m ready (%ss)\n' $((SECONDS - started))
