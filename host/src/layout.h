// layout.h — the guest image header check and the guest memory map computed from it
// and the sandbox's sizes, both exactly as guest/include/abi.h defines them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace airlock {

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kHugePageSize = 2ull << 20;
// Page tables are built for at most this much guest memory (one PML4 entry covers
// 512 GiB; one page-directory page covers 1 GiB).
constexpr uint64_t kMaxGuestMemory = 64ull << 30;
constexpr uint64_t kMaxBufferSize = 1ull << 30;
// Text, data and bss of a guest image (the real one uses ~2 MiB).
constexpr uint64_t kMaxImageMemory = 64ull << 20;

constexpr uint64_t alignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// "0x…": guest addresses in messages.
std::string hex(uint64_t v);

// A caller-supplied value (image, sizes, snapshot) is unacceptable. The message says why.
class ArgumentError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct SandboxConfig {
    uint64_t heapSize = 0;
    uint64_t stackSize = 0;
    uint64_t inputSize = 0;
    uint64_t outputSize = 0;
    uint64_t consoleLimit = 0;
};

struct ImageHeader {
    uint32_t magic = 0;
    uint32_t abiVersion = 0;
    uint64_t loadAddr = 0, entry = 0, fileEnd = 0, bssEnd = 0, dataStart = 0, control = 0, tlsBlock = 0;
};

// Every field checked against the file size and the memory map; throws ArgumentError.
ImageHeader parseImageHeader(const uint8_t *image, size_t size);

struct GuestLayout {
    ImageHeader header;
    SandboxConfig config;     // the sizes asked for, as given
    uint64_t imageBytes = 0;  // bytes of the flat file
    uint64_t inputAddr = 0, inputSize = 0;
    uint64_t outputAddr = 0, outputSize = 0;
    uint64_t imageRegionEnd = 0; // 2 MiB aligned end of image + buffers
    uint64_t guardStart = 0;     // unmapped 2 MiB below the stack
    uint64_t stackBottom = 0, stackTop = 0, stackSize = 0;
    uint64_t heapAddr = 0, heapSize = 0;
    uint64_t memoryEnd = 0;
    uint64_t consoleLimit = 0;
};

// Throws ArgumentError when the sizes are unusable or the map would not fit.
GuestLayout computeLayout(const ImageHeader &header, uint64_t imageBytes, const SandboxConfig &config);

} // namespace airlock
