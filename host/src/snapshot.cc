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

PageBuffer::PageBuffer(size_t size) : size_(size) {
    if (size == 0) return;
    void *p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap snapshot memory");
    data_ = static_cast<uint8_t *>(p);
}

PageBuffer::~PageBuffer() {
    if (data_) ::munmap(data_, size_);
}

PageBuffer &PageBuffer::operator=(PageBuffer &&o) noexcept {
    if (this != &o) {
        if (data_) ::munmap(data_, size_);
        data_ = o.data_, size_ = o.size_;
        o.data_ = nullptr, o.size_ = 0;
    }
    return *this;
}

size_t Snapshot::bytes() const {
    return sizeof(Snapshot) + cpuExtended.xsave.size() + cpuExtended.xcrs.size() + pages.size() +
           ranges.size() * sizeof(Range) + areas.size() * sizeof(Area);
}

std::shared_ptr<Snapshot> captureSnapshot(const GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &l,
                                          uint64_t ownerId) {
    auto snap = std::make_shared<Snapshot>();
    snap->ownerId = ownerId;
    snap->regs = vcpu.getRegisters();
    snap->sregs = vcpu.getSpecialRegisters();
    snap->cpuExtended = vcpu.getExtendedState();
    // First the resident runs of every area, then one mapping for all their bytes.
    size_t total = 0;
    auto capture = [&](uint64_t from, uint64_t to) {
        snap->areas.push_back({from, to});
        for (const Run &r : residentRuns(mem, from, to)) {
            snap->ranges.push_back(Snapshot::Range{r.from, total, r.to - r.from});
            total += r.to - r.from;
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
    snap->heapExtent = snap->ranges.size() > before ? snap->ranges.back().gpa + snap->ranges.back().len : l.heapAddr;
    snap->areas.back().to = snap->heapExtent;
    snap->pages = PageBuffer(total);
    for (const Snapshot::Range &r : snap->ranges)
        std::memcpy(snap->pages.data() + r.offset, mem.at(r.gpa, r.len), r.len);
    return snap;
}

void checkNoSystemCalls(hv::Vcpu &vcpu, const hv::SpecialRegisters &sregs) {
    if (sregs.efer & hv::kEferSce) throw UnsafeCpuState("the CPU state enables SYSCALL (EFER.SCE): refused");
    // One hypervisor call for the three (each call costs microseconds on nested hosts).
    const uint32_t msrs[3] = {hv::kMsrSysenterCs, hv::kMsrLstar, hv::kMsrCstar};
    uint64_t values[3];
    vcpu.getMsrs(msrs, values, 3);
    if (values[0] != 0) throw UnsafeCpuState("the CPU state enables SYSENTER (SYSENTER_CS is not 0): refused");
    // On PVM hosts SYSCALL ignores EFER.SCE and enters ring 0 at LSTAR/CSTAR: 0, never
    // mapped, is what makes it fault (docs/ISOLATION.md).
    if (values[1] != 0 || values[2] != 0)
        throw UnsafeCpuState("the CPU state has a SYSCALL entry point (LSTAR/CSTAR is not 0): refused");
}

void restoreSnapshot(GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &l, const Snapshot &snap) {
    // Before anything is written: EFER is what setSpecialRegisters installs below.
    if (snap.sregs.efer & hv::kEferSce) throw UnsafeCpuState("the snapshot enables SYSCALL (EFER.SCE): refused");
    // Heap above the snapshot's extent: within the extent's last 2 MiB slot, zeroed
    // as far as the guest says it handed heap out since (the slot stays resident, as
    // the next call will likely use it; zeroing all of it would cost up to 2 MiB of
    // writes per restore). The claim only bounds that work, which commits nothing: a
    // huge claim costs the guest its own restore time, never host memory. A guest that
    // understates its claim can leave bytes in the rest of that slot, and in slots
    // above the claim: they stay until a restore whose claim covers them. They are the
    // guest's own memory, in its own heap budget; an honest tenant's heap is always
    // cleared (the runtime's claim is exact), and a later tenant could see such bytes
    // only through an uninitialised read in the runtime (calloc and ArrayBuffer
    // memory are zeroed).
    // Reading residency instead (mincore over the heap) doubled the restore time.
    const uint64_t heapEnd = l.heapAddr + l.heapSize;
    const uint64_t slotEnd = std::min(alignUp(snap.heapExtent, kHugePageSize), heapEnd);
    const uint64_t claimNow = std::max(claimedHighWater(mem, l), snap.heapExtent);
    const uint64_t zeroTo = std::min(claimNow, slotEnd);
    if (zeroTo > snap.heapExtent) std::memset(mem.at(snap.heapExtent, zeroTo - snap.heapExtent), 0, zeroTo - snap.heapExtent);
    // Every slot above, up to the claim, goes back to the host. Not always the whole
    // heap: with KVM's MMU notifiers a release costs ~10 us however little it covers
    // (a quarter of an idle restore here), too much to pay for an empty range.
    const uint64_t releaseTo = std::min(alignUp(claimNow, kHugePageSize), heapEnd);
    if (releaseTo > slotEnd) release(mem, slotEnd, releaseTo);
    // Inside each area, pages between the captured runs were not resident then.
    size_t next = 0;
    for (const Snapshot::Area &a : snap.areas) {
        uint64_t cursor = a.from;
        while (next < snap.ranges.size() && snap.ranges[next].gpa < a.to) {
            const Snapshot::Range &r = snap.ranges[next++];
            release(mem, cursor, r.gpa);
            std::memcpy(mem.at(r.gpa, r.len), snap.pages.data() + r.offset, r.len);
            cursor = r.gpa + r.len;
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
