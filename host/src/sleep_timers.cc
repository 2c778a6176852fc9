// sleep_timers.cc — the timer thread behind SleepTimers: it sleeps until the earliest
// parked sleeper is due, then marks it due and queues it for a runner.
#include "sleep_timers.h"

#include <chrono>
#include <csignal>
#include <pthread.h>
#include <system_error>
#include <thread>
#include <vector>

#include "sandbox.h"
#include "timing.h"

namespace airlock {

namespace {

// The timer thread ends after this long with no sleeper parked.
constexpr uint64_t kSleepTimerRetireNs = 2'000'000'000;

// Invariant: libstdc++'s steady_clock is CLOCK_MONOTONIC on Linux, the clock
// monotonicNs() reads, so a deadline converts by its count alone.
std::chrono::steady_clock::time_point asSteady(uint64_t ns) {
    return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns));
}

} // namespace

SleepTimers &SleepTimers::instance() {
    // Never destroyed: the timer thread may still wait on its lock while the process exits.
    static SleepTimers *timers = new SleepTimers();
    return *timers;
}

void SleepTimers::arm(const std::shared_ptr<Sandbox> &s, uint64_t atNs) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!running_) startLocked();
    auto it = entries_.find(s.get());
    if (it != entries_.end()) {
        due_.erase({it->second.atNs, s.get()});
        it->second = Entry{atNs, s};
    } else {
        entries_.emplace(s.get(), Entry{atNs, s});
    }
    // Two statements: the operands of == may be evaluated in either order, and begin()
    // read before the insertion would never be the new entry.
    const auto at = due_.emplace(atNs, s.get()).first;
    const bool earliest = at == due_.begin();
    lock.unlock();
    if (earliest) cv_.notify_one();
}

void SleepTimers::disarm(const Sandbox *s) {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = entries_.find(s);
    if (it == entries_.end()) return;
    const std::pair<uint64_t, const Sandbox *> key{it->second.atNs, s};
    const bool earliest = *due_.begin() == key;
    due_.erase(key);
    entries_.erase(it);
    lock.unlock();
    // The thread sleeps until the earliest entry: with none left, its retirement
    // counts from now, not from a deadline that no longer exists.
    if (earliest) cv_.notify_one();
}

void SleepTimers::startLocked() {
    // Like a runner, the timer thread takes no process signal meant for Node.
    sigset_t all, old;
    sigfillset(&all);
    if (int rc = pthread_sigmask(SIG_SETMASK, &all, &old); rc != 0)
        throw std::system_error(rc, std::generic_category(), "pthread_sigmask");
    try {
        std::thread([this] { main(); }).detach();
    } catch (...) {
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        throw;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr); // restoring a mask read above cannot fail
    running_ = true;
}

void SleepTimers::main() {
    pthread_setname_np(pthread_self(), "airlock-sleep");
    std::vector<std::shared_ptr<Sandbox>> fired;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        if (due_.empty()) {
            const bool armed = cv_.wait_for(lock, std::chrono::nanoseconds(kSleepTimerRetireNs), [this] { return !due_.empty(); });
            if (!armed) {
                running_ = false;
                return;
            }
        }
        const uint64_t now = monotonicNs();
        while (!due_.empty() && due_.begin()->first <= now) {
            auto it = entries_.find(due_.begin()->second);
            if (std::shared_ptr<Sandbox> s = it->second.sandbox.lock()) fired.push_back(std::move(s));
            entries_.erase(it);
            due_.erase(due_.begin());
        }
        if (fired.empty()) {
            cv_.wait_until(lock, asSteady(due_.begin()->first));
            continue;
        }
        // Unlocked: queueing takes the pool's lock, and a runner may arm meanwhile.
        lock.unlock();
        for (const std::shared_ptr<Sandbox> &s : fired) s->sleepDue();
        fired.clear(); // the last reference to a disposed sandbox may go here
        lock.lock();
    }
}

} // namespace airlock
