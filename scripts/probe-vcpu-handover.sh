#!/usr/bin/env bash
# Builds and runs host/tools/vcpu_handover_probe.cc: the cost of KVM_RUN when a vCPU
# changes threads (host/README.md quotes its figures). Usage: probe-vcpu-handover.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
out=host/build/vcpu-handover-probe
mkdir -p host/build
g++ -std=c++20 -O2 -pthread -o "$out" host/tools/vcpu_handover_probe.cc host/src/out_loop_vm.cc host/src/guest_memory.cc host/src/memory_image.cc host/kvm/kvm.cc
"$out" "${1:-2000}"
