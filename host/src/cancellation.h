// cancellation.h — how the host stops a sandbox's vCPU: ONE atomic state word (the
// cancel reason and the kick), the real-time signal that carries it into KVM_RUN or
// a futex wait on the runner thread holding the sandbox, and the POSIX timers aimed
// at that runner (wall-clock and CPU monitors, the post-answer window, the interrupt
// bell that re-rings until acknowledged, and the runner's quantum). The timers
// belong to a runner (runner.h); the sandbox it holds borrows them, and a hand-over
// moves what they still had to run. docs/CANCELLATION.md is the prose version.
#pragma once

#include <atomic>
#include <cstdint>
#include <ctime>
#include <mutex>
#include <stdexcept>

#include "../hv/hypervisor.h"

namespace airlock {

enum class TerminatedBy : uint32_t { None = 0, Kill = 1, WallClock = 2, CpuTime = 3 };
const char *terminatedByName(TerminatedBy why);

// What a timer's signal says (sigev_value). Monitors carry their TerminatedBy.
enum class TimerTag : int { Bell = 16, Window = 17, Quantum = 18 };

// The state word. Written by the main thread (kill, kick, reset), by the signal
// handler (monitor reasons) and read by the vCPU thread; every operation is seq_cst
// unless noted, because each pairs with a load of ANOTHER variable on the other side
// (opReady_/session_, the exchange state) where only a single total order rules out
// both sides missing each other.
class CancelState {
public:
    static constexpr uint32_t kReasonMask = 0xff;
    static constexpr uint32_t kKick = 1u << 8; // take a polling guest out: an op waits

    // First reason wins; false when a reason was already recorded. Async-signal-safe.
    bool requestCancel(TerminatedBy why) noexcept {
        uint32_t cur = word_.load();
        do {
            if (cur & kReasonMask) return false;
        } while (!word_.compare_exchange_weak(cur, cur | static_cast<uint32_t>(why)));
        return true;
    }
    void requestKick() noexcept { word_.fetch_or(kKick); }
    void clearKick() noexcept { word_.fetch_and(~kKick); }
    // Main thread, before posting a Boot or Exchange (nothing of the last one is left
    // to stop): a late kill of the previous request cannot cancel the next one.
    void resetForExchange() noexcept { word_.store(0); }
    TerminatedBy reason() const noexcept { return static_cast<TerminatedBy>(word_.load() & kReasonMask); }
    bool cancelled() const noexcept { return (word_.load() & kReasonMask) != 0; }
    // The signal handler interrupts the vCPU only for these.
    bool wantsInterrupt() const noexcept { return word_.load() != 0; }

private:
    std::atomic<uint32_t> word_{0};
};

// What the signal handler may touch of the sandbox a runner holds. Lives as long as
// the sandbox; the runner points its thread at it only while it holds the sandbox;
// lock-free atomics only.
struct SignalTarget {
    CancelState *state = nullptr;
    std::atomic<uint32_t> *wakeSeq = nullptr;     // futex word the runner sleeps on
    std::atomic<hv::Vcpu *> *vcpu = nullptr;      // null outside a guest's lifetime
    std::atomic<bool> *preempt = nullptr;         // set by the quantum: yield to the queue
    const std::atomic<uint32_t> *contention = nullptr; // sandboxes waiting for a runner
};

// Selects the cancellation signal before the first VM: 0 = automatic (the first free
// real-time signal from SIGRTMIN+4, or AIRLOCK_KVM_SIGNAL from the environment).
// Throws std::invalid_argument for a non-real-time signal or one already handled by
// someone else, std::logic_error once a different signal is installed.
void setCancelSignal(int sig);
// Installs the handler on first use; throws std::runtime_error naming the reason.
int cancelSignal();

// Binds the calling thread (a runner) to `target` (null: none yet) and unblocks the
// signal on it.
void bindSignalTarget(SignalTarget *target);
void unbindSignalTarget();
// The calling runner takes (or, with null, gives back) a sandbox: its signals act on
// `target` from now on. One word, so a handler sees the old target or the new one.
void retargetSignal(SignalTarget *target) noexcept;

// A POSIX timer that signals one thread (SIGEV_THREAD_ID) with the cancellation
// signal; every call checks its result and throws std::system_error.
class ThreadTimer {
public:
    ThreadTimer(clockid_t clock, int tag, pid_t tid);
    ~ThreadTimer();
    ThreadTimer(const ThreadTimer &) = delete;
    ThreadTimer &operator=(const ThreadTimer &) = delete;

    void arm(uint64_t ns, uint64_t intervalNs = 0);
    // Disarms; returns the time that was left (0 when it was not armed).
    uint64_t disarm();

private:
    timer_t timer_{};
};

} // namespace airlock
