// loop_wait.h — the guest event loop's timer sleep served on the vCPU thread: which
// host calls qualify (the `airlock:loop` `sleep` step, guest/runtime/eventloop.c) and
// how long they may sleep. The sleep itself is VcpuThread::sleepInLoop (loop_wait.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace airlock {

// Node's ceiling on a timer delay (src/hostcalls/event-loop.ts MAX_SLEEP_MS): a
// longer sleep is cut to it, as on the main thread.
constexpr uint64_t kMaxLoopSleepNs = 2'147'483'647ull * 1'000'000ull;

// The delay of a guest output that is exactly one HOST_CALL `airlock:loop` `sleep`
// with arguments `[ms]`, ms a plain non-negative JSON number, cut to kMaxLoopSleepNs.
// nullopt for anything else, including console lines before the call (they go to the
// main thread with it) and malformed steps (the main thread judges and poisons them).
std::optional<uint64_t> loopSleepDelayNs(const std::vector<uint8_t> &output);

} // namespace airlock
