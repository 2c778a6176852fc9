// snapshot.cc — capture (resident pages into a sealed image, then the guest maps it
// private) and restore (revert the private copies, found with PAGEMAP_SCAN) of guest
// memory and vCPU state (see snapshot.h).
#include "snapshot.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <system_error>
#include <unistd.h>

namespace airlock {

namespace {

// PAGEMAP_SCAN (Linux 6.7, <linux/fs.h>), spelled out here because the build's
// kernel headers may predate it; the layout is the kernel's stable ABI.
struct PageRegion {
    uint64_t start, end, categories;
};
struct PmScanArg {
    uint64_t size, flags, start, end, walkEnd, vec, vecLen, maxPages;
    uint64_t categoryInverted, categoryMask, categoryAnyofMask, returnMask;
};
constexpr uint64_t kPageIsFile = 1u << 2;
constexpr uint64_t kPageIsPresent = 1u << 3;
constexpr uint64_t kPageIsSwapped = 1u << 4;
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);

// Runs of the same length or more go back to the host instead of being zeroed: a
// release costs ~10 us (KVM's MMU notifiers) and a refault later; zeroing 64 KiB
// costs about as much, and more would keep memory committed for nothing.
constexpr uint64_t kReleaseRunBytes = 64 * 1024;

int pagemapFd() {
    static int fd = -2;
    static std::once_flag once;
    std::call_once(once, [] { fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC); });
    return fd;
}

// Resident page runs of guest memory in [from, to) (both page aligned).
std::vector<PageRun> residentRuns(const GuestMemory &mem, uint64_t from, uint64_t to) {
    std::vector<PageRun> runs;
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

// Makes [from, to) (page aligned) read as the image does: zero outside its data.
void revertRun(GuestMemory &mem, const MemoryImage &img, uint64_t from, uint64_t to) {
    const std::vector<PageRun> &data = img.dataRuns();
    // First data run that ends after `from`.
    auto it = std::upper_bound(data.begin(), data.end(), from, [](uint64_t v, const PageRun &r) { return v < r.to; });
    uint64_t cursor = from;
    auto clear = [&](uint64_t a, uint64_t b) {
        if (b <= a) return;
        // A released page of a private file mapping reads the image again: a hole, zero.
        if (b - a >= kReleaseRunBytes && madvise(mem.at(a, b - a), b - a, MADV_DONTNEED) == 0) return;
        std::memset(mem.at(a, b - a), 0, b - a);
    };
    for (; it != data.end() && it->from < to && cursor < to; ++it) {
        const uint64_t a = std::max(cursor, it->from), b = std::min(to, it->to);
        clear(cursor, a);
        std::memcpy(mem.at(a, b - a), img.view() + a, b - a);
        cursor = b;
    }
    clear(cursor, to);
}

} // namespace

size_t Snapshot::bytes() const {
    return sizeof(Snapshot) + cpu.extended.xsave.size() + cpu.extended.xcrs.size() + (memory ? memory->dataBytes() : 0);
}

std::vector<PageRun> writtenRuns(const GuestMemory &mem, uint64_t from, uint64_t to, bool &known) {
    std::vector<PageRun> runs;
    known = false;
    const int fd = pagemapFd();
    if (fd < 0) return runs;
    // Throws std::out_of_range unless [from, to) lies in guest memory.
    const uint64_t base = reinterpret_cast<uint64_t>(mem.at(from, to - from)) - from;
    PageRegion regions[64];
    PmScanArg arg{};
    arg.size = sizeof arg;
    arg.start = base + from;
    arg.end = base + to;
    // Private copies are anonymous pages, present or swapped out: not file pages.
    arg.categoryInverted = kPageIsFile;
    arg.categoryMask = kPageIsFile;
    arg.categoryAnyofMask = kPageIsPresent | kPageIsSwapped;
    arg.returnMask = kPageIsFile | kPageIsPresent | kPageIsSwapped;
    arg.vec = reinterpret_cast<uint64_t>(regions);
    arg.vecLen = sizeof regions / sizeof regions[0];
    for (;;) {
        const int n = ::ioctl(fd, kPagemapScan, &arg);
        if (n < 0) {
            if (errno == EINTR) continue;
            return {};
        }
        for (int i = 0; i < n; ++i) {
            const PageRun r{regions[i].start - base, regions[i].end - base};
            if (!runs.empty() && runs.back().to == r.from)
                runs.back().to = r.to;
            else
                runs.push_back(r);
        }
        // The vector filled up before the end: go on from where the walk stopped.
        if (arg.walkEnd >= arg.end || n < static_cast<int>(arg.vecLen)) break;
        arg.start = arg.walkEnd;
    }
    known = true;
    return runs;
}

std::shared_ptr<Snapshot> captureSnapshot(GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &l, uint64_t ownerId) {
    static std::atomic<uint64_t> lastSerial{0};
    auto snap = std::make_shared<Snapshot>();
    snap->ownerId = ownerId;
    snap->serial = lastSerial.fetch_add(1, std::memory_order_relaxed) + 1;
    snap->layout = l;
    snap->cpu.regs = vcpu.getRegisters();
    snap->cpu.sregs = vcpu.getSpecialRegisters();
    snap->cpu.extended = vcpu.getExtendedState();
    // Every resident page, whatever the guest claims about its heap: the system
    // region, image, buffers, stack and heap. Sized by what the guest really touched
    // (it cannot be larger than the guest's memory), and exact: a restore gives back
    // this state, with no page left over from later.
    snap->memory = MemoryImage::capture(mem.base(), mem.size(), residentRuns(mem, 0, l.memoryEnd));
    mem.adopt(snap->memory);
    // A guest that snapshots restores: keep the pages its restores scan to those it touches.
    mem.mapTouchedPagesOnly();
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

void restoreState(GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &layout,
                  const std::shared_ptr<const MemoryImage> &memory, const CpuState &cpu) {
    // Before anything is written: EFER is what setSpecialRegisters installs below.
    if (cpu.sregs.efer & hv::kEferSce) throw UnsafeCpuState("the snapshot enables SYSCALL (EFER.SCE): refused");
    bool known = false;
    std::vector<PageRun> written;
    // The scan walks every page-table entry of the range (most of its cost with a
    // large live heap): only the part the guest can write.
    if (mem.backing() == memory)
        written = writtenRuns(mem, std::min(writableFrom(layout), mem.size()), mem.size(), known);
    if (known) {
        // Only what was written since the image was adopted differs from it: copy the
        // image's bytes back over those pages. They stay mapped, so the next call
        // takes no faults on them.
        for (const PageRun &r : written) revertRun(mem, *memory, r.from, r.to);
    } else {
        // Another snapshot (or no page-table scan here): map its image afresh.
        mem.adopt(memory);
    }
    // From the first restore on (a clone's first restore included): pages mapped later
    // are only those the guest touches. A clone's first calls keep fault-around, which
    // saves them a host fault per page read (about 9% of a first call here).
    mem.mapTouchedPagesOnly();
    vcpu.setSpecialRegisters(cpu.sregs);
    vcpu.setRegisters(cpu.regs);
    vcpu.setExtendedState(cpu.extended);
    // SYSENTER_CS is no part of a snapshot: nothing but the host may have set it.
    checkNoSystemCalls(vcpu, cpu.sregs);
}

} // namespace airlock
