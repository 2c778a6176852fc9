// handover.h — the hand-over of one exchange between the Node main thread, the vCPU
// thread and the guest: the exchange state (who owns the request in flight: claim /
// settle) and the poll word the guest shares (abi.h, "Polling"). Both threads use it;
// every operation says why its memory order is enough.
#pragma once

#include <atomic>
#include <cstdint>
#include <sched.h>

#include "../../guest/include/abi.h"

namespace airlock {

class Handover {
public:
    // An exchange (Boot or Exchange op) from the moment it is published until exactly
    // one side claims it: the main thread when the guest handed the response over in
    // memory, the vCPU thread on an exit, a cancellation or an abort.
    enum State : int { kNoExchange = 0, kPosting = 1, kInFlight = 2, kClaimed = 3 };

    // Points at the guest's poll_state; null while no guest exists.
    void attach(uint32_t *pollWord) { poll_ = pollWord; }
    bool attached() const { return poll_ != nullptr; }

    // --- exchange state (seq_cst: each store pairs with a load of the poll word or
    // of the cancel word on the other thread, and only one total order makes "read
    // the poll word, then the state" meaningful, see forged()) ---
    void beginPosting() { state_.store(kPosting); } // main thread, fast path only
    void publish() { state_.store(kInFlight); }     // the side that wrote the request
    void reset() { state_.store(kNoExchange); }     // the side that claimed, when done; or an abandoned post
    bool claim() {
        int expected = kInFlight;
        return state_.compare_exchange_strong(expected, kClaimed);
    }
    // The state once a main-thread post attempt is over. A post is a memcpy and two
    // timer syscalls, never a wait on the guest: spin briefly, then yield the core
    // (the poster may be preempted on it).
    int settle() const {
        int state;
        for (unsigned i = 0; (state = state_.load()) == kPosting; ++i) {
            if (i < 256)
                __builtin_ia32_pause();
            else
                sched_yield();
        }
        return state;
    }

    // --- poll word: shared with the guest, so atomic operations only. acquire on
    // loads pairs with the guest's release when it hands over a response; release
    // on stores publishes the request bytes written before them. ---
    uint32_t poll() const { return __atomic_load_n(poll_, __ATOMIC_ACQUIRE); }
    void setPoll(uint32_t v) { __atomic_store_n(poll_, v, __ATOMIC_RELEASE); }
    bool swapPoll(uint32_t from, uint32_t to) {
        return __atomic_compare_exchange_n(poll_, &from, to, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }

    // Whether a poll value, loaded BEFORE the settled state, is a state only the guest
    // can have produced against the protocol: a value no step writes, or a request
    // with no exchange in flight. (The host stores kPosting before it swaps READY ->
    // REQUEST, so a host-written REQUEST seen first implies a state >= kPosting, which
    // settle() turns into kInFlight; only the guest writes REQUEST otherwise.)
    static bool forged(uint32_t poll, int settledState) {
        if (poll > AIRLOCK_POLL_REQUEST_EXIT) return true;
        return settledState != kInFlight && (poll == AIRLOCK_POLL_REQUEST || poll == AIRLOCK_POLL_REQUEST_EXIT);
    }
    // Only the guest moves poll_state off REQUEST (to READY, response written; then
    // maybe on to IDLE), except the vCPU thread after it claimed the exchange.
    static bool answered(uint32_t poll) { return poll != AIRLOCK_POLL_REQUEST && poll != AIRLOCK_POLL_REQUEST_EXIT; }

private:
    std::atomic<int> state_{kNoExchange};
    uint32_t *poll_ = nullptr;
};

} // namespace airlock
