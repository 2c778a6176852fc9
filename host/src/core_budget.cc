// core_budget.cc — the process-wide busy-wait budget (core_budget.h): samples the
// cores this process may use and the load others put on them, and hands out polling
// slots against the resulting cap.
#include "core_budget.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <ctime>
#include <sys/syscall.h>
#include <sched.h>
#include <unistd.h>
#include <vector>

#include "call_path_counters.h"
#include "sandbox.h"
#include "timing.h"

namespace airlock {

namespace {
// Resampling the load this often costs one read of /proc/stat per interval.
constexpr uint64_t kSampleIntervalNs = 200'000'000;
// The first interval on a new CPU set: long enough for a few clock ticks per CPU
// (USER_HZ 100: 5 ticks each), short beside a placement that lasts.
constexpr uint64_t kFirstSampleIntervalNs = 50'000'000;
// Below this exit floor an exit costs less than the core a poll burns: take the exit.
constexpr uint64_t kCheapExitNs = 5'000;
// Round trips timed for the exit floor: enough for a stable median, a few ms in all.
constexpr uint32_t kFloorIterations = 200;
// Where the call path's threads may run is checked this often: a few syscalls, and a
// thread re-pinned (say, a vCPU thread moved to a core of its own) changes the right
// call path within a few hundred calls.
constexpr uint64_t kAffinityIntervalNs = 10'000'000;
// Placement is judged from this many vCPU threads at most: with thousands of sandboxes,
// asking each thread's affinity every check would cost more than the polls it decides.
constexpr size_t kMaxPathThreads = 64;

uint64_t processCpuNs() {
    timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
}

// Busy ticks (USER_HZ) of the CPUs in `cpus`, summed from /proc/stat; 0 if unreadable.
uint64_t busyTicks(const cpu_set_t &cpus) {
    FILE *f = std::fopen("/proc/stat", "re");
    if (!f) return 0;
    uint64_t busy = 0;
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
        unsigned cpu;
        unsigned long long user, nice, system, idle, iowait, irq, softirq, steal;
        // The aggregate "cpu " line has no number and fails the match; so do the
        // lines after the per-CPU ones.
        if (std::sscanf(line, "cpu%u %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &user, &nice, &system, &idle,
                        &iowait, &irq, &softirq, &steal) != 9)
            continue;
        if (cpu < CPU_SETSIZE && CPU_ISSET(cpu, &cpus)) busy += user + nice + system + irq + softirq + steal;
    }
    std::fclose(f);
    return busy;
}
// The main thread's CPUs (its tid is the pid); false if they cannot be read.
bool mainThreadCpus(cpu_set_t &cpus) {
    static const pid_t mainThread = getpid();
    CPU_ZERO(&cpus);
    return sched_getaffinity(mainThread, sizeof cpus, &cpus) == 0;
}

// Whether `cpus` holds every online CPU: then no other thread can add one.
bool allCpus(const cpu_set_t &cpus) {
    // Read once: glibc reads a file under /sys for it, and CPUs rarely come and go.
    static const long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 && CPU_COUNT(&cpus) >= online;
}

// The vCPU threads that ever ran a guest and still live: each registers itself with its
// first session and leaves when it ends (a thread_local's destructor). Never destroyed:
// a detached vCPU thread may end after static destructors ran.
struct PathThreads {
    std::mutex mu;
    std::vector<pid_t> tids;
};
PathThreads &pathThreads() {
    static PathThreads *threads = new PathThreads();
    return *threads;
}

struct PathThreadRegistration {
    pid_t tid = 0;
    void enter() {
        if (tid) return;
        tid = static_cast<pid_t>(syscall(SYS_gettid));
        std::lock_guard<std::mutex> lock(pathThreads().mu);
        pathThreads().tids.push_back(tid);
    }
    ~PathThreadRegistration() {
        if (!tid) return;
        std::lock_guard<std::mutex> lock(pathThreads().mu);
        std::vector<pid_t> &tids = pathThreads().tids;
        tids.erase(std::remove(tids.begin(), tids.end(), tid), tids.end());
    }
};
thread_local PathThreadRegistration g_registration;

// The CPUs the main thread or any vCPU thread may run on: a vCPU thread pinned apart
// from the main thread gives a poll a core of its own; all of them on one core leave
// none (sched_getaffinity(0) alone would ask only the calling thread).
bool callPathCpus(cpu_set_t &cpus) {
    if (!mainThreadCpus(cpus)) return false;
    if (allCpus(cpus)) return true; // no thread can add a CPU: none is asked
    std::vector<pid_t> threads;
    {
        std::lock_guard<std::mutex> lock(pathThreads().mu);
        const std::vector<pid_t> &all = pathThreads().tids;
        threads.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(std::min(all.size(), kMaxPathThreads)));
    }
    for (pid_t tid : threads) {
        if (allCpus(cpus)) break;
        cpu_set_t one;
        CPU_ZERO(&one);
        // A thread that ends meanwhile has no placement any more: it adds nothing.
        if (sched_getaffinity(tid, sizeof one, &one) == 0) CPU_OR(&cpus, &cpus, &one);
    }
    return true;
}
} // namespace

CoreBudget::CoreBudget() : sampler_(1e9 / static_cast<double>(sysconf(_SC_CLK_TCK))) {}

CoreBudget &CoreBudget::instance() {
    static CoreBudget budget;
    return budget;
}

void CoreBudget::measureExitFloorOnce() {
    std::call_once(floorOnce_, [this] {
        try {
            std::vector<double> us = measureExitFloor(kFloorIterations);
            std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
            exitFloorNs_.store(std::max<uint64_t>(1, static_cast<uint64_t>(us[us.size() / 2] * 1000)));
        } catch (const std::exception &) {
            // Unknown floor: nobody polls (one exit per call is always correct).
        }
        nextSampleNs_.store(0); // the cap depends on the floor: resample now
    });
}

// What the cap depends on: where the call path's threads may run (checked often, so
// re-pinning a thread takes effect within a few calls' worth of time), and the load
// others put on those cores (/proc/stat, resampled seldom: it costs a file read).
void CoreBudget::sampleLoad(const cpu_set_t &cpus, uint64_t now) {
    LoadReading r;
    r.cpus = cpus;
    r.busyTicks = busyTicks(cpus);
    r.ourNs = processCpuNs();
    r.nowNs = now;
    sampler_.add(r);
    othersLoad_.store(sampler_.others(), std::memory_order_relaxed);
}

int CoreBudget::capFromSamples(int usable) {
    if (const int forced = override_.load(); forced >= 0) return forced;
    return sampler_.cap(usable, cap_.load(std::memory_order_relaxed), exitFloorNs_.load(), kCheapExitNs);
}

void CoreBudget::refresh() {
    const uint64_t now = monotonicNs();
    if (now < nextSampleNs_.load(std::memory_order_relaxed)) return;
    std::unique_lock<std::mutex> lock(sampleMu_, std::try_to_lock);
    if (!lock.owns_lock()) return; // another thread samples: use the current cap
    nextSampleNs_.store(now + kAffinityIntervalNs, std::memory_order_relaxed);
    cpu_set_t cpus;
    const int usable = callPathCpus(cpus) ? CPU_COUNT(&cpus) : 0;
    cores_.store(usable, std::memory_order_relaxed);
    if (usable > 0) {
        // A new set is read at once (a baseline) and measured after a short first
        // interval: the bench's placements last a few hundred ms, and the load of the
        // old set said nothing of the new one.
        const bool moved = sampler_.setChanged(cpus);
        if (moved || now >= nextLoadSampleNs_.load(std::memory_order_relaxed)) {
            nextLoadSampleNs_.store(now + (moved ? kFirstSampleIntervalNs : kSampleIntervalNs), std::memory_order_relaxed);
            sampleLoad(cpus, now);
        }
    }
    const int cap = capFromSamples(usable);
    if (cap_.exchange(cap, std::memory_order_relaxed) != cap) AIRLOCK_COUNT(capChanges);
}

bool CoreBudget::acquire() {
    refresh();
    const int cap = cap_.load(std::memory_order_relaxed);
    if (sessions_.load(std::memory_order_relaxed) > cap) return false;
    int held = holders_.load();
    while (held < cap)
        if (holders_.compare_exchange_weak(held, held + 1)) return true;
    return false;
}

void CoreBudget::release() { holders_.fetch_sub(1); }

void CoreBudget::sessionStarted() {
    g_registration.enter();
    sessions_.fetch_add(1, std::memory_order_relaxed);
}

bool CoreBudget::spinAllowed(int ownSlots, int ownSessions) {
    refresh();
    const int busy = std::max(holders_.load(std::memory_order_relaxed) - ownSlots,
                              sessions_.load(std::memory_order_relaxed) - ownSessions);
    return busy < cap_.load(std::memory_order_relaxed);
}

// Asked as each request is published: by the vCPU thread before its guest's session
// counts (the exit path), or by the main thread while it runs (a request in memory).
bool CoreBudget::pollAllowed() {
    refresh();
    const int cap = cap_.load(std::memory_order_relaxed);
    return cap > 0 && sessions_.load(std::memory_order_relaxed) <= cap;
}

} // namespace airlock
