// poll_window.h — the rule that sizes a polling guest's post-answer window from how
// each request arrived (met the guest polling, or came after it parked, how long after
// the answer). Pure, apart from the clock and the core budget that feed it (sandbox.cc),
// so its states are tested on chosen arrivals (test/host/poll-window.test.ts).
#pragma once

#include <cstdint>

namespace airlock {

// What one request did to the window; each kind has a call-path counter.
enum class WindowChange {
    Unjudged, // nothing to judge (the first request, no gap known) or nothing changed at zero
    Kept,     // the request met the guest polling
    Grown,    // it came after the guest parked but within the longest window: cover the gap
    LateKept, // back-to-back but later than the longest window: kept, stretched to cover the gap
    Closed,   // back-to-back requests keep missing it, stretched or not: exits are cheaper
    Probed,   // at zero, a back-to-back request: a window covering its gap is tried again
    Halved,   // a spaced-out request: an idle guest must stop spinning
};

// How the answer before a request was taken: what the window it polled in bought.
enum class LastAnswer {
    ByExit,   // a RESPONSE exit (or none yet)
    InMemory, // the answer watcher took it from memory: the window paid
    AtPark,   // handed over in memory, but nobody took the answer before the guest parked:
              // it waited out the whole window and an IDLE exit (a starved watcher)
};

struct WindowDecision {
    uint64_t windowNs;
    WindowChange change;
};

// Halt polling's rule (grow on a wait that would have succeeded, shrink on waste) with
// one difference that matters here: the gap a request shows depends on the path its
// answer took. An answer taken from memory wakes the main thread on its own core; one
// given by an exit wakes it from the runner's core, which on a nested host costs tens
// of microseconds more. So an exit-mode gap is longer than the longest window even when
// the caller waits on nothing but the answer, and a rule that halves on it (as this
// one did) settles at zero: every call then pays two exits and two cross-core wakes.
// Here a request that came back-to-back (within backToBackNs of the answer) but later
// than the longest window stretches the window for the answer it gets (an exit, whose
// gap is the long one) to cover its gap, up to kStretch longest windows, and a hit
// brings it back to the longest; only a run of such requests that keep missing closes
// it (kLateMissesToClose, or one after a probe), as does a run of answers taken only
// when the guest parked. At zero, back-to-back requests probe a window again after a
// backoff that doubles with each failed probe (up to kMaxProbeBackoff requests) and
// resets once an answer is taken from memory. Spaced-out requests halve it as before,
// so an idle guest stops spinning. Not thread-safe: one thread judges (the main
// thread, as it posts each request).
class PollWindowRule {
public:
    static constexpr uint64_t kStepNs = 4'000;  // the smallest window after zero; below half of it, zero
    static constexpr int kLateMissesToClose = 3; // late misses in a row at the longest window
    static constexpr int kMaxProbeBackoff = 64;  // back-to-back requests between two failed probes, at most
    static constexpr uint64_t kStretch = 4;      // a window covering a late request: at most this many longest

    static constexpr uint64_t kBackToBackNs = 1'000'000;

    // maxNs: the longest window (the addon's guestPollUs). A request later than
    // backToBackNs after the answer is spaced out: 1 ms (or four longest windows, if
    // more) covers an exit-mode turn on a nested host (both wakes cross-core: 60-150 us)
    // and the main thread's occasional slow turn (a V8 scavenge), so neither halves
    // the window, while a caller that waits on something else (a 2 ms timer) does.
    explicit PollWindowRule(uint64_t maxNs) : maxNs_(maxNs), backToBackNs_(maxNs > kBackToBackNs / 4 ? 4 * maxNs : kBackToBackNs) {}

    // Judges one request. windowNs: the window in force; metPollingGuest: the request
    // was handed over in memory; gapNs: since the last answer (0: none yet); mayPoll:
    // the core budget has a core for a window now (no probe otherwise: it could not
    // poll); last: how the previous answer was taken. Answers taken at the guest's park
    // kLateMissesToClose times without one taken in memory between (or once after a
    // probe) close the window as late requests do: a hand-over in memory whose answer
    // nobody watches costs more than an exit.
    WindowDecision judge(uint64_t windowNs, bool metPollingGuest, uint64_t gapNs, bool mayPoll,
                         LastAnswer last = LastAnswer::ByExit);

    // A window clamped to [0, maxNs], zero below half a step.
    uint64_t clamp(uint64_t ns) const;

private:
    WindowDecision closeAndBackOff();
    // The window that would have caught a request `gapNs` after the answer, with a
    // quarter to spare: at least the longest, at most kStretch of it.
    uint64_t cover(uint64_t gapNs) const;

    uint64_t maxNs_;
    uint64_t backToBackNs_;
    int lateMisses_ = 0;       // back-to-back requests in a row that missed the longest window
    int parkedAnswers_ = 0;    // answers taken at a park since the last taken in memory
    bool probing_ = false;     // the window was opened by a probe and has not had a hit yet
    int probeBackoff_ = 1;     // back-to-back requests at zero before the next probe
    int probeCountdown_ = 1;
};

} // namespace airlock
