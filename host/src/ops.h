// ops.h — what the two threads of a sandbox hand each other: operations (main ->
// vCPU), events and their outcomes (vCPU -> main), and host-function replies.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cancellation.h"
#include "snapshot.h"

namespace airlock {

enum class OutcomeCode { Ok, Cancelled, GuestAbort, Internal, InvalidArg, Poisoned };

struct Outcome {
    OutcomeCode code = OutcomeCode::Ok;
    std::string message;
    TerminatedBy terminatedBy = TerminatedBy::None;
    uint64_t wallNs = 0;
    uint64_t cpuNs = 0;      // this request's guest CPU time (host-call waits excluded)
    uint64_t afterCpuNs = 0; // guest CPU time after the previous answer (post-call GC, poll window)
    std::vector<uint8_t> output;
    std::shared_ptr<const Snapshot> snapshot;
};

enum class OpKind { Boot, Exchange, Snapshot, Restore, Stop };

struct Op {
    OpKind kind = OpKind::Stop;
    std::vector<uint8_t> request;
    uint64_t wallTimeoutNs = 0; // 0 = no monitor
    uint64_t cpuTimeoutNs = 0;
    std::shared_ptr<const Snapshot> snapshot;
};

enum class EventKind { HostCall, Done };

struct Event {
    EventKind kind = EventKind::Done;
    OpKind op = OpKind::Stop;     // Done: which operation finished
    uint64_t hostCallId = 0;      // HostCall: answer with this id
    uint64_t wallDeadlineNs = 0;  // HostCall: the exchange's wall-clock deadline (monotonic; 0: none)
    std::vector<uint8_t> hostCallOutput;
    Outcome outcome;              // Done
};

struct HostReply {
    uint64_t id = 0;
    std::vector<uint8_t> bytes;
};

} // namespace airlock
