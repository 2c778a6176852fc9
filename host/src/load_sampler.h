// load_sampler.h — the arithmetic of the busy-wait budget, apart from where its inputs
// come from (/proc/stat, the process's CPU clock, thread affinities: core_budget.cc):
// the load others put on the call path's CPUs from two successive readings, and the
// polling cap that load leaves. Pure, so its rules are tested without the machine's
// real load (test/host/load-sampler.test.ts).
#pragma once

#include <cstdint>
#include <sched.h>

namespace airlock {

// One reading of the CPUs the call path's threads may run on.
struct LoadReading {
    cpu_set_t cpus;        // the union of the main thread's and the vCPU threads' affinities
    uint64_t busyTicks;    // busy ticks (USER_HZ) of those CPUs since boot, /proc/stat
    uint64_t ourNs;        // this process's CPU time since it started (every thread)
    uint64_t nowNs;        // CLOCK_MONOTONIC
};

// Others' load in cores, smoothed over about two readings. Not thread-safe: one
// sampling thread at a time (CoreBudget holds its lock).
class LoadSampler {
public:
    explicit LoadSampler(double tickNs) : tickNs_(tickNs) {}
    // Takes a reading; a reading over another set of CPUs than the last (a thread
    // re-pinned meanwhile) only restarts the baseline.
    void add(const LoadReading &r);
    // Whether a reading ever spanned an interval (before that, others() is 0).
    bool known() const { return known_; }
    double others() const { return others_; }

private:
    double tickNs_;
    LoadReading last_{};
    bool haveLast_ = false;
    double others_ = 0;
    bool known_ = false;
};

// The cap on guests that poll at once: the `usable` CPUs less others' load, less one
// for the Node main thread, with two thresholds (a core counts as free again once
// others leave three quarters of it, and stops counting once they take more than 0.6
// of it) so a load hovering near one does not flip the cap from reading to reading;
// `prev` is the cap in force. Zero where an exit is cheap (`exitFloorNs` below
// `cheapExitNs`) or unknown (0).
int pollingCap(int usable, double others, int prev, uint64_t exitFloorNs, uint64_t cheapExitNs);

} // namespace airlock
