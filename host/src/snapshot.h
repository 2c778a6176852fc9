// snapshot.h — snapshot and restore as free functions over a guest's parts (memory,
// vCPU, layout). A snapshot freezes every resident, non-zero page of guest memory in
// a sealed MemoryImage and makes the guest's memory a private mapping of it; a restore
// to that snapshot then reverts only the pages written since (found in the host's page
// tables, never from anything the guest says), and refuses CPU state that would let
// ring-3 code make a system call.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "../hv/hypervisor.h"
#include "guest_memory.h"
#include "layout.h"
#include "memory_image.h"

namespace airlock {

// The vCPU state a guest resumes from: what snapshots and templates hold.
struct CpuState {
    hv::Registers regs;
    hv::SpecialRegisters sregs;
    hv::ExtendedState extended; // XSAVE image + XCRs: every vector register, not only SSE
};

// Guest state captured between requests. Belongs to the sandbox that made it.
struct Snapshot {
    uint64_t ownerId = 0;
    GuestLayout layout; // of the sandbox it was taken from
    CpuState cpu;
    std::shared_ptr<const MemoryImage> memory;
    // Native bytes this snapshot holds (reported to the JavaScript GC).
    size_t bytes() const;
};

// The vCPU has settled (no exit half done). Afterwards `mem` is a private mapping of
// the snapshot's image. Throws std::system_error when residency cannot be read or the
// image cannot be made.
std::shared_ptr<Snapshot> captureSnapshot(GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &layout,
                                          uint64_t ownerId);

// Thrown (before or after the state is written) when the snapshot, or the vCPU state
// it leaves, would let the guest leave ring 3 (EFER.SCE set, SYSENTER_CS non-zero).
// The sandbox must not run again until a good restore.
class UnsafeCpuState : public ArgumentError {
public:
    using ArgumentError::ArgumentError;
};

// Brings memory and registers back to `memory` and `cpu`. The vCPU has settled.
void restoreState(GuestMemory &mem, hv::Vcpu &vcpu, const std::shared_ptr<const MemoryImage> &memory,
                  const CpuState &cpu);
inline void restoreSnapshot(GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &, const Snapshot &snap) {
    restoreState(mem, vcpu, snap.memory, snap.cpu);
}

// Throws UnsafeCpuState unless EFER.SCE == 0 in `sregs` (what `vcpu` runs with) and
// SYSENTER_CS == 0 on `vcpu`.
void checkNoSystemCalls(hv::Vcpu &vcpu, const hv::SpecialRegisters &sregs);

// Pages of `mem` the guest or the host wrote since it adopted its image (private
// copies), ascending; `known` is false when the kernel cannot say (no PAGEMAP_SCAN).
std::vector<PageRun> writtenRuns(const GuestMemory &mem, bool &known);

} // namespace airlock
