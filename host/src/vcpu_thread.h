// vcpu_thread.h — the code that runs a sandbox's vCPU on whichever runner thread
// holds the sandbox (runner.h), as one type: its mailbox loop, guest setup and
// teardown, snapshot/restore calls, and the run loop of an exchange with one handler
// per exit kind. It lives as long as its Sandbox and owns the VM and vCPU; only the
// runner holding the sandbox calls it, except a direct restore (direct_restore.cc):
// the main thread, holding Sandbox::vcpuUse_ while the runner waits for an op or no
// runner holds the sandbox. KVM_RUN only ever runs on a runner. Everything it shares
// with the main thread is in its Sandbox (sandbox.h says who may touch what).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "../hv/hypervisor.h"
#include "loop_wait.h"
#include "sandbox.h"

namespace airlock {

class VcpuThread {
public:
    explicit VcpuThread(Sandbox &sandbox) : s_(sandbox) {}
    VcpuThread(const VcpuThread &) = delete;
    VcpuThread &operator=(const VcpuThread &) = delete;

    // A runner's turn on the sandbox (it holds it): resumes a suspended exchange,
    // then serves the mailbox while ops come; on Stop tears the guest down.
    Served serve(const Runner &runner);
    // Main thread, holding Sandbox::vcpuUse_ (direct_restore.cc): whether nothing of
    // the guest is in progress, so it may restore it itself; whether the restore may
    // open a post-restore window (then the runner makes it); the restore.
    bool mayRestoreDirectly() const;
    bool windowAfterRestoreForeseen() const;
    Outcome restoreDirectly(const Snapshot &snap);

private:
    // What the run loop does after handling an exit.
    enum class Next { Run, Leave };

    Served serveHolding(const Runner &runner, std::unique_lock<std::mutex> &vcpuUse);
    void ackInterrupt();
    bool waitForOp();
    bool spinForOp();
    bool lingerForOp();
    void runOp(const Op &op, const Runner &runner);
    void resume();
    void emitDone(OpKind kind, Outcome o);
    std::optional<Outcome> hypervisorFailed(OpKind kind, const char *what);
    bool yieldNow() const;
    void suspend();
    std::optional<Outcome> handle(const Op &op);
    std::optional<Outcome> boot();
    Outcome bootFromTemplate(); // clone_boot.cc
    void attachClockAndHandover();
    Outcome takeSnapshot();
    Outcome restore(const Snapshot &snap);
    bool restoreFollowsCall();
    bool openWindowAfterRestore(bool callFollowed);
    void settleWhenIdle();
    void releaseVcpuWhenIdle();
    bool restoreForeseen() const;
    bool directRestoreForeseen() const;
    void runWindowAfterRestore();
    bool repollAfterRestore(int state);
    void startExchange(const Op &op);
    void runSession();
    Next onInterrupted();
    Next onResponse();
    Next onIdle();
    Next onAbort();
    Next onHostCall();
    // loop_wait.cc: the guest's timer sleep, on the runner or let go of it meanwhile.
    Next sleepInLoop(const LoopSleep &sleep);
    Next continueSleep();
    std::optional<Next> parkSleep(uint64_t wakeAtNs);
    Next resumeSleep();
    Next onHostCallGivenUp(); // hostcall_memory.cc
    // host_wait.cc: the wait for a host call's reply, and letting the sandbox go meanwhile.
    Next awaitHostReply(uint64_t id, bool givenUp, bool replyInMemory = false);
    Next resumeAfterReply();
    Next takeHostReply(uint64_t lingerUntil);
    bool waitForReply(uint64_t until);
    Next writeHostReply(const HostReply &reply);
    Next endHostWait();
    Next parkHostCall();
    void resumeHostCall();
    Next abortGuest(std::string message, bool claimed = false);
    bool cancelInFlight();
    void done(Outcome o);
    void leave();
    void endSession();
    void releasePollSlot();
    bool mayPoll();
    bool mayPollFor();
    bool windowOver() const;
    void rearmWindow();
    void setUpGuest();
    void tearDownGuest();
    void emit(Event ev);
    std::string describeExit(const hv::Exit &exit);

    Sandbox &s_;
    std::unique_ptr<hv::Vm> vm_;
    std::unique_ptr<hv::Vcpu> vcpu_;
    bool suspended_ = false; // an exchange in flight yielded its runner (suspend())
    // The post-restore window (pollAfterRestore): when the last restore ended, when its
    // window opened, and whether its guest may still start one fresh poll.
    uint64_t lastRestoreNs_ = 0;
    uint64_t restoreWindowStartNs_ = 0;
    bool repollAfterRestore_ = false;
    bool restoreFollowedCall_ = false; // the last restore's restoreFollowsCall()
    // serve's hold of Sandbox::vcpuUse_ (null outside serve), let go early by
    // releaseVcpuWhenIdle.
    std::unique_lock<std::mutex> *heldVcpu_ = nullptr;
    // Under Sandbox::vcpuUse_ (whoever restores): Sandbox::exchanges_ at the last
    // restore, from which each restore sets Sandbox::restoreDueAfter_ (restoreForeseen).
    uint64_t exchangesAtRestore_ = 0;
};

} // namespace airlock
