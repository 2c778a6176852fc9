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
    if (!use.owns_lock()) return false;
    bool window = false;
    std::optional<Outcome> outcome = vcpuThread_->restoreDirectly(*op.snapshot, window);
    if (!outcome) return false;
    use.unlock();
    AIRLOCK_COUNT(restoresDirect);
    // Through the events, as a runner's Done: the promise settles in the next turn of
    // the event loop (a macrotask, issue #10), so a loop of restores lets timers run.
    Event ev;
    ev.kind = EventKind::Done;
    ev.op = OpKind::Restore;
    ev.outcome = std::move(*outcome);
    if (handover_.emit(std::move(ev))) notify_();
    if (window) {
        Op open;
        open.kind = OpKind::Window;
        try {
            post(std::move(open));
        } catch (const std::exception &) {
            // No runner can start: the next call goes in with KVM_RUN, as without a window.
        }
    }
    return true;
}

std::optional<Outcome> VcpuThread::restoreDirectly(const Snapshot &snap, bool &window) {
    window = false;
    // Nothing of the guest in progress: no session (running or polling), no exchange
    // (in flight, suspended, or stopped in a host call's wait), no op before this one,
    // no watcher reading guest memory. And its last exit finished: finishing it is a
    // KVM_RUN, which never runs on the main thread (and would move the vCPU's task).
    // All of these change only under vcpuUse_ (held by the caller) or by this thread.
    if (!vcpu_ || !s_.memory_ || suspended_ || s_.hostWait_.parked || s_.session_.load() || s_.watched_.load() ||
        s_.handover_.opWaiting() || s_.handover_.settle() != Handover::kNoExchange || !vcpu_->settled())
        return std::nullopt;
    // As the runner before any op: a kick meant for an earlier op is moot.
    s_.cancel_.clearKick();
    Outcome o;
    try {
        o = restore(snap);
    } catch (const std::exception &e) {
        // As VcpuThread::hypervisorFailed for a restore: the guest is poisoned, and no
        // session or timer exists to end.
        std::string reason = std::string("a hypervisor operation failed: ") + e.what();
        s_.poison(reason);
        if (s_.handover_.attached()) s_.handover_.setPoll(AIRLOCK_POLL_IDLE);
        o = Outcome{};
        o.code = OutcomeCode::Internal;
        o.message = std::move(reason);
        return o;
    }
    // What openWindowAfterRestore would grant, as far as the main thread can tell; the
    // runner checks it all again when it takes the Window op.
    window = o.code == OutcomeCode::Ok && restoreFollowedCall_ && s_.spin_.guestPollNs != 0 && s_.runnable_.load() &&
             CoreBudget::instance().pollAllowed();
    return o;
}

} // namespace airlock
