// snapshot.h — snapshot and restore as free functions over a guest's parts (memory,
// vCPU, layout). What a snapshot holds is sized by what is really resident in guest
// memory, never by the heap high-water mark the guest claims; a restore releases
// memory above the snapshot's extent instead of zeroing it, and refuses CPU state
// that would let ring-3 code make a system call.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "../hv/hypervisor.h"
#include "guest_memory.h"
#include "layout.h"

namespace airlock {

// Page-aligned bytes in a mapping of their own: freeing a snapshot gives its memory
// back to the host at once. (From the C heap, glibc's adaptive mmap threshold keeps
// freed multi-MiB blocks in its arenas, so dropped snapshots would stay resident.)
class PageBuffer {
public:
    PageBuffer() = default;
    explicit PageBuffer(size_t size); // throws std::system_error
    ~PageBuffer();
    PageBuffer(const PageBuffer &) = delete;
    PageBuffer &operator=(const PageBuffer &) = delete;
    PageBuffer(PageBuffer &&o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr, o.size_ = 0; }
    PageBuffer &operator=(PageBuffer &&o) noexcept;
    uint8_t *data() const { return data_; }
    size_t size() const { return size_; }

private:
    uint8_t *data_ = nullptr;
    size_t size_ = 0;
};

// Guest state captured between requests. Belongs to the sandbox that made it.
struct Snapshot {
    // `len` bytes of guest memory at `gpa`, kept at `offset` in `pages`.
    struct Range {
        uint64_t gpa = 0;
        size_t offset = 0;
        size_t len = 0;
    };
    // An area the snapshot covers [from, to): inside it, what no Range holds was
    // not resident when the snapshot was taken and reads back as zero after a restore.
    struct Area {
        uint64_t from = 0;
        uint64_t to = 0;
    };
    uint64_t ownerId = 0;
    hv::Registers regs;
    hv::SpecialRegisters sregs;
    hv::ExtendedState cpuExtended; // XSAVE image + XCRs: every vector register, not only SSE
    std::vector<Range> ranges;
    PageBuffer pages;
    std::vector<Area> areas;
    uint64_t heapExtent = 0; // end of the heap area: past the last page resident then
    // Native bytes this snapshot holds (reported to the JavaScript GC).
    size_t bytes() const;
};

// The vCPU has settled (no exit half done). Throws std::system_error when residency
// cannot be read.
std::shared_ptr<Snapshot> captureSnapshot(const GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &layout,
                                          uint64_t ownerId);

// Thrown (before or after the state is written) when the snapshot, or the vCPU state
// it leaves, would let the guest leave ring 3 (EFER.SCE set, SYSENTER_CS non-zero).
// The sandbox must not run again until a good restore.
class UnsafeCpuState : public ArgumentError {
public:
    using ArgumentError::ArgumentError;
};

// Brings memory and registers back to `snap`. The vCPU has settled.
void restoreSnapshot(GuestMemory &mem, hv::Vcpu &vcpu, const GuestLayout &layout, const Snapshot &snap);

// Throws UnsafeCpuState unless EFER.SCE == 0 in `sregs` (what `vcpu` runs with) and
// SYSENTER_CS == 0 on `vcpu`.
void checkNoSystemCalls(hv::Vcpu &vcpu, const hv::SpecialRegisters &sregs);

} // namespace airlock
