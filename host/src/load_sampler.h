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
    // re-pinned meanwhile) only restarts the baseline, and forgets the load measured
    // on the old set: it is another quantity (others' load on CPU 0 alone says little
    // of their load on CPUs 0 and 1).
    void add(const LoadReading &r);
    // Whether the last reading's set differs from the one before (or is the first).
    bool setChanged(const cpu_set_t &cpus) const { return !haveLast_ || !CPU_EQUAL(&cpus, &last_.cpus); }
    // Intervals measured on the current set since it became the set (0: others() is
    // 0, unknown, as at a process's start).
    int samplesOfSet() const { return samplesOfSet_; }
    double others() const { return others_; }
    // The cap for `usable` CPUs (the current set's) now, `inForce` being the cap in
    // force (pollingCap below, with the set's rule for `prev`).
    int cap(int usable, int inForce, uint64_t exitFloorNs, uint64_t cheapExitNs) const;

private:
    double tickNs_;
    LoadReading last_{};
    bool haveLast_ = false;
    double others_ = 0;
    int samplesOfSet_ = 0;
};

// The cap on guests that poll at once: the `usable` CPUs less others' load, less one
// for the Node main thread, with two thresholds (a core counts as free again once
// others leave three quarters of it, and stops counting once they take more than 0.6
// of it) so a load hovering near one does not flip the cap from reading to reading;
// `prev` is the cap in force (after a change of the CPU set, the new set's maximum:
// core_budget.cc). Zero where an exit is cheap (`exitFloorNs` below
// `cheapExitNs`) or unknown (0).
int pollingCap(int usable, double others, int prev, uint64_t exitFloorNs, uint64_t cheapExitNs);

} // namespace airlock
