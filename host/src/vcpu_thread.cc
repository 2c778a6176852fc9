// vcpu_thread.cc — everything the vCPU thread of a sandbox runs: its mailbox loop,
// guest setup and teardown, and the run loop of an exchange with one handler per
// exit kind. The guest runs only under a host budget: an exchange (its monitors,
// kill) or, after an answer, the post-answer window (kAfterAnswerAllowanceNs).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#include "../../guest/include/abi.h"
#include "call_path_counters.h"
#include "core_budget.h"
#include "hostcall_memory.h"
#include "messages.h"
#include "vcpu_thread.h"
#include "timing.h"

namespace airlock {


// ---- mailbox loop -----------------------------------------------------------------

// The runner has seen what the bell rang for and re-checks the state word before it
// next enters the guest or sleeps (every caller does): the bell may stop.
void VcpuThread::ackInterrupt() {
    if (!s_.bellArmed_.load()) return;
    std::lock_guard<std::mutex> lock(s_.timerMu_);
    s_.bellArmed_.store(false);
    if (s_.bellTimer_) s_.bellTimer_->disarm();
}

Served VcpuThread::serve(const Runner &runner) {
    // The vCPU and guest memory are this runner's, except while it waits for an op:
    // then a direct restore by the main thread may use them (Sandbox::vcpuUse_).
    std::unique_lock<std::mutex> vcpuUse(s_.vcpuUse_);
    heldVcpu_ = &vcpuUse;
    const Served how = serveHolding(runner, vcpuUse);
    heldVcpu_ = nullptr;
    return how;
}

Served VcpuThread::serveHolding(const Runner &runner, std::unique_lock<std::mutex> &vcpuUse) {
    // A runner whose timers could not be made cannot run a guest under a budget: the
    // suspended exchange waits for another runner.
    if ((suspended_ || s_.hostWait_.parked) && !runner.timersReady()) return Served::Preempted;
    if (suspended_) {
        resume();
        if (suspended_) return Served::Preempted;
        if (s_.hostWait_.parked) return Served::Waiting;
    }
    // Let go in a host call's wait, queued again by its reply, a cancel or an op.
    if (s_.hostWait_.parked) {
        resumeHostCall(); // host_wait.cc
        if (suspended_) return Served::Preempted;
        if (s_.hostWait_.parked) return Served::Waiting;
    }
    for (;;) {
        // Let go already when the last op ended with an answer by exit (releaseVcpuWhenIdle).
        if (vcpuUse.owns_lock()) {
            settleWhenIdle();
            vcpuUse.unlock();
        }
        const bool got = waitForOp();
        vcpuUse.lock();
        if (!got) return Served::Idle;
        // Every op may rewrite guest memory or start an exchange: no watcher may
        // still be reading the last one.
        s_.waitUnwatched();
        Op op = s_.handover_.takeOp();
        s_.cancel_.clearKick();
        ackInterrupt();
        if (op.kind == OpKind::Stop) {
            tearDownGuest();
            Event done;
            done.kind = EventKind::Done;
            done.op = OpKind::Stop;
            emit(std::move(done));
            {
                std::lock_guard<std::mutex> lock(s_.exitMu_);
                s_.exited_ = true;
            }
            s_.exitCv_.notify_all();
            return Served::Stopped;
        }
        runOp(op, runner);
        if (suspended_) return Served::Preempted;
        if (s_.hostWait_.parked) return Served::Waiting;
    }
}

// Spins for vcpuSpinNs while a core is free for it (CoreBudget), then lingers asleep
// for kRunnerLingerNs, while no other sandbox waits for a runner: the next op often
// follows the last answer closely. False when none came: the runner lets go of the
// sandbox (an op posted later queues it again).
bool VcpuThread::waitForOp() {
    if (s_.handover_.opWaiting()) return true;
    if (RunnerPool::contention().load() > 0) return false;
    if (s_.spin_.vcpuSpinNs > 0 && CoreBudget::instance().spinAllowed()) {
        if (spinForOp()) {
            AIRLOCK_COUNT(opSpinHits);
            return true;
        }
        AIRLOCK_COUNT(opSpinMisses);
    }
    return lingerForOp();
}

// Asleep on the sandbox's futex word (a post wakes it), until an op comes, the linger
// ends, or the pool wakes it because another sandbox needs a runner.
bool VcpuThread::lingerForOp() {
    RunnerPool &pool = RunnerPool::instance();
    pool.lingering(&s_, true);
    const uint64_t end = monotonicNs() + kRunnerLingerNs;
    for (;;) {
        const uint32_t seq = s_.handover_.wakeSeq();
        if (s_.handover_.opWaiting() || RunnerPool::contention().load() > 0) break;
        // Not in the guest: a bell (for an op, or a late kill) is heard here.
        if (s_.cancel_.wantsInterrupt()) ackInterrupt();
        const uint64_t now = monotonicNs();
        if (now >= end) break;
        s_.handover_.sleepFor(seq, end - now);
    }
    pool.lingering(&s_, false);
    if (s_.handover_.opWaiting())
        AIRLOCK_COUNT(lingerHits);
    else if (RunnerPool::contention().load() > 0)
        AIRLOCK_COUNT(lingerYields);
    else
        AIRLOCK_COUNT(lingerTimeouts);
    return s_.handover_.opWaiting();
}

bool VcpuThread::spinForOp() {
    if (RunnerPool::contention().load() > 0) return false;
    const uint64_t deadline = monotonicNs() + s_.spin_.vcpuSpinNs;
    uint64_t nextYield = monotonicNs() + kSpinYieldNs;
    while (!s_.handover_.opWaiting()) {
        // Not in the guest: a bell (for an op, or a late kill) is heard here.
        if (s_.cancel_.wantsInterrupt()) ackInterrupt();
        for (int i = 0; i < 64; ++i) __builtin_ia32_pause();
        const uint64_t now = monotonicNs();
        if (now >= deadline || RunnerPool::contention().load() > 0) return s_.handover_.opWaiting();
        // The scheduler may still have put the thread we wait for on this core.
        if (now >= nextYield) {
            sched_yield();
            nextYield = now + kSpinYieldNs;
        }
    }
    return true;
}

// Before the runner waits for its next op (holding vcpuUse_): when a restore is
// foreseen, finish the guest's last exit now, off the restore's path, so the main
// thread can restore the guest itself (a KVM_RUN, which the main thread never makes)
// and a restore handed to the runner has one KVM_RUN less to wait for.
// A failure poisons the guest: the next op (a restore) reports the hypervisor's error.
void VcpuThread::settleWhenIdle() {
    if (!vcpu_ || vcpu_->settled() || !restoreForeseen() || s_.handover_.opWaiting()) return;
    AIRLOCK_COUNT(settlesWhenIdle);
    try {
        vcpu_->settle();
    } catch (const std::exception &e) {
        s_.poison(std::string("a hypervisor operation failed: ") + e.what());
    }
}

// The guest is stopped, its session over and its answer not yet out: nothing of this
// runner's turn touches the vCPU or guest memory before its next op. While restores
// follow calls, finish the guest's exit and let the vCPU go now (serve takes it back
// before the next op), so the restore the answer leads to can be direct.
void VcpuThread::releaseVcpuWhenIdle() {
    if (!heldVcpu_ || !heldVcpu_->owns_lock() || !directRestoreForeseen()) return;
    settleWhenIdle();
    heldVcpu_->unlock();
}

// Holding vcpuUse_: as many calls have run since the last restore as between the two
// before it (a sandbox restored after every call, or every n calls), so the next op is
// foreseen to be a restore. A wrong guess costs one KVM_RUN (the settle), once per
// change of the pattern; calls with no restores never settle early.
bool VcpuThread::restoreForeseen() const {
    const uint64_t due = s_.restoreDueAfter_.load(std::memory_order_relaxed);
    return due != 0 && s_.exchanges_.load(std::memory_order_relaxed) == due;
}

// And one the main thread would make itself (one that opens a window goes to the
// runner: direct_restore.cc).
bool VcpuThread::directRestoreForeseen() const { return restoreForeseen() && !windowAfterRestoreForeseen(); }

// One op (not Stop) and the Done event it owes, unless its session emits it or it
// was suspended with its exchange in flight.
void VcpuThread::runOp(const Op &op, const Runner &runner) {
    std::optional<Outcome> outcome;
    if (!runner.timersReady()) {
        outcome = Outcome{};
        outcome->code = OutcomeCode::Internal;
        outcome->message = "cannot set up the runner thread's signal and monitor timers: " + runner.timerError();
    } else {
        try {
            outcome = handle(op);
        } catch (const std::exception &e) {
            outcome = hypervisorFailed(op.kind, e.what());
        }
    }
    if (!outcome) return;
    // The window opens before the Done goes out, so the next call finds the guest
    // polling even when the woken main thread preempts this runner; the guest runs
    // after it, so JavaScript is not kept waiting.
    const bool window =
        op.kind == OpKind::Restore && outcome->code == OutcomeCode::Ok && openWindowAfterRestore(restoreFollowedCall_);
    emitDone(op.kind, std::move(*outcome));
    if (window) runWindowAfterRestore();
}

void VcpuThread::emitDone(OpKind kind, Outcome o) {
    Event ev;
    ev.kind = EventKind::Done;
    ev.op = kind;
    ev.outcome = std::move(o);
    emit(std::move(ev));
}

// The guest's session is over (left, suspended or failed): the core budget stops
// counting it, once whichever path gets here first.
void VcpuThread::endSession() {
    if (s_.session_.exchange(false)) CoreBudget::instance().sessionEnded();
}

// An ioctl of op `kind` threw: the guest is poisoned; the outcome to emit, if any.
std::optional<Outcome> VcpuThread::hypervisorFailed(OpKind kind, const char *what) {
    suspended_ = false;
    endSession();
    releasePollSlot();
    std::string reason = std::string("a hypervisor operation failed: ") + what;
    s_.poison(reason);
    if (s_.handover_.attached()) s_.handover_.setPoll(AIRLOCK_POLL_IDLE);
    std::optional<Outcome> outcome;
    const bool session = kind == OpKind::Boot || kind == OpKind::Exchange;
    // An exchange still unanswered fails; one already answered owes nothing.
    if (!session || s_.claimExchange(false)) {
        Outcome o;
        o.code = OutcomeCode::Internal;
        o.message = reason;
        outcome = session ? s_.finishExchange(std::move(o)) : std::move(o);
        if (session) s_.handover_.reset();
    } else {
        // A monitor left armed by the failed exchange must not cancel a later one.
        s_.wallTimer_->disarm();
        s_.cpuTimer_->disarm();
    }
    s_.windowTimer_->disarm();
    s_.windowArmed_.store(false);
    s_.windowEndNs_.store(0);
    return outcome;
}

// A runner takes up an exchange that yielded its last one: the session goes on where
// it stopped (the run loop re-checks the cancel word and the clock before entering).
void VcpuThread::resume() {
    suspended_ = false;
    const OpKind kind = s_.record_.op; // Boot or Exchange: the only ops with a session
    try {
        runSession();
    } catch (const std::exception &e) {
        if (std::optional<Outcome> o = hypervisorFailed(kind, e.what())) emitDone(kind, std::move(*o));
    }
}

std::optional<Outcome> VcpuThread::handle(const Op &op) {
    Outcome o;
    // Every other op may run the guest or remap its memory (VcpuThread::restore).
    if (op.kind != OpKind::Restore) s_.untouchedSince_.store(0);
    switch (op.kind) {
    case OpKind::Boot:
        return boot();
    case OpKind::Exchange:
        if (std::optional<Outcome> refused = s_.refuseUnlessRunnable("restore a snapshot before sending")) return refused;
        startExchange(op);
        runSession();
        return std::nullopt; // the session emitted the outcome
    case OpKind::Snapshot:
        return takeSnapshot();
    case OpKind::Restore:
        AIRLOCK_COUNT(restoresByRunner);
        return restore(*op.snapshot);
    case OpKind::Stop:
        break;
    }
    o.code = OutcomeCode::Internal;
    o.message = "unexpected operation";
    return o;
}

void VcpuThread::emit(Event ev) {
    if (s_.handover_.emit(std::move(ev))) s_.notify_();
}

// ---- guest lifetime -------------------------------------------------------------------

void VcpuThread::setUpGuest() {
    const GuestLayout &l = s_.layout_;
    const ImageHeader &h = l.header;
    s_.memory_ = std::make_unique<GuestMemory>(l.memoryEnd);
    GuestMemory &mem = *s_.memory_;

    // Text and rodata slots: read-only, so the guest cannot patch its own code; the
    // rest: no-execute. data_start is 2 MiB aligned (parseImageHeader), so no slot is
    // both writable and executable.
    std::vector<MappedRange> ranges;
    ranges.push_back({h.loadAddr, h.dataStart, false, true});
    ranges.push_back({h.dataStart, l.imageRegionEnd, true, false});
    ranges.push_back({l.stackBottom, l.stackTop, true, false});
    ranges.push_back({l.heapAddr, l.memoryEnd, true, false});
    buildSystemRegion(mem, ranges);

    std::memcpy(mem.at(h.loadAddr, s_.image_.size()), s_.image_.data(), s_.image_.size());
    s_.image_.release(); // guest memory holds it now: nothing reads the copy again
    // bss is already zero: the mapping is fresh anonymous memory.
    const uint64_t c = h.control;
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_INPUT_ADDR, l.inputAddr);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_INPUT_SIZE, l.inputSize);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_OUTPUT_ADDR, l.outputAddr);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_OUTPUT_SIZE, l.outputSize);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_HEAP_ADDR, l.heapAddr);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_HEAP_SIZE, l.heapSize);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_STACK_TOP, l.stackTop);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_STACK_SIZE, l.stackSize);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_CONSOLE_LIMIT, l.consoleLimit);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER, l.heapAddr);
    // The TLS block's first word is the thread pointer itself (x86-64 TLS ABI).
    mem.write<uint64_t>(h.tlsBlock, h.tlsBlock);

    // Pages the guest surely touches: the image (up to the end of its last 2 MiB
    // slot, which holds the start of the buffers), the top of the stack, the start of
    // the heap. The rest of the buffers stays reserved, not committed: a sandbox with
    // 64 MiB buffers pays for the part its messages really use.
    mem.populate(h.loadAddr, std::min(l.imageRegionEnd, alignUp(h.bssEnd, kHugePageSize)) - h.loadAddr);
    mem.populate(l.stackTop - kHugePageSize, kHugePageSize);
    mem.populate(l.heapAddr, kHugePageSize);

    vm_ = hv::createVm();
    vm_->mapMemory(0, 0, mem.base(), mem.size());
    vcpu_ = vm_->createVcpu();
    s_.signalVcpu_.store(vcpu_.get());

    hv::SpecialRegisters sregs = ring3SpecialRegisters(vcpu_->getSpecialRegisters(), h.tlsBlock);
    vcpu_->setSpecialRegisters(sregs);
    hv::Registers regs;
    regs.rip = h.entry;
    regs.rsp = l.stackTop;
    regs.rflags = kRing3Rflags;
    vcpu_->setRegisters(regs);
    attachClockAndHandover();
}

// The clock and the poll window belong to this VM (a boot or a clone's start).
void VcpuThread::attachClockAndHandover() {
    GuestMemory &mem = *s_.memory_;
    const uint64_t c = s_.layout_.header.control;
    s_.tscKhz_ = vcpu_->tscKhz();
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_TSC_KHZ, s_.tscKhz_);
    s_.pollNs_.store(0);
    s_.setPollWindow(s_.spin_.guestPollNs);
    // Guest TSC = host TSC + offset (same rate: KVM runs the guest TSC at the host's
    // frequency unless scaling is configured, which we never do).
    const uint64_t before = __rdtsc();
    const uint64_t guest = vcpu_->guestTsc();
    const uint64_t after = __rdtsc();
    s_.tscOffset_ = static_cast<int64_t>(guest - (before + (after - before) / 2));
    // Invariant: the control block lies inside the image (parseImageHeader, for this
    // layout) and poll_state is 4-byte aligned in it (abi.h static asserts).
    s_.handover_.attach(reinterpret_cast<uint32_t *>(mem.at(c + AIRLOCK_CTRL_OFF_POLL_STATE, 4)));
}

void VcpuThread::tearDownGuest() {
    s_.waitUnwatched(); // the watcher reads the poll word and the output buffer
    s_.signalVcpu_.store(nullptr);
    s_.handover_.attach(nullptr);
    vcpu_.reset();
    vm_.reset();
    s_.memory_.reset();
    s_.booted_ = false;
    s_.runnable_ = false;
}

std::optional<Outcome> VcpuThread::boot() {
    Outcome o;
    if (s_.booted_ || s_.memory_) {
        o.code = OutcomeCode::InvalidArg;
        o.message = "the VM has already booted";
        return o;
    }
    if (s_.template_) return bootFromTemplate();
    try {
        setUpGuest();
        checkNoSystemCalls(*vcpu_, vcpu_->getSpecialRegisters());
    } catch (const std::exception &e) {
        tearDownGuest();
        o.code = OutcomeCode::Internal;
        o.message = std::string("cannot create the micro-VM: ") + e.what();
        return o;
    }
    s_.booted_ = true;
    s_.runnable_ = true;
    Op op;
    op.kind = OpKind::Boot;
    startExchange(op);
    runSession();
    return std::nullopt; // the session emitted the outcome
}

Outcome VcpuThread::takeSnapshot() {
    Outcome o;
    if (std::optional<Outcome> refused = s_.refuseUnlessRunnable("its state cannot be snapshotted")) return *refused;
    vcpu_->settle();
    o.snapshot = captureSnapshot(*s_.memory_, *vcpu_, s_.layout_, s_.id_);
    return o;
}

Outcome VcpuThread::restore(const Snapshot &snap) {
    Outcome o;
    const uint64_t start = monotonicNs();
    if (!s_.booted_) {
        o.code = OutcomeCode::InvalidArg;
        o.message = "the VM has not booted";
        return o;
    }
    if (snap.ownerId != s_.id_) {
        o.code = OutcomeCode::InvalidArg;
        o.message = "the snapshot belongs to another VM";
        return o;
    }
    // Cleared until this restore succeeds: one that throws may leave a mix of states,
    // and the failure path after it writes guest memory (the poll word).
    // A serial of 0 (no snapshot made by captureSnapshot) never matches: 0 is "none".
    const bool untouched = s_.untouchedSince_.exchange(0) == snap.serial && snap.serial != 0;
    try {
        if (untouched) {
            // Restored to this snapshot and not run or written since: memory and
            // registers are still the snapshot's. The system-call check stays, as after
            // every restore.
            checkNoSystemCalls(*vcpu_, snap.cpu.sregs);
        } else {
            vcpu_->settle();
            restoreSnapshot(*s_.memory_, *vcpu_, s_.layout_, snap);
        }
        s_.untouchedSince_.store(snap.serial);
    } catch (const UnsafeCpuState &e) {
        s_.poison(e.what());
        o.code = OutcomeCode::InvalidArg;
        o.message = e.what();
        return o;
    }
    vcpu_->clearInterrupt();
    {
        std::lock_guard<std::mutex> lock(s_.reasonMu_);
        s_.notRunnableReason_.clear();
    }
    s_.runnable_ = true;
    restoreFollowedCall_ = restoreFollowsCall();
    o.wallNs = monotonicNs() - start;
    return o;
}

// Every restore that succeeded, on either thread (holding vcpuUse_): whether a call
// came since the last one (it decides the post-restore window), and the calls between
// restores (restoreForeseen).
bool VcpuThread::restoreFollowsCall() {
    const uint64_t lastAnswer = s_.lastAnswerNs_.load(std::memory_order_relaxed);
    const bool callFollowed = lastRestoreNs_ == 0 || lastAnswer > lastRestoreNs_;
    lastRestoreNs_ = monotonicNs();
    const uint64_t exchanges = s_.exchanges_.load(std::memory_order_relaxed);
    const uint64_t callsBetween = exchanges - exchangesAtRestore_;
    exchangesAtRestore_ = exchanges;
    s_.restoreDueAfter_.store(callsBetween ? exchanges + callsBetween : 0, std::memory_order_relaxed);
    return callFollowed;
}

// A restored guest is stopped, so the next request would go in with KVM_RUN through
// the mailbox. While the last restore was followed by a call (so a restore after a
// restore keeps its skip, untouchedSince_) and the core budget grants a poll slot (the
// same rule as after an answer), the restored guest polls for the next request in a
// post-answer window: the same host budget, CPU account and ways out (an op, the
// window's end, a yield) as after an answer. True when the window is open: the
// session runs (a request may be handed over from now on) and the guest is READY.
bool VcpuThread::openWindowAfterRestore(bool callFollowed) {
    const uint64_t now = monotonicNs();
    // The longest poll window, not the one adapted to the gap between an answer and the
    // next request (Sandbox::adaptPollWindow): after a restore the gap is the restore's
    // answer reaching JavaScript and its next call.
    const uint64_t pollNs = s_.spin_.guestPollNs;
    if (!callFollowed || pollNs == 0 || s_.handover_.opWaiting() || !s_.runnable_.load() || !mayPollFor()) return false;
    // The guest runs again and the host writes its memory: a restore after this reverts.
    s_.untouchedSince_.store(0);
    // The guest stopped with the snapshot's poll_ticks; it polls for this window.
    // Invariant: the control block lies inside the image (parseImageHeader).
    s_.memory_->write<uint64_t>(s_.layout_.header.control + AIRLOCK_CTRL_OFF_POLL_TICKS,
                                static_cast<uint64_t>(static_cast<unsigned __int128>(pollNs) * s_.tscKhz_ / 1'000'000));
    s_.windowEndNs_.store(now + pollNs + kAfterAnswerAllowanceNs);
    // Its CPU goes to the next exchange, as post-answer time does (chargeAfterAnswer);
    // stored before a request can be handed over, which charges it.
    s_.answerCpuNs_.store(s_.vcpuCpuNs());
    restoreWindowStartNs_ = now;
    repollAfterRestore_ = true;
    if (!s_.session_.exchange(true)) CoreBudget::instance().sessionStarted();
    // Every snapshot is taken with the guest stopped and poll_state IDLE (each way a
    // session ends leaves IDLE); a restored word that is not IDLE (a snapshot not made
    // here) gets no window: the next request overwrites it, as without one. READY last:
    // from it on, Sandbox::postFast may hand a request over.
    if (!s_.handover_.swapPoll(AIRLOCK_POLL_IDLE, AIRLOCK_POLL_READY)) {
        leave();
        return false;
    }
    AIRLOCK_COUNT(pollsAfterRestore);
    return true;
}

// The window opened by openWindowAfterRestore, with the restore's Done out.
void VcpuThread::runWindowAfterRestore() {
    const bool wasRunnable = s_.runnable_.load();
    try {
        // As Sandbox::claimExchange: one timer_settime per window (an answer handed
        // over meanwhile may have armed it); rearmWindow re-arms it for a later end.
        if (!s_.windowArmed_.exchange(true)) {
            const uint64_t now = monotonicNs();
            const uint64_t end = s_.windowEndNs_.load();
            s_.windowDueNs_.store(std::max(end, now + 1));
            s_.windowTimer_->arm(end > now ? end - now : 1);
        }
        runSession();
    } catch (const std::exception &e) {
        // A request handed over in the window fails; the restore's Done is out, and
        // the poison is what the next op reports.
        if (std::optional<Outcome> o = hypervisorFailed(OpKind::Exchange, e.what())) emitDone(OpKind::Exchange, std::move(*o));
    }
    // A guest that poisons itself here with nothing answered since (not in a request
    // handed over in the window) does so after restore() succeeded and before the next
    // op: the reason that op reports says so (it is queued behind this runner, so none
    // has read the reason yet).
    if (wasRunnable && !s_.runnable_.load() && s_.lastAnswerNs_.load(std::memory_order_relaxed) < restoreWindowStartNs_) {
        std::lock_guard<std::mutex> lock(s_.reasonMu_);
        s_.notRunnableReason_ += " (in its poll window after a restore)";
    }
}

// A guest stopped mid-poll when its snapshot was taken resumes in that poll, whose
// deadline passed while it was stopped: it parks at once. Parked, it starts a fresh
// poll: once per restore window, and only while nothing was answered since, nothing
// waits and the window is open.
bool VcpuThread::repollAfterRestore(int state) {
    if (!repollAfterRestore_) return false;
    repollAfterRestore_ = false;
    if (state != Handover::kNoExchange || s_.lastAnswerNs_.load(std::memory_order_relaxed) >= restoreWindowStartNs_ ||
        s_.handover_.opWaiting() || !s_.runnable_.load() || windowOver())
        return false;
    if (!s_.handover_.swapPoll(AIRLOCK_POLL_IDLE, AIRLOCK_POLL_READY)) return false;
    AIRLOCK_COUNT(repollsAfterRestore);
    return true;
}

// ---- the run loop -------------------------------------------------------------------

// vCPU thread, guest stopped: a Boot or an Exchange the guest answers with an exit.
void VcpuThread::startExchange(const Op &op) {
    s_.beginExchange(op.kind, op.kind == OpKind::Exchange ? &op.request : nullptr, op.wallTimeoutNs, op.cpuTimeoutNs);
    s_.handover_.setPoll(AIRLOCK_POLL_REQUEST_EXIT);
    s_.handover_.publish();
}

// The guest's post-answer window is over (or it has none while nothing is in flight:
// a guest never runs with neither an exchange nor a window).
bool VcpuThread::windowOver() const {
    const uint64_t end = s_.windowEndNs_.load();
    return end == 0 || monotonicNs() >= end;
}

// The session ends: the guest is stopped and will not run before the next exchange.
void VcpuThread::leave() {
    endSession();
    s_.cancel_.clearKick();
    s_.windowEndNs_.store(0);
    repollAfterRestore_ = false;
    // A timer never armed needs no timer_settime: on the exit path (nothing polls)
    // that is one system call per call on the vCPU thread.
    if (s_.windowArmed_.load()) s_.windowTimer_->disarm();
    s_.windowArmed_.store(false);
    s_.chargeAfterAnswer();
    releasePollSlot();
    ackInterrupt();
}

void VcpuThread::releasePollSlot() {
    if (!s_.holdsPollSlot_) return;
    s_.holdsPollSlot_ = false;
    CoreBudget::instance().release();
}

// A guest that answered runs on to poll only with a window and a free core; it keeps
// the slot for the session (until leave()) while the budget still has a core for it.
bool VcpuThread::mayPoll() { return s_.pollNs_.load() != 0 && mayPollFor(); }

// mayPoll's rule for any window, whatever its length: the guest polls and the budget
// has a core for it.
bool VcpuThread::mayPollFor() {
    const bool flagged =
        s_.memory_->read<uint32_t>(s_.layout_.header.control + AIRLOCK_CTRL_OFF_GUEST_FLAGS) & AIRLOCK_GUEST_FLAG_POLLS;
    if (!flagged) return false;
    // A slot held since an earlier answer goes back once the budget has no core for it
    // (more guests run than the cap, or the threads were pinned to one core).
    if (s_.holdsPollSlot_ && !CoreBudget::instance().pollAllowed()) releasePollSlot();
    if (!s_.holdsPollSlot_) {
        s_.holdsPollSlot_ = CoreBudget::instance().acquire();
        if (s_.holdsPollSlot_)
            AIRLOCK_COUNT(pollSlotGrants);
        else
            AIRLOCK_COUNT(pollSlotRefusals);
    }
    return s_.holdsPollSlot_;
}

// The window timer is one-shot and armed once per window (Sandbox::claimExchange): when
// it has fired, arm it again for the rest of the latest window, if the guest runs on
// in one. A request in flight needs none (its own budget applies); its answer arms
// the timer anew.
void VcpuThread::rearmWindow() {
    if (!s_.windowArmed_.load() || monotonicNs() < s_.windowDueNs_.load()) return;
    s_.windowArmed_.exchange(false); // seq_cst: then re-read what a claim wrote before its exchange
    const int state = s_.handover_.settle();
    const uint64_t end = s_.windowEndNs_.load();
    const uint64_t now = monotonicNs();
    if (state != Handover::kInFlight && end > now && !s_.windowArmed_.exchange(true)) {
        s_.windowDueNs_.store(end);
        s_.windowTimer_->arm(end - now);
    }
}

void VcpuThread::done(Outcome o) {
    const OpKind kind = s_.record_.op;
    o = s_.finishExchange(std::move(o));
    if (kind == OpKind::Boot && o.code != OutcomeCode::Ok)
        // Even a boot cancelled before the first instruction leaves no usable guest.
        s_.poison("the guest never finished booting");
    s_.handover_.reset();
    Event ev;
    ev.kind = EventKind::Done;
    ev.op = kind;
    ev.outcome = std::move(o);
    emit(std::move(ev));
}

// The guest broke down or broke the protocol: it never runs again before a restore.
// The exchange in flight (if any) ends ERR_GUEST_ABORT; otherwise the next op sees
// ERR_POISONED with this reason.
VcpuThread::Next VcpuThread::abortGuest(std::string message, bool claimed) {
    s_.poison(message.rfind("guest aborted", 0) == 0 ? "the " + message : "the guest aborted: " + message);
    s_.handover_.setPoll(AIRLOCK_POLL_IDLE);
    leave();
    if (claimed || s_.claimExchange(false)) {
        Outcome o;
        o.code = OutcomeCode::GuestAbort;
        o.message = std::move(message);
        // The console lines written before the abort (issue #11), as for a cancel: the
        // guest is stopped, and an ABORT message after them ends the copy.
        if (s_.record_.guestEntered) o.output = readStoppedOutput(*s_.memory_, s_.layout_);
        done(std::move(o));
    }
    return Next::Leave;
}

// Cancels the exchange in flight; false if it was answered first.
bool VcpuThread::cancelInFlight() {
    if (!s_.claimExchange(false)) return false;
    if (s_.record_.guestEntered) s_.poison("the guest was cancelled mid-request");
    s_.handover_.setPoll(AIRLOCK_POLL_IDLE);
    leave();
    Outcome o;
    o.code = OutcomeCode::Cancelled;
    o.terminatedBy = s_.cancel_.reason();
    o.message = std::string("execution cancelled by ") + terminatedByName(o.terminatedBy);
    // The console lines written before the stop (issue #11): the guest is not running.
    if (s_.record_.guestEntered) o.output = readStoppedOutput(*s_.memory_, s_.layout_);
    done(std::move(o));
    return true;
}

// vCPU thread: runs the guest while an exchange is in flight and, for a guest that
// polls, on after the answer within its window, until it parks, an op waits or the
// window ends. Emits the Done event of every exchange the vCPU thread claims. Every
// pass either enters the guest under a budget or ends the session.
void VcpuThread::runSession() {
    if (!s_.session_.exchange(true)) CoreBudget::instance().sessionStarted();
    for (;;) {
        // Before every entry, not on the timer's interrupt alone: clearInterrupt()
        // after another interrupt can swallow the timer's, and the clock cannot lie.
        rearmWindow();
        const uint32_t poll = s_.handover_.poll(); // before the state: see Handover::forged
        const int state = s_.handover_.settle();
        if (Handover::forged(poll, state))
            return void(abortGuest("poll_state " + std::to_string(poll) + " is not a protocol step " +
                                   (state == Handover::kInFlight ? "during a request" : "with no request in flight")));
        if (state == Handover::kInFlight && s_.cancel_.cancelled() && cancelInFlight()) return;
        const bool yield = yieldNow();
        if (state == Handover::kInFlight && yield) return suspend();
        if (state != Handover::kInFlight && (yield || s_.handover_.opWaiting() || !s_.runnable_.load() ||
                                             (state == Handover::kNoExchange && windowOver()))) {
            // Other work waits, the guest is done for, or its window is over: take it
            // out of its poll. The guest is stopped, so only a fast request (READY ->
            // REQUEST) can race the swap; the next pass serves that one.
            if (s_.handover_.swapPoll(AIRLOCK_POLL_READY, AIRLOCK_POLL_IDLE) || s_.handover_.poll() == AIRLOCK_POLL_IDLE) {
                AIRLOCK_COUNT(windowsEndedByHost);
                leave();
                return;
            }
            continue;
        }
        if (state == Handover::kInFlight) s_.record_.guestEntered = true;
        const hv::Exit exit = vcpu_->run();
        Next next;
        if (exit.kind == hv::ExitKind::Interrupted) {
            next = onInterrupted();
        } else if (exit.kind != hv::ExitKind::Io || !exit.isWrite || exit.port != AIRLOCK_PORT || exit.size != 4 ||
                   exit.count != 1) {
            next = abortGuest("guest stopped outside the protocol: " + describeExit(exit));
        } else {
            switch (exit.value) {
            case AIRLOCK_EXIT_RESPONSE: next = onResponse(); break;
            case AIRLOCK_EXIT_IDLE: next = onIdle(); break;
            case AIRLOCK_EXIT_ABORT: next = onAbort(); break;
            case AIRLOCK_EXIT_HOST_CALL: next = onHostCall(); break;
            default:
                next = abortGuest("guest used unknown exit code " + std::to_string(exit.value) + " at RIP " +
                                  hex(vcpu_->getRegisters().rip));
            }
        }
        if (next == Next::Leave) return;
    }
}

// The runner's quantum is over and other sandboxes wait for a runner (the quantum
// timer's signal said so). An exchange the answer watcher watches runs on: its watch
// is bounded, and release would wait for it anyway.
bool VcpuThread::yieldNow() const {
    return s_.preemptRequested_.load() && RunnerPool::contention().load() > 0 && !s_.watched_.load();
}

// The exchange in flight gives up its runner: the guest is stopped and stays so until
// a runner takes the sandbox from the back of the queue (serve resumes it). Its wall
// clock runs on; its CPU budget and clock pause with the sandbox's (release/hold).
void VcpuThread::suspend() {
    AIRLOCK_COUNT(quantumYields);
    suspended_ = true;
    endSession();
    releasePollSlot();
    s_.windowTimer_->disarm();
    s_.windowArmed_.store(false);
    vcpu_->clearInterrupt();
}

// A kill, a monitor, a kick for a waiting op, the window's end, or a late signal. The
// loop's next pass decides from the state word, the mailbox and the clock; a bell
// keeps ringing until acknowledged, so clearing the interrupt here loses nothing.
VcpuThread::Next VcpuThread::onInterrupted() {
    if (s_.handover_.settle() == Handover::kInFlight && s_.cancel_.cancelled() && cancelInFlight()) return Next::Leave;
    vcpu_->clearInterrupt();
    return Next::Run;
}

VcpuThread::Next VcpuThread::onResponse() {
    if (s_.handover_.settle() != Handover::kInFlight) return abortGuest("guest answered with no request in flight");
    if (s_.hostCallUnanswered()) return abortGuest("guest answered before the reply to its taken host call");
    // The call a restore is foreseen after parks at once (Sandbox::writePollTicks): no
    // re-entry for a window, and the vCPU goes free for a direct restore.
    const bool polls = !s_.record_.windowSkipped && mayPoll();
    if (s_.pollNs_.load() == 0) AIRLOCK_COUNT(answersWithoutWindow);
    if (!s_.claimExchange(polls)) return abortGuest("guest answered with no request in flight");
    AIRLOCK_COUNT(answersByExit);
    s_.lastAnswerPath_.store(LastAnswer::ByExit, std::memory_order_relaxed); // done() publishes it
    Outcome o;
    std::string error;
    if (!readGuestOutput(*s_.memory_, s_.layout_, o.output, error)) return abortGuest(error, true);
    // The output is copied: the guest may run on (its post-call GC, then poll).
    s_.handover_.setPoll(polls ? AIRLOCK_POLL_READY : AIRLOCK_POLL_IDLE);
    if (!polls) {
        // The session ends before the answer goes out, so a runner that the woken main
        // thread preempts (one core) does not hold the vCPU a direct restore needs.
        leave();
        releaseVcpuWhenIdle();
        done(std::move(o));
        return Next::Leave;
    }
    done(std::move(o));
    return Next::Run;
}

VcpuThread::Next VcpuThread::onIdle() {
    const uint32_t poll = s_.handover_.poll();
    const int state = s_.handover_.settle();
    // Whether waiting in vain was a waste is judged when the next request is posted
    // (Sandbox::adaptPollWindow): only then is the gap known.
    // With a request in flight, a guest that parks has answered through memory (its
    // window ended before the main thread looked), or broke the protocol by writing
    // READY or IDLE itself: either way the output buffer is its answer, and whoever
    // claims the exchange first delivers it. Leaving without a claim would strand the
    // request: no side would ever finish it (its monitors fire into an idle thread).
    const bool parked =
        poll == AIRLOCK_POLL_IDLE || (poll == AIRLOCK_POLL_READY && s_.handover_.swapPoll(AIRLOCK_POLL_READY, AIRLOCK_POLL_IDLE));
    if (parked && state == Handover::kInFlight && s_.hostCallUnanswered())
        return abortGuest("guest parked while its taken host call waited for the reply");
    if (parked && state == Handover::kInFlight && s_.claimExchange(false)) {
        AIRLOCK_COUNT(answersAtPark);
        s_.lastAnswerPath_.store(LastAnswer::AtPark, std::memory_order_relaxed); // done() publishes it
        Outcome o;
        std::string error;
        if (!readGuestOutput(*s_.memory_, s_.layout_, o.output, error)) return abortGuest(error, true);
        leave();
        releaseVcpuWhenIdle(); // as for an answer by exit (onResponse)
        done(std::move(o));
        return Next::Leave;
    }
    if (parked && repollAfterRestore(state)) return Next::Run;
    // Parked with nothing in flight, or the main thread claimed the answer first.
    if (parked) {
        AIRLOCK_COUNT(guestParks);
        leave();
        return Next::Leave;
    }
    // A READY that a fast request turned into REQUEST first, or a request the guest
    // has not answered: run it on (under the exchange's budget), or the loop's check
    // calls the state forged.
    return Next::Run;
}

VcpuThread::Next VcpuThread::onAbort() {
    std::vector<uint8_t> out;
    std::string text, error;
    if (readGuestOutput(*s_.memory_, s_.layout_, out, error)) text = abortText(out.data(), out.size());
    return abortGuest(text.empty() ? "guest aborted (no readable abort message)" : "guest aborted: " + text);
}

VcpuThread::Next VcpuThread::onHostCall() {
    if (s_.handover_.settle() != Handover::kInFlight) return abortGuest("guest called the host with no request in flight");
    const uint32_t poll = s_.handover_.poll();
    if (poll == AIRLOCK_POLL_HOST_CALL_EXIT) return onHostCallGivenUp(); // hostcall_memory.cc
    if (poll == AIRLOCK_POLL_HOST_CALL || poll == AIRLOCK_POLL_HOST_CALL_TAKEN)
        return abortGuest("guest exited with poll_state " + std::to_string(poll) +
                          ": a host call handed over in memory is not made with an exit");
    if (s_.hostCallUnanswered())
        return abortGuest("guest called the host again before the reply to its taken host call");
    // A word that says "answered" lets the answer watcher claim the request while this
    // host call is served: the reply would then wait for an exchange that is over, and a
    // request posted after it would have no runner. The guest is stopped: the word holds.
    if (Handover::answered(poll))
        return abortGuest("guest called the host with poll_state " + std::to_string(poll) + " after answering");
    Event ev;
    ev.kind = EventKind::HostCall;
    ev.hostCallId = s_.nextHostCallId_.fetch_add(1);
    std::string error;
    if (!readGuestOutput(*s_.memory_, s_.layout_, ev.hostCallOutput, error)) return abortGuest(error);
    if (const std::optional<LoopSleep> sleep = loopSleepStep(ev.hostCallOutput)) return sleepInLoop(*sleep);
    const uint64_t id = ev.hostCallId;
    AIRLOCK_COUNT(hostCallsByExit);
    if (s_.record_.wallTimeoutNs) ev.wallDeadlineNs = s_.record_.wallStart + s_.record_.wallTimeoutNs;
    // Registered before the event can reach JavaScript, so the reply finds it.
    const bool replyInMemory = s_.registerExitHostCall(id); // hostcall_memory.cc
    emit(std::move(ev));
    return awaitHostReply(id, false, replyInMemory); // host_wait.cc
}

std::string VcpuThread::describeExit(const hv::Exit &exit) {
    std::string what = hv::exitKindName(exit.kind);
    switch (exit.kind) {
    case hv::ExitKind::Io:
        what += std::string(" (") + (exit.isWrite ? "out to" : "in from") + " port " + hex(exit.port) + ", " +
                std::to_string(exit.size) + " byte(s)" + (exit.count > 1 ? ", repeated" : "") + ")";
        break;
    case hv::ExitKind::Mmio:
        what += " at " + hex(exit.address);
        break;
    case hv::ExitKind::FailEntry:
    case hv::ExitKind::InternalError:
    case hv::ExitKind::Other:
        what += " (code " + std::to_string(exit.detail) + ")";
        break;
    default:
        break;
    }
    try {
        what += " at RIP " + hex(vcpu_->getRegisters().rip);
    } catch (const std::exception &) {
        // The exit is reported without its RIP when the registers cannot be read.
    }
    return what;
}

} // namespace airlock
