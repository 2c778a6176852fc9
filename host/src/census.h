// census.h — how many of the host's long-lived native objects are alive (sandboxes,
// guest memories, snapshot images) and what they hold, plus the C allocator's own
// totals. Relaxed counters bumped in constructors and destructors: a test that lets
// go of every VM can check that each of these came back to where it was, which RSS
// alone cannot say (the allocator keeps freed memory, V8 grows on its own clock).
#pragma once

#include <atomic>
#include <cstdint>

namespace airlock {

struct Census {
    std::atomic<int64_t> sandboxes{0};
    std::atomic<int64_t> guestMemories{0};
    std::atomic<int64_t> guestMemoryBytes{0}; // reserved guest address space
    std::atomic<int64_t> memoryImages{0};     // snapshots' and templates' sealed images
    std::atomic<int64_t> memoryImageBytes{0}; // their data pages (holes not counted)
};

inline Census &census() {
    static Census c;
    return c;
}

} // namespace airlock
