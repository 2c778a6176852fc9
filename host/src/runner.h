// runner.h — the process-wide pool of runner threads that run sandboxes' vCPUs:
// a sandbox with work (an op in its mailbox, a resumed exchange, a cancel of one) is
// queued; a runner takes it, keeps its vCPU while it has work, and gives it back
// (idle) or puts it at the back of the queue (its quantum is over and others wait).
// An idle sandbox holds no thread. docs/ARCHITECTURE.md ("Threads") and
// docs/CANCELLATION.md say who signals whom.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <string>
#include <vector>

#include "cancellation.h"

namespace airlock {

class Sandbox;

// A runner's CPU time on one sandbox before it yields to sandboxes waiting in the
// queue (counted on the runner's CPU clock, so host-call waits asleep do not count),
// from when a sandbox has to wait: the quantum timer runs only then.
constexpr uint64_t kRunnerQuantumNs = 10'000'000;
// A runner that has served a sandbox's last op keeps it this long, asleep (no CPU),
// unless another sandbox needs a runner: an op that follows soon (a restore after a
// call, the next call) then goes to it with one futex wake, without a hand-over.
constexpr uint64_t kRunnerLingerNs = 2'000'000;
// A runner idle this long (no sandbox queued) ends its thread.
constexpr uint64_t kRunnerRetireNs = 2'000'000'000;
// Runners that may exist at once, whatever else: some of them may sleep through the
// last 2 ms of a guest's timer sleep (they hold a sandbox but no CPU), and the pool
// starts another runner for the queue then, up to this many. A host call's wait and
// the rest of a sleep hold no runner (host_wait.cc, loop_wait.cc).
constexpr int kRunnerHardCap = 32;

// One runner thread: its identity and the timers aimed at it. The sandbox it holds
// borrows the timers (Sandbox::hold) and gives them back disarmed (Sandbox::release).
class Runner {
public:
    Runner(int index) : index_(index) {}
    int index() const { return index_; }
    pthread_t thread() const { return thread_; }
    clockid_t cpuClock() const { return cpuClock_; }
    bool timersReady() const { return bellTimer_ != nullptr; }
    const std::string &timerError() const { return timerError_; }

private:
    friend class RunnerPool;
    friend class Sandbox;
    void main();
    void createTimers();

    const int index_;
    pthread_t thread_{};
    clockid_t cpuClock_{};
    // The runner's CPU clock when it last let go of a sandbox (or started): the next
    // sandbox's hold starts there, so taking one costs no clock read (a thread CPU
    // clock is a system call, ~3 us under PVM). The few microseconds a runner spends
    // between two sandboxes are charged to the second.
    uint64_t lastCpuNs_ = 0;
    // Under the pool's lock: whether it holds a sandbox, and whether its quantum timer
    // is armed (only while sandboxes wait in the queue).
    bool holding_ = false;
    bool fresh_ = true; // has not asked the pool for a sandbox yet (counted in starting_)
    bool quantumArmed_ = false;
    // Under the pool's lock, while it waits for a sandbox: it was chosen to take the
    // queue's next one (woken on its own condition variable, so the pool chooses).
    bool chosen_ = false;
    const Sandbox *chosenFor_ = nullptr; // the sandbox it was woken for (compared, never used)
    std::condition_variable wake_;
    std::unique_ptr<ThreadTimer> wallTimer_, cpuTimer_, windowTimer_, bellTimer_, quantumTimer_;
    std::string timerError_;
};

// Where a sandbox stands with the pool (Sandbox::runState_, under the pool's lock).
// Waiting: its guest is stopped in a host call whose reply has not come, or in a
// timer sleep not yet near its end, and no runner holds it; the reply (the sleep
// timer), a cancel or an op queues it.
enum class RunState : uint8_t { Idle, Queued, Held, Waiting, Done };

// What a runner's turn on a sandbox ended with (VcpuThread::serve).
enum class Served {
    Idle,      // no op waits: the sandbox holds no thread until it gets one
    Preempted, // an exchange is in flight but its quantum is over: back of the queue
    Stopped,   // the Stop op ran: the sandbox never runs again
    Waiting,   // its guest waits for a host call's reply: no runner until it comes
};

class RunnerPool {
public:
    static RunnerPool &instance();

    // Any thread: `s` has work. Queues it unless a runner holds it (that runner
    // re-checks its mailbox under the pool's lock before letting go) or it is queued
    // already; `urgent` moves a queued sandbox to the front (a cancel). Throws when
    // no runner exists and none can start.
    void schedule(const std::shared_ptr<Sandbox> &s, bool urgent);
    // Sandboxes waiting for a runner now: the quantum timer's signal handler reads it
    // (lock-free) to decide whether the runner should yield.
    static const std::atomic<uint32_t> &contention() { return instance().queued_; }
    // Any thread: `s`, let go while its guest waits for a host call's reply
    // (RunState::Waiting), now has its reply: queues it. Does nothing otherwise (a
    // runner holding it re-checks under the pool's lock before it lets go).
    void resumeWaiting(const std::shared_ptr<Sandbox> &s);
    // A runner holding a sandbox is about to sleep in a wait (the guest's timer sleep)
    // or wakes from it: while it sleeps, the queue may get another runner.
    void sleeping(bool asleep);
    // A runner holding `s` sleeps in its linger (VcpuThread::waitForOp), or stops:
    // while it does, a sandbox that needs a runner wakes it to let go of `s` first.
    void lingering(Sandbox *s, bool asleep);
    // Runners the pool keeps busy at once (its soft size), and how many exist now.
    int limit() const { return limit_.load(std::memory_order_relaxed); }
    // The operator's soft size (AIRLOCK_KVM_RUNNERS, read by the addon as it loads):
    // at most this many sandboxes run at once instead of 2 x the CPUs; 0 puts the
    // measured size back. Where a guest exit is dear, fewer running sandboxes than
    // free cores let each guest poll for its requests instead of exiting per call
    // (docs/ARCHITECTURE.md, "Runners for throughput"): more calls per second with
    // many sandboxes, at the price of turns of a quantum each.
    static void setSoftSizeOverride(int n);
    int runnerCount();

private:
    RunnerPool();
    friend class Runner;
    // The runner's next sandbox after its turn on `last` (null: its first) ended
    // `how`: `last` again, or the queue's front; blocks; null: retire. A stopped
    // `last` is let go before the runner waits, outside the pool's lock (this may be
    // its last reference, and ~Sandbox takes other locks). Any other `last` stays
    // referenced while the runner waits: at most one sandbox object per runner, whose
    // VM, memory and fds go at its Stop like any other's. (Dropping those too, under
    // the lock, moved the timing of back-to-back calls enough to fail
    // poll-window-calls under the sanitizers in 3 of 3 full runs; 0 of 4 without.)
    std::shared_ptr<Sandbox> next(Runner &runner, std::shared_ptr<Sandbox> last, Served how);
    bool keepLocked(const std::shared_ptr<Sandbox> &s, Served how);
    void enqueueLocked(const std::shared_ptr<Sandbox> &s, bool front);
    void startRunnerLocked();
    void wakeOrStartLocked(const Sandbox &s);
    void armQuantaLocked();

    std::mutex mu_;
    std::deque<std::shared_ptr<Sandbox>> queue_;
    std::vector<Runner *> live_; // every runner thread not retired (each owns its Runner)
    // Runners waiting for a sandbox, the latest to go idle last: a sandbox goes back
    // to the runner that ran it last if that one waits, else to the latest idle one
    // (warm caches; and a placement that pinned a runner apart, the bench's split
    // cores, stays in force: the oldest waiter, as a shared condition variable woke
    // it, handed the sandbox to another runner at every take).
    std::vector<Runner *> idle_;
    std::vector<Sandbox *> lingering_; // sandboxes whose runner lingers on them
    std::atomic<uint32_t> queued_{0}; // queue_.size(), readable from a signal handler
    std::atomic<int> limit_;
    int runners_ = 0;  // threads started and not retired
    int sleeping_ = 0; // holding a sandbox, asleep in a wait
    int starting_ = 0; // started, not yet waiting for a sandbox
    int nextIndex_ = 0;
};

} // namespace airlock
