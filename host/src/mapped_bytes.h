// mapped_bytes.h — a private copy of some bytes in their own anonymous mapping, for
// the large buffers a sandbox holds only for a while (its image, until boot). Not
// malloc: glibc raises its mmap threshold each time a large mmapped chunk is freed,
// so the next image-sized copies come from the heap, where one live chunk keeps the
// freed ones around it resident. A mapping goes back to the kernel whole when freed.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sys/mman.h>
#include <system_error>
#include <utility>

namespace airlock {

class MappedBytes {
public:
    MappedBytes() = default;
    MappedBytes(const uint8_t *bytes, size_t size) : size_(size) {
        if (size == 0) return;
        void *p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "map a copy of the guest image");
        data_ = static_cast<uint8_t *>(p);
        std::memcpy(data_, bytes, size);
    }
    ~MappedBytes() { release(); }
    MappedBytes(const MappedBytes &) = delete;
    MappedBytes &operator=(const MappedBytes &) = delete;
    MappedBytes(MappedBytes &&o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    MappedBytes &operator=(MappedBytes &&o) noexcept {
        if (this != &o) {
            release();
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }

    const uint8_t *data() const { return data_; }
    size_t size() const { return size_; }

    void release() {
        if (data_) ::munmap(data_, size_);
        data_ = nullptr;
        size_ = 0;
    }

private:
    uint8_t *data_ = nullptr;
    size_t size_ = 0;
};

} // namespace airlock
