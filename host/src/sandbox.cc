// sandbox.cc — the main thread's handle on one sandbox: posting operations (through
// the mailbox and the runner queue, or straight to a polling guest), cancelling,
// draining events, and a teardown whose wait is bounded; a runner taking and giving
// back the sandbox (its timers and CPU clock follow the vCPU); plus the exchange
// bookkeeping either side does while it owns the exchange (handover.h says who does).
#include "sandbox.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <ctime>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#include "../../guest/include/abi.h"
#include "answer_watcher.h"
#include "call_path_counters.h"
#include "census.h"
#include "core_budget.h"
#include "hostcall_memory.h"
#include "messages.h"
#include "sleep_timers.h"
#include "timing.h"
#include "vcpu_thread.h"

namespace airlock {

namespace {
std::atomic<uint64_t> g_nextSandboxId{1};
// The bell re-rings this often until the vCPU thread acknowledges: a signal can be
// refused (a full real-time queue) or land between the thread's checks; a timer's
// signal is preallocated, and its next expiry comes regardless.
constexpr uint64_t kBellIntervalNs = 1'000'000;
} // namespace

std::shared_ptr<Sandbox> Sandbox::create(const uint8_t *image, size_t imageSize, const SandboxConfig &config,
                                         const SpinConfig &spin, std::function<void()> notify) {
    return std::shared_ptr<Sandbox>(new Sandbox(image, imageSize, config, spin, std::move(notify)));
}

Sandbox::Sandbox(const uint8_t *image, size_t imageSize, const SandboxConfig &config, const SpinConfig &spin,
                 std::function<void()> notify)
    : id_(g_nextSandboxId.fetch_add(1)), image_(image, imageSize), spin_(spin), notify_(std::move(notify)) {
    ImageHeader header = parseImageHeader(image_.data(), image_.size());
    layout_ = computeLayout(header, image_.size(), config);
    cancelSignal(); // fail here, synchronously, if no signal is available
    init();
    // Started with the first sandbox (not with the first fast request), so the
    // process's thread count settles as soon as sandboxes exist.
    AnswerWatcher::instance().start();
    census().sandboxes.fetch_add(1, std::memory_order_relaxed); // last: a throw above runs no destructor
}

std::shared_ptr<Sandbox> Sandbox::createClone(std::shared_ptr<const Template> t, const SpinConfig &spin,
                                              std::function<void()> notify) {
    return std::shared_ptr<Sandbox>(new Sandbox(std::move(t), spin, std::move(notify)));
}

Sandbox::Sandbox(std::shared_ptr<const Template> t, const SpinConfig &spin, std::function<void()> notify)
    : id_(g_nextSandboxId.fetch_add(1)), template_(std::move(t)), layout_(template_->layout), spin_(spin),
      notify_(std::move(notify)) {
    cancelSignal(); // fail here, synchronously, if no signal is available
    init();
    census().sandboxes.fetch_add(1, std::memory_order_relaxed); // last: a throw above runs no destructor
}

void Sandbox::init() {
    vcpuThread_ = std::make_unique<VcpuThread>(*this);
    signalTarget_.state = &cancel_;
    signalTarget_.wakeSeq = handover_.wakeWord();
    signalTarget_.vcpu = &signalVcpu_;
    signalTarget_.preempt = &preemptRequested_;
    signalTarget_.contention = &RunnerPool::contention();
}

Sandbox::~Sandbox() {
    census().sandboxes.fetch_sub(1, std::memory_order_relaxed);
    // The queue and the runner holding it own references: nothing runs it any more.
    // The VM and vCPU go before the guest memory they map.
    vcpuThread_.reset();
    // A sandbox dropped while its sleep was parked (its environment ended) leaves no
    // entry for another sandbox at the same address to inherit.
    SleepTimers::instance().disarm(this);
}

// ---- main thread --------------------------------------------------------------------

void Sandbox::ring() {
    std::lock_guard<std::mutex> lock(timerMu_);
    // No runner holds the sandbox: none is in its KVM_RUN or waits for it, and the
    // one that takes it next checks the state word before it enters the guest.
    if (!holder_ || !bellTimer_) return;
    bellArmed_.store(true);
    bellTimer_->arm(kBellIntervalNs, kBellIntervalNs);
    // The first ring goes out now; the timer repeats it until the runner acknowledges.
    sigval value{};
    value.sival_int = static_cast<int>(TimerTag::Bell);
    const int rc = pthread_sigqueue(holder_->thread(), cancelSignal(), value);
    // EAGAIN: the real-time signal queue is full; the timer's signal is preallocated.
    if (rc != 0 && rc != EAGAIN) throw std::system_error(rc, std::generic_category(), "pthread_sigqueue");
}

void Sandbox::post(Op op) {
    if (op.kind == OpKind::Boot || op.kind == OpKind::Exchange) cancel_.resetForExchange();
    // Before the runner can write this request's poll_ticks (beginExchange).
    if (op.kind == OpKind::Exchange) adaptPollWindow(false);
    handover_.postOp(std::move(op));
    // After the op is in the mailbox: a runner letting go of the sandbox re-checks the
    // mailbox under the pool's lock, so either it keeps the sandbox or this queues it.
    try {
        RunnerPool::instance().schedule(shared_from_this(), false);
    } catch (...) {
        if (!started_) handover_.discardOps(); // nobody will ever take them
        throw;
    }
    started_ = true;
    if (op.kind == OpKind::Exchange) AIRLOCK_COUNT(requestsMailbox);
    // A guest polling for requests keeps its runner inside KVM_RUN: interrupt it so
    // the runner takes the op. (The runner re-checks opWaiting() after raising
    // session_, so one of the two always sees the other.) A guest already parking
    // (IDLE: it leaves its poll and exits at once, or the runner's window check takes
    // it out) needs no signal: one landing after the runner re-entered would only
    // cost an interrupted KVM_RUN.
    // Any other op (restore, snapshot, ...) for a guest polling for a request (READY)
    // takes it out of its poll through memory: it reads IDLE at its next look and exits
    // (AIRLOCK_EXIT_IDLE), which brings the runner to the mailbox. That costs its one
    // exit and no signal: an interrupted KVM_RUN plus the signal's delivery cost a
    // restore 20-45 us more here (test/bench/restore-probe.ts echo). A guest that
    // ignores it runs on only until its window's host budget ends it, as any window.
    if (op.kind != OpKind::Exchange && session_.load() && handover_.attached() &&
        handover_.swapPoll(AIRLOCK_POLL_READY, AIRLOCK_POLL_IDLE)) {
        AIRLOCK_COUNT(pollEndsInMemory);
        return;
    }
    if (session_.load() && !(handover_.attached() && handover_.poll() == AIRLOCK_POLL_IDLE)) {
        cancel_.requestKick();
        AIRLOCK_COUNT(kicks);
        ring();
    }
}

bool Sandbox::postFast(const Op &op) {
    if (op.kind != OpKind::Exchange || !session_.load() || !runnable_.load() || !handover_.attached()) return false;
    // The holder's timers stay this sandbox's while the request is posted (release
    // takes the same lock); a runner that let go ended the session, and the guest
    // stopped polling first, so the swap below fails.
    std::lock_guard<std::mutex> lock(timerMu_);
    if (!holder_) return false;
    // A watcher still finishing with the previous exchange (claimed by the vCPU thread
    // first) must be done before a new one can be told from it.
    if (watched_.load()) return false;
    if (handover_.poll() != AIRLOCK_POLL_READY) {
        AIRLOCK_COUNT(requestsMissedPoll);
        return false;
    }
    // The guest polls and reads nothing of the request until poll_state says a request.
    cancel_.resetForExchange();
    handover_.beginPosting();
    // A hit brings a stretched window back to the longest (PollWindowRule::judge), for
    // the poll_ticks written now; the rule itself judges the hit once the swap below
    // succeeds (a guest that parked first makes this request a miss, judged by post()).
    pollNs_.store(std::min(pollNs_.load(), spin_.guestPollNs));
    beginExchange(OpKind::Exchange, &op.request, op.wallTimeoutNs, op.cpuTimeoutNs);
    record_.guestEntered = true;
    // With a core to spare, the answer watcher takes the answer from memory (REQUEST);
    // otherwise the guest answers with an exit (REQUEST_EXIT) and the vCPU thread
    // notifies. The main thread itself never waits.
    const bool watch = CoreBudget::instance().pollAllowed();
    if (watch) watched_.store(true);
    if (handover_.swapPoll(AIRLOCK_POLL_READY, watch ? AIRLOCK_POLL_REQUEST : AIRLOCK_POLL_REQUEST_EXIT)) {
        handover_.publish();
        adaptPollWindow(true);
        if (watch && !AnswerWatcher::instance().watch(shared_from_this())) {
            // No watcher thread: the guest must answer with an exit. If it answered
            // already, the vCPU thread takes the answer when the guest parks.
            handover_.swapPoll(AIRLOCK_POLL_REQUEST, AIRLOCK_POLL_REQUEST_EXIT);
            watched_.store(false);
        }
        if (watch)
            AIRLOCK_COUNT(requestsInMemoryWatched);
        else
            AIRLOCK_COUNT(requestsInMemoryExit);
        return true;
    }
    AIRLOCK_COUNT(requestsMissedPoll);
    watched_.store(false);
    // The guest parked first: the vCPU thread must run it.
    if (record_.wallTimeoutNs) wallTimer_->disarm();
    if (record_.cpuTimeoutNs) cpuTimer_->disarm();
    handover_.reset();
    return false;
}

bool Sandbox::watchAnswer(bool giveUp) {
    const uint32_t poll = handover_.poll();
    if (poll >= AIRLOCK_POLL_REQUEST_EXIT) return watchHostCall(poll);
    if (!Handover::answered(poll)) {
        if (!giveUp) return false;
        // Nobody waits in memory any more: the guest answers with an exit. Only the
        // guest moves poll_state off REQUEST otherwise, so a failed swap means it
        // answered meanwhile.
        if (handover_.swapPoll(AIRLOCK_POLL_REQUEST, AIRLOCK_POLL_REQUEST_EXIT)) {
            AIRLOCK_COUNT(watchesGivenUp);
            watched_.store(false);
            return true;
        }
        // Or it made a host call in memory meanwhile (or wrote another state).
        if (const uint32_t moved = handover_.poll(); moved >= AIRLOCK_POLL_REQUEST_EXIT) return watchHostCall(moved);
    }
    // The response is in the output buffer. If the vCPU thread claimed the exchange
    // first (cancel, abort, or the guest parked before we looked), its event follows.
    if (claimExchange(true)) {
        // A runner asleep in a host call's wait (the guest called the host after
        // handing this answer over) must see the claim: the window timer it would
        // otherwise rely on may have fired already, before it went to sleep.
        handover_.wake();
        AIRLOCK_COUNT(answersInMemory);
        lastAnswerPath_.store(LastAnswer::InMemory, std::memory_order_relaxed); // the emit below publishes it
        Outcome o;
        // The guest runs on (its post-call work), but it writes the output buffer
        // only for the next request.
        std::string error;
        if (!readGuestOutput(*memory_, layout_, o.output, error)) {
            poison("the guest aborted");
            o.code = OutcomeCode::GuestAbort;
            o.message = std::move(error);
        }
        Event ev;
        ev.kind = EventKind::Done;
        ev.op = OpKind::Exchange;
        ev.outcome = finishExchange(std::move(o));
        handover_.reset();
        // Done with guest memory and the exchange: let go before the main thread can
        // see the answer, so its next request finds the guest free to take in memory.
        watched_.store(false);
        if (handover_.emit(std::move(ev))) notify_();
        return true;
    }
    watched_.store(false);
    return true;
}

void Sandbox::waitUnwatched() const {
    while (watched_.load()) sched_yield();
}

void Sandbox::postHostReply(uint64_t hostCallId, std::vector<uint8_t> reply) {
    if (replyHostCallInMemory(hostCallId, reply)) {
        // For a guest stopped at its exit, its runner waits for poll_state to move (a
        // guest waiting in memory sees it itself; then no runner sleeps on the word).
        handover_.wake();
        // Pairs with the fence in replyWrittenInMemory: the swap above and the flag
        // below, against keepLocked's flag store and its look at poll_state.
        std::atomic_thread_fence(std::memory_order_seq_cst);
    } else {
        handover_.postReply(HostReply{hostCallId, std::move(reply)}); // seq_cst: before the flag is read
    }
    // A runner let the sandbox go while the call waited: the reply queues it again.
    // (RunnerPool::keepLocked raises the flag before it looks for the reply.)
    if (parkedInHostWait_.load()) RunnerPool::instance().resumeWaiting(shared_from_this());
}

void Sandbox::sleepDue() {
    sleepDue_.store(true); // seq_cst: before the flag is read
    handover_.wake();
    // As for a reply (postHostReply): RunnerPool::keepLocked raises the flag before it
    // looks at sleepDue_.
    if (!parkedInHostWait_.load()) return;
    try {
        RunnerPool::instance().resumeWaiting(shared_from_this());
    } catch (const std::exception &) {
        // No runner exists and none can start: no op or cancel could run it either.
    }
}

void Sandbox::cancel(TerminatedBy why) {
    if (!cancel_.requestCancel(why)) return; // first reason wins
    if (started_ && !finished_) {
        handover_.wake(); // a runner asleep in a host call's wait sees the reason without a signal
        ring();
        // An exchange suspended in the queue ends as soon as a runner takes it: first.
        RunnerPool::instance().schedule(shared_from_this(), true);
    }
}

std::vector<Event> Sandbox::drainEvents() { return handover_.drainEvents(); }

void Sandbox::join() { finished_ = true; }

bool Sandbox::stopAndJoin() {
    if (!started_ || finished_) return true;
    cancel(TerminatedBy::Kill);
    Op stop;
    stop.kind = OpKind::Stop;
    try {
        post(std::move(stop));
    } catch (const std::exception &) {
        // No runner exists and none can start (a finalizer must not throw): the VM
        // stays until the process ends.
        finished_ = true;
        return false;
    }
    bool stopped;
    {
        std::unique_lock<std::mutex> lock(exitMu_);
        stopped = exitCv_.wait_for(lock, std::chrono::nanoseconds(kTeardownWaitNs), [this] { return exited_; });
    }
    // Not stopped: the queue or its runner holds a reference to the sandbox, tears
    // the guest down when the Stop op runs, then frees it. Nothing waits for it any more.
    finished_ = true;
    return stopped;
}

// ---- a runner taking and giving back the sandbox --------------------------------------

void Sandbox::hold(Runner &runner) {
    std::lock_guard<std::mutex> lock(timerMu_);
    holder_ = &runner;
    wallTimer_ = runner.wallTimer_.get();
    cpuTimer_ = runner.cpuTimer_.get();
    windowTimer_ = runner.windowTimer_.get();
    bellTimer_ = runner.bellTimer_.get();
    vcpuClock_ = runner.cpuClock();
    held_ = true;
    holdStartCpuNs_ = runner.lastCpuNs_; // see Runner::lastCpuNs_
    preemptRequested_.store(false);
    retargetSignal(&signalTarget_);
    if (!runner.timersReady()) return; // every op fails with the runner's reason (VcpuThread::serve)
    // The wall clock ran on in the queue; a deadline already past fires at once. The
    // CPU budget did not: the sandbox's CPU is only what runners spent holding it.
    if (wallDeadlineNs_) {
        const uint64_t now = monotonicNs();
        wallTimer_->arm(wallDeadlineNs_ > now ? wallDeadlineNs_ - now : 1);
        wallDeadlineNs_ = 0;
    }
    if (cpuLeftNs_) {
        cpuTimer_->arm(cpuLeftNs_);
        cpuLeftNs_ = 0;
    }
    // A bell the last holder did not acknowledge rings on here.
    if (bellArmed_.load()) bellTimer_->arm(1, kBellIntervalNs);
}

void Sandbox::release() {
    // No watcher may still read guest memory or claim an exchange with our timers.
    waitUnwatched();
    std::lock_guard<std::mutex> lock(timerMu_);
    if (holder_->timersReady()) {
        // Disarmed while the signal is unblocked: a timer that fired meanwhile has
        // run its handler against this sandbox by the time each call returns. Only
        // what may be armed: with no exchange in flight its claimer disarmed the
        // monitors (finishExchange; the watcher is done, see above, and a fast post
        // takes this lock), and the window and the bell say whether they are armed.
        if (handover_.settle() != Handover::kNoExchange) {
            if (const uint64_t left = wallTimer_->disarm()) wallDeadlineNs_ = monotonicNs() + left;
            if (const uint64_t left = cpuTimer_->disarm()) cpuLeftNs_ = left;
        }
        if (windowArmed_.exchange(false)) windowTimer_->disarm();
        if (bellArmed_.load()) bellTimer_->disarm(); // bellArmed_ stays: the next holder rings on
    }
    // One read of the runner's clock ends this hold and starts its next one.
    timespec ts;
    if (clock_gettime(vcpuClock_, &ts) == 0) {
        const uint64_t now = static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
        if (now > holdStartCpuNs_) cpuBeforeHoldNs_ += now - holdStartCpuNs_;
        holder_->lastCpuNs_ = now;
    }
    held_ = false;
    retargetSignal(nullptr);
    holder_ = nullptr;
    wallTimer_ = cpuTimer_ = windowTimer_ = bellTimer_ = nullptr;
}

// ---- either thread, whoever owns the exchange -----------------------------------------

// The sandbox's CPU time: what earlier holders spent on it plus the current holder's
// CPU since it took it. Monotonic across hand-overs, so any two readings subtract.
uint64_t Sandbox::vcpuCpuNs() const {
    if (!held_) return cpuBeforeHoldNs_;
    timespec ts;
    if (clock_gettime(vcpuClock_, &ts) != 0) return cpuBeforeHoldNs_;
    const uint64_t now = static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
    return cpuBeforeHoldNs_ + (now > holdStartCpuNs_ ? now - holdStartCpuNs_ : 0);
}

void Sandbox::poison(std::string reason) {
    std::lock_guard<std::mutex> lock(reasonMu_);
    if (runnable_.exchange(false) || notRunnableReason_.empty()) notRunnableReason_ = std::move(reason);
}

// Post-answer guest time so far goes to the next exchange (see kAfterAnswerAllowanceNs).
// `cpuNow`: the vCPU thread's CPU clock now, when the caller has read it already (a
// thread CPU clock is a system call, not a vDSO read: one per call is enough).
void Sandbox::chargeAfterAnswer(uint64_t cpuNow) {
    const uint64_t since = answerCpuNs_.exchange(0);
    if (since) {
        const uint64_t now = cpuNow ? cpuNow : vcpuCpuNs();
        if (now > since) carriedCpuNs_.fetch_add(now - since);
    }
}

// Called by the side that publishes the exchange, before it does.
void Sandbox::beginExchange(OpKind kind, const std::vector<uint8_t> *request, uint64_t wallTimeoutNs,
                            uint64_t cpuTimeoutNs) {
    const GuestLayout &l = layout_;
    untouchedSince_.store(0); // the guest runs again (VcpuThread::restore)
    if (request) {
        // The caller checked request->size() <= inputSize. An empty request has no
        // data pointer: memcpy from null is undefined even for 0 bytes.
        if (!request->empty()) std::memcpy(memory_->at(l.inputAddr, request->size()), request->data(), request->size());
        memory_->write<uint32_t>(l.header.control + AIRLOCK_CTRL_OFF_REQUEST_LEN, static_cast<uint32_t>(request->size()));
        // The last answer was read: what a stop finds there (readStoppedOutput) is this request's.
        memory_->write<uint32_t>(l.header.control + AIRLOCK_CTRL_OFF_RESPONSE_LEN, 0);
    }
    writeClockBase();
    const bool windowSkipped = writePollTicks(kind == OpKind::Exchange && restoreForeseenAfterThis());
    const uint64_t cpuNow = vcpuCpuNs();
    chargeAfterAnswer(cpuNow); // the guest ran on until this request reached it
    record_.op = kind;
    record_.wallTimeoutNs = wallTimeoutNs;
    record_.cpuTimeoutNs = cpuTimeoutNs;
    record_.pausedCpuNs.store(0);
    record_.carriedCpuNs = carriedCpuNs_.exchange(0);
    record_.guestEntered = false;
    record_.guestRunsOn = false;
    record_.windowSkipped = windowSkipped;
    record_.wallStart = monotonicNs();
    record_.cpuStart = cpuNow;
    if (wallTimeoutNs) wallTimer_->arm(wallTimeoutNs);
    if (cpuTimeoutNs) cpuTimer_->arm(cpuTimeoutNs);
}

// `guestRunsOn`: the guest keeps running after this answer (a polling guest), inside
// the window the host enforces from now.
bool Sandbox::claimExchange(bool guestRunsOn) {
    if (!handover_.claim()) return false;
    if (record_.op == OpKind::Exchange) exchanges_.fetch_add(1, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lock(hostCallMu_);
        forgetHostCallLocked();
    }
    const uint64_t now = monotonicNs();
    lastAnswerNs_.store(now, std::memory_order_relaxed);
    if (guestRunsOn) {
        const uint64_t window = pollNs_.load() + kAfterAnswerAllowanceNs;
        record_.guestRunsOn = true; // finishExchange starts the post-answer CPU account
        windowEndNs_.store(now + window);
        // One timer_settime per window, not per call: while the timer is armed it
        // fires no later than an earlier window's end, and the vCPU thread then
        // re-arms it for the rest of the latest window (VcpuThread::rearmWindow).
        // seq_cst: pairs with rearmWindow's exchange(false), then its re-read of the
        // exchange state and the window's end (claimed above, stored above).
        if (!windowArmed_.exchange(true)) {
            windowDueNs_.store(now + window);
            windowTimer_->arm(window);
        }
    }
    return true;
}

// By the side that claimed the exchange: monitors off, timing filled in.
Outcome Sandbox::finishExchange(Outcome o) {
    if (record_.wallTimeoutNs) wallTimer_->disarm();
    if (record_.cpuTimeoutNs) cpuTimer_->disarm();
    o.wallNs = monotonicNs() - record_.wallStart;
    const uint64_t cpuNow = vcpuCpuNs();
    if (record_.guestRunsOn) answerCpuNs_.store(cpuNow);
    const uint64_t cpu = cpuNow - record_.cpuStart;
    const uint64_t paused = record_.pausedCpuNs.load();
    o.cpuNs = cpu > paused ? cpu - paused : 0;
    o.afterCpuNs = record_.carriedCpuNs;
    return o;
}

// Either thread, with the guest stopped or before publishing a request.
void Sandbox::writeClockBase() {
    const uint64_t c = layout_.header.control;
    const uint64_t tsc = __rdtsc();
    const int64_t wall = realtimeNs();
    memory_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_TSC_BASE, tsc + static_cast<uint64_t>(tscOffset_));
    memory_->write<int64_t>(c + AIRLOCK_CTRL_OFF_WALL_NS_BASE, wall);
}

// Either thread: the window the guest gets after answering the next request.
void Sandbox::setPollWindow(uint64_t ns) { pollNs_.store(pollRule_.clamp(ns)); }

// Main thread, as it publishes a request: a miss before the runner writes its
// poll_ticks (post), a hit once it is handed over (postFast). `metPollingGuest`: it
// reached the guest in memory while the guest polled.
// The gap runs from the last answer's claim to now, the request's post: the time a
// window had to cover. (Measured when a runner took the request, as before, it also
// held the runner's wake-up, which no window could have saved.)
void Sandbox::adaptPollWindow(bool metPollingGuest) {
    const uint64_t last = lastAnswerNs_.load(std::memory_order_relaxed);
    const uint64_t now = monotonicNs();
    const uint64_t gap = last && now > last ? now - last : 0;
    const WindowDecision d = pollRule_.judge(pollNs_.load(), metPollingGuest, gap,
                                             metPollingGuest || CoreBudget::instance().pollAllowed(),
                                             lastAnswerPath_.load(std::memory_order_relaxed));
    pollNs_.store(d.windowNs);
    switch (d.change) {
    case WindowChange::Unjudged: break;
    case WindowChange::Kept: break;
    case WindowChange::Grown: AIRLOCK_COUNT(windowGrows); break;
    case WindowChange::LateKept: AIRLOCK_COUNT(windowLateKeeps); break;
    case WindowChange::Closed: AIRLOCK_COUNT(windowCloses); break;
    case WindowChange::Probed: AIRLOCK_COUNT(windowProbes); break;
    case WindowChange::Halved: AIRLOCK_COUNT(windowHalvings); break;
    }
}

// Either thread, before publishing a request: whether it is the call a restore is
// foreseen after (as many calls since the last restore as between the two before it).
bool Sandbox::restoreForeseenAfterThis() const {
    const uint64_t due = restoreDueAfter_.load(std::memory_order_relaxed);
    return due != 0 && exchanges_.load(std::memory_order_relaxed) + 1 == due;
}

// Either thread, before publishing a request. The guest reads poll_ticks when it
// starts to wait, and before answering (0: it collects first, as it will not run on).
// Zero too while no core is free for a poll (CoreBudget): the guest then answers with
// an exit and parks. And a window of one tick for the call a restore is foreseen
// after (`skipWindow`; returns whether it applied): a window would catch no request,
// only the restore, which must then take the guest out of its poll with an exit of its
// own. With one tick the guest answers first (a zero window would make it collect
// before answering, on the call's path), runs its post-call work, and parks at once:
// that exit happens while JavaScript takes the answer, off the restore's path. An
// answer by exit does not re-enter the guest at all (VcpuThread::onResponse). A wrong
// guess costs the next call its window, once per change of the pattern.
bool Sandbox::writePollTicks(bool skipWindow) {
    const bool allowed = CoreBudget::instance().pollAllowed();
    if (!allowed) AIRLOCK_COUNT(requestsWithoutWindow);
    const bool skip = allowed && skipWindow;
    if (skip) AIRLOCK_COUNT(windowsSkippedForRestore);
    const uint64_t ns = allowed && !skip ? pollNs_.load() : 0;
    const uint64_t ticks = skip ? 1 : static_cast<uint64_t>(static_cast<unsigned __int128>(ns) * tscKhz_ / 1'000'000);
    memory_->write<uint64_t>(layout_.header.control + AIRLOCK_CTRL_OFF_POLL_TICKS, ticks);
    memory_->write<uint64_t>(layout_.header.control + AIRLOCK_CTRL_OFF_HOST_CALL_TICKS,
                             static_cast<uint64_t>(static_cast<unsigned __int128>(kHostCallWaitNs) * tscKhz_ / 1'000'000));
    return skip;
}

// The refusal of an operation that needs a booted, runnable guest; nullopt if it may run.
std::optional<Outcome> Sandbox::refuseUnlessRunnable(const char *advice) {
    Outcome o;
    if (!booted_) {
        o.code = OutcomeCode::InvalidArg;
        o.message = "the VM has not booted";
        return o;
    }
    if (runnable_) return std::nullopt;
    o.code = OutcomeCode::Poisoned;
    std::lock_guard<std::mutex> lock(reasonMu_);
    o.message = notRunnableReason_ + "; " + advice;
    return o;
}

} // namespace airlock
