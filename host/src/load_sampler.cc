// load_sampler.cc — others' load from successive readings and the polling cap it
// leaves (load_sampler.h).
#include "load_sampler.h"

#include <algorithm>
#include <cmath>

namespace airlock {

void LoadSampler::add(const LoadReading &r) {
    // Busy ticks summed over another set of CPUs are no baseline: their difference
    // would count a CPU's whole busy time since boot as others' load of one interval,
    // and hold the cap at 0 for seconds (the bench's main-thread group after its
    // placement group: 72 us of main-thread CPU per call instead of 12).
    if (setChanged(r.cpus)) {
        others_ = 0;
        samplesOfSet_ = 0;
    } else if (r.nowNs > last_.nowNs && r.busyTicks >= last_.busyTicks) {
        const double busyNs = static_cast<double>(r.busyTicks - last_.busyTicks) * tickNs_;
        // Our own threads' time is ours wherever it ran: the main thread's load is
        // never others' (a reading of a CPU clock can lag, hence the floor at 0).
        const double oursNs = r.ourNs > last_.ourNs ? static_cast<double>(r.ourNs - last_.ourNs) : 0;
        // At most every CPU of the set busy: /proc/stat and our own clock are read at
        // slightly different instants, so a short interval can overshoot.
        const double sample = std::clamp((busyNs - oursNs) / static_cast<double>(r.nowNs - last_.nowNs), 0.0,
                                         static_cast<double>(CPU_COUNT(&r.cpus)));
        // Smoothed over about two readings: one burst of someone else's work (a child
        // process starting, a compile) must not switch every call's path for 200 ms.
        others_ = samplesOfSet_ ? (others_ + sample) / 2 : sample;
        if (samplesOfSet_ < 2) ++samplesOfSet_; // only 0, 1 and "more" are told apart
    }
    last_ = r;
    haveLast_ = true;
}

int LoadSampler::cap(int usable, int inForce, uint64_t exitFloorNs, uint64_t cheapExitNs) const {
    // The two thresholds' memory belongs to one CPU set: the cap in force was decided
    // on the old one (0 wherever every thread shared one CPU, whatever the load). A new
    // placement is judged as a process's first: open until others' load is measured
    // on it, then by the threshold that keeps a core (more than 0.6 of it taken), not
    // the one that frees it. Otherwise a runner pinned to a core of its own after a
    // one-CPU placement stayed in exit mode unless others left nearly all of both CPUs
    // idle (the bench's split placement at others' 0.55 cores: cap 0, 62 us a call).
    const int prev = samplesOfSet_ < 2 ? usable - 1 : inForce;
    return pollingCap(usable, others_, prev, exitFloorNs, cheapExitNs);
}

int pollingCap(int usable, double others, int prev, uint64_t exitFloorNs, uint64_t cheapExitNs) {
    if (exitFloorNs == 0 || exitFloorNs < cheapExitNs || usable <= 0) return 0;
    // With one threshold the cap flipped between readings whenever others' load
    // hovered near it, and the call path with it (polling ~20 us, exits 50-150 us):
    // the bench's bimodal rounds.
    const int raised = static_cast<int>(std::floor(usable - others + 0.25)) - 1;
    const int kept = static_cast<int>(std::floor(usable - others + 0.6)) - 1;
    const int cap = raised > prev ? raised : std::min(prev, kept);
    return std::clamp(cap, 0, usable - 1);
}

} // namespace airlock
