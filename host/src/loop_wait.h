// loop_wait.h — the guest event loop's timer sleep served on the vCPU thread: which
// host calls qualify (the `airlock:loop` `sleep` step, guest/runtime/eventloop.c) and
// how long they may sleep. The sleep itself is VcpuThread::sleepInLoop (loop_wait.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace airlock {

// A sleep with more than this left lets go of its runner (loop_wait.cc): the host
// call's reply linger (host_wait.h), so that sleeping costs what waiting for a reply
// does. The runner lingers this long at most before it serves another sandbox.
constexpr uint64_t kLoopSleepLingerNs = 2'000'000;
// The end of a sleep is always slept on a runner, for its precision (a futex sleep
// and a short spin: ~90 us late for 1 ms): the sleep timer queues a parked sleeper
// this long before its deadline, and a runner's wake-up from the queue fits in it.
// Measured here (a KVM handler timing its own setTimeout with performance.now(), 3
// rounds, p50 overshoot): 1 ms (never parked) 81-99 us, 3 ms (parked) 49-58 us,
// 20 ms (parked) 145-157 us.
// With another sandbox waiting for a runner, a sleep with more than this left lets go.
constexpr uint64_t kLoopSleepPreciseNs = 1'000'000;

// Node's ceiling on a timer delay (src/hostcalls/event-loop.ts MAX_SLEEP_MS): a
// longer sleep is cut to it, as on the main thread.
constexpr uint64_t kMaxLoopSleepNs = 2'147'483'647ull * 1'000'000ull;

// A sleep the guest asked for: `delayNs`, and the guest-clock instant it meant
// (`atGuestNs`, 0 when not given), so the time its exit took is not slept again.
struct LoopSleep {
    uint64_t delayNs = 0;
    uint64_t atGuestNs = 0;
};

// The sleep of a guest output that is exactly one HOST_CALL `airlock:loop` `sleep` with
// arguments `[ms]` or `[ms, atMs]`, each a plain non-negative JSON number, the delay cut
// to kMaxLoopSleepNs. nullopt for anything else, including console lines before the
// call (they go to the main thread with it) and malformed steps (the main thread
// judges and poisons them).
std::optional<LoopSleep> loopSleepStep(const std::vector<uint8_t> &output);

// How long to sleep from a guest-clock `guestNowNs`: the delay, shortened to end at the
// instant the guest meant when it gave one (never lengthened: `at` is the guest's word).
uint64_t loopSleepRemainingNs(const LoopSleep &sleep, uint64_t guestNowNs);

} // namespace airlock
