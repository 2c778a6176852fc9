// hostcall_memory.h — host calls handed over through guest memory (abi.h, "Polling":
// HOST_CALL, HOST_CALL_TAKEN, HOST_CALL_EXIT): the bound a guest waits in memory for
// its reply, and the HOST_RETURN writer both hand-over paths share. The steps
// themselves are Sandbox and VcpuThread methods, defined in hostcall_memory.cc.
#pragma once

#include <cstdint>
#include <vector>

#include "guest_memory.h"
#include "layout.h"

namespace airlock {

// The longest a guest waits in memory for a host call's reply before it makes the call
// with an exit after all, and so the most guest CPU time one host call may leave
// uncharged. A host function answered within it (a round trip through the Node event
// loop is tens of microseconds) costs no exit; a slower one pays one exit, which is
// small beside it.
constexpr uint64_t kHostCallWaitNs = 150'000;

// Writes a HOST_RETURN into the guest's input buffer (or, when it does not fit, a
// HOST_ERROR saying so) and sets request_len. The caller owns the call's reply slot:
// the guest is stopped, or waits in memory for this very reply.
void writeHostReturn(GuestMemory &mem, const GuestLayout &layout, const std::vector<uint8_t> &reply);

} // namespace airlock
