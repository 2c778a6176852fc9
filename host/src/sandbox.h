// sandbox.h — one micro-VM: class Sandbox, the main thread's handle (post, cancel,
// drain events, stop; what addon.cc calls) plus the state the main thread shares with
// whichever runner thread holds the sandbox (runner.h: a sandbox with work is queued
// for a runner, which lends it its timers and signal while it holds it). The
// runner's code for it is class VcpuThread (vcpu_thread.*); the hand-over in
// handover.h; cancellation in cancellation.*; snapshot/restore in snapshot.*; the
// message codec in messages.*. Knows nothing of N-API.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../hv/hypervisor.h"
#include "cancellation.h"
#include "guest_memory.h"
#include "handover.h"
#include "layout.h"
#include "mapped_bytes.h"
#include "ops.h"
#include "poll_window.h"
#include "runner.h"
#include "snapshot.h"
#include "template.h"

namespace airlock {

// Busy-wait budgets, each used only while CoreBudget has a core to spare. The main
// thread never busy-waits: events reach it through `notify`.
struct SpinConfig {
    uint64_t vcpuSpinNs = 50'000; // vCPU thread: spin before sleeping for the next op / reply
    uint64_t guestPollNs = 50'000; // polling guest: the longest window it waits for the next request
};

// After each answer a polling guest may run on (its post-call GC, then its poll
// window) for at most its poll window plus this, measured on CLOCK_MONOTONIC from the
// answer; then the host interrupts it and takes it out of its poll. A full QuickJS
// GC costs ~0.5 ms with 10,000 live objects; work left over resumes in the next
// request (its cpuTimeNs). The time the guest ran inside the window is reported with
// the next request as afterCpuTimeNs.
constexpr uint64_t kAfterAnswerAllowanceNs = 2'000'000;
// How long the GC finalizer (or any synchronous teardown) waits for the Stop op to
// run before it leaves the sandbox to the runner that will run it.
constexpr uint64_t kTeardownWaitNs = 2'000'000'000;

class VcpuThread;

class Sandbox : public std::enable_shared_from_this<Sandbox> {
public:
    // Validates the image and the sizes (throws ArgumentError); allocates nothing big.
    // `notify` is called from the vCPU thread when events are waiting and the main
    // thread has not been told since it last drained them.
    static std::shared_ptr<Sandbox> create(const uint8_t *image, size_t imageSize, const SandboxConfig &config,
                                           const SpinConfig &spin, std::function<void()> notify);
    // A sandbox whose Boot op starts it from `t` (template.h) without running the guest.
    static std::shared_ptr<Sandbox> createClone(std::shared_ptr<const Template> t, const SpinConfig &spin,
                                                std::function<void()> notify);
    ~Sandbox();
    Sandbox(const Sandbox &) = delete;
    Sandbox &operator=(const Sandbox &) = delete;

    uint64_t id() const { return id_; }
    const GuestLayout &layout() const { return layout_; }
    const SpinConfig &spin() const { return spin_; }

    // ---- main thread (sandbox.cc) -------------------------------------------------
    void post(Op op); // starts the thread on first use
    // Hands an Exchange straight to a guest polling for it (no entry, no vCPU-thread
    // wake-up; the guest answers with an exit). False when the guest is not polling:
    // post() it instead.
    bool postFast(const Op &op);
    void postHostReply(uint64_t hostCallId, std::vector<uint8_t> reply);
    // The reply to a host call taken in memory, written there while the guest waits
    // (hostcall_memory.cc); false: the vCPU thread must deliver it (postHostReply).
    bool replyHostCallInMemory(uint64_t hostCallId, const std::vector<uint8_t> &reply);
    void cancel(TerminatedBy why); // the running exchange ends ERR_CANCELLED
    // A Restore op made by the main thread itself, with no hand-over (direct_restore.cc):
    // only while no runner uses the vCPU (vcpuUse_, taken without waiting) and its last
    // exit is finished. Its Done event is posted as a runner's would be, so the promise
    // settles in a later turn of the event loop. False: post() it instead.
    bool restoreDirectly(const Op &op);
    // ---- the answer watcher's thread (answer_watcher.h) ---------------------------
    // Takes an answer the guest handed over in memory, if it did; with `giveUp`, tells
    // the guest to answer with an exit instead. True when done watching this exchange.
    bool watchAnswer(bool giveUp);
    // The poll word moved to a host-call state while watched (hostcall_memory.cc): takes
    // the call, or drops the watch. True when done watching this exchange.
    bool watchHostCall(uint32_t poll);
    // Under the pool's lock or on the runner: the guest, stopped in a host call's wait
    // (hostWait_), has to run again: its reply came, a cancel reason is recorded, or
    // the exchange was claimed meanwhile (hostcall_memory.cc).
    bool hostWaitOver() const;
    bool replyWrittenInMemory() const;
    // The sleep timer's thread (sleep_timers.h): the guest's timer sleep, let go by its
    // runner, reaches its precise part: queues the sandbox if no runner holds it.
    void sleepDue();
    // vCPU thread: waits (briefly: a watch is bounded) until no watcher reads guest
    // memory or may claim an exchange, before the guest's memory or exchange changes hands.
    void waitUnwatched() const;

    // What the vCPU thread posted; `notify` fires again for anything posted later.
    std::vector<Event> drainEvents();
    // Synchronous teardown with a bounded wait: false when the Stop op did not run
    // within kTeardownWaitNs (the queue or the runner holding the sandbox owns it until
    // it has).
    bool stopAndJoin();
    void join(); // after the Stop op's Done event: nothing of the sandbox runs any more

private:
    Sandbox(const uint8_t *image, size_t imageSize, const SandboxConfig &config, const SpinConfig &spin,
            std::function<void()> notify);
    Sandbox(std::shared_ptr<const Template> t, const SpinConfig &spin, std::function<void()> notify);

    struct ExchangeRecord {
        OpKind op = OpKind::Exchange;
        uint64_t wallStart = 0;
        uint64_t cpuStart = 0;
        uint64_t wallTimeoutNs = 0;
        uint64_t cpuTimeoutNs = 0;
        uint64_t carriedCpuNs = 0;               // guest time after the previous answer
        bool guestRunsOn = false;                // claimed with the guest running on (a window)
        bool windowSkipped = false;              // a restore is foreseen after it: a one-tick window (writePollTicks)
        std::atomic<uint64_t> pausedCpuNs{0};    // vCPU time spent waiting for host functions
        std::atomic<bool> guestEntered{false};   // false until the guest may have run it
    };
    // ---- main thread ----
    void init(); // both constructors
    void ring(); // the interrupt bell: re-rings every kBellIntervalNs until acknowledged

    // ---- either thread: whoever owns the exchange at that moment ----
    void beginExchange(OpKind kind, const std::vector<uint8_t> *request, uint64_t wallTimeoutNs, uint64_t cpuTimeoutNs);
    bool claimExchange(bool guestRunsOn);
    // hostcall_memory.cc, under hostCallMu_: a host call taken in memory stops owing
    // its reply there (the exchange was claimed, or the guest gave up waiting).
    void forgetHostCallLocked();
    void resumeHostCallCpuLocked();
    // The watcher took the call: its reply may go into guest memory, and the guest's
    // wait is not charged to it, up to kHostCallWaitNs.
    void takeHostCallLocked(uint64_t id);
    // A taken call is still unanswered: the guest may not answer or call again.
    bool hostCallUnanswered();
    // vCPU thread, guest stopped at a HOST_CALL exit: registers the call so that the
    // main thread writes its reply into guest memory itself; false if it may not.
    bool registerExitHostCall(uint64_t id);
    Outcome finishExchange(Outcome o);
    void chargeAfterAnswer(uint64_t cpuNow = 0);
    uint64_t vcpuCpuNs() const;
    void poison(std::string reason);
    std::optional<Outcome> refuseUnlessRunnable(const char *advice);
    void setPollWindow(uint64_t ns);
    // Main thread, as it publishes a request (in memory or to the mailbox).
    void adaptPollWindow(bool metPollingGuest);
    bool writePollTicks(bool skipWindow);
    bool restoreForeseenAfterThis() const;

    // Either thread, with the guest stopped or before publishing a request.
    void writeClockBase();

    // ---- the runner taking or giving back the sandbox (runner.cc) ----
    // Borrows the runner's timers and signal, and re-arms on them what the monitors
    // and the bell still had to run; release() disarms them and keeps what was left.
    void hold(Runner &runner);
    void release();

    // The runner's code: its type says so. It uses the shared state below (the
    // mailbox, events, cancel word, hand-over, exchange record, timers, guest memory)
    // and never the main thread's own (started_, finished_).
    friend class VcpuThread;
    friend class RunnerPool;
    friend class Runner;

    const uint64_t id_;
    MappedBytes image_; // until the guest is set up; empty for a clone
    std::shared_ptr<const Template> template_; // what a clone starts from
    GuestLayout layout_;
    SpinConfig spin_;
    std::function<void()> notify_;

    // Lifetime (main thread only, except exited_).
    bool started_ = false;  // an op was posted
    bool finished_ = false; // stopped (or left to its runner by stopAndJoin)
    std::mutex exitMu_;
    std::condition_variable exitCv_;
    bool exited_ = false; // under exitMu_: the Stop op has run

    // The pool's (under RunnerPool's lock).
    RunState runState_ = RunState::Idle;
    // Under the pool's lock: the index of the runner that took it last (-1: none yet),
    // which takes it again when idle (RunnerPool::wakeOrStartLocked).
    int lastRunner_ = -1;
    // runState_ is, or is about to be, Waiting: set under the pool's lock, read
    // without it by Sandbox::postHostReply, so a reply to a runner still holding the
    // sandbox costs no pool lock.
    std::atomic<bool> parkedInHostWait_{false};
    // The runner's code for this sandbox (owns the VM and vCPU).
    std::unique_ptr<VcpuThread> vcpuThread_;
    // Held by the runner holding the sandbox (VcpuThread::serve) except while it waits
    // for its next op; the main thread's direct restore only try_locks it, so the main
    // thread never waits for a runner (a runner may wait for a direct restore: ~40 us).
    std::mutex vcpuUse_;
    // Exchanges claimed (each once, by whichever side claims it): VcpuThread counts the
    // calls between restores with it, to foresee the next restore.
    std::atomic<uint64_t> exchanges_{0};
    // The ordinal (in exchanges_) of the call a restore is foreseen after, 0 for none:
    // set by each restore (VcpuThread::restoreFollowsCall, under vcpuUse_), read as a
    // request is published (writePollTicks) by whichever thread publishes it, and by
    // the runner before it idles (VcpuThread::restoreForeseen): the one prediction.
    std::atomic<uint64_t> restoreDueAfter_{0};

    std::mutex reasonMu_; // guards notRunnableReason_
    CancelState cancel_;
    Handover handover_;
    ExchangeRecord record_;
    std::atomic<bool> session_{false}; // vCPU thread is running a guest that may poll
    // The guest's poll window, judged by pollRule_ as each request is published
    // (adaptPollWindow, main thread); set to the longest at boot (attachClockAndHandover).
    std::atomic<uint64_t> pollNs_{0};
    PollWindowRule pollRule_{spin_.guestPollNs}; // main thread only
    bool holdsPollSlot_ = false;             // vCPU side: this session holds a CoreBudget slot
    std::atomic<bool> watched_{false};       // the answer watcher watches the exchange in flight
    std::atomic<uint64_t> lastAnswerNs_{0};  // monotonic time the last exchange was claimed
    std::atomic<LastAnswer> lastAnswerPath_{LastAnswer::ByExit}; // how it was taken; stored before its event
    std::atomic<uint64_t> windowEndNs_{0};   // the guest runs on after an answer until then (0: no window)
    std::atomic<bool> windowArmed_{false};   // windowTimer_ is armed (or fired and not yet seen)
    std::atomic<uint64_t> windowDueNs_{0};   // when the armed windowTimer_ fires (monotonic)
    std::atomic<uint64_t> answerCpuNs_{0};   // vCPU CPU clock at the answer while the guest runs on (0: none)
    std::atomic<uint64_t> carriedCpuNs_{0};  // post-answer guest time not yet charged to an exchange
    // Host calls handed over in memory (hostcall_memory.cc). The mutex orders the
    // watcher's take, the main thread's reply and any claim of the exchange: guest
    // memory and the CPU monitor are touched for a call only while it is registered.
    std::mutex hostCallMu_;
    uint64_t memoryHostCallId_ = 0;          // under hostCallMu_: taken, reply may go into memory
    uint64_t takenHostCallId_ = 0;           // under hostCallMu_: the call taken last
    bool hostCallTaken_ = false;             // under hostCallMu_: taken and not yet answered
    bool hostCallCpuPaused_ = false;         // under hostCallMu_: its wait is not charged
    uint64_t hostCallCpuStart_ = 0;          // under hostCallMu_: vCPU CPU clock at the take
    std::atomic<uint64_t> nextHostCallId_{1}; // ids for host-call events, from either thread
    // The host call the guest is stopped in, dispatched to JavaScript and not yet
    // answered: "waiting for host reply <id>". Only the runner holding the sandbox
    // touches it; it outlives the hold when the runner lets the sandbox go for the
    // wait (parked), and the next holder takes it up (VcpuThread::resumeHostCall).
    struct HostWait {
        uint64_t id = 0;           // 0: the guest waits for no reply
        bool givenUp = false;      // taken in memory, then made with an exit (HOST_CALL_EXIT)
        bool replyInMemory = false; // the main thread writes the reply into guest memory (HOST_CALL_TAKEN)
        bool parked = false;       // no runner holds the sandbox for the wait
        uint64_t cpuLeftNs = 0;    // what the CPU monitor had left when the wait began
        uint64_t pauseStartNs = 0; // the sandbox's CPU clock then: the wait is not guest CPU
        uint64_t sleepUntilNs = 0; // a timer sleep (loop_wait.cc), not a reply: when it ends
    };
    HostWait hostWait_;
    // The sleep timer found the parked sleep due (set with parkedInHostWait_'s
    // ordering, as a reply is posted); cleared by the runner before it parks a sleep.
    std::atomic<bool> sleepDue_{false};

    // The sandbox's own CPU clock (vcpuCpuNs): the CPU time of the runners while they
    // held it. Changed by hold/release under timerMu_; read by the holder, by the main
    // thread under timerMu_ (postFast), by the answer watcher while it watches
    // (release waits until it is done).
    clockid_t vcpuClock_{};        // the holder's thread CPU clock
    bool held_ = false;
    uint64_t cpuBeforeHoldNs_ = 0; // this sandbox's CPU time up to the current hold
    uint64_t holdStartCpuNs_ = 0;  // the holder's clock when it took the sandbox

    // The holder's timers, borrowed while a runner holds the sandbox (null otherwise):
    // set under timerMu_, so the main thread's bell and fast post use them only while
    // they are this sandbox's.
    std::mutex timerMu_;
    Runner *holder_ = nullptr;
    ThreadTimer *wallTimer_ = nullptr, *cpuTimer_ = nullptr, *windowTimer_ = nullptr, *bellTimer_ = nullptr;
    std::atomic<bool> bellArmed_{false}; // changed under timerMu_; read without it as a hint
    // What the monitors had left when the last holder let go (0: not armed).
    uint64_t wallDeadlineNs_ = 0; // monotonic
    uint64_t cpuLeftNs_ = 0;
    std::atomic<bool> preemptRequested_{false}; // the holder's quantum is over and others wait
    SignalTarget signalTarget_;

    // Guest (vCPU thread only, between setUpGuest and tearDownGuest).
    // memory_ is also read by the main thread for requests handed over in memory,
    // only while a session runs (the guest exists then).
    std::unique_ptr<GuestMemory> memory_;
    std::atomic<hv::Vcpu *> signalVcpu_{nullptr}; // what the signal handler may interrupt
    bool booted_ = false;
    std::atomic<bool> runnable_{false}; // false after an abort or cancel until a restore
    // The serial of the snapshot last restored while neither the guest nor the host has
    // changed the guest since (0 otherwise): restoring it again has nothing to revert.
    std::atomic<uint64_t> untouchedSince_{0};
    std::string notRunnableReason_;     // under reasonMu_
    int64_t tscOffset_ = 0;             // guest TSC - host TSC
    uint64_t tscKhz_ = 0;               // set before the first entry; read by both threads after boot
};

// Bare ring-3 guest doing `out` in a loop: per-round-trip microseconds of
// KVM_RUN -> exit -> KVM_RUN, measured on the calling thread.
std::vector<double> measureExitFloor(uint32_t iterations);

} // namespace airlock
