#!/usr/bin/env bash
# fetch-quickjs.sh — brings QuickJS's source into out/quickjs/src from Debian's source
# package, pinned to one version and checked against a known SHA-256. The system's
# apt configuration is left alone: a private sources list and cache live under out/apt.
# `--check` only answers whether the source is present and verified (exit 0) or not (1).
# Progress goes to stdout and apt's own output to out/apt/*.log; a failure prints the
# logs' last lines, so scripts/setup.sh's log shows why.
set -euo pipefail

VERSION="2025.04.26"
DEB_VERSION="${VERSION}-1"
ORIG="quickjs_${VERSION}.orig.tar.xz"
ORIG_SHA256="ec81da5b3249ed648dbc7df4a1654988910e66a118d9b71cb63534216efcfbbe"
# More than one suite carries the pinned version, so it stays reachable as suites move.
SUITES=(forky sid trixie-backports)

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/out"
dest="$out/quickjs/src"
stamp="$out/quickjs/.stamp"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$ORIG_SHA256" && -f "$dest/quickjs.c" ]]; then
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  exit 1
fi

apt_dir="$out/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$out/quickjs/download"
: > "$apt_dir/sources.list"
for s in "${SUITES[@]}"; do
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $s main" >> "$apt_dir/sources.list"
done
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "APT::Sandbox::User=root"
  -o "Acquire::Languages=none"
)

echo "  fetching QuickJS ${DEB_VERSION} source package (suites: ${SUITES[*]})"
# A suite that no longer exists is not fatal while another one answers.
apt-get "${apt_opts[@]}" -q update >"$apt_dir/update.log" 2>&1 || true
cd "$out/quickjs/download"
rm -f ./*.dsc ./*.tar.*
if ! apt-get "${apt_opts[@]}" -q source --download-only "quickjs=${DEB_VERSION}" >"$apt_dir/source.log" 2>&1; then
  tail -n 15 "$apt_dir/update.log" "$apt_dir/source.log" >&2
  echo "error: could not download quickjs=${DEB_VERSION} from Debian (see $apt_dir/source.log and $apt_dir/update.log)" >&2
  exit 1
fi

actual="$(sha256sum "$ORIG" | cut -d' ' -f1)"
if [[ "$actual" != "$ORIG_SHA256" ]]; then
  echo "error: $ORIG has SHA-256 $actual, expected $ORIG_SHA256" >&2
  exit 1
fi

rm -rf "$dest" "$out/quickjs/extract"
mkdir -p "$out/quickjs/extract"
tar -xf "$ORIG" -C "$out/quickjs/extract"
mv "$out/quickjs/extract/quickjs-${VERSION}" "$dest"
rmdir "$out/quickjs/extract"
echo "$ORIG_SHA256" > "$stamp"
echo "  QuickJS ${VERSION} ready in out/quickjs/src (sha256 verified)"
