// core_budget.h — the process-wide budget for busy-waiting: how many guests may poll
// for their next request (and vCPU threads spin for an op or a host reply) at once.
// Busy-waiting pays only with a core nobody else wants: the cap is the cores the call
// path's threads may run on (the union of the affinities of the main thread and the
// vCPU threads) that others leave idle (/proc/stat), less one for
// the Node main thread; and zero where an exit is cheap (the exit floor, measured
// once per process), since then one exit per call costs less than a core.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <sched.h>
#include <sys/types.h>
#include <vector>

#include "load_sampler.h"

namespace airlock {

class CoreBudget {
public:
    static CoreBudget &instance();

    // vCPU thread, once before its first guest: measures the exit floor unless another
    // thread did (the others do not wait for it: until it is known, nobody polls).
    void measureExitFloorOnce();

    // A polling slot for a guest that runs on after its answer; false: it must not
    // poll (answer with an exit, park). Every true is paired with one release().
    bool acquire();
    void release();
    // Whether a short spin (a vCPU thread waiting for its next op or host reply) has a
    // free core now. Takes no slot: such spins are bounded by vcpuSpinUs. A thread that
    // asks from inside its own session (a host reply) passes its own slot and session:
    // they are the spin itself, not a guest it would take a core from (counting them
    // kept every host reply asleep with one guest and one free core).
    bool spinAllowed(int ownSlots = 0, int ownSessions = 0);
    // Whether a guest may be given a poll window at all now (written into poll_ticks).
    bool pollAllowed();

    // vCPU threads: a guest of theirs runs (an exchange, then maybe a window) / stopped.
    // A guest that polls holds a core while the others' exchanges need one: with more
    // guests running than the cap, none polls (each answers with an exit) and no
    // thread spins, so sandboxes called at once run side by side instead of each
    // waiting for a poller's core.
    // The first session of a thread also registers it as a vCPU thread whose placement
    // counts (until it ends).
    void sessionStarted();
    void sessionEnded() { sessions_.fetch_sub(1, std::memory_order_relaxed); }

    // The operator's cap (AIRLOCK_KVM_POLLERS, read by the addon at load), replacing
    // the measured one; negative: measure.
    void setOverride(int cap) { override_.store(cap); nextSampleNs_.store(0); }

    int cap() { refresh(); return cap_.load(std::memory_order_relaxed); }
    int holders() const { return holders_.load(std::memory_order_relaxed); }
    int sessions() const { return sessions_.load(std::memory_order_relaxed); }
    // The CPUs the call path's threads may run on, as last checked.
    int cores() { refresh(); return cores_.load(std::memory_order_relaxed); }
    uint64_t exitFloorNs() const { return exitFloorNs_.load(std::memory_order_relaxed); }
    // Others' load on those CPUs (cores' worth, smoothed), as last sampled: what the
    // cap leaves them.
    double othersLoad() const { return othersLoad_.load(std::memory_order_relaxed); }

private:
    CoreBudget();
    void refresh();             // by whichever caller comes first once a sample is due
    void sampleLoad(const cpu_set_t &cpus, uint64_t now); // others' load on `cpus` (/proc/stat)
    int capFromSamples(int usable); // the cap from the cores, others' load and the exit floor

    std::atomic<int> holders_{0};
    std::atomic<int> sessions_{0}; // guests running now (relaxed: a hint, re-read per decision)
    std::atomic<int> cap_{0};
    std::atomic<int> cores_{0};
    std::atomic<int> override_{-1};
    std::atomic<uint64_t> nextSampleNs_{0};   // the next affinity check
    std::atomic<uint64_t> nextLoadSampleNs_{0}; // the next /proc sample
    std::atomic<uint64_t> exitFloorNs_{0}; // 0 until measured
    std::once_flag floorOnce_;

    std::atomic<double> othersLoad_{0}; // sampler_.others(), readable without sampleMu_

    std::mutex sampleMu_; // the sampler: only the sampling thread, under try_lock
    LoadSampler sampler_;
};

} // namespace airlock
