// runner_napi.cc — runnerPool(): the runner pool's size for tests and benches.
#include "runner_napi.h"

#include "runner.h"

namespace airlock {

namespace {

Napi::Value RunnerPoolInfo(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    RunnerPool &pool = RunnerPool::instance();
    Napi::Object o = Napi::Object::New(env);
    o.Set("limit", Napi::Number::New(env, pool.limit()));
    o.Set("hardCap", Napi::Number::New(env, kRunnerHardCap));
    o.Set("runners", Napi::Number::New(env, pool.runnerCount()));
    return o;
}

} // namespace

Napi::Function runnerPoolFunction(Napi::Env env) { return Napi::Function::New(env, RunnerPoolInfo, "runnerPool"); }

} // namespace airlock
