// sleep_timers.h — the process-wide timer that queues a sandbox let go in its guest's
// timer sleep (loop_wait.cc) for a runner again when the sleep's precise part begins.
// One thread for every parked sleeper, started when the first is armed and ended when
// none has been armed for a while; at most one entry per sandbox (arming again moves
// it), so what it holds is bounded by the sandboxes, never by what a guest asks.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <utility>

namespace airlock {

class Sandbox;

class SleepTimers {
public:
    static SleepTimers &instance();

    // Any thread: at CLOCK_MONOTONIC `atNs`, `s`'s sleep is due (Sandbox::sleepDue)
    // and the sandbox is queued if no runner holds it. Replaces `s`'s entry. Throws
    // when the timer thread cannot start (the caller keeps the sandbox then).
    void arm(const std::shared_ptr<Sandbox> &s, uint64_t atNs);
    // Any thread, idempotent: `s` has no entry any more (taken up, or destroyed).
    void disarm(const Sandbox *s);

private:
    SleepTimers() = default;
    void main();
    void startLocked();

    struct Entry {
        uint64_t atNs;
        std::weak_ptr<Sandbox> sandbox; // the timer never keeps a sandbox alive
    };
    std::mutex mu_;
    std::condition_variable cv_;
    std::map<const Sandbox *, Entry> entries_;
    std::set<std::pair<uint64_t, const Sandbox *>> due_; // entries_ ordered by atNs
    bool running_ = false;
};

} // namespace airlock
