// poll_window.cc — the poll-window rule's arithmetic (see poll_window.h).
#include "poll_window.h"

#include <algorithm>

namespace airlock {

uint64_t PollWindowRule::clamp(uint64_t ns) const {
    ns = std::min(ns, maxNs_);
    return ns < kStepNs / 2 ? 0 : ns;
}

WindowDecision PollWindowRule::closeAndBackOff() {
    lateMisses_ = 0;
    parkedAnswers_ = 0;
    probing_ = false;
    probeBackoff_ = std::min(probeBackoff_ * 2, kMaxProbeBackoff);
    probeCountdown_ = probeBackoff_;
    return {0, WindowChange::Closed};
}

uint64_t PollWindowRule::cover(uint64_t gapNs) const {
    return std::min(std::max(gapNs + gapNs / 4, maxNs_), kStretch * maxNs_);
}

WindowDecision PollWindowRule::judge(uint64_t windowNs, bool metPollingGuest, uint64_t gapNs, bool mayPoll,
                                     LastAnswer last) {
    // Only an answer taken from memory shows the window paid: a request that merely
    // met the guest polling may still have its answer wait for the guest's park.
    if (last == LastAnswer::InMemory) {
        parkedAnswers_ = 0;
        probing_ = false;
        probeBackoff_ = probeCountdown_ = 1;
    }
    if (last == LastAnswer::AtPark && windowNs != 0 && maxNs_ != 0 &&
        (probing_ || ++parkedAnswers_ >= kLateMissesToClose))
        return closeAndBackOff();
    if (metPollingGuest) {
        lateMisses_ = 0;
        // A window stretched to cover a late request goes back to the longest: once
        // requests meet the guest polling, their gaps are the short ones again.
        return {std::min(windowNs, maxNs_), WindowChange::Kept};
    }
    if (gapNs == 0 || maxNs_ == 0) return {windowNs, WindowChange::Unjudged};
    if (gapNs <= maxNs_) {
        // A window this long would have caught it (with a quarter to spare).
        lateMisses_ = 0;
        const uint64_t grown = clamp(std::max({kStepNs, windowNs * 2, gapNs + gapNs / 4}));
        return {grown, grown == windowNs ? WindowChange::Kept : WindowChange::Grown};
    }
    if (gapNs > backToBackNs_) {
        // Spaced out: the caller did something else between answer and request.
        lateMisses_ = 0;
        probing_ = false;
        const uint64_t halved = clamp(std::min(windowNs, maxNs_) / 2);
        return {halved, halved == windowNs ? WindowChange::Unjudged : WindowChange::Halved};
    }
    // Back-to-back, but later than the longest window. This request's answer is an
    // exit, and the gap after an exit is the long one: the window that follows covers
    // this gap (up to kStretch longest windows), so the next request can cross in
    // memory and bring the short gaps back.
    if (windowNs == 0) {
        if (!mayPoll || --probeCountdown_ > 0) return {0, WindowChange::Unjudged};
        probing_ = true;
        lateMisses_ = 0;
        return {cover(gapNs), WindowChange::Probed};
    }
    if (probing_ || ++lateMisses_ >= kLateMissesToClose) return closeAndBackOff();
    return {cover(gapNs), WindowChange::LateKept};
}

} // namespace airlock
