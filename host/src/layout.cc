// layout.cc — validates guest image headers and computes the guest memory map.
#include "layout.h"

#include <cstring>

#include "../../guest/include/abi.h"

namespace airlock {

std::string hex(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

namespace {

uint64_t readU64(const uint8_t *p, size_t off) {
    uint64_t v;
    std::memcpy(&v, p + off, sizeof v);
    return v;
}

uint32_t readU32(const uint8_t *p, size_t off) {
    uint32_t v;
    std::memcpy(&v, p + off, sizeof v);
    return v;
}

[[noreturn]] void bad(const std::string &what) { throw ArgumentError("invalid guest image: " + what); }

} // namespace

ImageHeader parseImageHeader(const uint8_t *image, size_t size) {
    if (size < AIRLOCK_IMG_HEADER_SIZE)
        bad(std::to_string(size) + " bytes is smaller than the " + std::to_string(AIRLOCK_IMG_HEADER_SIZE) +
            "-byte header");
    ImageHeader h;
    h.magic = readU32(image, AIRLOCK_IMG_OFF_MAGIC);
    h.abiVersion = readU32(image, AIRLOCK_IMG_OFF_ABI_VERSION);
    h.loadAddr = readU64(image, AIRLOCK_IMG_OFF_LOAD_ADDR);
    h.entry = readU64(image, AIRLOCK_IMG_OFF_ENTRY);
    h.fileEnd = readU64(image, AIRLOCK_IMG_OFF_FILE_END);
    h.bssEnd = readU64(image, AIRLOCK_IMG_OFF_BSS_END);
    h.dataStart = readU64(image, AIRLOCK_IMG_OFF_DATA_START);
    h.control = readU64(image, AIRLOCK_IMG_OFF_CONTROL);
    h.tlsBlock = readU64(image, AIRLOCK_IMG_OFF_TLS_BLOCK);

    if (h.magic != AIRLOCK_IMAGE_MAGIC) bad("bad magic " + hex(h.magic) + " (expected " + hex(AIRLOCK_IMAGE_MAGIC) + ")");
    if (h.abiVersion != AIRLOCK_ABI_VERSION)
        throw ArgumentError("guest image ABI version " + std::to_string(h.abiVersion) +
                            " does not match the host's ABI version " + std::to_string(AIRLOCK_ABI_VERSION) +
                            ": rebuild the guest image and the host addon from the same source");
    if (h.loadAddr != AIRLOCK_IMAGE_BASE)
        bad("load_addr " + hex(h.loadAddr) + " is not " + hex(AIRLOCK_IMAGE_BASE));
    // Bounded so the sums below cannot overflow and the image fits the memory map.
    if (size > kMaxGuestMemory / 2) bad("file is too large");
    if (h.fileEnd != h.loadAddr + size)
        bad("file_end " + hex(h.fileEnd) + " does not match the file size (" + std::to_string(size) + " bytes)");
    // The image's memory (text, data, bss) is committed at boot: a header must not
    // make a VM commit gigabytes, so it is bounded well above what the runtime needs.
    if (h.bssEnd < h.fileEnd || h.bssEnd % kPageSize != 0 || h.bssEnd - h.loadAddr > kMaxImageMemory)
        bad("bss_end " + hex(h.bssEnd) + " must be page aligned, at or after file_end, and at most " +
            std::to_string(kMaxImageMemory >> 20) + " MiB past load_addr");
    if (h.dataStart % kPageSize != 0 || h.dataStart < h.loadAddr + AIRLOCK_IMG_HEADER_SIZE || h.dataStart > h.fileEnd)
        bad("data_start " + hex(h.dataStart) + " must be page aligned and inside the file, after the header");
    // Guest memory is mapped in 2 MiB pages: data sharing a slot with code would make
    // that slot writable and executable (self-modifying code that restore() does
    // not undo). The linker script puts data on its own slot (image.ld).
    if (h.dataStart % kHugePageSize != 0)
        bad("data_start " + hex(h.dataStart) + " does not start its own 2 MiB slot, so a slot would be mapped " +
            "writable and executable: link the image with data at a 2 MiB boundary (guest/platform/kvm/image.ld)");
    if (h.entry < h.loadAddr + AIRLOCK_IMG_HEADER_SIZE || h.entry >= h.dataStart)
        bad("entry " + hex(h.entry) + " is outside the text [" + hex(h.loadAddr + AIRLOCK_IMG_HEADER_SIZE) + ", " +
            hex(h.dataStart) + ")");
    if (h.control % kPageSize != 0 || h.control < h.dataStart || h.control > h.bssEnd - AIRLOCK_CONTROL_SIZE)
        bad("control " + hex(h.control) + " must be a page-aligned address in writable memory [" + hex(h.dataStart) +
            ", " + hex(h.bssEnd) + ")");
    if (h.tlsBlock % 8 != 0 || h.tlsBlock < h.dataStart || h.tlsBlock > h.bssEnd - 8)
        bad("tls_block " + hex(h.tlsBlock) + " must be an 8-byte aligned address in writable memory");
    return h;
}

GuestLayout computeLayout(const ImageHeader &header, uint64_t imageBytes, const SandboxConfig &config) {
    auto checkSize = [](const char *name, uint64_t v, uint64_t min, uint64_t max) {
        if (v < min || v > max)
            throw ArgumentError(std::string(name) + " " + std::to_string(v) + " is outside [" + std::to_string(min) +
                                ", " + std::to_string(max) + "]");
    };
    checkSize("inputSize", config.inputSize, AIRLOCK_MSG_HEADER_SIZE, kMaxBufferSize);
    checkSize("outputSize", config.outputSize, AIRLOCK_MSG_HEADER_SIZE, kMaxBufferSize);
    checkSize("heapSize", config.heapSize, 1, kMaxGuestMemory);
    checkSize("stackSize", config.stackSize, 1, kMaxGuestMemory);
    checkSize("consoleLimit", config.consoleLimit, 0, kMaxBufferSize);

    GuestLayout l;
    l.header = header;
    l.config = config;
    l.imageBytes = imageBytes;
    l.consoleLimit = config.consoleLimit;
    l.inputAddr = alignUp(header.bssEnd, kPageSize);
    l.inputSize = config.inputSize;
    l.outputAddr = alignUp(l.inputAddr + l.inputSize, kPageSize);
    l.outputSize = config.outputSize;
    l.imageRegionEnd = alignUp(l.outputAddr + l.outputSize, kHugePageSize);
    l.guardStart = l.imageRegionEnd;
    l.stackBottom = l.guardStart + kHugePageSize;
    l.stackSize = alignUp(config.stackSize, kHugePageSize);
    l.stackTop = l.stackBottom + l.stackSize;
    l.heapAddr = l.stackTop;
    l.heapSize = alignUp(config.heapSize, kHugePageSize);
    l.memoryEnd = l.heapAddr + l.heapSize;
    if (l.memoryEnd > kMaxGuestMemory)
        throw ArgumentError("guest memory of " + std::to_string(l.memoryEnd >> 20) + " MiB exceeds the limit of " +
                            std::to_string(kMaxGuestMemory >> 20) + " MiB");
    return l;
}

} // namespace airlock
