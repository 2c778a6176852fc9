#!/usr/bin/env bash
# setup.sh — brings a fresh Debian machine with Node 20 (as root) to a built Airlock:
# apt packages, QuickJS source, npm dependencies, guest images, host addon, TypeScript.
# Idempotent: every step checks whether its output is current and skips if so, so a
# second run with nothing changed prints one line and takes seconds. Called by
# `npm run setup|demo|test|bench` and by the justfile.
#
# Output is for people: one line per step that runs, with its time. What the tools
# print (apt, npm, compilers) goes to out/setup.log; when a step fails, the log's last
# lines and its path go to stderr. AIRLOCK_SETUP_QUIET=1 silences the progress lines.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
quiet="${AIRLOCK_SETUP_QUIET:-}"
mkdir -p out
log="$root/out/setup.log"
: >"$log"
# Lines of the log shown when a step fails: enough for a compiler error and its context.
TAIL_LINES=40

if [[ -t 1 ]]; then tag=$'\033[1m[setup]\033[0m'; else tag='[setup]'; fi

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
started=$(now_ms)

# "4.2s" under a minute, "2m05s" above.
since() {
  local ms=$(($(now_ms) - $1))
  if ((ms < 60000)); then
    printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
  else
    printf '%dm%02ds' $((ms / 60000)) $((ms % 60000 / 1000))
  fi
}

# step TITLE COMMAND...: runs COMMAND with its output in the log, on one progress line.
# A step's command is one command or an && chain: errexit does not apply inside a
# command whose status is tested.
step() {
  local title="$1"
  shift
  local t
  t=$(now_ms)
  [[ -n "$quiet" ]] || printf '%s %s ... ' "$tag" "$title"
  printf '\n=== %s\n' "$title" >>"$log"
  local rc=0
  "$@" >>"$log" 2>&1 </dev/null || rc=$?
  if ((rc == 0)); then
    [[ -n "$quiet" ]] || printf '%s\n' "$(since "$t")"
    return 0
  fi
  [[ -n "$quiet" ]] || printf 'failed after %s\n' "$(since "$t")"
  {
    printf '%s %s failed (exit %d). Last lines of %s:\n' "$tag" "$title" "$rc" "$log"
    tail -n "$TAIL_LINES" "$log" | sed 's/^/  | /'
    printf '%s full log: %s\n' "$tag" "$log"
  } >&2
  exit "$rc"
}

# 1. Debian packages (compilers for both guest targets). Only when something is missing.
APT_PACKAGES=(make gcc g++ python3 xz-utils ca-certificates musl-tools clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  }
  step "installing Debian packages (${#missing[@]}: ${missing[*]})" apt_install
fi

# 2. QuickJS source from Debian's source package (pinned, checksum verified).
if ! bash scripts/fetch-quickjs.sh --check; then
  step "fetching QuickJS source (Debian source package, SHA-256 checked)" bash scripts/fetch-quickjs.sh
fi

# 3. npm dependencies, when package.json or the lock file changed since the last install.
if [[ ! -f node_modules/.package-lock.json || package.json -nt node_modules/.package-lock.json || ( -f package-lock.json && package-lock.json -nt node_modules/.package-lock.json ) ]]; then
  npm_install() { npm install --no-audit --no-fund --no-progress --loglevel=error && touch node_modules/.package-lock.json; }
  step "installing npm dependencies" npm_install
fi

# 4. Guest images (make rebuilds only what changed). QuickJS takes a minute the first time.
# (`make -q` cannot be used: `all` is phony, so it always looks out of date; the
# dry run lists commands, less the QuickJS presence check that always runs.)
# No pipe into `grep -q`: with pipefail, grep quitting early fails the pipeline.
pending="$(make -n -C guest --no-print-directory 2>/dev/null || echo "dry run failed")"
if grep -qv -e "Nothing to be done" -e "^test -f" <<<"$pending"; then
  # --output-sync keeps each compiler's messages together in the log despite -j.
  step "building guest images (KVM image, WebAssembly module, native runner)" \
    make -C guest -j"$(nproc)" --no-print-directory --output-sync=target
fi

# 5. Host addon (node-gyp through npm so npm's nodedir setting reaches it).
addon=host/build/Release/airlock.node
if [[ ! -f "$addon" ]] || [[ -n "$(find host guest/include -newer "$addon" \( -name '*.cc' -o -name '*.h' -o -name '*.gyp' \) -not -path 'host/build/*' -print -quit)" ]]; then
  step "building the host addon" npm run --silent build:addon
fi

# 6. TypeScript: ABI constants generated from abi.h, then dist/ for the package entry points.
# The generator rewrites its output only when abi.h changed, so dist/ stays current.
node scripts/gen-abi-ts.mjs >>"$log" 2>&1 || step "generating the ABI constants" node scripts/gen-abi-ts.mjs
if [[ ! -f dist/index.mjs ]] || [[ -n "$(find src -newer dist/index.mjs -name '*.ts' -print -quit)" ]]; then
  compile_ts() { npx tsc -p tsconfig.build.json && node scripts/seal-dts.mjs && node scripts/write-esm-entry.mjs; }
  step "compiling TypeScript" compile_ts
fi

[[ -n "$quiet" ]] || printf '%s ready (%s)\n' "$tag" "$(since "$started")"
