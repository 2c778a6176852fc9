// host_wait.cc — a guest stopped in a host call that JavaScript answers (by exit, or
// given up from the in-memory path): the runner's short wait for the reply, writing
// it, and, when it is slow, letting the sandbox go ("waiting for host reply <id>",
// Sandbox::HostWait) so the runner serves other sandboxes; the reply, a cancel or a
// monitor queues the sandbox again and its next runner takes the wait up. A wait is
// never guest CPU time; the wall clock runs on.
#include "host_wait.h"

#include <sched.h>

#include "../../guest/include/abi.h"
#include "call_path_counters.h"
#include "core_budget.h"
#include "hostcall_memory.h"
#include "runner.h"
#include "timing.h"
#include "vcpu_thread.h"

namespace airlock {

bool Sandbox::hostWaitOver() const {
    // A sleep timer that fired late (after its sleep was taken up) marks no reply wait over.
    return handover_.replyWaiting() || replyWrittenInMemory() || (hostWait_.sleepUntilNs && sleepDue_.load()) ||
           cancel_.cancelled() || handover_.settle() != Handover::kInFlight;
}

// The main thread wrote the reply of the call the guest waits for into guest memory
// and moved poll_state off HOST_CALL_TAKEN (only it does, for a registered call).
bool Sandbox::replyWrittenInMemory() const {
    if (!hostWait_.replyInMemory) return false;
    // Pairs with the fence in postHostReply (RunnerPool::keepLocked raises the parked
    // flag before it asks): one of the two sides sees the other.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return handover_.poll() != AIRLOCK_POLL_HOST_CALL_TAKEN;
}

// The guest is stopped in host call `id`, already dispatched to JavaScript (`givenUp`:
// taken in memory, then made with an exit after all; `replyInMemory`: registered, so
// the main thread writes the reply into guest memory and sets poll_state).
VcpuThread::Next VcpuThread::awaitHostReply(uint64_t id, bool givenUp, bool replyInMemory) {
    Sandbox::HostWait &w = s_.hostWait_;
    w.id = id;
    w.givenUp = givenUp;
    w.replyInMemory = replyInMemory;
    // The host function's time is not guest CPU time: the CPU monitor and the
    // accounting pause until the reply is written (writeHostReply).
    w.cpuLeftNs = s_.record_.cpuTimeoutNs ? s_.cpuTimer_->disarm() : 0;
    w.pauseStartNs = s_.vcpuCpuNs();
    return takeHostReply(monotonicNs() + kHostReplyLingerNs);
}

// Writes the reply when it has come, ends the exchange when it was cancelled or
// claimed meanwhile, and otherwise waits until `lingerUntil` (0: not at all) before
// letting the sandbox go. Leave: the session is over, or the sandbox was let go.
VcpuThread::Next VcpuThread::takeHostReply(uint64_t lingerUntil) {
    for (;;) {
        if (s_.replyWrittenInMemory()) return resumeAfterReply();
        if (s_.handover_.replyWaiting()) {
            // A reply to another call (one that no longer waits) is dropped, never written.
            if (std::optional<HostReply> reply = s_.handover_.takeReply(s_.hostWait_.id)) return writeHostReply(*reply);
            continue;
        }
        if (s_.cancel_.cancelled() || s_.handover_.settle() != Handover::kInFlight) return endHostWait();
        if (!waitForReply(lingerUntil)) return parkHostCall();
    }
}

// Spins for vcpuSpinNs while a core is free for it (CoreBudget), then sleeps on the
// sandbox's futex word until `until`, registered with the pool as lingering: a
// sandbox that needs a runner wakes it. True when the wait is over (hostWaitOver).
bool VcpuThread::waitForReply(uint64_t until) {
    const auto over = [this] { return s_.hostWaitOver(); };
    const auto wanted = [] { return RunnerPool::contention().load() > 0; };
    if (monotonicNs() >= until || wanted()) return over();
    // The runner's own slot and session are not others' load: counting them would
    // refuse every spin and sleep for each reply.
    if (s_.spin_.vcpuSpinNs > 0 &&
        CoreBudget::instance().spinAllowed(s_.holdsPollSlot_ ? 1 : 0, s_.session_.load() ? 1 : 0)) {
        const uint64_t deadline = std::min(until, monotonicNs() + s_.spin_.vcpuSpinNs);
        uint64_t nextYield = monotonicNs() + kSpinYieldNs;
        while (!over()) {
            // Not in the guest: the bell is heard.
            if (s_.cancel_.wantsInterrupt()) ackInterrupt();
            for (int i = 0; i < 64; ++i) __builtin_ia32_pause();
            const uint64_t now = monotonicNs();
            if (now >= deadline || wanted()) break;
            // The scheduler may still have put the thread we wait for on this core.
            if (now >= nextYield) {
                sched_yield();
                nextYield = now + kSpinYieldNs;
            }
        }
    }
    RunnerPool &pool = RunnerPool::instance();
    if (!over()) AIRLOCK_COUNT(hostReplySleeps);
    pool.lingering(&s_, true);
    for (;;) {
        const uint32_t seq = s_.handover_.wakeSeq();
        if (over() || wanted()) break;
        if (s_.cancel_.wantsInterrupt()) ackInterrupt();
        const uint64_t now = monotonicNs();
        if (now >= until) break;
        s_.handover_.sleepFor(seq, until - now);
    }
    pool.lingering(&s_, false);
    return over();
}

// The main thread wrote the reply into guest memory and chose the next poll_state
// (REQUEST, watched, or REQUEST_EXIT): the guest goes on with it.
VcpuThread::Next VcpuThread::resumeAfterReply() {
    Sandbox::HostWait &w = s_.hostWait_;
    s_.record_.pausedCpuNs.fetch_add(s_.vcpuCpuNs() - w.pauseStartNs);
    if (s_.record_.cpuTimeoutNs) s_.cpuTimer_->arm(w.cpuLeftNs == 0 ? 1 : w.cpuLeftNs); // expired as we paused it: fire now
    w = Sandbox::HostWait{};
    AIRLOCK_COUNT(hostRepliesInMemory);
    return Next::Run;
}

// The reply came through the mailbox: the guest goes on with it.
VcpuThread::Next VcpuThread::writeHostReply(const HostReply &reply) {
    Sandbox::HostWait &w = s_.hostWait_;
    s_.record_.pausedCpuNs.fetch_add(s_.vcpuCpuNs() - w.pauseStartNs);
    if (s_.record_.cpuTimeoutNs) s_.cpuTimer_->arm(w.cpuLeftNs == 0 ? 1 : w.cpuLeftNs); // expired as we paused it: fire now
    writeHostReturn(*s_.memory_, s_.layout_, reply.bytes);
    s_.writeClockBase();
    const bool givenUp = w.givenUp;
    w = Sandbox::HostWait{};
    // A call taken in memory, then made with an exit, is answered by the exit path
    // from here on, its answer included.
    if (givenUp) s_.handover_.setPoll(AIRLOCK_POLL_REQUEST_EXIT);
    return Next::Run;
}

// No reply will be written: the exchange was cancelled, or claimed while its host
// call waited (the guest handed an answer over in memory and then called the host:
// not a protocol step).
VcpuThread::Next VcpuThread::endHostWait() {
    s_.record_.pausedCpuNs.fetch_add(s_.vcpuCpuNs() - s_.hostWait_.pauseStartNs);
    s_.hostWait_ = Sandbox::HostWait{};
    if (cancelInFlight()) return Next::Leave;
    return abortGuest("guest called the host after answering its request");
}

// The reply is slow: the runner lets the sandbox go (serve returns Served::Waiting),
// with the guest stopped and its session over, as for a suspended exchange: the core
// budget stops counting it, its monitors follow it (release keeps the wall clock's
// deadline; the CPU monitor is paused), and the main thread's reply deadline
// (reply_deadline.h) stands in for the wall-clock timer while no runner holds it.
VcpuThread::Next VcpuThread::parkHostCall() {
    endSession();
    releasePollSlot();
    if (s_.windowArmed_.exchange(false)) s_.windowTimer_->disarm();
    vcpu_->clearInterrupt();
    s_.hostWait_.parked = true;
    return Next::Leave;
}

// A runner took up a sandbox let go in a host call's wait: it was queued because the
// wait is over (or for a cancel or an op), so nothing is waited for again here.
void VcpuThread::resumeHostCall() {
    s_.hostWait_.parked = false;
    const OpKind kind = s_.record_.op; // Boot or Exchange: the only ops with a session
    try {
        // A timer sleep goes on where it stopped; a host call's wait is over.
        if ((s_.hostWait_.sleepUntilNs ? resumeSleep() : takeHostReply(0)) == Next::Run) runSession();
    } catch (const std::exception &e) {
        s_.hostWait_ = Sandbox::HostWait{};
        if (std::optional<Outcome> o = hypervisorFailed(kind, e.what())) emitDone(kind, std::move(*o));
    }
}

} // namespace airlock
