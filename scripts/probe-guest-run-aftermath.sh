#!/usr/bin/env bash
# Builds and runs host/tools/guest_run_aftermath_probe.cc: what a guest run costs the
# host code that runs next on the same CPU (docs/ARCHITECTURE.md, "The same-core round
# trip"). Usage: probe-guest-run-aftermath.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
out=host/build/guest-run-aftermath-probe
mkdir -p host/build
g++ -std=c++20 -O2 -pthread -o "$out" host/tools/guest_run_aftermath_probe.cc host/src/out_loop_vm.cc host/src/guest_memory.cc host/src/memory_image.cc host/kvm/kvm.cc
"$out" "${1:-2000}"
