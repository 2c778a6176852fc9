// answer_watcher.h — the process-wide thread that watches guest memory for answers
// handed over without an exit: while a polling guest works on a request it got
// through memory, this thread (never the Node main thread, which sleeps in its event
// loop meanwhile) spins on the guest's poll word, takes the answer when the guest
// writes it, and wakes the main thread; it also takes host calls the guest hands over
// in memory (hostcall_memory.h). Each watch is bounded (kWatchNs): then the guest is
// told to answer with an exit after all. It spins only while watching or, after
// taking a host call, until its reply is due; otherwise it sleeps on a futex.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace airlock {

class Sandbox;

class AnswerWatcher {
public:
    static AnswerWatcher &instance();

    // Main thread, with the first sandbox: starts the thread (throws if it cannot).
    void start();
    // Main thread, after handing a request over with AIRLOCK_POLL_REQUEST: watch it
    // until Sandbox::watchAnswer says done. False if the thread never started.
    bool watch(std::shared_ptr<Sandbox> sandbox);

    // The watcher's own thread, having taken a host call from memory: the reply will
    // start a new watch soon, so stay awake for it (bounded by the guest's wait).
    void lingerForReply();

private:
    AnswerWatcher() = default;
    void run();

    struct Entry {
        std::shared_ptr<Sandbox> sandbox;
        uint64_t giveUpNs;
    };
    std::mutex mu_; // incoming_, started_
    std::vector<Entry> incoming_;
    bool started_ = false;
    std::atomic<uint32_t> seq_{0};     // futex word: bumped on every watch()
    std::atomic<bool> sleeping_{false};
    uint64_t lingerUntilNs_ = 0; // the watcher thread only
};

} // namespace airlock
