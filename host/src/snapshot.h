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
    // Unique in the process (never 0): names this snapshot where a pointer could be
    // reused by a later one (VcpuThread::restore's "nothing ran since" mark).
    uint64_t serial = 0;
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

// Brings memory and registers back to `memory` and `cpu`. The vCPU has settled;
// `layout` is the guest's (it bounds the pages the guest can have written).
void restoreState(GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &layout,
                  const std::shared_ptr<const MemoryImage> &memory, const CpuState &cpu);
inline void restoreSnapshot(GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &layout, const Snapshot &snap) {
    restoreState(mem, vcpu, layout, snap.memory, snap.cpu);
}

// Throws UnsafeCpuState unless EFER.SCE == 0 in `sregs` (what `vcpu` runs with) and
// SYSENTER_CS == 0 on `vcpu`.
void checkNoSystemCalls(hv::Vcpu &vcpu, const hv::SpecialRegisters &sregs);

// Pages of `mem` in [from, to) (page aligned) the guest or the host wrote since it
// adopted its image (private copies), ascending; `known` is false when the kernel
// cannot say (no PAGEMAP_SCAN).
std::vector<PageRun> writtenRuns(const GuestMemory &mem, uint64_t from, uint64_t to, bool &known);

// Where a restore looks for written pages: from data_start up. Below it lie the system
// region and the read-only code slots: the guest's page tables (host-built, in the
// system region no guest mapping reaches) map none of them writable, and the host
// writes them only while it builds a guest or a template, before any snapshot.
inline uint64_t writableFrom(const GuestLayout &layout) { return layout.header.dataStart; }

} // namespace airlock
