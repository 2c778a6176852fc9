// exit_floor.cc — the floors every call latency is compared against, measured on the
// calling thread: the raw exit round trip (a bare ring-3 guest doing `out` in a loop,
// timed per KVM_RUN -> exit -> KVM_RUN), and the exchange floor (the real guest image
// answering a trivial CALL through one KVM_RUN, no hand-off to another thread), plus
// the latter's N-API binding (measureExchangeFloor), so addon.cc registers it in one line.
#include "exit_floor.h"

#include <x86intrin.h>

#include <atomic>
#include <cmath>
#include <ctime>
#include <functional>
#include <string>

#include "../../guest/include/abi.h"
#include "guest_memory.h"
#include "layout.h"
#include "messages.h"
#include "out_loop_vm.h"
#include "sandbox.h"

namespace airlock {

namespace {

double monotonicNsDouble() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

int64_t realtimeNs() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// One request message (abi.h, "Messages"): header, then each field as a u32 length and bytes.
std::vector<uint8_t> encodeRequest(uint32_t kind, uint32_t flags, const std::vector<std::string> &fields) {
    size_t bodySize = 0;
    for (const std::string &f : fields) bodySize += AIRLOCK_FIELD_HEADER_SIZE + f.size();
    std::vector<uint8_t> msg(AIRLOCK_MSG_HEADER_SIZE + bodySize);
    const uint32_t header[4] = {kind, flags, static_cast<uint32_t>(bodySize), static_cast<uint32_t>(fields.size())};
    std::memcpy(msg.data(), header, sizeof header);
    size_t at = AIRLOCK_MSG_HEADER_SIZE;
    for (const std::string &f : fields) {
        const uint32_t n = static_cast<uint32_t>(f.size());
        std::memcpy(msg.data() + at, &n, AIRLOCK_FIELD_HEADER_SIZE); // little-endian host (x86-64 only)
        std::memcpy(msg.data() + at + AIRLOCK_FIELD_HEADER_SIZE, f.data(), f.size());
        at += AIRLOCK_FIELD_HEADER_SIZE + f.size();
    }
    return msg;
}

// The real guest image on the calling thread, driven in exit mode (poll window 0): every
// request is one KVM_RUN that ends in the guest's RESPONSE exit. The guest is trusted
// no further than the bench needs: any other exit or a non-OK final message throws.
class DirectGuest {
public:
    DirectGuest(const uint8_t *image, size_t imageSize) : image_(image, image + imageSize) {
        SandboxConfig config;
        config.heapSize = 64ull << 20;
        config.stackSize = 1ull << 20;
        config.inputSize = 1ull << 20;
        config.outputSize = 1ull << 20;
        config.consoleLimit = 64ull << 10;
        layout_ = computeLayout(parseImageHeader(image_.data(), image_.size()), image_.size(), config);
        const ImageHeader &h = layout_.header;
        mem_ = std::make_unique<GuestMemory>(layout_.memoryEnd);
        // The same map a sandbox builds: text read-only, everything writable no-execute.
        buildSystemRegion(*mem_, {{h.loadAddr, h.dataStart, false, true},
                                  {h.dataStart, layout_.imageRegionEnd, true, false},
                                  {layout_.stackBottom, layout_.stackTop, true, false},
                                  {layout_.heapAddr, layout_.memoryEnd, true, false}});
        std::memcpy(mem_->at(h.loadAddr, image_.size()), image_.data(), image_.size());
        const uint64_t c = h.control;
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_INPUT_ADDR, layout_.inputAddr);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_INPUT_SIZE, layout_.inputSize);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_OUTPUT_ADDR, layout_.outputAddr);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_OUTPUT_SIZE, layout_.outputSize);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_HEAP_ADDR, layout_.heapAddr);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_HEAP_SIZE, layout_.heapSize);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_STACK_TOP, layout_.stackTop);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_STACK_SIZE, layout_.stackSize);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_CONSOLE_LIMIT, layout_.consoleLimit);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER, layout_.heapAddr);
        // The TLS block's first word is the thread pointer itself (x86-64 TLS ABI).
        mem_->write<uint64_t>(h.tlsBlock, h.tlsBlock);
        mem_->populate(h.loadAddr, std::min(layout_.imageRegionEnd, alignUp(h.bssEnd, kHugePageSize)) - h.loadAddr);
        mem_->populate(layout_.stackTop - kHugePageSize, kHugePageSize);
        mem_->populate(layout_.heapAddr, kHugePageSize);

        vm_ = hv::createVm();
        vm_->mapMemory(0, 0, mem_->base(), mem_->size());
        vcpu_ = vm_->createVcpu();
        vcpu_->setSpecialRegisters(ring3SpecialRegisters(vcpu_->getSpecialRegisters(), h.tlsBlock));
        hv::Registers regs;
        regs.rip = h.entry;
        regs.rsp = layout_.stackTop;
        regs.rflags = kRing3Rflags;
        vcpu_->setRegisters(regs);
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_TSC_KHZ, vcpu_->tscKhz());
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_POLL_TICKS, 0); // exit mode: never poll
        // Guest TSC = host TSC + offset (KVM runs the guest TSC at the host's rate).
        const uint64_t before = __rdtsc();
        const uint64_t guest = vcpu_->guestTsc();
        const uint64_t after = __rdtsc();
        tscOffset_ = static_cast<int64_t>(guest - (before + (after - before) / 2));

        writeClockBase();
        runToResponse(); // boot: the guest answers READY
        expect(AIRLOCK_MSG_READY, "boot");
    }

    // Writes `request` and runs the guest until it answers; the answer stays in output_.
    void exchange(const std::vector<uint8_t> &request) {
        const uint64_t c = layout_.header.control;
        std::memcpy(mem_->at(layout_.inputAddr, request.size()), request.data(), request.size());
        mem_->write<uint32_t>(c + AIRLOCK_CTRL_OFF_REQUEST_LEN, static_cast<uint32_t>(request.size()));
        writeClockBase();
        pollState()->store(AIRLOCK_POLL_REQUEST_EXIT, std::memory_order_release);
        runToResponse();
        pollState()->store(AIRLOCK_POLL_IDLE, std::memory_order_release);
    }

    // The final message of the last answer must be `kind` with status OK.
    void expect(uint32_t kind, const char *what) {
        // Skip CONSOLE messages; each length is checked against the copied output.
        size_t at = 0;
        for (;;) {
            uint32_t header[4];
            if (output_.size() - at < sizeof header) throw std::runtime_error(std::string(what) + ": truncated answer");
            std::memcpy(header, output_.data() + at, sizeof header);
            if (header[0] != AIRLOCK_MSG_CONSOLE) {
                if (header[0] != kind || header[1] != AIRLOCK_STATUS_OK)
                    throw std::runtime_error(std::string(what) + ": guest answered kind " + std::to_string(header[0]) +
                                             " status " + std::to_string(header[1]));
                return;
            }
            if (output_.size() - at - sizeof header < header[2])
                throw std::runtime_error(std::string(what) + ": truncated console message");
            at += sizeof header + header[2];
        }
    }

private:
    std::atomic<uint32_t> *pollState() {
        // Invariant: the control block lies inside the image (parseImageHeader) and
        // poll_state is 4-byte aligned in it (abi.h static asserts).
        return reinterpret_cast<std::atomic<uint32_t> *>(mem_->at(layout_.header.control + AIRLOCK_CTRL_OFF_POLL_STATE, 4));
    }

    void writeClockBase() {
        const uint64_t c = layout_.header.control;
        mem_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_TSC_BASE, __rdtsc() + static_cast<uint64_t>(tscOffset_));
        mem_->write<int64_t>(c + AIRLOCK_CTRL_OFF_WALL_NS_BASE, realtimeNs());
    }

    // An IDLE exit is the guest finishing the previous answer's tail (it parks before
    // reading the request): it reads REQUEST_EXIT when entered again.
    void runToResponse() {
        for (int idles = 0;; ++idles) {
            const hv::Exit exit = vcpu_->run();
            if (exit.kind != hv::ExitKind::Io || exit.port != AIRLOCK_PORT || !exit.isWrite)
                throw std::runtime_error(std::string("exchange-floor guest stopped with ") + hv::exitKindName(exit.kind));
            if (exit.value == AIRLOCK_EXIT_IDLE && idles < 2) continue;
            if (exit.value != AIRLOCK_EXIT_RESPONSE)
                throw std::runtime_error("exchange-floor guest exited with code " + std::to_string(exit.value));
            std::string error;
            if (!readGuestOutput(*mem_, layout_, output_, error)) throw std::runtime_error(error);
            return;
        }
    }

    std::vector<uint8_t> image_;
    GuestLayout layout_;
    std::unique_ptr<GuestMemory> mem_;
    std::unique_ptr<hv::Vm> vm_;
    std::unique_ptr<hv::Vcpu> vcpu_;
    int64_t tscOffset_ = 0;
    std::vector<uint8_t> output_;
};

std::vector<double> measureExchangeFloor(const uint8_t *image, size_t imageSize, uint32_t iterations) {
    DirectGuest guest(image, imageSize);
    guest.exchange(encodeRequest(AIRLOCK_MSG_LOAD_RUNTIME, 0, {}));
    guest.expect(AIRLOCK_MSG_RESULT, "LOAD_RUNTIME");
    guest.exchange(encodeRequest(AIRLOCK_MSG_LOAD, 0, {"handler", "", "echo", "function handler(e) { return e; }"}));
    guest.expect(AIRLOCK_MSG_RESULT, "LOAD");
    const std::vector<uint8_t> call = encodeRequest(AIRLOCK_MSG_CALL, 0, {"echo", "{\"id\":1,\"name\":\"bench\"}"});
    for (int i = 0; i < 32; ++i) guest.exchange(call); // first calls fault pages in
    guest.expect(AIRLOCK_MSG_RESULT, "CALL");
    std::vector<double> micros;
    micros.reserve(iterations);
    for (uint32_t i = 0; i < iterations; ++i) {
        const double t0 = monotonicNsDouble();
        guest.exchange(call);
        micros.push_back((monotonicNsDouble() - t0) / 1000.0);
    }
    guest.expect(AIRLOCK_MSG_RESULT, "CALL");
    return micros;
}

// Runs one measurement off the JS thread and resolves with its per-round microseconds;
// a failure rejects with ERR_INTERNAL naming the measurement.
class MeasureWorker : public Napi::AsyncWorker {
public:
    MeasureWorker(Napi::Env env, std::string what, std::function<std::vector<double>()> measure)
        : Napi::AsyncWorker(env), what_(std::move(what)), measure_(std::move(measure)),
          deferred_(Napi::Promise::Deferred::New(env)) {}
    Napi::Promise promise() { return deferred_.Promise(); }
    void Execute() override {
        try {
            micros_ = measure_();
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
        Napi::Error err = Napi::Error::New(Env(), what_ + " measurement failed: " + e.Message());
        err.Set("code", Napi::String::New(Env(), "ERR_INTERNAL"));
        deferred_.Reject(err.Value());
    }

private:
    std::string what_;
    std::function<std::vector<double>()> measure_;
    Napi::Promise::Deferred deferred_;
    std::vector<double> micros_;
};

Napi::Promise queueMeasurement(Napi::Env env, std::string what, std::function<std::vector<double>()> measure) {
    auto *worker = new MeasureWorker(env, std::move(what), std::move(measure));
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
}

// An integer round count in [1, 10000000], or NaN.
double iterationsArg(const Napi::CallbackInfo &info, size_t index) {
    const double n = info.Length() > index && info[index].IsNumber() ? info[index].As<Napi::Number>().DoubleValue() : NAN;
    return std::isfinite(n) && n >= 1 && n <= 10'000'000 && n == std::floor(n) ? n : NAN;
}

[[noreturn]] void invalidArg(Napi::Env env, const char *message) {
    Napi::Error err = Napi::Error::New(env, message);
    err.Set("code", Napi::String::New(env, "ERR_INVALID_ARG"));
    throw err;
}

Napi::Value MeasureExchangeFloor(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    const double n = iterationsArg(info, 1);
    if (std::isnan(n) || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
        invalidArg(env, "measureExchangeFloor(image, iterations) needs the guest image bytes and an integer in [1, 10000000]");
    Napi::Uint8Array image = info[0].As<Napi::Uint8Array>();
    // Copied: the caller's buffer may move while the worker runs.
    std::vector<uint8_t> bytes(image.Data(), image.Data() + image.ByteLength());
    const auto iterations = static_cast<uint32_t>(n);
    return queueMeasurement(env, "exchange-floor", [bytes = std::move(bytes), iterations] {
        return measureExchangeFloor(bytes.data(), bytes.size(), iterations);
    });
}

Napi::Value MeasureExitFloor(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    const double n = iterationsArg(info, 0);
    if (std::isnan(n)) invalidArg(env, "measureExitFloor(iterations) needs an integer in [1, 10000000]");
    const auto iterations = static_cast<uint32_t>(n);
    return queueMeasurement(env, "exit-floor", [iterations] { return measureExitFloor(iterations); });
}

} // namespace

std::vector<double> measureExitFloor(uint32_t iterations) {
    OutLoopVm guest = makeOutLoopVm(32); // the first entries fault pages in
    hv::Vcpu *vcpu = guest.vcpu.get();
    auto expectOut = [&](const hv::Exit &exit) {
        if (!isOutLoopExit(exit))
            throw std::runtime_error(std::string("exit-floor guest stopped with ") + hv::exitKindName(exit.kind));
    };
    std::vector<double> micros;
    micros.reserve(iterations);
    for (uint32_t i = 0; i < iterations; ++i) {
        double t0 = monotonicNsDouble();
        hv::Exit exit = vcpu->run();
        double t1 = monotonicNsDouble();
        expectOut(exit);
        micros.push_back((t1 - t0) / 1000.0);
    }
    return micros;
}

Napi::Function exitFloorFunction(Napi::Env env) { return Napi::Function::New(env, MeasureExitFloor, "measureExitFloor"); }

Napi::Function exchangeFloorFunction(Napi::Env env) {
    return Napi::Function::New(env, MeasureExchangeFloor, "measureExchangeFloor");
}

} // namespace airlock
