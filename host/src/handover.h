// handover.h — everything the Node main thread, the vCPU thread and the guest hand
// each other, as one type: the mailbox (ops and host-function replies one way,
// events the other, the futex word the vCPU thread sleeps on, whether the main thread
// still owes a look at its events), the exchange state (who owns the request in flight: claim / settle) and the
// poll word the guest shares (abi.h, "Polling"). Each method says which thread calls
// it; each atomic operation why its memory order is enough.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <sched.h>
#include <vector>

#include "../../guest/include/abi.h"
#include "ops.h"
#include "timing.h"

namespace airlock {

class Handover {
public:
    // ---- mailbox: main thread -----------------------------------------------------
    void postOp(Op op) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            ops_.push_back(std::move(op));
            opReady_.store(true); // seq_cst: pairs with the vCPU thread's session flag (Sandbox::post)
        }
        wake();
    }
    // After a vCPU thread failed to start: nobody will take them.
    void discardOps() {
        std::lock_guard<std::mutex> lock(mu_);
        ops_.clear();
        opReady_.store(false);
    }
    void postReply(HostReply reply) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            reply_ = std::move(reply);
            replyReady_.store(true);
        }
        wake();
    }
    // Bumps the futex word (the vCPU thread re-checks everything) and wakes it if asleep.
    void wake() {
        wakeSeq_.fetch_add(1);
        if (vcpuSleeping_.load()) futexWake(&wakeSeq_);
    }
    // Before taking the events: one posted from now on notifies again.
    std::vector<Event> drainEvents() {
        notified_.store(false);
        std::vector<Event> out;
        std::lock_guard<std::mutex> lock(mu_);
        while (!events_.empty()) {
            out.push_back(std::move(events_.front()));
            events_.pop_front();
        }
        return out;
    }

    // ---- mailbox: vCPU thread -----------------------------------------------------
    bool opWaiting() const { return opReady_.load(); }
    Op takeOp() {
        std::lock_guard<std::mutex> lock(mu_);
        Op op = std::move(ops_.front()); // caller: opWaiting()
        ops_.pop_front();
        opReady_.store(!ops_.empty());
        return op;
    }
    bool replyWaiting() const { return replyReady_.load(); }
    // The reply to host call `id`, or nullopt (an answer to a call that no longer
    // waits is dropped).
    std::optional<HostReply> takeReply(uint64_t id) {
        std::lock_guard<std::mutex> lock(mu_);
        replyReady_.store(false);
        std::optional<HostReply> r = std::move(reply_);
        reply_.reset();
        if (r && r->id != id) r.reset();
        return r;
    }
    // True when the main thread must be notified: it has not been since it last
    // drained (seq_cst exchange after the push, store before the drain: an event the
    // drain misses always finds the flag cleared).
    bool emit(Event ev) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            events_.push_back(std::move(ev));
        }
        return !notified_.exchange(true);
    }
    std::atomic<uint32_t> *wakeWord() { return &wakeSeq_; } // for the signal handler
    uint32_t wakeSeq() const { return wakeSeq_.load(); }
    // Sleeps unless the futex word moved past `seq` (see futexWait).
    void sleep(uint32_t seq, bool stillWanted) {
        vcpuSleeping_.store(true);
        if (stillWanted) futexWait(&wakeSeq_, seq);
        vcpuSleeping_.store(false);
    }
    // The same for at most `ns` (a runner lingering on an idle sandbox).
    void sleepFor(uint32_t seq, uint64_t ns) {
        vcpuSleeping_.store(true);
        futexWaitFor(&wakeSeq_, seq, ns);
        vcpuSleeping_.store(false);
    }

    // As sleep(), until CLOCK_MONOTONIC `deadlineNs` at the latest (a guest's timer,
    // loop_wait.cc).
    void sleepUntil(uint32_t seq, bool stillWanted, uint64_t deadlineNs) {
        vcpuSleeping_.store(true);
        if (stillWanted) futexWaitUntil(&wakeSeq_, seq, deadlineNs);
        vcpuSleeping_.store(false);
    }

    // An exchange (Boot or Exchange op) from the moment it is published until exactly
    // one side claims it: the main thread when the guest handed the response over in
    // memory, the vCPU thread on an exit, a cancellation or an abort.
    enum State : int { kNoExchange = 0, kPosting = 1, kInFlight = 2, kClaimed = 3 };

    // Points at the guest's poll_state; null while no guest exists.
    void attach(uint32_t *pollWord) { poll_ = pollWord; }
    bool attached() const { return poll_ != nullptr; }

    // ---- exchange state (seq_cst: each store pairs with a load of the poll word or
    // of the cancel word on the other thread, and only one total order makes "read
    // the poll word, then the state" meaningful, see forged()) ---
    void beginPosting() { state_.store(kPosting); } // main thread, fast path only
    void publish() { state_.store(kInFlight); }     // the side that wrote the request
    void reset() { state_.store(kNoExchange); }     // the side that claimed, when done; or an abandoned post
    // Waits out a main-thread post in progress first: a runner giving up its guest (an
    // abort) that failed to claim a request still being posted would leave it in flight
    // with no runner and no clock (the post's swap succeeded before the abort's IDLE).
    bool claim() {
        int expected = settle();
        if (expected != kInFlight) return false;
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
    // The host-call states (HOST_CALL..HOST_CALL_EXIT) exist only inside a request too.
    static bool forged(uint32_t poll, int settledState) {
        if (poll > AIRLOCK_POLL_HOST_CALL_EXIT) return true;
        return settledState != kInFlight && poll >= AIRLOCK_POLL_REQUEST;
    }
    // Only the guest moves poll_state off REQUEST (to READY, response written; then
    // maybe on to IDLE), except the vCPU thread after it claimed the exchange.
    static bool answered(uint32_t poll) { return poll != AIRLOCK_POLL_REQUEST && poll != AIRLOCK_POLL_REQUEST_EXIT; }

private:
    std::mutex mu_; // ops_, reply_, events_
    std::deque<Op> ops_;
    std::optional<HostReply> reply_;
    std::deque<Event> events_;
    std::atomic<bool> opReady_{false};
    std::atomic<bool> replyReady_{false};
    std::atomic<uint32_t> wakeSeq_{0}; // futex word: bumped on every post and by the signal handler
    std::atomic<bool> vcpuSleeping_{false};
    std::atomic<bool> notified_{false}; // the main thread was notified and has not drained since

    std::atomic<int> state_{kNoExchange};
    uint32_t *poll_ = nullptr;
};

} // namespace airlock
