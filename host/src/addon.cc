// addon.cc — the N-API surface of the VMM: probe(), abiVersion, measureExitFloor()
// and class Vm, which turns the Sandbox's operations and events into Promises and
// host-call callbacks on the Node main thread, one event-loop turn per wake-up.
#include <napi.h>
#include <uv.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>

#include "../../guest/include/abi.h"
#include "../hv/hypervisor.h"
#include "call_path_counters.h"
#include "core_budget.h"
#include "exit_floor.h"
#include "census_napi.h"
#include "runner_napi.h"
#include "messages.h"
#include "reply_deadline.h"
#include "sandbox.h"
#include "template_napi.h"

namespace airlock {

namespace {

// Where the onHostCall callback lives: a non-enumerable property of the Vm object
// itself, so a callback that closes over the Vm forms a cycle the GC can collect
// (a native strong reference would pin the Vm forever).
constexpr const char *kOnHostCallKey = "__airlockOnHostCall";

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

// The vCPU thread's way to wake the main thread: a uv_async handle on the Vm's event
// loop. Each wake-up is a turn of the loop of its own (a macrotask): events posted
// while JavaScript handles earlier ones wait for the next turn, so timers and I/O run
// between two host calls of a guest that calls the host in a loop. (A thread-safe
// function would not do: Node keeps dispatching in the same turn while calls arrive
// during its callback.) uv_async_send is the only call another thread makes, and only
// until close(), hence the lock; everything else runs on the loop's thread.
class Notifier {
public:
    Notifier(uv_loop_t *loop, uv_async_cb cb, void *data) : handle_(new uv_async_t) {
        if (uv_async_init(loop, handle_, cb) != 0) {
            delete handle_;
            throw std::runtime_error("uv_async_init failed");
        }
        handle_->data = data;
        uv_unref(reinterpret_cast<uv_handle_t *>(handle_));
    }
    void call() {
        std::lock_guard<std::mutex> lock(mu_);
        if (handle_) uv_async_send(handle_);
    }
    // Loop thread: while an operation runs, the handle keeps the event loop alive.
    void setRef(bool on) {
        if (!handle_) return;
        if (on)
            uv_ref(reinterpret_cast<uv_handle_t *>(handle_));
        else
            uv_unref(reinterpret_cast<uv_handle_t *>(handle_));
    }
    // Loop thread; idempotent. No callback runs after it.
    void close() {
        uv_async_t *h;
        {
            std::lock_guard<std::mutex> lock(mu_);
            h = handle_;
            handle_ = nullptr;
        }
        if (h) uv_close(reinterpret_cast<uv_handle_t *>(h), [](uv_handle_t *x) { delete reinterpret_cast<uv_async_t *>(x); });
    }

private:
    std::mutex mu_;
    uv_async_t *handle_;
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
        // A template handle in place of the image makes a clone (template_napi.h); its
        // sizes are the template's, whatever config says.
        std::shared_ptr<const Template> from = info.Length() >= 1 ? templateOf(env, info[0]) : nullptr;
        if (info.Length() < 3 || !(from || info[0].IsBuffer()) || !info[1].IsObject() || !info[2].IsFunction())
            throw makeError(env, "ERR_INVALID_ARG", "new Vm(image: Buffer | template, config: object, onHostCall: function)");
        Napi::Object cfg = info[1].As<Napi::Object>();
        SandboxConfig config = from ? from->layout.config : SandboxConfig{};
        if (!from) {
            config.heapSize = sizeField(cfg, "heapSize", true, 0);
            config.stackSize = sizeField(cfg, "stackSize", true, 0);
            config.inputSize = sizeField(cfg, "inputSize", true, 0);
            config.outputSize = sizeField(cfg, "outputSize", true, 0);
            config.consoleLimit = sizeField(cfg, "consoleLimit", true, 0);
        }
        // The main thread never busy-waits any more: its old budget is refused, not
        // silently ignored.
        if (!cfg.Get("mainSpinUs").IsUndefined())
            throw makeError(env, "ERR_INVALID_ARG", "config.mainSpinUs is not supported: the main thread never spins");
        SpinConfig spin;
        spin.vcpuSpinNs = sizeField(cfg, "vcpuSpinUs", false, spin.vcpuSpinNs / 1000) * 1000;
        spin.guestPollNs = sizeField(cfg, "guestPollUs", false, spin.guestPollNs / 1000) * 1000;
        if (spin.vcpuSpinNs > 10'000'000 || spin.guestPollNs > 10'000'000)
            throw makeError(env, "ERR_INVALID_ARG", "spin budgets are limited to 10000 us");

        info.This().As<Napi::Object>().DefineProperty(
            Napi::PropertyDescriptor::Value(kOnHostCallKey, info[2], napi_default));

        uv_loop_t *loop = nullptr;
        if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop)
            throw makeError(env, "ERR_INTERNAL", "cannot reach the event loop for vCPU notifications");
        std::shared_ptr<Notifier> notifier;
        try {
            notifier = std::make_shared<Notifier>(loop, OnWake, this);
        } catch (const std::exception &) {
            throw makeError(env, "ERR_INTERNAL", "cannot create the vCPU notification channel");
        }
        notifier_ = notifier;
        try {
            replyDeadline_ = std::make_unique<ReplyDeadline>(loop, [this] { onReplyDeadline(); });
        } catch (const std::exception &) {
            closeNotifier();
            throw makeError(env, "ERR_INTERNAL", "cannot create the host-call deadline timer");
        }
        asyncContext_.emplace(env, "airlock.vcpu");
        // Environment teardown (a worker ending) closes the handle before the loop goes.
        napi_add_env_cleanup_hook(env, CloseOnTeardown, this);
        try {
            auto notify = [notifier] { notifier->call(); };
            if (from) {
                sandbox_ = Sandbox::createClone(std::move(from), spin, notify);
            } else {
                auto image = info[0].As<Napi::Buffer<uint8_t>>();
                sandbox_ = Sandbox::create(image.Data(), image.Length(), config, spin, notify);
            }
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

    static void CloseOnTeardown(void *data) { static_cast<VmWrap *>(data)->closeNotifier(); }

    void closeNotifier() {
        if (replyDeadline_) replyDeadline_->close();
        if (!notifier_) return;
        notifier_->close();
        notifier_.reset();
    }

    static void OnWake(uv_async_t *handle) { static_cast<VmWrap *>(handle->data)->onWake(); }

    // One loop turn: everything posted so far, with the microtasks it queues run
    // before the turn ends (the callback scope), as for any I/O callback.
    void onWake() {
        Napi::Env env = Env();
        Napi::HandleScope scope(env);
        Napi::CallbackScope callbackScope(env, *asyncContext_);
        try {
            dispatchAll(sandbox_ ? sandbox_->drainEvents() : std::vector<Event>{});
        } catch (const Napi::Error &err) {
            napi_fatal_exception(env, err.Value());
        } catch (const std::exception &err) {
            // Nothing native may unwind through libuv: that would abort the process.
            napi_fatal_exception(env, makeError(env, "ERR_INTERNAL", err.what()).Value());
        }
    }

    void releaseNotify() {
        if (notifier_) napi_remove_env_cleanup_hook(Env(), CloseOnTeardown, this);
        closeNotifier();
    }

    // While an operation runs, the notification channel keeps the event loop alive
    // and the Vm object alive; when idle, neither.
    void setBusy(bool busy) {
        if (busy == busy_ || !notifier_) return;
        busy_ = busy;
        notifier_->setRef(busy);
        if (busy)
            Ref();
        else
            Unref();
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
            if (!sandbox_->postFast(op) && !sandbox_->restoreDirectly(op)) sandbox_->post(std::move(op));
        } catch (const std::exception &e) {
            inFlight_ = false;
            pending_.reset();
            setBusy(false);
            d.Reject(makeError(env, "ERR_INTERNAL", std::string("cannot start the vCPU thread: ") + e.what()).Value());
            return promise;
        }
        // The outcome arrives by notification, in a later turn of the event loop.
        return promise;
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
        // The runner may let the sandbox go while the host function runs: its wall
        // clock is kept here meanwhile (reply_deadline.h).
        if (replyDeadline_) replyDeadline_->arm(ev.wallDeadlineNs);
        Napi::Value fn = Value().Get(kOnHostCallKey);
        auto output = Napi::Buffer<uint8_t>::Copy(env, ev.hostCallOutput.data(), ev.hostCallOutput.size());
        try {
            if (!fn.IsFunction()) throw makeError(env, "ERR_INTERNAL", "onHostCall is gone");
            fn.As<Napi::Function>().Call(Value(), {output, Napi::Number::New(env, static_cast<double>(ev.hostCallId))});
        } catch (const Napi::Error &e) {
            // A callback that throws synchronously answers the guest with that error.
            if (hostCallPending_ && hostCallId_ == ev.hostCallId) {
                hostCallPending_ = false;
                if (replyDeadline_) replyDeadline_->disarm();
                try {
                    sandbox_->postHostReply(ev.hostCallId, hostErrorMessage(e.Message()));
                } catch (const std::exception &) {
                    // No runner can take the sandbox up: the exchange ends by its monitors or a kill.
                }
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
        if (replyDeadline_) replyDeadline_->disarm();
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
            if (o.code == OutcomeCode::Cancelled)
                e.Set("terminatedBy", Napi::String::New(env, terminatedByName(o.terminatedBy)));
            // What a cancelled or aborted guest had written (its console lines), still hostile.
            if ((o.code == OutcomeCode::Cancelled || o.code == OutcomeCode::GuestAbort) && !o.output.empty())
                e.Set("output", Napi::Buffer<uint8_t>::Copy(env, o.output.data(), o.output.size()));
            d.Reject(e.Value());
        }
        if (state_ == State::Disposing) {
            try {
                startStop();
            } catch (const std::exception &) {
                // No runner exists and none can start: the VM stays until the process
                // ends (as in Sandbox::stopAndJoin), and dispose() still settles.
                finishDispose();
            }
        } else {
            setBusy(false);
        }
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
        // An answer that turns out moot (the exchange was cancelled and its event not yet
        // dispatched) is dropped by the vCPU thread, which takes only the reply to the
        // call it waits for.
        if (!hostCallPending_ || !sandbox_) return env.Undefined(); // nobody waits for it any more
        // With the id onHostCall was given, an answer to an older call (of a cancelled
        // exchange) can never be taken for the answer to the current one.
        if (info.Length() >= 2 && !info[1].IsUndefined() &&
            (!info[1].IsNumber() || info[1].As<Napi::Number>().DoubleValue() != static_cast<double>(hostCallId_)))
            return env.Undefined();
        auto reply = info[0].As<Napi::Buffer<uint8_t>>();
        hostCallPending_ = false;
        if (replyDeadline_) replyDeadline_->disarm();
        try {
            sandbox_->postHostReply(hostCallId_, std::vector<uint8_t>(reply.Data(), reply.Data() + reply.Length()));
        } catch (const std::exception &e) {
            throw makeError(env, "ERR_INTERNAL", std::string("cannot queue the sandbox for a runner: ") + e.what());
        }
        return env.Undefined();
    }

    // The exchange's wall clock ran out while its guest waited for a host function.
    void onReplyDeadline() {
        if (!sandbox_ || !inFlight_ || !(pendingKind_ == OpKind::Boot || pendingKind_ == OpKind::Exchange)) return;
        try {
            sandbox_->cancel(TerminatedBy::WallClock);
        } catch (const std::exception &) {
            // The bell could not be armed: a runner holds the sandbox, and its own
            // wall-clock timer ends the exchange.
        }
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
    std::shared_ptr<Notifier> notifier_;     // also held by the sandbox's notify callback
    std::unique_ptr<ReplyDeadline> replyDeadline_; // the wall clock while a host call waits
    std::optional<Napi::AsyncContext> asyncContext_;
    std::optional<Napi::Promise::Deferred> pending_;
    OpKind pendingKind_ = OpKind::Stop;
    bool inFlight_ = false;
    bool busy_ = false;
    bool hostCallPending_ = false;
    uint64_t hostCallId_ = 0;
    State state_ = State::Alive;
    std::vector<Napi::Promise::Deferred> disposeWaiters_;
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

// pollingBudget(): what the process-wide busy-wait budget decided (core_budget.h):
// the exit floor measured at the first VM's start (0 until then), the CPUs the call
// path's threads may run on, others' load on them, how many guests may poll at once,
// and how many do.
Napi::Value PollingBudget(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    CoreBudget &budget = CoreBudget::instance();
    Napi::Object o = Napi::Object::New(env);
    o.Set("exitFloorUs", Napi::Number::New(env, static_cast<double>(budget.exitFloorNs()) / 1000));
    o.Set("cap", Napi::Number::New(env, budget.cap()));
    o.Set("cores", Napi::Number::New(env, budget.cores()));
    o.Set("polling", Napi::Number::New(env, budget.holders()));
    o.Set("sessions", Napi::Number::New(env, budget.sessions()));
    o.Set("othersLoad", Napi::Number::New(env, budget.othersLoad()));
    Napi::Object counters = Napi::Object::New(env);
#define AIRLOCK_COUNTER_EXPORT(name)                                                                                   \
    counters.Set(#name, Napi::Number::New(env, static_cast<double>(callPathCounters().name.load(std::memory_order_relaxed))));
    AIRLOCK_CALL_PATH_COUNTERS(AIRLOCK_COUNTER_EXPORT)
#undef AIRLOCK_COUNTER_EXPORT
    o.Set("counters", counters);
    return o;
}

// An integer setting from the environment in [lo, hi], or nullopt when unset; anything
// else refuses to load the addon, naming the variable and the range.
std::optional<int> envInteger(Napi::Env env, const char *name, long lo, long hi) {
    const char *v = std::getenv(name);
    if (!v || !*v) return std::nullopt;
    char *end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end != '\0' || n < lo || n > hi)
        throw makeError(env, "ERR_INVALID_ARG",
                        std::string(name) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return static_cast<int>(n);
}

// AIRLOCK_KVM_POLLERS=n: how many guests may poll at once, instead of what the budget
// measures (0 turns polling and spinning off). AIRLOCK_KVM_RUNNERS=n: how many sandboxes
// run at once (the runner pool's soft size), instead of twice the CPUs.
void readEnvironment(Napi::Env env) {
    if (const std::optional<int> pollers = envInteger(env, "AIRLOCK_KVM_POLLERS", 0, 1024))
        CoreBudget::instance().setOverride(*pollers);
    if (const std::optional<int> runners = envInteger(env, "AIRLOCK_KVM_RUNNERS", 1, 16))
        RunnerPool::setSoftSizeOverride(*runners);
}

Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
    readEnvironment(env);
    exports.Set("pollingBudget", Napi::Function::New(env, PollingBudget, "pollingBudget"));
    exports.Set("setCancelSignal", Napi::Function::New(env, SetCancelSignal, "setCancelSignal"));
    exports.Set("abiVersion", Napi::Number::New(env, AIRLOCK_ABI_VERSION));
    exports.Set("probe", Napi::Function::New(env, Probe, "probe"));
    exports.Set("measureExitFloor", exitFloorFunction(env));
    exports.Set("measureExchangeFloor", exchangeFloorFunction(env));
    exports.Set("runnerPool", runnerPoolFunction(env));
    exports.Set("census", censusFunction(env));
    exports.Set("Vm", VmWrap::Init(env));
    registerTemplateApi(env, exports);
    return exports;
}

} // namespace

} // namespace airlock

static Napi::Object Init(Napi::Env env, Napi::Object exports) { return airlock::InitAddon(env, exports); }

NODE_API_MODULE(airlock, Init)
