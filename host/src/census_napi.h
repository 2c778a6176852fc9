// census_napi.h — census({ trim? }): the live-object counters (census.h) and the C
// allocator's totals, for the tests that check the host let go of everything.
#pragma once

#include <napi.h>

namespace airlock {

Napi::Function censusFunction(Napi::Env env);

} // namespace airlock
