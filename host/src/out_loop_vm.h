// out_loop_vm.h — the smallest VM Airlock can run: one vCPU at ring 3 looping on `out`
// to the Airlock port, so every KVM_RUN is exactly one exit round trip. The exit floor
// (exit_floor.cc) and the vCPU hand-over probe (host/tools) measure on it; no N-API here,
// so the probe links it without Node.
#pragma once

#include <memory>

#include "../hv/hypervisor.h"
#include "guest_memory.h"

namespace airlock {

struct OutLoopVm {
    std::unique_ptr<GuestMemory> memory; // outlives vm: the VM maps it
    std::unique_ptr<hv::Vm> vm;
    std::unique_ptr<hv::Vcpu> vcpu;
};

// Builds the VM and runs it `warmRuns` times, so the first entries' page faults are
// not part of any measurement. Throws std::runtime_error when a run does not end at
// the `out` (the hypervisor refused the guest).
OutLoopVm makeOutLoopVm(int warmRuns);

// True when `exit` is the loop's `out` to the Airlock port.
bool isOutLoopExit(const hv::Exit &exit);

} // namespace airlock
