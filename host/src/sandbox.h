// sandbox.h — one micro-VM and the dedicated thread that runs its vCPU: guest setup,
// the exchange loop (requests, host calls, responses), cancellation (kill and the
// wall-clock / CPU-time monitors), snapshot/restore, the two handoffs between the
// Node main thread and the vCPU thread, and the hand-over to a polling guest that
// skips both. Knows nothing of N-API.
#pragma once

#include <atomic>
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
#include "guest_memory.h"
#include "layout.h"

namespace airlock {

enum class TerminatedBy : uint32_t { None = 0, Kill = 1, WallClock = 2, CpuTime = 3 };
const char *terminatedByName(TerminatedBy why);

enum class OutcomeCode { Ok, Cancelled, GuestAbort, Internal, InvalidArg, Poisoned };

// Guest state captured between requests. Belongs to the sandbox that made it.
struct Snapshot {
    struct Range {
        uint64_t gpa = 0;
        std::vector<uint8_t> bytes;
    };
    uint64_t ownerId = 0;
    hv::Registers regs;
    hv::SpecialRegisters sregs;
    hv::ExtendedState cpuExtended; // XSAVE image + XCRs: every vector register, not only SSE
    std::vector<Range> ranges;
    uint64_t heapHighWater = 0; // clamped into the heap
    size_t bytes() const;
};

struct Outcome {
    OutcomeCode code = OutcomeCode::Ok;
    std::string message;
    TerminatedBy terminatedBy = TerminatedBy::None;
    uint64_t wallNs = 0;
    uint64_t cpuNs = 0;
    std::vector<uint8_t> output;
    std::shared_ptr<const Snapshot> snapshot;
};

enum class OpKind { Boot, Exchange, Snapshot, Restore, Stop };

struct Op {
    OpKind kind = OpKind::Stop;
    std::vector<uint8_t> request;
    uint64_t wallTimeoutNs = 0; // 0 = no monitor
    uint64_t cpuTimeoutNs = 0;
    std::shared_ptr<const Snapshot> snapshot;
};

enum class EventKind { HostCall, Done };

struct Event {
    EventKind kind = EventKind::Done;
    OpKind op = OpKind::Stop;     // Done: which operation finished
    uint64_t hostCallId = 0;      // HostCall: answer with this id
    std::vector<uint8_t> hostCallOutput;
    Outcome outcome;              // Done
};

struct SpinConfig {
    uint64_t vcpuSpinNs = 50'000; // vCPU thread: spin before sleeping for the next op / reply
    uint64_t mainSpinNs = 150'000; // main thread: spin after posting before falling back to notify
    uint64_t guestPollNs = 50'000; // polling guest: wait for the next request before parking
};

class Sandbox {
public:
    // Validates the image and the sizes (throws ArgumentError); allocates nothing big.
    // `notify` is called from the vCPU thread when events are waiting and the main
    // thread is not spinning for them.
    Sandbox(const uint8_t *image, size_t imageSize, const SandboxConfig &config, const SpinConfig &spin,
            std::function<void()> notify);
    ~Sandbox(); // stops and joins the vCPU thread
    Sandbox(const Sandbox &) = delete;
    Sandbox &operator=(const Sandbox &) = delete;

    uint64_t id() const { return id_; }
    const GuestLayout &layout() const { return layout_; }
    const SpinConfig &spin() const { return spin_; }

    // --- main thread ---
    void post(Op op);                                         // starts the thread on first use
    // Hands an Exchange straight to a guest polling for it (no exit, no vCPU-thread
    // handoff). False when the guest is not polling: post() it instead.
    bool postFast(const Op &op);
    void postHostReply(uint64_t hostCallId, std::vector<uint8_t> reply);
    void cancel(TerminatedBy why);                            // the running exchange ends ERR_CANCELLED
    // Waits up to `spinNs` for events; returns what is there (maybe nothing, in which
    // case `notify` fires when something arrives).
    std::vector<Event> awaitEvents(uint64_t spinNs);
    std::vector<Event> drainEvents();
    void stopAndJoin();                                       // synchronous teardown
    void join();                                              // after the Stop op's Done event

private:
    struct Reply {
        uint64_t id;
        std::vector<uint8_t> bytes;
    };

    // An exchange (Boot or Exchange op) from the moment it is published until exactly
    // one side claims it: the main thread when the guest handed the response over in
    // memory, the vCPU thread on an exit, a cancellation or an abort.
    enum ExchangeState : int { kNoExchange = 0, kPosting = 1, kInFlight = 2, kClaimed = 3 };
    struct ExchangeRecord {
        OpKind op = OpKind::Exchange;
        uint64_t wallStart = 0;
        uint64_t cpuStart = 0;
        uint64_t wallTimeoutNs = 0;
        uint64_t cpuTimeoutNs = 0;
        std::atomic<uint64_t> pausedCpuNs{0}; // vCPU time spent waiting for host functions
        std::atomic<bool> guestEntered{false}; // false until the guest may have run it
    };

    // both threads (whoever owns the exchange at that moment)
    void beginExchange(OpKind kind, const std::vector<uint8_t> *request, uint64_t wallTimeoutNs, uint64_t cpuTimeoutNs);
    bool claimExchange();
    int settledExchange();
    Outcome finishExchange(Outcome o);
    uint64_t vcpuCpuNs() const;
    uint32_t *pollWord() const;
    void poison(std::string reason);
    std::optional<Event> takeFastResult();
    bool readOutput(std::vector<uint8_t> &out, std::string &error) const;
    std::optional<Outcome> refuseUnlessRunnable(const char *advice);
    static bool fastAnswered(uint32_t poll);
    void setPollWindow(uint64_t ns);
    void pollHit();

    // vCPU thread
    void threadMain();
    std::optional<Outcome> handle(const Op &op);
    std::optional<Outcome> boot();
    void startExchange(const Op &op);
    void runSession();
    Outcome takeSnapshot();
    Outcome restoreSnapshot(const Snapshot &snap);
    void setUpGuest();
    void tearDownGuest();
    void emit(Event ev);
    template <typename Ready> bool waitFor(Ready ready, bool stopOnCancel);
    void writeClockBase();
    void writeHostReturn(const std::vector<uint8_t> &reply);
    std::string describeExit(const hv::Exit &exit);
    std::string abortMessage(const uint8_t *out, uint32_t len);
    uint64_t clampHeapHighWater();

    void wake();

    const uint64_t id_;
    std::vector<uint8_t> image_;
    GuestLayout layout_;
    SpinConfig spin_;
    std::function<void()> notify_;

    std::thread thread_;
    bool threadStarted_ = false; // main thread only
    bool joined_ = false;

    // Mailbox (main -> vCPU).
    std::mutex mu_;
    std::deque<Op> ops_;
    std::optional<Reply> reply_;
    std::atomic<bool> opReady_{false};
    std::atomic<bool> replyReady_{false};
    std::atomic<uint32_t> wakeSeq_{0}; // futex word: bumped on every post and by the signal handler
    std::atomic<bool> vcpuSleeping_{false};
    std::atomic<uint32_t> cancelReason_{0}; // TerminatedBy of the exchange in flight
    std::atomic<bool> kick_{false};         // ops wait: take the guest out of its poll

    std::atomic<int> exchange_{kNoExchange};
    ExchangeRecord record_;
    bool fastInFlight_ = false;          // main thread: the exchange in flight was posted fast
    std::atomic<bool> session_{false};   // vCPU thread is running a guest that may poll
    // The guest's poll window adapts like halt polling: it doubles when a request
    // arrives in it (or would have), halves when the guest parks having waited in
    // vain, down to zero. Requests spaced out, or a host too busy to answer in time,
    // so stop costing the guest's core; back-to-back calls keep it at the maximum.
    std::atomic<uint64_t> pollNs_{0};
    std::atomic<uint64_t> lastAnswerNs_{0}; // monotonic time the last exchange was claimed
    clockid_t vcpuClock_{};              // the vCPU thread's CPU-time clock

    // Events (vCPU -> main).
    std::deque<Event> events_;
    enum HandoffState : int { kIdle = 0, kSpinning = 1, kPosted = 2 };
    std::atomic<int> handoff_{kIdle};
    // Last CPU each side was seen on (a hint): a spinner never spins on the core the
    // thread it waits for wants.
    std::atomic<int> mainCpu_{-1};
    std::atomic<int> vcpuCpu_{-1};

    // Guest (vCPU thread only, between setUpGuest and tearDownGuest).
    std::unique_ptr<GuestMemory> memory_;
    std::unique_ptr<hv::Vm> vm_;
    std::unique_ptr<hv::Vcpu> vcpu_;
    std::atomic<hv::Vcpu *> signalVcpu_{nullptr}; // what the signal handler may interrupt
    bool booted_ = false;
    std::atomic<bool> runnable_{false}; // false after an abort or cancel until a restore
    std::string notRunnableReason_;     // under mu_
    int64_t tscOffset_ = 0; // guest TSC - host TSC
    uint64_t tscKhz_ = 0;   // set before the first entry; read by both threads after boot
    uint64_t nextHostCallId_ = 1;
    void *wallTimer_ = nullptr;
    void *cpuTimer_ = nullptr;
    bool timersReady_ = false;

    friend struct SignalAccess;
};

// Bare ring-3 guest doing `out` in a loop: per-round-trip microseconds of
// KVM_RUN -> exit -> KVM_RUN, measured on the calling thread.
std::vector<double> measureExitFloor(uint32_t iterations);

} // namespace airlock
