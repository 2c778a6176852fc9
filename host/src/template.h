// template.h — a template: a frozen guest (sealed memory image, CPU state, layout) that
// new VMs start from without booting, and its plain-data form for export and import.
// Import treats every byte as an attacker's: the parts the guest cannot change (the
// system region and the image's code) are rebuilt by the host, never taken from it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "layout.h"
#include "memory_image.h"
#include "snapshot.h"

namespace airlock {

struct Template {
    GuestLayout layout; // layout.config: the sizes every clone has
    CpuState cpu;
    std::shared_ptr<const MemoryImage> memory;
    // Native bytes held (reported to the JavaScript GC).
    size_t bytes() const { return sizeof(Template) + memory->dataBytes() + cpu.extended.xsave.size(); }
};

// The template of a snapshot: shares the snapshot's image (already sealed), copies its
// CPU state and layout.
std::shared_ptr<const Template> templateFromSnapshot(const Snapshot &snap);

// CPU state as versioned little-endian bytes (layout in template.cc).
std::vector<uint8_t> encodeCpuState(const CpuState &cpu);

// The memory a template exports: the ranges above the image's code (the host rebuilds
// everything below on import), ascending.
std::vector<PageRun> exportedRuns(const Template &t);

struct SerializedRange {
    uint64_t offset = 0;
    const uint8_t *bytes = nullptr;
    size_t len = 0;
};

// Builds a template from hostile parts; throws ArgumentError naming the problem (or
// std::system_error when the host cannot make the image). `image` is the guest image
// this host runs (the caller has matched its digest and the ABI version).
std::shared_ptr<const Template> importTemplate(const uint8_t *image, size_t imageSize, const SandboxConfig &config,
                                               const uint8_t *cpuState, size_t cpuStateSize,
                                               const std::vector<SerializedRange> &ranges);

// The 2 MiB-page mappings of a guest with layout `l`: text read-only and executable,
// everything else writable and no-execute (data_start is 2 MiB aligned).
std::vector<MappedRange> guestMappedRanges(const GuestLayout &l);

} // namespace airlock
