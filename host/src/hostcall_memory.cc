// hostcall_memory.cc — the steps of a host call handed over through guest memory
// (abi.h, "Polling"): the answer watcher takes the call (HOST_CALL -> HOST_CALL_TAKEN)
// and dispatches it to the main thread as an event; the main thread writes the reply
// and releases the guest (HOST_CALL_TAKEN -> REQUEST); a guest that gave up waiting
// (HOST_CALL_EXIT) gets the same reply from the vCPU thread after its exit.
#include "hostcall_memory.h"

#include <algorithm>
#include <cstring>

#include "../../guest/include/abi.h"
#include "answer_watcher.h"
#include "call_path_counters.h"
#include "core_budget.h"
#include "messages.h"
#include "sandbox.h"
#include "vcpu_thread.h"

namespace airlock {

void writeHostReturn(GuestMemory &mem, const GuestLayout &l, const std::vector<uint8_t> &reply) {
    std::vector<uint8_t> tooLarge;
    const std::vector<uint8_t> *bytes = &reply;
    if (reply.size() > l.inputSize) {
        // The answer cannot cross: tell the guest so, in a message that does fit.
        tooLarge = encodeHostError("host function result of " + std::to_string(reply.size()) +
                                       " bytes exceeds the guest input buffer of " + std::to_string(l.inputSize) +
                                       " bytes",
                                   l.inputSize);
        bytes = &tooLarge;
    }
    // Invariant: bytes->size() <= inputSize (checked above; encodeHostError fits its capacity).
    if (!bytes->empty()) std::memcpy(mem.at(l.inputAddr, bytes->size()), bytes->data(), bytes->size()); // null data when empty
    mem.write<uint32_t>(l.header.control + AIRLOCK_CTRL_OFF_REQUEST_LEN, static_cast<uint32_t>(bytes->size()));
}

// ---- answer watcher ------------------------------------------------------------------

// Called with watched_ set, so guest memory and the timers exist throughout.
bool Sandbox::watchHostCall(uint32_t poll) {
    if (poll == AIRLOCK_POLL_REQUEST_EXIT) {
        // The guest made its host call with an exit after all (nobody took it in time):
        // the exit path owns the exchange from here.
        watched_.store(false);
        return true;
    }
    Event ev;
    std::string violation;
    if (poll != AIRLOCK_POLL_HOST_CALL) {
        // HOST_CALL_TAKEN / HOST_CALL_EXIT without a take, or no step at all.
        violation = "poll_state " + std::to_string(poll) + " is not a protocol step while the host watches";
    } else {
        std::lock_guard<std::mutex> lock(hostCallMu_);
        // Claimed meanwhile (a cancel, an abort): the vCPU thread ends the exchange. A
        // failed swap: the guest fell back to the exit first. Either way, not ours.
        if (handover_.settle() != Handover::kInFlight ||
            !handover_.swapPoll(AIRLOCK_POLL_HOST_CALL, AIRLOCK_POLL_HOST_CALL_TAKEN)) {
            watched_.store(false);
            return true;
        }
        std::string error;
        if (!readGuestOutput(*memory_, layout_, ev.hostCallOutput, error)) {
            violation = std::move(error);
        } else {
            ev.kind = EventKind::HostCall;
            ev.hostCallId = nextHostCallId_.fetch_add(1);
            if (record_.wallTimeoutNs) ev.wallDeadlineNs = record_.wallStart + record_.wallTimeoutNs;
            takeHostCallLocked(ev.hostCallId);
        }
    }
    if (!violation.empty()) {
        poison("the guest aborted: " + violation);
        if (claimExchange(true)) {
            Outcome o;
            o.code = OutcomeCode::GuestAbort;
            o.message = std::move(violation);
            Event done;
            done.kind = EventKind::Done;
            done.op = OpKind::Exchange;
            done.outcome = finishExchange(std::move(o));
            handover_.reset();
            watched_.store(false);
            if (handover_.emit(std::move(done))) notify_();
            return true;
        }
        watched_.store(false);
        return true;
    }
    // Let go of guest memory before the main thread can answer: its reply starts the
    // next watch of this same exchange.
    watched_.store(false);
    AnswerWatcher::instance().lingerForReply();
    AIRLOCK_COUNT(hostCallsInMemory);
    if (handover_.emit(std::move(ev))) notify_();
    return true;
}

// ---- main thread ---------------------------------------------------------------------

bool Sandbox::replyHostCallInMemory(uint64_t hostCallId, const std::vector<uint8_t> &reply) {
    std::lock_guard<std::mutex> lock(hostCallMu_);
    // Registered only while the exchange is in flight and unclaimed (every claim takes
    // this mutex and clears it), so the guest and its memory exist.
    if (memoryHostCallId_ == 0 || memoryHostCallId_ != hostCallId) return false;
    // A cancel already asked for (a host function that called kill() before answering):
    // the guest must not get a reply it could answer with before the signal lands. The
    // reply goes to the mailbox, where the runner ending the exchange drops it.
    if (cancel_.cancelled()) return false;
    memoryHostCallId_ = 0;
    writeHostReturn(*memory_, layout_, reply);
    writeClockBase();
    // Watched again only with a core to spare; otherwise the guest makes its next host
    // call and its answer with exits. No watch is running (the watcher let go at the take).
    const bool watch = CoreBudget::instance().pollAllowed();
    if (watch) watched_.store(true);
    if (!handover_.swapPoll(AIRLOCK_POLL_HOST_CALL_TAKEN, watch ? AIRLOCK_POLL_REQUEST : AIRLOCK_POLL_REQUEST_EXIT)) {
        // The guest gave up waiting (HOST_CALL_EXIT) or broke the protocol: the vCPU
        // thread delivers this reply after the exit, or judges the state.
        watched_.store(false);
        return false;
    }
    hostCallTaken_ = false;
    resumeHostCallCpuLocked();
    if (watch && !AnswerWatcher::instance().watch(shared_from_this())) {
        // No watcher thread: the guest answers with an exit. If it answered already,
        // the vCPU thread takes the answer when the guest parks.
        handover_.swapPoll(AIRLOCK_POLL_REQUEST, AIRLOCK_POLL_REQUEST_EXIT);
        watched_.store(false);
    }
    return true;
}

// ---- whoever holds hostCallMu_ -------------------------------------------------------

void Sandbox::takeHostCallLocked(uint64_t id) {
    memoryHostCallId_ = id;
    takenHostCallId_ = id;
    hostCallTaken_ = true;
    // The wait is the host's, not guest CPU: the monitor gets kHostCallWaitNs more, and
    // resumeHostCallCpuLocked takes back what the guest did not wait.
    hostCallCpuPaused_ = true;
    hostCallCpuStart_ = vcpuCpuNs();
    if (record_.cpuTimeoutNs) {
        const uint64_t left = cpuTimer_->disarm();
        cpuTimer_->arm(left == 0 ? 1 : left + kHostCallWaitNs); // expired as we paused it: fire now
    }
}

// The guest is stopped at its HOST_CALL exit with poll_state REQUEST_EXIT, the exchange
// in flight: its reply can go straight into guest memory from the main thread, as for
// a call the watcher took, instead of through the mailbox and the runner's copy. Then
// the main thread, not the runner, decides whether the rest of the request is watched
// (REQUEST): it starts the watch itself (the watcher runs in its place while it
// sleeps; from the runner, just before KVM_RUN, the watcher woke too late for the
// guest's wait), so a request that made one host call with an exit makes its next
// ones in memory. No
// watcher may hold the request (it would read HOST_CALL_TAKEN as its own call's step).
bool Sandbox::registerExitHostCall(uint64_t id) {
    const bool polls =
        memory_->read<uint32_t>(layout_.header.control + AIRLOCK_CTRL_OFF_GUEST_FLAGS) & AIRLOCK_GUEST_FLAG_POLLS;
    if (!polls || watched_.load()) return false;
    std::lock_guard<std::mutex> lock(hostCallMu_);
    // The guest is stopped and no watcher holds the exchange: nothing else moves
    // poll_state before the main thread's reply (or a claim, which clears the call).
    if (!handover_.swapPoll(AIRLOCK_POLL_REQUEST_EXIT, AIRLOCK_POLL_HOST_CALL_TAKEN)) return false;
    memoryHostCallId_ = id;
    return true;
}

bool Sandbox::hostCallUnanswered() {
    // The main thread swaps poll_state and clears the flag under this lock, so a guest
    // that saw its reply never finds the flag still set here.
    std::lock_guard<std::mutex> lock(hostCallMu_);
    return hostCallTaken_;
}

// The guest's wait ends: it is credited up to kHostCallWaitNs, and the CPU monitor
// loses the part of that allowance the guest did not spend waiting.
void Sandbox::resumeHostCallCpuLocked() {
    if (!hostCallCpuPaused_) return;
    hostCallCpuPaused_ = false;
    const uint64_t now = vcpuCpuNs();
    const uint64_t waited = std::min(now > hostCallCpuStart_ ? now - hostCallCpuStart_ : 0, kHostCallWaitNs);
    record_.pausedCpuNs.fetch_add(waited);
    if (record_.cpuTimeoutNs) {
        const uint64_t unused = kHostCallWaitNs - waited;
        const uint64_t left = cpuTimer_->disarm();
        cpuTimer_->arm(left > unused ? left - unused : 1); // over budget: fire now
    }
}

void Sandbox::forgetHostCallLocked() {
    memoryHostCallId_ = 0;
    hostCallTaken_ = false;
    if (!hostCallCpuPaused_) return;
    // The claimer disarms the monitors (finishExchange): only the account is settled.
    hostCallCpuPaused_ = false;
    const uint64_t now = vcpuCpuNs();
    record_.pausedCpuNs.fetch_add(std::min(now > hostCallCpuStart_ ? now - hostCallCpuStart_ : 0, kHostCallWaitNs));
}

// ---- vCPU thread -----------------------------------------------------------------------

// The guest exited with HOST_CALL_EXIT: it stopped waiting for a call the watcher took
// and dispatched. The reply now comes through the mailbox (the main thread's swap
// fails on HOST_CALL_EXIT, or finds the call no longer registered).
VcpuThread::Next VcpuThread::onHostCallGivenUp() {
    uint64_t id = 0;
    {
        std::lock_guard<std::mutex> lock(s_.hostCallMu_);
        if (s_.hostCallTaken_) {
            id = s_.takenHostCallId_;
            s_.hostCallTaken_ = false;
            s_.memoryHostCallId_ = 0;
            s_.resumeHostCallCpuLocked();
        }
    }
    if (id == 0) return abortGuest("guest gave up waiting for a host call the host never took (poll_state HOST_CALL_EXIT)");
    // Its reply comes through the mailbox, with the runner let go if it is slow.
    return awaitHostReply(id, true); // host_wait.cc
}

} // namespace airlock
