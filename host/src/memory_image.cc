// memory_image.cc — building sealed memfd images of guest memory (see memory_image.h).
#include "memory_image.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <system_error>
#include <unistd.h>

#include "census.h"
#include "layout.h"

#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 0x0002U
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

namespace airlock {

namespace {

[[noreturn]] void fail(const char *what) { throw std::system_error(errno, std::generic_category(), what); }

bool pageIsZero(const uint8_t *p) {
    // Invariant: p is page aligned (guest memory and the pages in it are), so the
    // 8-byte loads are aligned.
    const uint64_t *w = reinterpret_cast<const uint64_t *>(p);
    uint64_t acc = 0;
    for (size_t i = 0; i < kPageSize / 8; ++i) acc |= w[i];
    return acc == 0;
}

} // namespace

void MemoryImage::create(uint64_t size) {
    size_ = size;
    // The guest's memory is data, never code the host runs: no exec bit on the file.
    fd_ = ::memfd_create("airlock-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
    if (fd_ < 0 && errno == EINVAL) fd_ = ::memfd_create("airlock-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd_ < 0) fail("memfd_create");
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) fail("ftruncate guest image");
}

void MemoryImage::writeAt(uint64_t offset, const uint8_t *bytes, size_t len) {
    while (len > 0) {
        const ssize_t n = ::pwrite(fd_, bytes, len, static_cast<off_t>(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("write guest image");
        }
        bytes += n, offset += static_cast<uint64_t>(n), len -= static_cast<size_t>(n);
    }
}

void MemoryImage::seal() {
    // Sealed before any guest maps it: nothing, not even the host, changes a byte a
    // clone or a restore relies on.
    if (::fcntl(fd_, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0)
        fail("seal guest image");
    if (size_ == 0) return;
    void *p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED | MAP_NORESERVE, fd_, 0);
    if (p == MAP_FAILED) fail("map guest image");
    view_ = static_cast<uint8_t *>(p);
    ::madvise(view_, size_, MADV_DONTFORK);
}

std::shared_ptr<MemoryImage> MemoryImage::capture(const uint8_t *src, uint64_t size, const std::vector<PageRun> &runs) {
    std::shared_ptr<MemoryImage> img(new MemoryImage());
    img->create(size);
    for (const PageRun &r : runs) {
        uint64_t page = r.from;
        while (page < r.to) {
            if (pageIsZero(src + page)) {
                page += kPageSize;
                continue;
            }
            uint64_t end = page + kPageSize;
            while (end < r.to && !pageIsZero(src + end)) end += kPageSize;
            img->writeAt(page, src + page, end - page);
            if (!img->dataRuns_.empty() && img->dataRuns_.back().to == page)
                img->dataRuns_.back().to = end;
            else
                img->dataRuns_.push_back({page, end});
            img->dataBytes_ += end - page;
            page = end;
        }
    }
    census().memoryImageBytes.fetch_add(static_cast<int64_t>(img->dataBytes_), std::memory_order_relaxed);
    img->seal();
    return img;
}

int MemoryImage::fd() const {
    std::lock_guard<std::mutex> lock(fdMu_);
    return fd_;
}

bool MemoryImage::pin() const {
    std::lock_guard<std::mutex> lock(fdMu_);
    pinned_ = fd_ >= 0;
    return pinned_;
}

void MemoryImage::retire() const {
    std::lock_guard<std::mutex> lock(fdMu_);
    if (pinned_ || fd_ < 0) return;
    ::close(fd_);
    fd_ = -1;
}

MemoryImage::MemoryImage() { census().memoryImages.fetch_add(1, std::memory_order_relaxed); }

MemoryImage::~MemoryImage() {
    census().memoryImages.fetch_sub(1, std::memory_order_relaxed);
    census().memoryImageBytes.fetch_sub(static_cast<int64_t>(dataBytes_), std::memory_order_relaxed);
    if (view_) ::munmap(view_, size_);
    if (fd_ >= 0) ::close(fd_);
}

} // namespace airlock
