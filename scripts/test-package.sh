#!/usr/bin/env bash
# test-package.sh — the package as a user gets it: `npm pack` (which builds the prebuilt
# addon), the tarball's contents, `npm install ./tarball` into an empty project with PATH
# holding only node and npm (no compiler, no make, no python) and npm offline, then the
# README's quick start run with plain Node on KVM, on the WebAssembly tier, and with the
# prebuilt addon absent (as on any platform but linux-x64); then tsc on a consumer file
# against the installed types, the CLI, publint and @arethetypeswrong/cli. Called by .ci/run.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tag=$'\033[1m[package]\033[0m'
say() { printf '%s %s\n' "$tag" "$*"; }
fail() { printf '%s FAILED: %s\n' "$tag" "$*" >&2; exit 1; }

name="$(node -p "require('./package.json').name")"
version="$(node -p "require('./package.json').version")"

# 1. Pack (prepack: setup.sh, then scripts/build-prebuilt.sh with its glibc check).
mkdir -p out/package
rm -f out/package/*.tgz
npm pack --silent --pack-destination out/package >out/package/pack.log 2>&1 || { cat out/package/pack.log >&2; fail "npm pack"; }
tarball="$root/out/package/$name-$version.tgz"
[[ -f "$tarball" ]] || fail "npm pack wrote no $tarball"
say "packed $(basename "$tarball") ($(du -h "$tarball" | cut -f1))"

# 2. Contents: everything the package loads at run time, nothing from the build.
listing="$(tar tzf "$tarball")"
for f in package/package.json package/README.md package/dist/index.js package/dist/index.mjs \
  package/dist/index.d.ts package/dist/index.d.mts package/dist/cli/main.js \
  package/prebuilds/linux-x64/airlock.node package/out/guest/kvm/airlock-guest.img \
  package/out/guest/wasm/airlock-guest.wasm package/docs/API.md; do
  grep -qxF "$f" <<<"$listing" || fail "the tarball lacks $f"
done
if grep -E '^package/(src|host|guest|test|scripts)/|\.map$|binding\.gyp$' <<<"$listing"; then
  fail "the tarball holds build inputs (listed above)"
fi
# npm runs node-gyp for a package with a binding.gyp or an install script: neither may exist.
tar xzOf "$tarball" package/package.json | node -e '
  const p = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const hooks = ["preinstall", "install", "postinstall"].filter((s) => p.scripts && p.scripts[s]);
  if (hooks.length || p.gypfile) { console.error("install hooks: " + hooks.join(", ") + (p.gypfile ? " gypfile" : "")); process.exit(1); }
' || fail "the packed package.json would compile or run code at install"

# 3. An empty project, PATH stripped to node and npm, npm offline (dependencies from the
#    cache). The set-up's `npm install` caches the registry's abbreviated metadata only,
#    while installing a tarball reads its dependencies' full metadata: a dry run of the
#    same install with the network allowed fills the cache with it first (once: later
#    runs find it cached), so a fresh machine passes as a warm one does.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/prefetch"
(cd "$work/prefetch" && npm init -y >/dev/null && npm install --prefer-offline --dry-run --ignore-scripts --no-audit --no-fund "$tarball") >"$work/prefetch.log" 2>&1 ||
  { cat "$work/prefetch.log" >&2; fail "npm could not resolve the tarball's dependencies (registry unreachable and cache cold?)"; }
mkdir -p "$work/bin" "$work/app"
for tool in node npm npx; do ln -s "$(command -v "$tool")" "$work/bin/$tool"; done
bare_path="$work/bin"
for tool in cc gcc g++ clang make python3 node-gyp; do
  if PATH="$bare_path" command -v "$tool" >/dev/null; then fail "$tool is reachable on the stripped PATH"; fi
done
in_app() { (cd "$work/app" && env -i HOME="$HOME" PATH="$bare_path" "$@"); }
in_app npm init -y >/dev/null
in_app npm install --offline --no-audit --no-fund --foreground-scripts "$tarball" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log" >&2; fail "npm install of the tarball (offline, no compiler)"; }
if grep -qiE 'gyp|prebuild-install|node-pre-gyp' "$work/install.log"; then
  cat "$work/install.log" >&2
  fail "npm install tried to build or download an addon"
fi
say "installed into an empty project with PATH=node,npm only, offline, no scripts run"

# 4. The README's quick start (its first ```ts block) with plain Node, as an ES module.
awk '/^```ts$/ { on = 1; next } on && /^```$/ { exit } on { print }' README.md >"$work/app/quick-start.mjs"
grep -qF "from '$name'" "$work/app/quick-start.mjs" || fail "the README quick start does not import '$name'"
expected="{ name: 'World', message: 'Hello, World!' }"
quick_start() {
  local label="$1"
  shift
  local out err
  out="$(in_app "$@" node quick-start.mjs 2>"$work/stderr")" || { cat "$work/stderr" >&2; fail "quick start ($label)"; }
  err="$(cat "$work/stderr")"
  [[ "$out" == *"$expected"* ]] || fail "quick start ($label) printed: $out"
  printf '%s' "$err"
}
kvm_usable() { [[ -r /dev/kvm && -w /dev/kvm ]]; }
if kvm_usable; then
  err="$(quick_start kvm)"
  [[ "$err" != *AIRLOCK_KVM_UNAVAILABLE* ]] || fail "the quick start fell back to WebAssembly with a usable /dev/kvm: $err"
  say "README quick start ran on KVM with the prebuilt addon"
elif [[ "${AIRLOCK_REQUIRE_KVM:-}" == 1 ]]; then
  fail "KVM is required (AIRLOCK_REQUIRE_KVM=1) but /dev/kvm is not usable"
else
  say "skipping the KVM quick start: /dev/kvm is not usable here"
fi
err="$(quick_start wasm AIRLOCK_DISABLE_KVM=1)"
[[ "$err" == *AIRLOCK_KVM_UNAVAILABLE* ]] || fail "the WebAssembly run did not say why KVM was not used"
say "README quick start ran on the WebAssembly tier"
# Without the prebuilt addon (every platform but linux-x64), auto picks WebAssembly and
# nothing tries to compile.
installed="$work/app/node_modules/$name"
mv "$installed/prebuilds" "$work/prebuilds-aside"
err="$(quick_start 'no prebuilt addon')"
mv "$work/prebuilds-aside" "$installed/prebuilds"
[[ "$err" == *AIRLOCK_KVM_UNAVAILABLE* && "$err" == *"no KVM addon ships"* && "$err" != *"npm run setup"* ]] ||
  fail "without the addon, the fallback did not say why in a user's terms: $err"
say "README quick start ran on WebAssembly with the prebuilt addon removed"

# 5. The installed types from a consumer's point of view (CommonJS and ES module), with
#    the repository's tsc and no skipLibCheck, so every published .d.ts is checked.
cp test/examples/fixtures/consumer.mts test/examples/fixtures/consumer.cts "$work/app/"
# Node's own types come from the repository (a Node library's users have @types/node).
cat >"$work/app/tsconfig.json" <<JSON
{ "compilerOptions": { "module": "nodenext", "moduleResolution": "nodenext", "target": "es2022",
  "lib": ["es2022", "esnext.disposable"], "typeRoots": ["$root/node_modules/@types"], "types": ["node"],
  "strict": true, "noEmit": true, "skipLibCheck": false },
  "files": ["consumer.mts", "consumer.cts"] }
JSON
(cd "$work/app" && "$root/node_modules/.bin/tsc" -p tsconfig.json) || fail "tsc on the consumer files against the installed types"
say "the installed types check (ESM and CommonJS consumers, skipLibCheck off)"

# 6. The CLI from the installed package, through the bin link npm made (npx needs a shell).
help="$(in_app node_modules/.bin/airlock --help)" || fail "airlock --help"
[[ "$help" == *"$name"* ]] || fail "airlock --help does not name the package $name"
# doctor's exit status is its verdict on this machine; here only that it runs and reports.
doctor="$(in_app node_modules/.bin/airlock doctor --json || true)"
in_app node -e 'JSON.parse(process.argv[1]).tiers' "$doctor" || fail "airlock doctor --json printed: $doctor"
say "the airlock CLI runs from the installed package"

# 7. Packaging linters on exactly this tarball.
rm -rf out/package/extracted && mkdir -p out/package/extracted
tar xzf "$tarball" -C out/package/extracted
npx --no-install publint --strict --pack false out/package/extracted/package || fail "publint"
npx --no-install attw "$tarball" || fail "@arethetypeswrong/cli"
say "publint and @arethetypeswrong/cli are clean"
