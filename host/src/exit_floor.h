// exit_floor.h — the N-API function measureExchangeFloor(image, iterations) of
// exit_floor.cc, for addon.cc's exports (measureExitFloor is declared in sandbox.h).
#pragma once

#include <napi.h>

namespace airlock {

// measureExchangeFloor(image: Uint8Array, iterations) -> Promise<number[]>: per-call
// microseconds of a trivial CALL answered by the real guest image, KVM_RUN issued from
// a worker thread that does nothing else (no hand-off between threads).
Napi::Function exchangeFloorFunction(Napi::Env env);

} // namespace airlock
