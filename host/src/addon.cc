// addon.cc — the N-API surface of the VMM: probe(), abiVersion, measureExitFloor()
// and class Vm, which turns the Sandbox's operations and events into Promises and
// host-call callbacks on the Node main thread.
#include <napi.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>

#include "../../guest/include/abi.h"
#include "../hv/hypervisor.h"
#include "messages.h"
#include "sandbox.h"

namespace airlock {

namespace {

// Where the onHostCall callback lives: a non-enumerable property of the Vm object
// itself, so a callback that closes over the Vm forms a cycle the GC can collect
// (a native strong reference would pin the Vm forever).
constexpr const char *kOnHostCallKey = "__airlockOnHostCall";

// Marks snapshot handles made by this addon, so restore() can trust the cast.
const napi_type_tag kSnapshotTag = {0x6169726c6f636b53ull, 0x6e617073686f7401ull};

Napi::Error makeError(Napi::Env env, const char *code, const std::string &message) {
    Napi::Error e = Napi::Error::New(env, message);
    e.Set("code", Napi::String::New(env, code));
    return e;
}

const char *codeOf(OutcomeCode c) {
    switch (c) {
    case OutcomeCode::Cancelled: return "ERR_CANCELLED";
    case OutcomeCode::GuestAbort: return "ERR_GUEST_ABORT";
    case OutcomeCode::InvalidArg: return "ERR_INVALID_ARG";
    case OutcomeCode::Poisoned: return "ERR_POISONED";
    case OutcomeCode::Internal:
    case OutcomeCode::Ok: break;
    }
    return "ERR_INTERNAL";
}

uint64_t sizeField(const Napi::Object &config, const char *name, bool required, uint64_t fallback) {
    Napi::Value v = config.Get(name);
    if (v.IsUndefined() && !required) return fallback;
    if (!v.IsNumber()) throw makeError(config.Env(), "ERR_INVALID_ARG", std::string("config.") + name + " must be a number");
    double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d) || d < 0 || d != std::floor(d) || d > 9007199254740991.0)
        throw makeError(config.Env(), "ERR_INVALID_ARG", std::string("config.") + name + " must be a non-negative integer");
    return static_cast<uint64_t>(d);
}

// A host function's error as the guest reads it; the text is capped so a huge message
// from JavaScript costs the guest no more than 4 KiB of its input buffer.
std::vector<uint8_t> hostErrorMessage(const std::string &text) {
    return encodeHostError(text, AIRLOCK_MSG_HEADER_SIZE + AIRLOCK_FIELD_HEADER_SIZE + 4096);
}

class VmWrap;

// The vCPU thread's way to wake the main thread. Node may finalize the thread-safe
// function before the Vm (at environment teardown); from then on calls are dropped,
// under the lock, instead of touching a dead function.
class Notifier {
public:
    explicit Notifier(napi_threadsafe_function tsfn) : tsfn_(tsfn) {}
    void call() {
        std::lock_guard<std::mutex> lock(mu_);
        if (tsfn_) napi_call_threadsafe_function(tsfn_, nullptr, napi_tsfn_nonblocking);
    }
    void close() {
        std::lock_guard<std::mutex> lock(mu_);
        tsfn_ = nullptr;
    }

private:
    std::mutex mu_;
    napi_threadsafe_function tsfn_;
};

// The thread-safe function's context, freed by its finalizer. `wrap` is cleared when
// the VmWrap goes first, so late notifications are dropped.
struct NotifyContext {
    VmWrap *wrap = nullptr;
    std::shared_ptr<Notifier> notifier;
};

class VmWrap : public Napi::ObjectWrap<VmWrap> {
public:
    static Napi::Function Init(Napi::Env env) {
        return DefineClass(env, "Vm",
                           {InstanceMethod<&VmWrap::Boot>("boot"), InstanceMethod<&VmWrap::Send>("send"),
                            InstanceMethod<&VmWrap::HostReturn>("hostReturn"), InstanceMethod<&VmWrap::Kill>("kill"),
                            InstanceMethod<&VmWrap::TakeSnapshot>("snapshot"),
                            InstanceMethod<&VmWrap::Restore>("restore"), InstanceMethod<&VmWrap::Dispose>("dispose")});
    }

    explicit VmWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<VmWrap>(info) {
        Napi::Env env = info.Env();
        if (info.Length() < 3 || !info[0].IsBuffer() || !info[1].IsObject() || !info[2].IsFunction())
            throw makeError(env, "ERR_INVALID_ARG", "new Vm(image: Buffer, config: object, onHostCall: function)");
        auto image = info[0].As<Napi::Buffer<uint8_t>>();
        Napi::Object cfg = info[1].As<Napi::Object>();
        SandboxConfig config;
        config.heapSize = sizeField(cfg, "heapSize", true, 0);
        config.stackSize = sizeField(cfg, "stackSize", true, 0);
        config.inputSize = sizeField(cfg, "inputSize", true, 0);
        config.outputSize = sizeField(cfg, "outputSize", true, 0);
        config.consoleLimit = sizeField(cfg, "consoleLimit", true, 0);
        SpinConfig spin;
        spin.mainSpinNs = sizeField(cfg, "mainSpinUs", false, spin.mainSpinNs / 1000) * 1000;
        spin.vcpuSpinNs = sizeField(cfg, "vcpuSpinUs", false, spin.vcpuSpinNs / 1000) * 1000;
        spin.guestPollNs = sizeField(cfg, "guestPollUs", false, spin.guestPollNs / 1000) * 1000;
        if (spin.mainSpinNs > 10'000'000 || spin.vcpuSpinNs > 10'000'000 || spin.guestPollNs > 10'000'000)
            throw makeError(env, "ERR_INVALID_ARG", "spin budgets are limited to 10000 us");

        info.This().As<Napi::Object>().DefineProperty(
            Napi::PropertyDescriptor::Value(kOnHostCallKey, info[2], napi_default));

        notifyContext_ = new NotifyContext{this};
        napi_status st = napi_create_threadsafe_function(env, nullptr, nullptr, Napi::String::New(env, "airlock.vcpu"),
                                                         0, 1, notifyContext_, FinalizeNotify, notifyContext_, CallJs,
                                                         &notify_);
        if (st != napi_ok) {
            delete notifyContext_;
            notifyContext_ = nullptr;
            throw makeError(env, "ERR_INTERNAL", "cannot create the vCPU notification channel");
        }
        napi_unref_threadsafe_function(env, notify_);
        auto notifier = std::make_shared<Notifier>(notify_);
        notifyContext_->notifier = notifier;
        try {
            sandbox_ = Sandbox::create(image.Data(), image.Length(), config, spin, [notifier] { notifier->call(); });
        } catch (const ArgumentError &e) {
            releaseNotify();
            throw makeError(env, "ERR_INVALID_ARG", e.what());
        } catch (const std::exception &e) {
            releaseNotify();
            throw makeError(env, "ERR_INTERNAL", e.what());
        }
    }

    ~VmWrap() override {
        // GC backstop (or environment teardown): stop the vCPU thread synchronously,
        // waiting a bounded time (then the thread finishes on its own; see Sandbox).
        // The channel closes first so the stopping thread does not notify anyone.
        releaseNotify();
        if (sandbox_) sandbox_->stopAndJoin();
        sandbox_.reset();
    }

private:
    enum class State { Alive, Disposing, Disposed };

    static void FinalizeNotify(napi_env, void *data, void *) {
        auto *ctx = static_cast<NotifyContext *>(data);
        if (ctx->notifier) ctx->notifier->close();
        if (ctx->wrap) {
            // Environment teardown finalized the channel while the Vm still exists.
            ctx->wrap->notify_ = nullptr;
            ctx->wrap->notifyContext_ = nullptr;
        }
        delete ctx;
    }

    static void CallJs(napi_env env, napi_value, void *context, void *) {
        if (env == nullptr) return; // the channel is being torn down
        auto *ctx = static_cast<NotifyContext *>(context);
        if (!ctx->wrap) return;
        Napi::Env e(env);
        Napi::HandleScope scope(e);
        try {
            ctx->wrap->dispatchAll(ctx->wrap->sandbox_ ? ctx->wrap->sandbox_->drainEvents() : std::vector<Event>{});
        } catch (const Napi::Error &err) {
            err.ThrowAsJavaScriptException();
        }
    }

    void releaseNotify() {
        if (notifyContext_) {
            notifyContext_->wrap = nullptr;
            if (notifyContext_->notifier) notifyContext_->notifier->close();
        }
        if (notify_) napi_release_threadsafe_function(notify_, napi_tsfn_abort);
        notify_ = nullptr;
        notifyContext_ = nullptr; // freed by FinalizeNotify
    }

    // While an operation runs, the notification channel keeps the event loop alive
    // and the Vm object alive; when idle, neither.
    void setBusy(bool busy) {
        if (busy == busy_ || !notify_) return;
        busy_ = busy;
        if (busy) {
            napi_ref_threadsafe_function(Env(), notify_);
            Ref();
        } else {
            napi_unref_threadsafe_function(Env(), notify_);
            Unref();
        }
    }

    Napi::Value rejected(Napi::Env env, const char *code, const std::string &message) {
        auto d = Napi::Promise::Deferred::New(env);
        d.Reject(makeError(env, code, message).Value());
        return d.Promise();
    }

    Napi::Value startOp(Napi::Env env, Op op) {
        if (state_ != State::Alive) return rejected(env, "ERR_INVALID_ARG", "the VM is disposed");
        if (inFlight_) return rejected(env, "ERR_BUSY", "another operation is running on this VM");
        auto d = Napi::Promise::Deferred::New(env);
        Napi::Promise promise = d.Promise();
        pending_.emplace(d);
        pendingKind_ = op.kind;
        inFlight_ = true;
        setBusy(true);
        try {
            if (!sandbox_->postFast(op)) sandbox_->post(std::move(op));
        } catch (const std::exception &e) {
            inFlight_ = false;
            pending_.reset();
            setBusy(false);
            d.Reject(makeError(env, "ERR_INTERNAL", std::string("cannot start the vCPU thread: ") + e.what()).Value());
            return promise;
        }
        pump(sandbox_->spin().mainSpinNs);
        return promise;
    }

    void pump(uint64_t spinNs) {
        if (!sandbox_) return;
        dispatchAll(sandbox_->awaitEvents(spinNs));
    }

    void dispatchAll(std::vector<Event> events) {
        for (Event &ev : events) {
            if (ev.kind == EventKind::HostCall)
                dispatchHostCall(ev);
            else if (ev.op == OpKind::Stop)
                finishDispose();
            else
                complete(ev);
        }
    }

    void dispatchHostCall(Event &ev) {
        Napi::Env env = Env();
        hostCallPending_ = true;
        hostCallId_ = ev.hostCallId;
        Napi::Value fn = Value().Get(kOnHostCallKey);
        auto output = Napi::Buffer<uint8_t>::Copy(env, ev.hostCallOutput.data(), ev.hostCallOutput.size());
        try {
            if (!fn.IsFunction()) throw makeError(env, "ERR_INTERNAL", "onHostCall is gone");
            fn.As<Napi::Function>().Call(Value(), {output, Napi::Number::New(env, static_cast<double>(ev.hostCallId))});
        } catch (const Napi::Error &e) {
            // A callback that throws synchronously answers the guest with that error.
            if (hostCallPending_ && hostCallId_ == ev.hostCallId) {
                hostCallPending_ = false;
                sandbox_->postHostReply(ev.hostCallId, hostErrorMessage(e.Message()));
                pump(sandbox_->spin().mainSpinNs);
            }
        }
    }

    void complete(Event &ev) {
        Napi::Env env = Env();
        if (!pending_) return;
        Napi::Promise::Deferred d = *pending_;
        pending_.reset();
        inFlight_ = false;
        hostCallPending_ = false;
        const Outcome &o = ev.outcome;
        if (o.code == OutcomeCode::Ok) {
            switch (ev.op) {
            case OpKind::Boot:
                d.Resolve(Napi::Buffer<uint8_t>::Copy(env, o.output.data(), o.output.size()));
                break;
            case OpKind::Exchange: {
                Napi::Object r = Napi::Object::New(env);
                r.Set("output", Napi::Buffer<uint8_t>::Copy(env, o.output.data(), o.output.size()));
                r.Set("wallTimeNs", Napi::Number::New(env, static_cast<double>(o.wallNs)));
                r.Set("cpuTimeNs", Napi::Number::New(env, static_cast<double>(o.cpuNs)));
                r.Set("afterCpuTimeNs", Napi::Number::New(env, static_cast<double>(o.afterCpuNs)));
                d.Resolve(r);
                break;
            }
            case OpKind::Snapshot: {
                auto *holder = new std::shared_ptr<const Snapshot>(o.snapshot);
                // The snapshot's bytes live outside the JavaScript heap: tell the GC, so
                // dropped snapshots are collected before they pile up.
                const int64_t bytes = static_cast<int64_t>(o.snapshot->bytes());
                int64_t ignored = 0;
                napi_adjust_external_memory(env, bytes, &ignored);
                auto ext = Napi::External<std::shared_ptr<const Snapshot>>::New(
                    env, holder, [bytes](Napi::Env e, std::shared_ptr<const Snapshot> *p) {
                        delete p;
                        int64_t left = 0;
                        napi_adjust_external_memory(e, -bytes, &left);
                    });
                napi_type_tag_object(env, ext, &kSnapshotTag);
                d.Resolve(ext);
                break;
            }
            case OpKind::Restore:
                d.Resolve(env.Undefined());
                break;
            case OpKind::Stop:
                break;
            }
        } else {
            Napi::Error e = makeError(env, codeOf(o.code), o.message);
            e.Set("wallTimeNs", Napi::Number::New(env, static_cast<double>(o.wallNs)));
            e.Set("cpuTimeNs", Napi::Number::New(env, static_cast<double>(o.cpuNs)));
            if (o.code == OutcomeCode::Cancelled) {
                e.Set("terminatedBy", Napi::String::New(env, terminatedByName(o.terminatedBy)));
                // What the stopped guest had written (its console lines), still hostile.
                if (!o.output.empty()) e.Set("output", Napi::Buffer<uint8_t>::Copy(env, o.output.data(), o.output.size()));
            }
            d.Reject(e.Value());
        }
        if (state_ == State::Disposing)
            startStop();
        else
            setBusy(false);
    }

    void startStop() {
        Op stop;
        stop.kind = OpKind::Stop;
        inFlight_ = true;
        setBusy(true);
        sandbox_->post(std::move(stop));
        // No spin: teardown (munmap, closing fds) takes longer than a spin is worth.
    }

    void finishDispose() {
        if (sandbox_) sandbox_->join();
        sandbox_.reset();
        inFlight_ = false;
        state_ = State::Disposed;
        setBusy(false);
        for (auto &d : disposeWaiters_) d.Resolve(Env().Undefined());
        disposeWaiters_.clear();
    }

    Napi::Value Boot(const Napi::CallbackInfo &info) {
        Op op;
        op.kind = OpKind::Boot;
        return startOp(info.Env(), std::move(op));
    }

    Napi::Value Send(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        if (info.Length() < 1 || !info[0].IsBuffer()) return rejected(env, "ERR_INVALID_ARG", "send(request: Buffer, opts?)");
        auto req = info[0].As<Napi::Buffer<uint8_t>>();
        if (sandbox_ && req.Length() > sandbox_->layout().inputSize)
            return rejected(env, "ERR_INVALID_ARG",
                            "request of " + std::to_string(req.Length()) + " bytes exceeds the input buffer of " +
                                std::to_string(sandbox_->layout().inputSize) + " bytes");
        Op op;
        op.kind = OpKind::Exchange;
        if (info.Length() >= 2 && !info[1].IsUndefined() && !info[1].IsNull()) {
            if (!info[1].IsObject()) return rejected(env, "ERR_INVALID_ARG", "send options must be an object");
            Napi::Object opts = info[1].As<Napi::Object>();
            for (const char *name : {"wallClockTimeoutMs", "cpuTimeoutMs"}) {
                Napi::Value v = opts.Get(name);
                if (v.IsUndefined()) continue;
                double ms = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
                if (!std::isfinite(ms) || ms <= 0 || ms > 1e10)
                    return rejected(env, "ERR_INVALID_ARG", std::string(name) + " must be a positive number of ms");
                uint64_t ns = std::max<uint64_t>(1, static_cast<uint64_t>(ms * 1e6));
                (std::strcmp(name, "cpuTimeoutMs") == 0 ? op.cpuTimeoutNs : op.wallTimeoutNs) = ns;
            }
        }
        op.request.assign(req.Data(), req.Data() + req.Length());
        return startOp(env, std::move(op));
    }

    Napi::Value HostReturn(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        if (info.Length() < 1 || !info[0].IsBuffer())
            throw makeError(env, "ERR_INVALID_ARG", "hostReturn(reply: Buffer, callId?: number)");
        // Events already waiting (e.g. the exchange was cancelled) come first: they
        // may make this answer moot.
        pump(0);
        if (!hostCallPending_ || !sandbox_) return env.Undefined(); // nobody waits for it any more
        // With the id onHostCall was given, an answer to an older call (of a cancelled
        // exchange) can never be taken for the answer to the current one.
        if (info.Length() >= 2 && !info[1].IsUndefined() &&
            (!info[1].IsNumber() || info[1].As<Napi::Number>().DoubleValue() != static_cast<double>(hostCallId_)))
            return env.Undefined();
        auto reply = info[0].As<Napi::Buffer<uint8_t>>();
        hostCallPending_ = false;
        sandbox_->postHostReply(hostCallId_, std::vector<uint8_t>(reply.Data(), reply.Data() + reply.Length()));
        pump(sandbox_->spin().mainSpinNs);
        return env.Undefined();
    }

    Napi::Value Kill(const Napi::CallbackInfo &info) {
        try {
            if (sandbox_ && inFlight_ && (pendingKind_ == OpKind::Boot || pendingKind_ == OpKind::Exchange))
                sandbox_->cancel(TerminatedBy::Kill);
        } catch (const std::exception &e) {
            throw makeError(info.Env(), "ERR_INTERNAL", std::string("cannot signal the vCPU thread: ") + e.what());
        }
        return info.Env().Undefined();
    }

    Napi::Value TakeSnapshot(const Napi::CallbackInfo &info) {
        Op op;
        op.kind = OpKind::Snapshot;
        return startOp(info.Env(), std::move(op));
    }

    Napi::Value Restore(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        bool tagged = false;
        if (info.Length() >= 1 && info[0].IsExternal())
            napi_check_object_type_tag(env, info[0], &kSnapshotTag, &tagged);
        if (!tagged) return rejected(env, "ERR_INVALID_ARG", "restore() needs a snapshot made by snapshot()");
        auto *holder = info[0].As<Napi::External<std::shared_ptr<const Snapshot>>>().Data();
        if (!sandbox_ || (*holder)->ownerId != sandbox_->id())
            return rejected(env, "ERR_INVALID_ARG", "the snapshot was taken from another VM");
        Op op;
        op.kind = OpKind::Restore;
        op.snapshot = *holder;
        return startOp(env, std::move(op));
    }

    Napi::Value Dispose(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        auto d = Napi::Promise::Deferred::New(env);
        if (state_ == State::Disposed) {
            d.Resolve(env.Undefined());
            return d.Promise();
        }
        disposeWaiters_.push_back(d);
        if (state_ == State::Alive) {
            state_ = State::Disposing;
            if (inFlight_) {
                // The running operation ends first (an exchange is cancelled), then Stop.
                if (pendingKind_ == OpKind::Boot || pendingKind_ == OpKind::Exchange) {
                    try {
                        sandbox_->cancel(TerminatedBy::Kill);
                    } catch (const std::exception &e) {
                        // The bell could not be armed: the exchange still ends by its
                        // monitors or its answer, and Stop follows it.
                    }
                }
            } else {
                startStop();
            }
        }
        return d.Promise();
    }

    std::shared_ptr<Sandbox> sandbox_; // co-owned by its vCPU thread while that runs
    napi_threadsafe_function notify_ = nullptr;
    NotifyContext *notifyContext_ = nullptr;
    std::optional<Napi::Promise::Deferred> pending_;
    OpKind pendingKind_ = OpKind::Stop;
    bool inFlight_ = false;
    bool busy_ = false;
    bool hostCallPending_ = false;
    uint64_t hostCallId_ = 0;
    State state_ = State::Alive;
    std::vector<Napi::Promise::Deferred> disposeWaiters_;
};

class ExitFloorWorker : public Napi::AsyncWorker {
public:
    ExitFloorWorker(Napi::Env env, uint32_t iterations)
        : Napi::AsyncWorker(env), iterations_(iterations), deferred_(Napi::Promise::Deferred::New(env)) {}
    Napi::Promise promise() { return deferred_.Promise(); }
    void Execute() override {
        try {
            micros_ = measureExitFloor(iterations_);
        } catch (const std::exception &e) {
            SetError(e.what());
        }
    }
    void OnOK() override {
        Napi::Env env = Env();
        Napi::Array a = Napi::Array::New(env, micros_.size());
        for (size_t i = 0; i < micros_.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, micros_[i]));
        deferred_.Resolve(a);
    }
    void OnError(const Napi::Error &e) override {
        deferred_.Reject(makeError(Env(), "ERR_INTERNAL", "exit-floor measurement failed: " + e.Message()).Value());
    }

private:
    uint32_t iterations_;
    Napi::Promise::Deferred deferred_;
    std::vector<double> micros_;
};

Napi::Value Probe(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    hv::ProbeResult r = hv::probe();
    Napi::Object o = Napi::Object::New(env);
    o.Set("usable", Napi::Boolean::New(env, r.usable));
    Napi::Array reasons = Napi::Array::New(env, r.reasons.size());
    for (size_t i = 0; i < r.reasons.size(); ++i) reasons.Set(static_cast<uint32_t>(i), r.reasons[i]);
    o.Set("reasons", reasons);
    return o;
}

Napi::Value MeasureExitFloor(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    double n = info.Length() >= 1 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : NAN;
    if (!std::isfinite(n) || n < 1 || n > 10'000'000 || n != std::floor(n))
        throw makeError(env, "ERR_INVALID_ARG", "measureExitFloor(iterations) needs an integer in [1, 10000000]");
    auto *worker = new ExitFloorWorker(env, static_cast<uint32_t>(n));
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
}

// setCancelSignal(n): the real-time signal that interrupts vCPU threads, chosen before
// the first VM (0 = automatic; AIRLOCK_KVM_SIGNAL also selects it).
Napi::Value SetCancelSignal(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    double n = info.Length() >= 1 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : NAN;
    if (!std::isfinite(n) || n != std::floor(n) || n < 0 || n > 1024)
        throw makeError(env, "ERR_INVALID_ARG", "setCancelSignal(signal) needs a real-time signal number");
    try {
        setCancelSignal(static_cast<int>(n));
    } catch (const std::exception &e) {
        throw makeError(env, "ERR_INVALID_ARG", e.what());
    }
    return env.Undefined();
}

Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
    exports.Set("setCancelSignal", Napi::Function::New(env, SetCancelSignal, "setCancelSignal"));
    exports.Set("abiVersion", Napi::Number::New(env, AIRLOCK_ABI_VERSION));
    exports.Set("probe", Napi::Function::New(env, Probe, "probe"));
    exports.Set("measureExitFloor", Napi::Function::New(env, MeasureExitFloor, "measureExitFloor"));
    exports.Set("Vm", VmWrap::Init(env));
    return exports;
}

} // namespace

} // namespace airlock

static Napi::Object Init(Napi::Env env, Napi::Object exports) { return airlock::InitAddon(env, exports); }

NODE_API_MODULE(airlock, Init)
