// runner.cc — the runner pool: its queue, the runner threads' lives (started lazily,
// retired when idle) and a runner's turn on a sandbox (hold, serve, release).
#include "runner.h"

#include <algorithm>
#include <csignal>
#include <sched.h>
#include <string>
#include <sys/syscall.h>
#include <system_error>
#include <thread>
#include <unistd.h>

#include "call_path_counters.h"
#include "core_budget.h"
#include "sandbox.h"
#include "vcpu_thread.h"

namespace airlock {

namespace {

// AIRLOCK_KVM_RUNNERS as the addon read it (0: none).
std::atomic<int> g_softSizeOverride{0};

// The operator's size when set; else twice the CPUs the process may use (a runner may
// spin or sleep briefly between a guest's exits), at least 2, and never near the
// thread budget the pool is judged by.
int runnerLimit() {
    if (const int forced = g_softSizeOverride.load()) return forced;
    cpu_set_t cpus;
    int allowed = 1;
    if (sched_getaffinity(0, sizeof cpus, &cpus) == 0) allowed = std::max(1, CPU_COUNT(&cpus));
    return std::clamp(2 * allowed, 2, 16);
}

} // namespace

RunnerPool &RunnerPool::instance() {
    // Never destroyed: runner threads may still wait on its lock while the process exits.
    static RunnerPool *pool = new RunnerPool();
    return *pool;
}

RunnerPool::RunnerPool() : limit_(runnerLimit()) {}

void RunnerPool::setSoftSizeOverride(int n) {
    g_softSizeOverride.store(n);
    RunnerPool &pool = instance();
    std::lock_guard<std::mutex> lock(pool.mu_);
    pool.limit_.store(runnerLimit());
}

int RunnerPool::runnerCount() {
    std::lock_guard<std::mutex> lock(mu_);
    return runners_;
}

void RunnerPool::schedule(const std::shared_ptr<Sandbox> &s, bool urgent) {
    std::unique_lock<std::mutex> lock(mu_);
    switch (s->runState_) {
    case RunState::Held:
    case RunState::Done:
        return;
    case RunState::Queued:
        if (urgent) {
            auto it = std::find(queue_.begin(), queue_.end(), s);
            if (it != queue_.begin() && it != queue_.end()) {
                queue_.erase(it);
                queue_.push_front(s);
            }
        }
        return;
    case RunState::Idle:
        if (urgent) return; // a cancel with no exchange suspended in the queue: nothing to end
        break;
    case RunState::Waiting:
        break; // a cancel (first in line) or an op for a guest stopped in a host call's wait
    }
    enqueueLocked(s, urgent);
}

void RunnerPool::resumeWaiting(const std::shared_ptr<Sandbox> &s) {
    std::unique_lock<std::mutex> lock(mu_);
    if (s->runState_ != RunState::Waiting) return;
    enqueueLocked(s, false);
}

// Under mu_: queues `s` (at the front for a cancel) and wakes a runner for it. Throws
// when no runner exists and none can start, leaving `s` as it was.
void RunnerPool::enqueueLocked(const std::shared_ptr<Sandbox> &s, bool front) {
    const RunState was = s->runState_;
    s->runState_ = RunState::Queued;
    s->parkedInHostWait_.store(false);
    if (front)
        queue_.push_front(s);
    else
        queue_.push_back(s);
    queued_.store(static_cast<uint32_t>(queue_.size()));
    try {
        wakeOrStartLocked(*s);
    } catch (...) {
        // No runner exists and none can start: nobody would ever take it.
        if (front)
            queue_.pop_front();
        else
            queue_.pop_back();
        queued_.store(static_cast<uint32_t>(queue_.size()));
        s->runState_ = was;
        s->parkedInHostWait_.store(was == RunState::Waiting);
        throw;
    }
}

// Under mu_, with `s` queued: an idle runner takes it (the one that ran it last if it
// waits, else the latest to go idle), or a new one starts while fewer than limit_
// runners are awake, or the sandbox has to wait and the busy runners' quanta start.
// Throws only when no runner exists and none can start (the runners that exist serve
// the queue in turn otherwise).
void RunnerPool::wakeOrStartLocked(const Sandbox &s) {
    if (!idle_.empty()) {
        auto it = std::find_if(idle_.begin(), idle_.end(), [&](const Runner *r) { return r->index_ == s.lastRunner_; });
        if (it == idle_.end()) it = idle_.end() - 1;
        Runner *r = *it;
        idle_.erase(it);
        r->chosen_ = true;
        r->chosenFor_ = &s;
        // Under the lock: an idle runner outside idle_ may retire once the lock is
        // free, and its condition variable with it.
        r->wake_.notify_one();
        return;
    }
    // Runners started but not yet waiting take queued sandboxes first.
    if (static_cast<size_t>(starting_) >= queue_.size()) return;
    // A lingering runner lets go of its idle sandbox and takes the queue's front.
    if (!lingering_.empty()) {
        lingering_.back()->handover_.wake();
        lingering_.pop_back();
        return;
    }
    if (runners_ - sleeping_ < limit_ && runners_ < kRunnerHardCap) {
        try {
            startRunnerLocked();
            return;
        } catch (const std::exception &) {
            if (runners_ == 0) throw;
        }
    }
    armQuantaLocked();
}

// Under mu_: a sandbox waits for a runner, so each runner holding one yields after a
// quantum of its CPU from now. timer_settime on another thread's timer is allowed:
// a POSIX timer belongs to the process; only its signal goes to the runner.
void RunnerPool::armQuantaLocked() {
    for (Runner *r : live_) {
        if (!r->holding_ || r->quantumArmed_ || !r->quantumTimer_) continue;
        r->quantumTimer_->arm(kRunnerQuantumNs, kRunnerQuantumNs);
        r->quantumArmed_ = true;
    }
}

void RunnerPool::startRunnerLocked() {
    // A runner takes only the cancellation signal (unblocked by bindSignalTarget):
    // process signals meant for Node (SIGINT, SIGCHLD, ...) go to other threads and
    // never interrupt KVM_RUN. Threads inherit the creator's mask.
    sigset_t all, old;
    sigfillset(&all);
    if (int rc = pthread_sigmask(SIG_SETMASK, &all, &old); rc != 0)
        throw std::system_error(rc, std::generic_category(), "pthread_sigmask");
    auto runner = std::make_unique<Runner>(nextIndex_++);
    Runner *r = runner.get();
    live_.push_back(r);
    try {
        std::thread([owned = std::move(runner)] { owned->main(); }).detach();
    } catch (...) {
        live_.pop_back();
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        throw;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr); // restoring a mask read above cannot fail
    ++runners_;
    ++starting_;
    AIRLOCK_COUNT(runnersStarted);
}

void RunnerPool::sleeping(bool asleep) {
    std::lock_guard<std::mutex> lock(mu_);
    if (asleep) {
        ++sleeping_;
        if (!queue_.empty()) wakeOrStartLocked(*queue_.front());
    } else {
        --sleeping_;
    }
}

void RunnerPool::lingering(Sandbox *s, bool asleep) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find(lingering_.begin(), lingering_.end(), s);
    if (asleep && it == lingering_.end())
        lingering_.push_back(s);
    else if (!asleep && it != lingering_.end())
        lingering_.erase(it);
}

std::shared_ptr<Sandbox> RunnerPool::next(Runner &runner, std::shared_ptr<Sandbox> last, Served how) {
    if (last && how == Served::Stopped) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            keepLocked(last, how); // marks it done; never kept
        }
        last.reset();
    }
    std::unique_lock<std::mutex> lock(mu_);
    // The sandbox was released (its signal target cleared): a quantum signal still
    // in flight finds no sandbox.
    if (runner.quantumArmed_) {
        runner.quantumTimer_->disarm();
        runner.quantumArmed_ = false;
    }
    runner.holding_ = false;
    // In the same hold of the lock as the wait below: a sandbox posted to meanwhile
    // finds this runner idle rather than starting another.
    if (runner.fresh_) {
        runner.fresh_ = false;
        --starting_;
    } else if (last && keepLocked(last, how)) {
        AIRLOCK_COUNT(runnerKeeps);
        runner.holding_ = true;
        if (!queue_.empty()) armQuantaLocked();
        return last;
    }
    const Sandbox *wanted = nullptr;
    while (queue_.empty()) {
        runner.chosen_ = false;
        idle_.push_back(&runner);
        const bool woken = runner.wake_.wait_for(lock, std::chrono::nanoseconds(kRunnerRetireNs), [&] { return runner.chosen_; });
        if (!woken) {
            idle_.erase(std::find(idle_.begin(), idle_.end(), &runner));
            AIRLOCK_COUNT(runnersRetired);
            --runners_;
            live_.erase(std::find(live_.begin(), live_.end(), &runner));
            return nullptr;
        }
        // Chosen for a sandbox another runner may have taken meanwhile (one ending its
        // turn takes the queue's front without waiting): then wait again.
        wanted = runner.chosenFor_;
    }
    auto pick = std::find_if(queue_.begin(), queue_.end(), [&](const std::shared_ptr<Sandbox> &q) { return q.get() == wanted; });
    if (pick == queue_.end()) pick = queue_.begin();
    std::shared_ptr<Sandbox> s = std::move(*pick);
    queue_.erase(pick);
    queued_.store(static_cast<uint32_t>(queue_.size()));
    s->runState_ = RunState::Held;
    s->lastRunner_ = runner.index_;
    runner.holding_ = true;
    AIRLOCK_COUNT(runnerTakes);
    if (!queue_.empty()) armQuantaLocked();
    return s;
}

// Under mu_, after a turn, with the sandbox released: true when the same runner
// takes it again at once (work arrived before the pool's lock, and nobody else waits
// for a runner).
bool RunnerPool::keepLocked(const std::shared_ptr<Sandbox> &s, Served how) {
    switch (how) {
    case Served::Stopped:
        s->runState_ = RunState::Done;
        return false;
    case Served::Preempted:
        if (queue_.empty()) return true;
        break;
    case Served::Waiting:
        // A cancel that came before the pool's lock is seen here, under the lock
        // Sandbox::cancel takes. The reply is posted without it: the flag is raised
        // before the reply is looked for, and Sandbox::postHostReply looks at the
        // flag after posting (seq_cst both: one of the two sees the other).
        s->parkedInHostWait_.store(true);
        if (!s->hostWaitOver()) {
            s->runState_ = RunState::Waiting;
            return false;
        }
        s->parkedInHostWait_.store(false);
        if (queue_.empty()) return true;
        break;
    case Served::Idle:
        // Sandbox::post queues only a sandbox no runner holds: an op posted while
        // this runner held it is seen here, under the same lock.
        if (!s->handover_.opWaiting()) {
            s->runState_ = RunState::Idle;
            return false;
        }
        if (queue_.empty()) return true;
        break;
    }
    s->runState_ = RunState::Queued;
    queue_.push_back(s);
    queued_.store(static_cast<uint32_t>(queue_.size()));
    wakeOrStartLocked(*s);
    return false;
}

void Runner::createTimers() {
    if (int rc = pthread_getcpuclockid(pthread_self(), &cpuClock_); rc != 0)
        throw std::system_error(rc, std::generic_category(), "pthread_getcpuclockid");
    const pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
    wallTimer_ = std::make_unique<ThreadTimer>(CLOCK_MONOTONIC, static_cast<int>(TerminatedBy::WallClock), tid);
    cpuTimer_ = std::make_unique<ThreadTimer>(cpuClock_, static_cast<int>(TerminatedBy::CpuTime), tid);
    windowTimer_ = std::make_unique<ThreadTimer>(CLOCK_MONOTONIC, static_cast<int>(TimerTag::Window), tid);
    quantumTimer_ = std::make_unique<ThreadTimer>(cpuClock_, static_cast<int>(TimerTag::Quantum), tid);
    timespec ts;
    if (clock_gettime(cpuClock_, &ts) == 0) lastCpuNs_ = static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
    // Last: timersReady() means all of them exist.
    bellTimer_ = std::make_unique<ThreadTimer>(CLOCK_MONOTONIC, static_cast<int>(TimerTag::Bell), tid);
}

void Runner::main() {
    thread_ = pthread_self();
    // Named, so tools (top -H, /proc/<pid>/task/*/comm) tell guest time from Node's.
    const std::string name = "airlock-run-" + std::to_string(index_);
    pthread_setname_np(thread_, name.c_str());
    try {
        bindSignalTarget(nullptr);
        createTimers();
    } catch (const std::exception &e) {
        timerError_ = e.what();
        bellTimer_.reset(); // not ready: every op this runner takes fails with the reason
    }
    // Whether polling pays here depends on what an exit costs: once per process.
    CoreBudget::instance().measureExitFloorOnce();
    RunnerPool &pool = RunnerPool::instance();
    std::shared_ptr<Sandbox> s;
    Served how = Served::Idle;
    while ((s = pool.next(*this, std::move(s), how))) {
        s->hold(*this);
        how = s->vcpuThread_->serve(*this);
        s->release();
    }
    unbindSignalTarget();
}

} // namespace airlock
