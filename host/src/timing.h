// timing.h — clocks, spins and futex waits shared by the main thread and the vCPU
// thread (header-only: each is a syscall or an instruction).
#pragma once

#include <atomic>
#include <cstdint>
#include <ctime>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace airlock {

inline uint64_t monotonicNs() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
}

inline int64_t realtimeNs() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000ll + ts.tv_nsec;
}

// A spinning thread yields this often: when the thread it waits for shares its core
// (2 cores here, and the scheduler does not always spread them), spinning without
// yielding would hold off the very work it waits for until the spin budget ends.
constexpr uint64_t kSpinYieldNs = 20'000;

// Sleeps while *word == expected (or until a wake, or a signal: EINTR). Returns at
// once on any other value, so a wake between the caller's check and this call is
// never lost.
inline void futexWait(std::atomic<uint32_t> *word, uint32_t expected) {
    // Invariant: std::atomic<uint32_t> is a plain 32-bit word (lock-free), so the
    // kernel may treat its address as a futex.
    static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

// futexWait for at most `ns` (a relative timeout: the kernel's FUTEX_WAIT takes one).
inline void futexWaitFor(std::atomic<uint32_t> *word, uint32_t expected, uint64_t ns) {
    static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");
    timespec timeout{static_cast<time_t>(ns / 1'000'000'000ull), static_cast<long>(ns % 1'000'000'000ull)};
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAIT_PRIVATE, expected, &timeout, nullptr, 0);
}

// As futexWait, until CLOCK_MONOTONIC reaches `deadlineNs` at the latest (an absolute
// deadline: a wake-up or signal before it needs no recomputed timeout).
inline void futexWaitUntil(std::atomic<uint32_t> *word, uint32_t expected, uint64_t deadlineNs) {
    static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");
    const timespec at{static_cast<time_t>(deadlineNs / 1'000'000'000ull), static_cast<long>(deadlineNs % 1'000'000'000ull)};
    // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, unlike FUTEX_WAIT.
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAIT_BITSET_PRIVATE, expected, &at, nullptr,
            FUTEX_BITSET_MATCH_ANY);
}

inline void futexWake(std::atomic<uint32_t> *word) {
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

} // namespace airlock
