// guest_memory.h — one guest's RAM (a single 2 MiB aligned host mapping: anonymous
// and huge-page backed at boot, or a private copy-on-write mapping of a MemoryImage
// once snapshotted or cloned) plus the x86-64 system region the guest cannot see: GDT and page tables
// built from 2 MiB pages only, and the ring-3 register state that goes with them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "../hv/hypervisor.h"
#include "memory_image.h"
#include "vm_factory.h"

namespace airlock {

class GuestMemory {
public:
    explicit GuestMemory(uint64_t size); // throws std::system_error
    // A guest starting from `image` (a clone): its pages are the image's until written.
    // `range` (reserveGuestRange(image->size())) becomes this memory's; throws
    // std::system_error (the range is released then).
    GuestMemory(std::shared_ptr<const MemoryImage> image, Reservation range);
    ~GuestMemory();
    GuestMemory(const GuestMemory &) = delete;
    GuestMemory &operator=(const GuestMemory &) = delete;

    uint64_t size() const { return size_; }
    uint8_t *base() const { return base_; }

    bool contains(uint64_t gpa, uint64_t len) const { return gpa <= size_ && len <= size_ - gpa; }
    // Host pointer for [gpa, gpa + len); throws std::out_of_range outside guest memory.
    uint8_t *at(uint64_t gpa, uint64_t len) const {
        if (!contains(gpa, len)) throw std::out_of_range("guest address range outside guest memory");
        return base_ + gpa;
    }
    template <typename T> T read(uint64_t gpa) const {
        T v;
        std::memcpy(&v, at(gpa, sizeof(T)), sizeof(T));
        return v;
    }
    template <typename T> void write(uint64_t gpa, T v) { std::memcpy(at(gpa, sizeof(T)), &v, sizeof(T)); }

    // Faults host pages in now so the guest's first touches are cheap.
    void populate(uint64_t gpa, uint64_t len);

    // Replaces every page with `image`'s, mapped private: from now on a page the
    // guest (or the host) writes is a private copy, and the rest stays shared with
    // the image. Same host addresses, so a memory slot over them stays valid. The
    // image's size is size(). Throws std::system_error.
    void adopt(std::shared_ptr<const MemoryImage> image);
    // The image the pages are a private mapping of (null while anonymous).
    const std::shared_ptr<const MemoryImage> &backing() const { return backing_; }

    // Until the next adopt(): a read fault maps only the page read, not the kernel's
    // fault-around window (16 pages) of image pages around it. Every page mapped from
    // the image costs each later restore's PAGEMAP_SCAN a page look-up (file or
    // private copy?), and fault-around maps up to 16 for each page a guest reads. False
    // where the kernel cannot (no write-protect-async userfaultfd: before Linux 6.7, or
    // userfaultfd denied); the memory works the same either way.
    bool mapTouchedPagesOnly();

private:
    void countIn(); // into the census, once constructed
    uint8_t *base_ = nullptr;
    uint64_t size_ = 0;
    void *mapping_ = nullptr;
    size_t mappingSize_ = 0;
    std::shared_ptr<const MemoryImage> backing_;
    bool touchedPagesOnly_ = false; // of the current mapping (adopt() makes a new one)
    // Every image this memory adopted (its snapshots'): retired when it goes.
    std::vector<std::weak_ptr<const MemoryImage>> adopted_;
};

// A guest-virtual (== guest-physical) range mapped with 2 MiB pages.
struct MappedRange {
    uint64_t start = 0; // 2 MiB aligned
    uint64_t end = 0;   // 2 MiB aligned
    bool writable = true;
    bool executable = false;
};

// Addresses inside the system region (guest-physical [0, 2 MiB), never mapped).
constexpr uint64_t kGdtAddr = 0x1000;
constexpr uint64_t kPml4Addr = 0x2000;
constexpr uint64_t kPdptAddr = 0x3000;
constexpr uint64_t kFirstPdAddr = 0x4000;
// The TSS and its I/O permission bitmap: the one page of the system region the guest
// can see (read-only, 4 KiB mapped). PVM hosts run the guest with a hardware IOPL of
// 0 whatever RFLAGS says and emulate `in`/`out` on the #GP that follows, checking
// the TSS bitmap; without it ring-3 port I/O faults. Ports [0, kIoPortsAllowed)
// exit to the host; others fault (a guest abort either way, unless it is AIRLOCK_PORT).
constexpr uint64_t kTssAddr = 0x100000;
constexpr uint64_t kTssPageTableAddr = 0x80000;
constexpr uint32_t kIoPortsAllowed = 0x400;
constexpr uint16_t kUserDataSelector = 0x18 | 3;
constexpr uint16_t kUserCodeSelector = 0x20 | 3;

// Writes the GDT and the page tables for `ranges` into the system region.
void buildSystemRegion(GuestMemory &mem, const std::vector<MappedRange> &ranges);

// Ring-3 64-bit special registers over the system region's GDT and page tables;
// `base` supplies fields the hypervisor owns (e.g. APIC base).
hv::SpecialRegisters ring3SpecialRegisters(const hv::SpecialRegisters &base, uint64_t fsBase);

constexpr uint64_t kRing3Rflags = 0x3002; // IOPL 3 so `out` is allowed; IF clear

} // namespace airlock
