// census.cc — the N-API view of the live-object counters.
#include "census_napi.h"

#include <dlfcn.h>
#include <malloc.h>

#include "census.h"

namespace airlock {

namespace {

struct MallocTotals {
    int64_t inUse = -1; // -1: this C library cannot say
    int64_t free = -1;
};

// mallinfo2 is glibc 2.33+, above the prebuilt addon's 2.28 baseline: looked up at run
// time, so the addon links against no newer symbol. Its 32-bit predecessor (mallinfo)
// wraps past 2 GiB, so it is not a fallback.
MallocTotals mallocTotals() {
    using Fn = struct mallinfo2 (*)();
    static const Fn fn = reinterpret_cast<Fn>(::dlsym(RTLD_DEFAULT, "mallinfo2"));
    if (!fn) return {};
    const struct mallinfo2 m = fn();
    return {static_cast<int64_t>(m.uordblks + m.hblkhd), static_cast<int64_t>(m.fordblks)};
}

Napi::Value CensusInfo(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    // census({ trim: true }) first hands malloc's free pages back to the kernel, so the
    // process's RSS afterwards counts what is in use, not what the allocator kept.
    if (info.Length() > 0 && info[0].IsObject()) {
        Napi::Value trim = info[0].As<Napi::Object>().Get("trim");
        if (trim.IsBoolean() && trim.As<Napi::Boolean>().Value()) ::malloc_trim(0);
    }
    Census &c = census();
    Napi::Object o = Napi::Object::New(env);
    auto set = [&](const char *name, int64_t v) { o.Set(name, Napi::Number::New(env, static_cast<double>(v))); };
    set("sandboxes", c.sandboxes.load(std::memory_order_relaxed));
    set("guestMemories", c.guestMemories.load(std::memory_order_relaxed));
    set("guestMemoryBytes", c.guestMemoryBytes.load(std::memory_order_relaxed));
    set("memoryImages", c.memoryImages.load(std::memory_order_relaxed));
    set("memoryImageBytes", c.memoryImageBytes.load(std::memory_order_relaxed));
    // The whole process's malloc (every arena): bytes handed out and bytes kept free.
    const MallocTotals m = mallocTotals();
    set("mallocInUse", m.inUse);
    set("mallocFree", m.free);
    return o;
}

} // namespace

Napi::Function censusFunction(Napi::Env env) { return Napi::Function::New(env, CensusInfo, "census"); }

} // namespace airlock
