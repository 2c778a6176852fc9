// direct_restore.cc — restore() made by the main thread itself when no runner uses the
// sandbox's vCPU: no hand-over of the op and no cross-core wake for its answer (the
// two cost a restore right after a call more than the restore itself here). The
// restore is the runner's (VcpuThread::restore, with every check of issue #9 item 4);
// only the thread differs. docs/ARCHITECTURE.md ("Where a restore's time goes").
#include "../../guest/include/abi.h"
#include "call_path_counters.h"
#include "core_budget.h"
#include "sandbox.h"
#include "vcpu_thread.h"

namespace airlock {

bool Sandbox::restoreDirectly(const Op &op) {
    if (op.kind != OpKind::Restore || !op.snapshot) return false;
    // Never a wait: a runner using the vCPU (running the guest, serving an op) keeps
    // the restore on its own path.
    std::unique_lock<std::mutex> use(vcpuUse_, std::try_to_lock);
    // A restore that opens a post-restore window goes to the runner, which opens it
    // before the restore's answer goes out: a window opened by the runner after a
    // direct restore lost the race against the next call on a loaded host.
    if (!use.owns_lock() || !vcpuThread_->mayRestoreDirectly() || vcpuThread_->windowAfterRestoreForeseen()) return false;
    Outcome outcome = vcpuThread_->restoreDirectly(*op.snapshot);
    use.unlock();
    AIRLOCK_COUNT(restoresDirect);
    // Through the events, as a runner's Done: the promise settles in the next turn of
    // the event loop (a macrotask, issue #10), so a loop of restores lets timers run.
    Event ev;
    ev.kind = EventKind::Done;
    ev.op = OpKind::Restore;
    ev.outcome = std::move(outcome);
    if (handover_.emit(std::move(ev))) notify_();
    return true;
}

// Nothing of the guest in progress: no session (running or polling), no exchange (in
// flight, suspended, or stopped in a host call's wait), no op before this one, no
// watcher reading guest memory. And its last exit finished: finishing it is a KVM_RUN,
// which never runs on the main thread (and would move the vCPU's task). All of these
// change only under vcpuUse_ (held by the caller) or by the calling thread.
bool VcpuThread::mayRestoreDirectly() const {
    return vcpu_ && s_.memory_ && !suspended_ && !s_.hostWait_.parked && !s_.session_.load() && !s_.watched_.load() &&
           !s_.handover_.opWaiting() && s_.handover_.settle() == Handover::kNoExchange && vcpu_->settled();
}

// Whether openWindowAfterRestore may grant a window after this restore, as far as the
// main thread can tell before it (the guest's flag is the guest's word: a guest that
// claims to poll only sends its restores to the runner, which checks everything).
bool VcpuThread::windowAfterRestoreForeseen() const {
    const bool callFollowed = lastRestoreNs_ == 0 || s_.lastAnswerNs_.load(std::memory_order_relaxed) > lastRestoreNs_;
    if (!callFollowed || s_.spin_.guestPollNs == 0 || !CoreBudget::instance().pollAllowed()) return false;
    // Invariant: the control block lies inside the image (parseImageHeader).
    return s_.memory_->read<uint32_t>(s_.layout_.header.control + AIRLOCK_CTRL_OFF_GUEST_FLAGS) & AIRLOCK_GUEST_FLAG_POLLS;
}

Outcome VcpuThread::restoreDirectly(const Snapshot &snap) {
    // As the runner before any op: a kick meant for an earlier op is moot.
    s_.cancel_.clearKick();
    try {
        return restore(snap);
    } catch (const std::exception &e) {
        // As VcpuThread::hypervisorFailed for a restore: the guest is poisoned, and no
        // session or timer exists to end.
        std::string reason = std::string("a hypervisor operation failed: ") + e.what();
        s_.poison(reason);
        if (s_.handover_.attached()) s_.handover_.setPoll(AIRLOCK_POLL_IDLE);
        Outcome o;
        o.code = OutcomeCode::Internal;
        o.message = std::move(reason);
        return o;
    }
}

} // namespace airlock
