// memory_image.h — guest memory frozen in a sealed memfd: what snapshots and templates
// are made of. Guests map it private (copy-on-write), so pages nobody wrote are shared
// by every guest mapping it and pages that are all zero are holes that commit nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace airlock {

// A page-aligned guest-physical range [from, to).
struct PageRun {
    uint64_t from = 0;
    uint64_t to = 0;
};

class MemoryImage {
public:
    // The pages of `runs` (page aligned, ascending, inside [0, size)) read from `src`
    // (the host address of guest-physical 0); pages that are all zero stay holes.
    // Throws std::system_error when the memfd cannot be made.
    static std::shared_ptr<MemoryImage> capture(const uint8_t *src, uint64_t size, const std::vector<PageRun> &runs);

    ~MemoryImage();
    MemoryImage(const MemoryImage &) = delete;
    MemoryImage &operator=(const MemoryImage &) = delete;

    // The memfd, or -1 once retired.
    int fd() const;
    // Keeps the memfd for as long as the image lives (a template maps it into every
    // clone); false when already retired.
    bool pin() const;
    // Closes the memfd unless pinned: called when the guest that made the image is
    // gone, so snapshots waiting for the garbage collector hold no descriptor. The
    // view and any mapping made before stay valid.
    void retire() const;
    uint64_t size() const { return size_; }
    // Read-only shared mapping of the whole image (reads only inside dataRuns(): a
    // read of a hole would allocate it).
    const uint8_t *view() const { return view_; }
    // Where the image holds bytes (ascending); everything else reads as zero.
    const std::vector<PageRun> &dataRuns() const { return dataRuns_; }
    uint64_t dataBytes() const { return dataBytes_; }

private:
    MemoryImage();
    void create(uint64_t size);
    void writeAt(uint64_t offset, const uint8_t *bytes, size_t len);
    void seal();

    mutable std::mutex fdMu_; // guards fd_ and pinned_
    mutable int fd_ = -1;
    mutable bool pinned_ = false;
    uint64_t size_ = 0;
    uint8_t *view_ = nullptr;
    std::vector<PageRun> dataRuns_;
    uint64_t dataBytes_ = 0;
};

} // namespace airlock
