#!/usr/bin/env bash
# ab.sh — a before/after comparison of bench figures between two built trees, taken
# interleaved (A B A B ...) so machine noise falls on both alike, on all cores and with
# every thread pinned to one core (taskset), as users' hosts differ.
#   bash test/bench/ab.sh <tree A> <tree B> [rounds=3] [groups=exit-floor,calls,idle]
# Two settings of one build: the same tree twice, with AB_ENV_A / AB_ENV_B naming the
# environment of each side (e.g. AB_ENV_B="AIRLOCK_KVM_RUNNERS=1").
# Each tree must be built (bash scripts/setup.sh). Both run THIS tree's bench scripts
# (test/bench/*.ts are copied in), so the same code measures both. Results go to
# out/ab/<placement>-<A|B>-<round>.json; test/bench/ab-summary.ts prints the ratios.
set -euo pipefail
a="$(cd "$1" && pwd)"; b="$(cd "$2" && pwd)"
rounds="${3:-3}"; groups="${4:-exit-floor,calls,idle}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$here/out/ab"
for tree in "$a" "$b"; do
  [[ "$tree" == "$here" ]] || cp "$here"/test/bench/*.ts "$tree/test/bench/"
done
for round in $(seq 1 "$rounds"); do
  for placement in spread one-core; do
    for side in A B; do
      tree=$a; [[ $side == B ]] && tree=$b
      read -r -a envs <<< "$([[ $side == A ]] && echo "${AB_ENV_A:-}" || echo "${AB_ENV_B:-}")"
      pin=(); [[ $placement == one-core ]] && pin=(taskset -c 0)
      echo "== round $round, $placement, $side ($tree)"
      (cd "$tree" && env "${envs[@]}" AIRLOCK_BENCH_QUICK="${AIRLOCK_BENCH_QUICK:-}" AIRLOCK_BENCH_ONLY="$groups" "${pin[@]}" npx tsx test/bench/run.ts >/dev/null)
      cp "$tree/out/bench-partial.json" "$here/out/ab/$placement-$side-$round.json"
    done
  done
done
npx tsx "$here/test/bench/ab-summary.ts" "$here/out/ab"
