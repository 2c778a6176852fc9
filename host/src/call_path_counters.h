// call_path_counters.h — process-wide counts of which path each KVM exchange took
// (request in memory or through the mailbox, answer in memory or by an exit), what the
// runner pool did for it (keep, linger, hand-over, start, quantum) and what the core
// budget decided. Relaxed atomic increments (a few ns each, never a lock): they say
// why a workload is in the fast or the slow mode; pollingBudget().counters reads them.
#pragma once

#include <atomic>
#include <cstdint>

namespace airlock {

// Each field names one event; the X-macro keeps the N-API export and the struct in step.
#define AIRLOCK_CALL_PATH_COUNTERS(X)                                                                                  \
    X(requestsInMemoryWatched)   /* READY -> REQUEST: the answer watcher takes the answer */                        \
    X(requestsInMemoryExit)      /* READY -> REQUEST_EXIT: the polling guest answers with an exit */                 \
    X(requestsMailbox)           /* an exchange posted to the mailbox (the runner enters the guest) */              \
    X(requestsMissedPoll)        /* a session ran but the guest was not READY: mailbox */                           \
    X(kicks)                     /* a mailbox post that interrupted KVM_RUN of a polling guest */                   \
    X(answersInMemory)           /* claimed by the answer watcher from memory */                                    \
    X(answersByExit)             /* a RESPONSE exit */                                                              \
    X(answersAtPark)             /* answered in memory but claimed by the runner when the guest parked */            \
    X(watchesGivenUp)            /* the watcher's bound passed: REQUEST -> REQUEST_EXIT */                          \
    X(guestParks)                /* an IDLE exit with nothing in flight: the guest's window ran out */              \
    X(windowsEndedByHost)        /* the runner took the guest out of its poll (op waiting, window over, yield) */   \
    X(pollEndsInMemory)          /* a posted op took a polling guest out of its poll through memory (no signal) */ \
    X(opSpinHits)                /* the runner's spin for the next op caught it */                                  \
    X(opSpinMisses)                                                                                                 \
    X(lingerHits)                /* an op came while the runner lingered asleep on the sandbox */                    \
    X(lingerTimeouts)            /* the linger ended with no op: the runner let go */                               \
    X(lingerYields)              /* the linger ended because another sandbox needed a runner */                     \
    X(runnerKeeps)               /* a runner took the same sandbox straight back (work arrived as it let go) */     \
    X(runnerTakes)               /* a runner took a sandbox from the queue (a hand-over between threads) */         \
    X(runnersStarted)                                                                                               \
    X(runnersRetired)                                                                                               \
    X(quantumYields)             /* an exchange gave its runner up for the queue (quantum over) */                  \
    X(pollSlotGrants)            /* a guest was allowed to poll after answering */                                  \
    X(pollSlotRefusals)          /* a polling guest was refused a slot: it parks after answering */                 \
    X(requestsWithoutWindow)     /* the budget had no core free: the guest got no poll window for this request */  \
    X(capChanges)                /* the measured cap moved: each one switches the call path of what follows */    \
    X(hostCallsInMemory)         /* taken from memory by the answer watcher */                                      \
    X(hostCallsByExit)           /* a HOST_CALL exit (the vCPU thread dispatches it) */                             \
    X(hostReplySleeps)           /* a runner went to sleep on the futex for a host reply */                         \
    X(hostRepliesInMemory)       /* a HOST_CALL exit's reply written into guest memory by the main thread */        \
    X(loopSleepsParked)          /* a guest's timer sleep let go of its runner until its precise end */            \
    X(pollsAfterRestore)         /* a restored guest polls for the next request (a post-restore window) */          \
    X(repollsAfterRestore)       /* a restored guest stopped mid-poll parked at once and polls afresh */          \
    X(restoresDirect)            /* restore() made by the main thread itself: no runner used the vCPU */            \
    X(restoresByRunner)          /* restore() handed over to the sandbox's runner */                                \
    X(settlesWhenIdle)           /* a runner finished the guest's last exit before idling: a restore was foreseen */ \
    X(windowsSkippedForRestore)  /* the call a restore is foreseen after was published with a one-tick window (again after a missed hand-over) */ \
    X(answersWithoutWindow)      /* a RESPONSE exit with the window at zero: the guest parks (no slot asked) */      \
    X(windowGrows)               /* a request after the guest parked grew its window (poll_window.h) */             \
    X(windowLateKeeps)           /* a back-to-back request later than the longest window kept it (once) */          \
    X(windowCloses)              /* back-to-back requests kept missing the longest window: closed, probe later */  \
    X(windowProbes)              /* at zero, a back-to-back request opened the longest window again */              \
    X(windowHalvings)            /* a spaced-out request halved the window */

struct CallPathCounters {
#define AIRLOCK_COUNTER_FIELD(name) std::atomic<uint64_t> name{0};
    AIRLOCK_CALL_PATH_COUNTERS(AIRLOCK_COUNTER_FIELD)
#undef AIRLOCK_COUNTER_FIELD
};

inline CallPathCounters &callPathCounters() {
    // Never destroyed: runner threads may count while the process exits.
    static CallPathCounters *counters = new CallPathCounters();
    return *counters;
}

// Counting is a statistic, not a synchronisation: relaxed is enough.
#define AIRLOCK_COUNT(name) ::airlock::callPathCounters().name.fetch_add(1, std::memory_order_relaxed)

} // namespace airlock
