// snapshot.cc — capture and restore of guest memory and vCPU state, sized by page
// residency (mincore) and released with MADV_DONTNEED (see snapshot.h).
#include "snapshot.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sys/mman.h>
#include <system_error>

#include "../../guest/include/abi.h"

namespace airlock {

namespace {

struct Run {
    uint64_t from, to;
};

// Resident page runs of guest memory in [from, to) (both page aligned).
std::vector<Run> residentRuns(const GuestMemory &mem, uint64_t from, uint64_t to) {
    std::vector<Run> runs;
    if (to <= from) return runs;
    std::vector<unsigned char> vec((to - from) / kPageSize);
    // Invariant: guest memory is one page-aligned host mapping, so a page-aligned gpa
    // maps to a page-aligned host address.
    if (mincore(mem.at(from, to - from), to - from, vec.data()) != 0)
        throw std::system_error(errno, std::generic_category(), "mincore");
    for (size_t i = 0; i < vec.size();) {
        if (!(vec[i] & 1)) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < vec.size() && (vec[j] & 1)) ++j;
        runs.push_back({from + i * kPageSize, from + j * kPageSize});
        i = j;
    }
    return runs;
}

// Gives pages in [from, to) back to the host: anonymous private memory reads back as
// zero and commits nothing until touched again.
void release(GuestMemory &mem, uint64_t from, uint64_t to) {
    from = alignUp(from, kPageSize);
    to = to / kPageSize * kPageSize;
    if (to <= from) return;
    if (madvise(mem.at(from, to - from), to - from, MADV_DONTNEED) != 0)
        throw std::system_error(errno, std::generic_category(), "madvise(MADV_DONTNEED)");
}

uint64_t claimedHighWater(const GuestMemory &mem, const GuestLayout &l) {
    const uint64_t hw = mem.read<uint64_t>(l.header.control + AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER);
    return alignUp(std::clamp(hw, l.heapAddr, l.heapAddr + l.heapSize), kPageSize);
}

} // namespace

size_t Snapshot::bytes() const {
    size_t n = sizeof(Snapshot) + cpuExtended.xsave.size() + cpuExtended.xcrs.size();
    for (const Range &r : ranges) n += r.bytes.size() + sizeof(Range);
    return n;
}

std::shared_ptr<Snapshot> captureSnapshot(const GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &l,
                                          uint64_t ownerId) {
    auto snap = std::make_shared<Snapshot>();
    snap->ownerId = ownerId;
    snap->regs = vcpu.getRegisters();
    snap->sregs = vcpu.getSpecialRegisters();
    snap->cpuExtended = vcpu.getExtendedState();
    auto capture = [&](uint64_t from, uint64_t to) {
        snap->areas.push_back({from, to});
        for (const Run &r : residentRuns(mem, from, to)) {
            const uint8_t *p = mem.at(r.from, r.to - r.from);
            snap->ranges.push_back(Snapshot::Range{r.from, std::vector<uint8_t>(p, p + (r.to - r.from))});
        }
    };
    // data_start and bss_end are page aligned (parseImageHeader).
    capture(l.header.dataStart, l.header.bssEnd);
    // The live stack: rsp is guest-controlled, so clamp it into the stack; the 128
    // bytes below it are the System V red zone.
    const uint64_t rsp = snap->regs.rsp;
    uint64_t stackFrom = rsp < l.stackBottom + 128 ? l.stackBottom : rsp - 128;
    stackFrom = std::min(stackFrom, l.stackTop) / kPageSize * kPageSize;
    capture(stackFrom, l.stackTop);
    // The heap up to the guest's claim, but only what is resident: a claim can make
    // the snapshot smaller, never larger than the memory the guest really touched.
    const size_t before = snap->ranges.size();
    capture(l.heapAddr, claimedHighWater(mem, l));
    snap->heapExtent = snap->ranges.size() > before ? snap->ranges.back().gpa + snap->ranges.back().bytes.size()
                                                    : l.heapAddr;
    snap->areas.back().to = snap->heapExtent;
    return snap;
}

void checkNoSystemCalls(hv::Vcpu &vcpu, const hv::SpecialRegisters &sregs) {
    if (sregs.efer & hv::kEferSce) throw UnsafeCpuState("the CPU state enables SYSCALL (EFER.SCE): refused");
    if (vcpu.getMsr(hv::kMsrSysenterCs) != 0)
        throw UnsafeCpuState("the CPU state enables SYSENTER (SYSENTER_CS is not 0): refused");
}

void restoreSnapshot(GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &l, const Snapshot &snap) {
    // Before anything is written: EFER is what setSpecialRegisters installs below.
    if (snap.sregs.efer & hv::kEferSce) throw UnsafeCpuState("the snapshot enables SYSCALL (EFER.SCE): refused");
    // Heap above the snapshot's extent, as far as the guest says it handed heap out
    // since: within the extent's last 2 MiB slot, zeroed (the slot stays resident, as
    // the next call will likely use it); every slot above goes back to the host.
    // The claim only bounds work that commits nothing (zeroing one resident slot,
    // releasing): a huge claim costs the guest its own restore time, never host
    // memory. What a guest touched above a claim it understated stays resident until
    // a later restore: its own data, in its own heap budget (the runtime's claim is
    // exact, so an honest tenant's heap is always released). Reading residency here
    // instead (mincore over the whole heap) doubled the restore time.
    const uint64_t heapEnd = l.heapAddr + l.heapSize;
    const uint64_t slotEnd = std::min(alignUp(snap.heapExtent, kHugePageSize), heapEnd);
    const uint64_t claimNow = std::max(claimedHighWater(mem, l), snap.heapExtent);
    const uint64_t zeroTo = std::min(claimNow, slotEnd);
    if (zeroTo > snap.heapExtent) std::memset(mem.at(snap.heapExtent, zeroTo - snap.heapExtent), 0, zeroTo - snap.heapExtent);
    const uint64_t releaseTo = std::min(alignUp(claimNow, kHugePageSize), heapEnd);
    if (releaseTo > slotEnd) release(mem, slotEnd, releaseTo);
    // Inside each area, pages between the captured runs were not resident then.
    size_t next = 0;
    for (const Snapshot::Area &a : snap.areas) {
        uint64_t cursor = a.from;
        while (next < snap.ranges.size() && snap.ranges[next].gpa < a.to) {
            const Snapshot::Range &r = snap.ranges[next++];
            release(mem, cursor, r.gpa);
            std::memcpy(mem.at(r.gpa, r.bytes.size()), r.bytes.data(), r.bytes.size());
            cursor = r.gpa + r.bytes.size();
        }
        release(mem, cursor, a.to);
    }
    vcpu.setSpecialRegisters(snap.sregs);
    vcpu.setRegisters(snap.regs);
    vcpu.setExtendedState(snap.cpuExtended);
    // SYSENTER_CS is no part of a snapshot: nothing but the host may have set it.
    checkNoSystemCalls(vcpu, snap.sregs);
}

} // namespace airlock
