// host_wait.h — how long a runner keeps a sandbox whose guest waits for a host call's
// reply. The steps (wait, write the reply, let the sandbox go, take it up again) are
// VcpuThread methods, defined in host_wait.cc; the wall-clock monitor of a sandbox
// no runner holds is reply_deadline.h.
#pragma once

#include <cstdint>

namespace airlock {

// After its spin (vcpuSpinUs), a runner sleeps this long at most for a host call's
// reply before it lets the sandbox go, and less when another sandbox needs a runner
// (the pool wakes it as it wakes a runner lingering for an op). A reply within it
// costs one futex wake, as before runners let go of waiting sandboxes; a later one
// queues the sandbox, and a runner takes it up. Measured here (raw guest, 3 rounds
// interleaved, this linger against letting go at once, on both paths a host call
// takes): the same round trip within noise for a synchronous reply (84-89 us), a
// setImmediate one (87-92 us) and a 1 ms one (1.21-1.32 ms), so letting go costs
// little; the linger stays because it never lost and yields to any queued sandbox.
constexpr uint64_t kHostReplyLingerNs = 2'000'000;

} // namespace airlock
