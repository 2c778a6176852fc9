// exit_floor.h — the N-API functions measureExitFloor(iterations) and
// measureExchangeFloor(image, iterations) of exit_floor.cc, for addon.cc's exports.
#pragma once

#include <napi.h>

namespace airlock {

// measureExchangeFloor(image: Uint8Array, iterations) -> Promise<number[]>: per-call
// microseconds of a trivial CALL answered by the real guest image, KVM_RUN issued from
// a worker thread that does nothing else (no hand-off between threads).
Napi::Function exchangeFloorFunction(Napi::Env env);

// measureExitFloor(iterations) -> Promise<number[]>: per-round microseconds of a bare
// `out` exit round trip, measured off the JS thread.
Napi::Function exitFloorFunction(Napi::Env env);

} // namespace airlock
