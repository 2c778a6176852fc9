// answer_watcher.cc — the thread that takes answers a guest hands over in memory
// (answer_watcher.h): a watch list, a bounded spin per watch, a futex sleep when idle.
#include "answer_watcher.h"

#include <csignal>
#include <pthread.h>
#include <sched.h>
#include <system_error>

#include "hostcall_memory.h"
#include "sandbox.h"
#include "timing.h"

namespace airlock {

namespace {
// The longest a request waits in memory for its answer before the guest is told to
// answer with an exit: a few small calls' worth; longer calls pay one exit, which is
// small beside them.
constexpr uint64_t kWatchNs = 150'000;
// How long the watcher spins between yields of its core: a guest starved by it waits
// this long at most per turn.
constexpr uint64_t kWatchYieldNs = kSpinYieldNs;
} // namespace

AnswerWatcher &AnswerWatcher::instance() {
    // Never destroyed: the detached thread uses it until the process ends.
    static AnswerWatcher *watcher = new AnswerWatcher();
    return *watcher;
}

void AnswerWatcher::start() {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_) return;
    // Like a vCPU thread, it takes no process signal meant for Node.
    sigset_t all, old;
    sigfillset(&all);
    if (int rc = pthread_sigmask(SIG_SETMASK, &all, &old); rc != 0)
        throw std::system_error(rc, std::generic_category(), "pthread_sigmask");
    try {
        std::thread([this] { run(); }).detach();
    } catch (...) {
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        throw;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr); // restoring a mask read above cannot fail
    started_ = true;
}

void AnswerWatcher::lingerForReply() { lingerUntilNs_ = monotonicNs() + kHostCallWaitNs; }

bool AnswerWatcher::watch(std::shared_ptr<Sandbox> sandbox) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (!started_) return false;
        incoming_.push_back({std::move(sandbox), 0});
    }
    seq_.fetch_add(1);
    if (sleeping_.load()) futexWake(&seq_);
    return true;
}

void AnswerWatcher::run() {
    pthread_setname_np(pthread_self(), "airlock-watch");
    std::vector<Entry> watching;
    uint64_t nextYieldNs = 0;
    for (;;) {
        const uint32_t seq = seq_.load();
        {
            std::lock_guard<std::mutex> lock(mu_);
            // The bound runs from this thread's first look, not from watch(): waking
            // it from its futex can take longer than the bound on a busy or nested
            // host, and a watch that expires unseen only costs the guest an exit.
            const uint64_t start = incoming_.empty() ? 0 : monotonicNs();
            // A spin starts now: the first yield comes only after a stretch of it (a
            // yield at once would hand a just-woken watcher's turn to any other thread).
            if (watching.empty() && start) nextYieldNs = start + kWatchYieldNs;
            for (Entry &e : incoming_) {
                e.giveUpNs = start + kWatchNs;
                watching.push_back(std::move(e));
            }
            incoming_.clear();
        }
        if (watching.empty()) {
            // A host call just taken from memory comes back as a watch within tens of
            // microseconds (the main thread's reply), and waking this thread from its
            // futex can cost more than the guest waits for it on a nested host: linger
            // until the guest would give up, yielding the core to the main thread
            // (which needs it to answer) as often as it wants it.
            if (monotonicNs() < lingerUntilNs_) {
                for (int i = 0; i < 64 && seq_.load() == seq; ++i) __builtin_ia32_pause();
                if (seq_.load() == seq) sched_yield();
                continue;
            }
            // seq_cst: a watch() after the store sees sleeping_ and wakes us; one
            // before it moved seq_, so the wait returns at once.
            sleeping_.store(true);
            futexWait(&seq_, seq);
            sleeping_.store(false);
            continue;
        }
        const uint64_t now = monotonicNs();
        // The guest it watches may share this core (the scheduler put its runner here,
        // or the other core is busy): a spin that never yields starved it for the whole
        // bound, then sent it to an exit after all (watchesGivenUp 0.4-0.8 per call with
        // the cap forced to 1 on a busy host). A yield every kWatchYieldNs of spinning
        // costs a system call when the core is ours alone.
        if (now >= nextYieldNs) {
            sched_yield();
            nextYieldNs = now + kWatchYieldNs;
        }
        for (size_t i = 0; i < watching.size();) {
            if (watching[i].sandbox->watchAnswer(now >= watching[i].giveUpNs)) {
                watching[i] = std::move(watching.back());
                watching.pop_back(); // drops the reference: it may free the sandbox here
            } else {
                ++i;
            }
        }
        __builtin_ia32_pause();
    }
}

} // namespace airlock
