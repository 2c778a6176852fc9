// guest_memory.cc — guest RAM mapping, the system region (GDT, 2 MiB page tables) and
// the ring-3 start state.
#include "guest_memory.h"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <mutex>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <system_error>
#include <unistd.h>

#include "census.h"
#include "layout.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
// Linux 6.7; the build's kernel headers may predate it (the value is the kernel ABI).
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

namespace airlock {

namespace {

// One userfaultfd for the process, registered over guest mappings in write-protect
// mode with asynchronous write protection and never asked to write-protect a page:
// no fault is ever reported to it (an asynchronously protected page would be
// unprotected by the kernel itself, and none is protected), and the kernel maps no
// fault-around pages in a range registered for write protection. User-mode-only
// faults: allowed without privileges, and the guest's faults come through KVM in the
// kernel, which this descriptor then never handles. -1 where the kernel has no such mode.
int touchedPagesOnlyFd() {
    static int fd = -1;
    static std::once_flag once;
    std::call_once(once, [] {
        const int f = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
        if (f < 0) return;
        uffdio_api api{};
        api.api = UFFD_API;
        api.features = UFFD_FEATURE_WP_ASYNC;
        if (::ioctl(f, UFFDIO_API, &api) != 0) {
            ::close(f);
            return;
        }
        fd = f;
    });
    return fd;
}

} // namespace

GuestMemory::GuestMemory(uint64_t size) : size_(size) {
    countIn();
    // Over-allocate by one huge page so the guest base can be 2 MiB aligned: the
    // host backs each 2 MiB guest page with one transparent huge page only then.
    mappingSize_ = size + kHugePageSize;
    mapping_ = ::mmap(nullptr, mappingSize_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapping_ == MAP_FAILED) {
        mapping_ = nullptr;
        throw std::system_error(errno, std::generic_category(), "mmap guest memory");
    }
    uint64_t raw = reinterpret_cast<uint64_t>(mapping_);
    base_ = reinterpret_cast<uint8_t *>(alignUp(raw, kHugePageSize));
    // Huge pages are an optimisation: without THP the guest still runs, only slower
    // on first touches, so a failing madvise is not an error.
    ::madvise(base_, size_, MADV_HUGEPAGE);
    // Guests must not inherit this memory across fork().
    ::madvise(mapping_, mappingSize_, MADV_DONTFORK);
}

GuestMemory::GuestMemory(std::shared_ptr<const MemoryImage> image, Reservation range)
    : base_(range.base), size_(range.size), mapping_(range.mapping), mappingSize_(range.mappingSize) {
    try {
        adopt(std::move(image));
    } catch (...) {
        ::munmap(mapping_, mappingSize_);
        throw;
    }
    countIn();
}

void GuestMemory::countIn() {
    census().guestMemories.fetch_add(1, std::memory_order_relaxed);
    census().guestMemoryBytes.fetch_add(static_cast<int64_t>(size_), std::memory_order_relaxed);
}

void GuestMemory::adopt(std::shared_ptr<const MemoryImage> image) {
    if (image->size() != size_) throw std::logic_error("a guest memory image must have the guest's size");
    const int fd = image->fd();
    if (fd < 0) throw std::logic_error("a retired guest memory image cannot be mapped again");
    // MAP_FIXED replaces the old pages in one step: no instant where the range is
    // unmapped for another mapping to take.
    void *p = ::mmap(base_, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "map guest memory image");
    // Guests must not inherit this memory across fork() (the new mapping lost the flag).
    ::madvise(base_, size_, MADV_DONTFORK);
    adopted_.erase(std::remove_if(adopted_.begin(), adopted_.end(),
                                  [](const std::weak_ptr<const MemoryImage> &w) { return w.expired(); }),
                   adopted_.end());
    adopted_.push_back(image);
    backing_ = std::move(image);
    touchedPagesOnly_ = false;
}

bool GuestMemory::mapTouchedPagesOnly() {
    if (touchedPagesOnly_) return true;
    const int fd = touchedPagesOnlyFd();
    if (fd < 0 || !backing_) return false;
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<uint64_t>(base_);
    reg.range.len = size_;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    // The registration lives with this mapping: munmap (or adopt()'s MAP_FIXED)
    // drops it with the mapping.
    touchedPagesOnly_ = ::ioctl(fd, UFFDIO_REGISTER, &reg) == 0;
    return touchedPagesOnly_;
}

GuestMemory::~GuestMemory() {
    census().guestMemories.fetch_sub(1, std::memory_order_relaxed);
    census().guestMemoryBytes.fetch_sub(static_cast<int64_t>(size_), std::memory_order_relaxed);
    // Snapshots of this guest can only be restored into it (or made templates, which
    // pin their image first): their descriptors are of no use any more.
    for (const std::weak_ptr<const MemoryImage> &w : adopted_)
        if (std::shared_ptr<const MemoryImage> img = w.lock()) img->retire();
    if (mapping_) ::munmap(mapping_, mappingSize_);
}

void GuestMemory::populate(uint64_t gpa, uint64_t len) {
    uint8_t *p = at(gpa, len);
    if (len == 0) return;
    if (::madvise(p, len, MADV_POPULATE_WRITE) == 0) return;
    // Kernels before 5.14: touch one byte per page (a huge page faults in whole).
    volatile uint8_t *v = p;
    for (uint64_t off = 0; off < len; off += kPageSize) v[off] = v[off];
}

namespace {

constexpr uint64_t kPtePresent = 1ull << 0;
constexpr uint64_t kPteWritable = 1ull << 1;
constexpr uint64_t kPteUser = 1ull << 2;
constexpr uint64_t kPteHuge = 1ull << 7;
constexpr uint64_t kPteNoExecute = 1ull << 63;

constexpr uint64_t kGdtNull = 0;
constexpr uint64_t kGdtKernelCode = 0x00af9b000000ffffull;
constexpr uint64_t kGdtKernelData = 0x00cf93000000ffffull;
constexpr uint64_t kGdtUserData = 0x00cff3000000ffffull;
constexpr uint64_t kGdtUserCode = 0x00affb000000ffffull;
constexpr uint16_t kGdtLimit = 5 * 8 - 1;
constexpr uint64_t kTssSize = 104;
constexpr uint64_t kTssIoMapOffsetField = 102;
static_assert(kTssSize + kIoPortsAllowed / 8 + 1 <= 4096, "TSS and I/O bitmap fit their page");

} // namespace

void buildSystemRegion(GuestMemory &mem, const std::vector<MappedRange> &ranges) {
    static_assert(kFirstPdAddr + (kMaxGuestMemory >> 30) * kPageSize <= kHugePageSize,
                  "page directories must fit in the system region");
    std::memset(mem.at(0, kHugePageSize), 0, kHugePageSize);
    const uint64_t gdt[] = {kGdtNull, kGdtKernelCode, kGdtKernelData, kGdtUserData, kGdtUserCode};
    for (size_t i = 0; i < sizeof gdt / sizeof gdt[0]; ++i) mem.write<uint64_t>(kGdtAddr + i * 8, gdt[i]);

    const uint64_t tableFlags = kPtePresent | kPteWritable | kPteUser;
    mem.write<uint64_t>(kPml4Addr, kPdptAddr | tableFlags);

    // TSS: I/O bitmap right after the 104-byte TSS, a clear bit allows a port, and
    // the byte after the bitmap must be 0xff.
    mem.write<uint16_t>(kTssAddr + kTssIoMapOffsetField, kTssSize);
    mem.write<uint8_t>(kTssAddr + kTssSize + kIoPortsAllowed / 8, 0xff);
    mem.write<uint64_t>(kPdptAddr, kFirstPdAddr | tableFlags);
    mem.write<uint64_t>(kFirstPdAddr, kTssPageTableAddr | tableFlags);
    mem.write<uint64_t>(kTssPageTableAddr + ((kTssAddr >> 12) & 511) * 8,
                        kTssAddr | kPtePresent | kPteUser | kPteNoExecute);
    for (const MappedRange &r : ranges) {
        if (r.start % kHugePageSize || r.end % kHugePageSize || r.end > kMaxGuestMemory || r.end > mem.size() ||
            r.start < kHugePageSize)
            throw std::logic_error("mapped range must be 2 MiB aligned, inside guest memory, above the system region");
        for (uint64_t va = r.start; va < r.end; va += kHugePageSize) {
            uint64_t gib = va >> 30;
            uint64_t pd = kFirstPdAddr + gib * kPageSize;
            mem.write<uint64_t>(kPdptAddr + gib * 8, pd | tableFlags);
            uint64_t leaf = va | kPtePresent | kPteUser | kPteHuge;
            if (r.writable) leaf |= kPteWritable;
            if (!r.executable) leaf |= kPteNoExecute;
            mem.write<uint64_t>(pd + ((va >> 21) & 511) * 8, leaf);
        }
    }
}

hv::SpecialRegisters ring3SpecialRegisters(const hv::SpecialRegisters &base, uint64_t fsBase) {
    hv::SpecialRegisters s = base;
    hv::Segment code;
    code.base = 0;
    code.limit = 0xffffffff;
    code.selector = kUserCodeSelector;
    code.type = 11; // execute/read, accessed
    code.present = 1;
    code.dpl = 3;
    code.s = 1;
    code.l = 1;
    code.g = 1;
    hv::Segment data;
    data.base = 0;
    data.limit = 0xffffffff;
    data.selector = kUserDataSelector;
    data.type = 3; // read/write, accessed
    data.present = 1;
    data.dpl = 3;
    data.db = 1;
    data.s = 1;
    data.g = 1;
    s.cs = code;
    s.ss = s.ds = s.es = s.gs = data;
    s.fs = data;
    s.fs.base = fsBase;
    s.gdt = {kGdtAddr, kGdtLimit};
    hv::Segment tss;
    tss.base = kTssAddr;
    tss.limit = static_cast<uint32_t>(kTssSize + kIoPortsAllowed / 8);
    tss.selector = 0x28;
    tss.type = 11; // 64-bit TSS, busy
    tss.present = 1;
    s.tr = tss;
    // No IDT: every guest exception escalates to a triple fault, a shutdown exit.
    s.idt = {0, 0};
    s.cr0 = 0x80050033; // PG | WP | NE | ET | MP | PE
    s.cr3 = kPml4Addr;
    s.cr4 = 0x620;      // PAE | OSFXSR | OSXMMEXCPT
    s.efer = 0xd00;     // LME | LMA | NXE
    return s;
}

} // namespace airlock
