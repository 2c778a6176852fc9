// runner_napi.h — the N-API function runnerPool() of runner_napi.cc, for addon.cc's exports.
#pragma once

#include <napi.h>

namespace airlock {

// runnerPool() -> { limit, runners }: how many runners the pool keeps busy at once
// (its soft size, from the CPUs the process may use) and how many threads it has now.
Napi::Function runnerPoolFunction(Napi::Env env);

} // namespace airlock
