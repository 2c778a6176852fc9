// vcpu_thread.cc — everything the vCPU thread of a sandbox runs: its mailbox loop,
// guest setup and teardown, and the run loop of an exchange with one handler per
// exit kind. The guest runs only under a host budget: an exchange (its monitors,
// kill) or, after an answer, the post-answer window (kAfterAnswerAllowanceNs).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#include "../../guest/include/abi.h"
#include "messages.h"
#include "sandbox.h"
#include "timing.h"

namespace airlock {

namespace {
std::string hex(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}
} // namespace

// ---- mailbox loop -----------------------------------------------------------------

void Sandbox::createTimers() {
    std::lock_guard<std::mutex> lock(timerMu_);
    clockid_t cpuClock;
    if (int rc = pthread_getcpuclockid(pthread_self(), &cpuClock); rc != 0)
        throw std::system_error(rc, std::generic_category(), "pthread_getcpuclockid");
    const pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
    wallTimer_ = std::make_unique<ThreadTimer>(CLOCK_MONOTONIC, static_cast<int>(TerminatedBy::WallClock), tid);
    cpuTimer_ = std::make_unique<ThreadTimer>(cpuClock, static_cast<int>(TerminatedBy::CpuTime), tid);
    windowTimer_ = std::make_unique<ThreadTimer>(CLOCK_MONOTONIC, static_cast<int>(TimerTag::Window), tid);
    bellTimer_ = std::make_unique<ThreadTimer>(CLOCK_MONOTONIC, static_cast<int>(TimerTag::Bell), tid);
    vcpuClock_ = cpuClock;
}

void Sandbox::deleteTimers() {
    std::lock_guard<std::mutex> lock(timerMu_);
    wallTimer_.reset();
    cpuTimer_.reset();
    windowTimer_.reset();
    bellTimer_.reset();
}

// The thread has seen what the bell rang for and re-checks the state word before it
// next enters the guest or sleeps (every caller does): the bell may stop.
void Sandbox::ackInterrupt() {
    if (!bellArmed_.load()) return;
    std::lock_guard<std::mutex> lock(timerMu_);
    bellArmed_.store(false);
    if (bellTimer_) bellTimer_->disarm();
}

void Sandbox::threadMain() {
    SignalTarget target{&cancel_, &wakeSeq_, &signalVcpu_};
    try {
        bindSignalTarget(&target);
        createTimers();
    } catch (const std::exception &e) {
        timerError_ = e.what();
        deleteTimers();
    }
    const bool timersReady = bellTimer_ != nullptr;

    for (;;) {
        waitFor([this] { return opReady_.load(); }, false);
        Op op;
        {
            std::lock_guard<std::mutex> lock(mu_);
            op = std::move(ops_.front());
            ops_.pop_front();
            opReady_.store(!ops_.empty());
        }
        cancel_.clearKick();
        ackInterrupt();
        if (op.kind == OpKind::Stop) break;
        std::optional<Outcome> outcome;
        if (!timersReady) {
            outcome = Outcome{};
            outcome->code = OutcomeCode::Internal;
            outcome->message = "cannot set up the vCPU thread's signal and monitor timers: " + timerError_;
        } else {
            try {
                outcome = handle(op);
            } catch (const std::exception &e) {
                session_.store(false);
                std::string reason = std::string("a hypervisor operation failed: ") + e.what();
                poison(reason);
                if (handover_.attached()) handover_.setPoll(AIRLOCK_POLL_IDLE);
                outcome.reset();
                const bool session = op.kind == OpKind::Boot || op.kind == OpKind::Exchange;
                // An exchange still unanswered fails; one already answered owes nothing.
                if (!session || claimExchange(false)) {
                    Outcome o;
                    o.code = OutcomeCode::Internal;
                    o.message = reason;
                    outcome = session ? finishExchange(std::move(o)) : std::move(o);
                    if (session) handover_.reset();
                } else {
                    // A monitor left armed by the failed exchange must not cancel a later one.
                    wallTimer_->disarm();
                    cpuTimer_->disarm();
                }
                windowTimer_->disarm();
                windowEndNs_.store(0);
            }
        }
        if (outcome) {
            Event ev;
            ev.kind = EventKind::Done;
            ev.op = op.kind;
            ev.outcome = std::move(*outcome);
            emit(std::move(ev));
        }
    }

    tearDownGuest();
    deleteTimers();
    unbindSignalTarget();
    Event done;
    done.kind = EventKind::Done;
    done.op = OpKind::Stop;
    emit(std::move(done));
    {
        std::lock_guard<std::mutex> lock(exitMu_);
        exited_ = true;
    }
    exitCv_.notify_all();
}

std::optional<Outcome> Sandbox::handle(const Op &op) {
    Outcome o;
    switch (op.kind) {
    case OpKind::Boot:
        return boot();
    case OpKind::Exchange:
        if (std::optional<Outcome> refused = refuseUnlessRunnable("restore a snapshot before sending")) return refused;
        startExchange(op);
        runSession();
        return std::nullopt; // the session emitted the outcome
    case OpKind::Snapshot:
        return takeSnapshot();
    case OpKind::Restore:
        return restore(*op.snapshot);
    case OpKind::Stop:
        break;
    }
    o.code = OutcomeCode::Internal;
    o.message = "unexpected operation";
    return o;
}

void Sandbox::emit(Event ev) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        events_.push_back(std::move(ev));
    }
    if (handoff_.exchange(kPosted) != kSpinning) notify_();
}

// Spins for vcpuSpinNs, then sleeps on the futex; every wake-up re-checks. With
// `stopOnCancel`, a cancel reason ends the wait (false).
template <typename Ready> bool Sandbox::waitFor(Ready ready, bool stopOnCancel) {
    const uint64_t deadline = monotonicNs() + spin_.vcpuSpinNs;
    uint64_t nextYield = deadline - spin_.vcpuSpinNs + kSpinYieldNs;
    bool spinning = spin_.vcpuSpinNs > 0;
    for (;;) {
        const uint32_t seq = wakeSeq_.load();
        if (ready()) return true;
        if (stopOnCancel && cancel_.cancelled()) return false;
        // Not in the guest and about to re-check before sleeping: the bell is heard.
        if (cancel_.wantsInterrupt()) ackInterrupt();
        if (spinning) {
            for (int i = 0; i < 64; ++i) __builtin_ia32_pause();
            const uint64_t now = monotonicNs();
            const int cpu = sched_getcpu();
            vcpuCpu_.store(cpu, std::memory_order_relaxed);
            // Spinning on the main thread's core would only delay it.
            if (now >= nextYield || mainCpu_.load(std::memory_order_relaxed) == cpu) {
                sched_yield();
                nextYield = now + kSpinYieldNs;
            }
            if (now < deadline) continue;
            spinning = false;
        }
        vcpuSleeping_.store(true);
        if (!ready() && !(stopOnCancel && cancel_.cancelled())) futexWait(&wakeSeq_, seq);
        vcpuSleeping_.store(false);
    }
}

// ---- guest lifetime -------------------------------------------------------------------

void Sandbox::setUpGuest() {
    const GuestLayout &l = layout_;
    const ImageHeader &h = l.header;
    memory_ = std::make_unique<GuestMemory>(l.memoryEnd);
    GuestMemory &mem = *memory_;

    std::vector<MappedRange> ranges;
    // Image slots that end at or before data_start hold only text and rodata: mapped
    // read-only so the guest cannot patch its own code (data shares the slot otherwise).
    const uint64_t textEnd = h.dataStart / kHugePageSize * kHugePageSize;
    if (textEnd > h.loadAddr) ranges.push_back({h.loadAddr, textEnd, false, true});
    const uint64_t rwStart = std::max(textEnd, h.loadAddr);
    const uint64_t execEnd = alignUp(h.dataStart, kHugePageSize);
    if (execEnd > rwStart) ranges.push_back({rwStart, execEnd, true, true});
    if (l.imageRegionEnd > execEnd) ranges.push_back({execEnd, l.imageRegionEnd, true, false});
    ranges.push_back({l.stackBottom, l.stackTop, true, false});
    ranges.push_back({l.heapAddr, l.memoryEnd, true, false});
    buildSystemRegion(mem, ranges);

    std::memcpy(mem.at(h.loadAddr, image_.size()), image_.data(), image_.size());
    // bss is already zero: the mapping is fresh anonymous memory.
    const uint64_t c = h.control;
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_INPUT_ADDR, l.inputAddr);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_INPUT_SIZE, l.inputSize);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_OUTPUT_ADDR, l.outputAddr);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_OUTPUT_SIZE, l.outputSize);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_HEAP_ADDR, l.heapAddr);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_HEAP_SIZE, l.heapSize);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_STACK_TOP, l.stackTop);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_STACK_SIZE, l.stackSize);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_CONSOLE_LIMIT, l.consoleLimit);
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER, l.heapAddr);
    // The TLS block's first word is the thread pointer itself (x86-64 TLS ABI).
    mem.write<uint64_t>(h.tlsBlock, h.tlsBlock);

    // Pages the guest surely touches: image and buffers, the top of the stack, the
    // start of the heap.
    mem.populate(h.loadAddr, l.imageRegionEnd - h.loadAddr);
    mem.populate(l.stackTop - kHugePageSize, kHugePageSize);
    mem.populate(l.heapAddr, kHugePageSize);

    vm_ = hv::createVm();
    vm_->mapMemory(0, 0, mem.base(), mem.size());
    vcpu_ = vm_->createVcpu();
    signalVcpu_.store(vcpu_.get());

    hv::SpecialRegisters sregs = ring3SpecialRegisters(vcpu_->getSpecialRegisters(), h.tlsBlock);
    vcpu_->setSpecialRegisters(sregs);
    hv::Registers regs;
    regs.rip = h.entry;
    regs.rsp = l.stackTop;
    regs.rflags = kRing3Rflags;
    vcpu_->setRegisters(regs);

    tscKhz_ = vcpu_->tscKhz();
    mem.write<uint64_t>(c + AIRLOCK_CTRL_OFF_TSC_KHZ, tscKhz_);
    pollNs_.store(0);
    setPollWindow(spin_.guestPollNs);
    // Guest TSC = host TSC + offset (same rate: KVM runs the guest TSC at the host's
    // frequency unless scaling is configured, which we never do).
    const uint64_t before = __rdtsc();
    const uint64_t guest = vcpu_->guestTsc();
    const uint64_t after = __rdtsc();
    tscOffset_ = static_cast<int64_t>(guest - (before + (after - before) / 2));
    // Invariant: the control block lies inside the image (parseImageHeader) and
    // poll_state is 4-byte aligned in it (abi.h static asserts).
    handover_.attach(reinterpret_cast<uint32_t *>(mem.at(c + AIRLOCK_CTRL_OFF_POLL_STATE, 4)));
}

void Sandbox::tearDownGuest() {
    signalVcpu_.store(nullptr);
    handover_.attach(nullptr);
    vcpu_.reset();
    vm_.reset();
    memory_.reset();
    booted_ = false;
    runnable_ = false;
}

void Sandbox::writeClockBase() {
    const uint64_t c = layout_.header.control;
    const uint64_t tsc = __rdtsc();
    const int64_t wall = realtimeNs();
    memory_->write<uint64_t>(c + AIRLOCK_CTRL_OFF_TSC_BASE, tsc + static_cast<uint64_t>(tscOffset_));
    memory_->write<int64_t>(c + AIRLOCK_CTRL_OFF_WALL_NS_BASE, wall);
}

std::optional<Outcome> Sandbox::boot() {
    Outcome o;
    if (booted_ || memory_) {
        o.code = OutcomeCode::InvalidArg;
        o.message = "the VM has already booted";
        return o;
    }
    try {
        setUpGuest();
        checkNoSystemCalls(*vcpu_);
    } catch (const std::exception &e) {
        tearDownGuest();
        o.code = OutcomeCode::Internal;
        o.message = std::string("cannot create the micro-VM: ") + e.what();
        return o;
    }
    booted_ = true;
    runnable_ = true;
    Op op;
    op.kind = OpKind::Boot;
    startExchange(op);
    runSession();
    return std::nullopt; // the session emitted the outcome
}

Outcome Sandbox::takeSnapshot() {
    Outcome o;
    if (std::optional<Outcome> refused = refuseUnlessRunnable("its state cannot be snapshotted")) return *refused;
    vcpu_->settle();
    o.snapshot = captureSnapshot(*memory_, *vcpu_, layout_, id_);
    return o;
}

Outcome Sandbox::restore(const Snapshot &snap) {
    Outcome o;
    const uint64_t start = monotonicNs();
    if (!booted_) {
        o.code = OutcomeCode::InvalidArg;
        o.message = "the VM has not booted";
        return o;
    }
    if (snap.ownerId != id_) {
        o.code = OutcomeCode::InvalidArg;
        o.message = "the snapshot belongs to another VM";
        return o;
    }
    vcpu_->settle();
    try {
        restoreSnapshot(*memory_, *vcpu_, layout_, snap);
    } catch (const UnsafeCpuState &e) {
        poison(e.what());
        o.code = OutcomeCode::InvalidArg;
        o.message = e.what();
        return o;
    }
    vcpu_->clearInterrupt();
    {
        std::lock_guard<std::mutex> lock(mu_);
        notRunnableReason_.clear();
    }
    runnable_ = true;
    o.wallNs = monotonicNs() - start;
    return o;
}

// ---- the run loop -------------------------------------------------------------------

// vCPU thread, guest stopped: a Boot or an Exchange the guest answers with an exit.
void Sandbox::startExchange(const Op &op) {
    // A request this soon after the last answer would have met a polling guest.
    const uint64_t last = lastAnswerNs_.load(std::memory_order_relaxed);
    if (op.kind == OpKind::Exchange && last && monotonicNs() - last < spin_.guestPollNs) pollHit();
    beginExchange(op.kind, op.kind == OpKind::Exchange ? &op.request : nullptr, op.wallTimeoutNs, op.cpuTimeoutNs);
    handover_.setPoll(AIRLOCK_POLL_REQUEST_EXIT);
    handover_.publish();
}

// The guest's post-answer window is over (or it has none while nothing is in flight:
// a guest never runs with neither an exchange nor a window).
bool Sandbox::windowOver() const {
    const uint64_t end = windowEndNs_.load();
    return end == 0 || monotonicNs() >= end;
}

// The session ends: the guest is stopped and will not run before the next exchange.
void Sandbox::leave() {
    session_.store(false);
    cancel_.clearKick();
    windowEndNs_.store(0);
    windowTimer_->disarm();
    chargeAfterAnswer();
    ackInterrupt();
}

void Sandbox::done(Outcome o) {
    const OpKind kind = record_.op;
    o = finishExchange(std::move(o));
    if (kind == OpKind::Boot && o.code != OutcomeCode::Ok)
        // Even a boot cancelled before the first instruction leaves no usable guest.
        poison("the guest never finished booting");
    handover_.reset();
    Event ev;
    ev.kind = EventKind::Done;
    ev.op = kind;
    ev.outcome = std::move(o);
    emit(std::move(ev));
}

// The guest broke down or broke the protocol: it never runs again before a restore.
// The exchange in flight (if any) ends ERR_GUEST_ABORT; otherwise the next op sees
// ERR_POISONED with this reason.
Sandbox::Next Sandbox::abortGuest(std::string message, bool claimed) {
    poison(message.rfind("guest aborted", 0) == 0 ? "the " + message : "the guest aborted: " + message);
    handover_.setPoll(AIRLOCK_POLL_IDLE);
    leave();
    if (claimed || claimExchange(false)) {
        Outcome o;
        o.code = OutcomeCode::GuestAbort;
        o.message = std::move(message);
        done(std::move(o));
    }
    return Next::Leave;
}

// Cancels the exchange in flight; false if it was answered first.
bool Sandbox::cancelInFlight() {
    if (!claimExchange(false)) return false;
    if (record_.guestEntered) poison("the guest was cancelled mid-request");
    handover_.setPoll(AIRLOCK_POLL_IDLE);
    leave();
    Outcome o;
    o.code = OutcomeCode::Cancelled;
    o.terminatedBy = cancel_.reason();
    o.message = std::string("execution cancelled by ") + terminatedByName(o.terminatedBy);
    done(std::move(o));
    return true;
}

// vCPU thread: runs the guest while an exchange is in flight and, for a guest that
// polls, on after the answer within its window, until it parks, an op waits or the
// window ends. Emits the Done event of every exchange the vCPU thread claims. Every
// pass either enters the guest under a budget or ends the session.
void Sandbox::runSession() {
    session_.store(true);
    for (;;) {
        const uint32_t poll = handover_.poll(); // before the state: see Handover::forged
        const int state = handover_.settle();
        if (Handover::forged(poll, state))
            return void(abortGuest("poll_state " + std::to_string(poll) + " is not a protocol step " +
                                   (state == Handover::kInFlight ? "during a request" : "with no request in flight")));
        if (state == Handover::kInFlight && cancel_.cancelled() && cancelInFlight()) return;
        if (state != Handover::kInFlight &&
            (opReady_.load() || !runnable_.load() || (state == Handover::kNoExchange && windowOver()))) {
            // Other work waits, the guest is done for, or its window is over: take it
            // out of its poll. The guest is stopped, so only a fast request (READY ->
            // REQUEST) can race the swap; the next pass serves that one.
            if (handover_.swapPoll(AIRLOCK_POLL_READY, AIRLOCK_POLL_IDLE) || handover_.poll() == AIRLOCK_POLL_IDLE) {
                leave();
                return;
            }
            continue;
        }
        vcpuCpu_.store(sched_getcpu(), std::memory_order_relaxed);
        if (state == Handover::kInFlight) record_.guestEntered = true;
        const hv::Exit exit = vcpu_->run();
        Next next;
        if (exit.kind == hv::ExitKind::Interrupted) {
            next = onInterrupted();
        } else if (exit.kind != hv::ExitKind::Io || !exit.isWrite || exit.port != AIRLOCK_PORT || exit.size != 4 ||
                   exit.count != 1) {
            next = abortGuest("guest stopped outside the protocol: " + describeExit(exit));
        } else {
            switch (exit.value) {
            case AIRLOCK_EXIT_RESPONSE: next = onResponse(); break;
            case AIRLOCK_EXIT_IDLE: next = onIdle(); break;
            case AIRLOCK_EXIT_ABORT: next = onAbort(); break;
            case AIRLOCK_EXIT_HOST_CALL: next = onHostCall(); break;
            default:
                next = abortGuest("guest used unknown exit code " + std::to_string(exit.value) + " at RIP " +
                                  hex(vcpu_->getRegisters().rip));
            }
        }
        if (next == Next::Leave) return;
    }
}

// A kill, a monitor, a kick for a waiting op, the window's end, or a late signal. The
// loop's next pass decides from the state word, the mailbox and the clock; a bell
// keeps ringing until acknowledged, so clearing the interrupt here loses nothing.
Sandbox::Next Sandbox::onInterrupted() {
    if (handover_.settle() == Handover::kInFlight && cancel_.cancelled() && cancelInFlight()) return Next::Leave;
    vcpu_->clearInterrupt();
    return Next::Run;
}

Sandbox::Next Sandbox::onResponse() {
    if (handover_.settle() != Handover::kInFlight) return abortGuest("guest answered with no request in flight");
    const bool polls =
        (memory_->read<uint32_t>(layout_.header.control + AIRLOCK_CTRL_OFF_GUEST_FLAGS) & AIRLOCK_GUEST_FLAG_POLLS) &&
        pollNs_.load() > 0;
    if (!claimExchange(polls)) return abortGuest("guest answered with no request in flight");
    Outcome o;
    std::string error;
    if (!readGuestOutput(*memory_, layout_, o.output, error)) return abortGuest(error, true);
    // The output is copied: the guest may run on (its post-call GC, then poll).
    handover_.setPoll(polls ? AIRLOCK_POLL_READY : AIRLOCK_POLL_IDLE);
    done(std::move(o));
    if (!polls) {
        leave();
        return Next::Leave;
    }
    return Next::Run;
}

Sandbox::Next Sandbox::onIdle() {
    const uint32_t poll = handover_.poll();
    const int state = handover_.settle();
    // It waited in vain (or answered and nobody looked in time): poll less.
    setPollWindow(pollNs_.load() / 2);
    if (poll == AIRLOCK_POLL_IDLE && state == Handover::kInFlight && claimExchange(false)) {
        // It answered through memory and its poll window ended before the main
        // thread looked (or it broke the protocol): the output buffer is the answer,
        // whoever claims it first delivers it.
        Outcome o;
        std::string error;
        if (!readGuestOutput(*memory_, layout_, o.output, error)) return abortGuest(error, true);
        leave();
        done(std::move(o));
        return Next::Leave;
    }
    // Parked: take it at its word unless a request got in.
    if (poll == AIRLOCK_POLL_IDLE || (poll == AIRLOCK_POLL_READY && handover_.swapPoll(AIRLOCK_POLL_READY, AIRLOCK_POLL_IDLE))) {
        leave();
        return Next::Leave;
    }
    return Next::Run; // a request is in flight (or the loop's check calls it forged)
}

Sandbox::Next Sandbox::onAbort() {
    std::vector<uint8_t> out;
    std::string text, error;
    if (readGuestOutput(*memory_, layout_, out, error)) text = abortText(out.data(), out.size());
    return abortGuest(text.empty() ? "guest aborted (no readable abort message)" : "guest aborted: " + text);
}

Sandbox::Next Sandbox::onHostCall() {
    if (handover_.settle() != Handover::kInFlight) return abortGuest("guest called the host with no request in flight");
    Event ev;
    ev.kind = EventKind::HostCall;
    ev.hostCallId = nextHostCallId_++;
    std::string error;
    if (!readGuestOutput(*memory_, layout_, ev.hostCallOutput, error)) return abortGuest(error);
    const uint64_t id = ev.hostCallId;
    // Time spent waiting for the host function is not guest CPU time: pause the CPU
    // monitor and the accounting while we wait.
    uint64_t cpuLeft = record_.cpuTimeoutNs ? cpuTimer_->disarm() : 0;
    const uint64_t pauseStart = vcpuCpuNs();
    emit(std::move(ev));
    std::optional<Reply> reply;
    for (;;) {
        if (!waitFor([this] { return replyReady_.load(); }, true)) break;
        std::lock_guard<std::mutex> lock(mu_);
        replyReady_.store(false);
        if (reply_ && reply_->id == id) {
            reply = std::move(reply_);
            reply_.reset();
            break;
        }
        reply_.reset(); // an answer to a call that no longer waits
    }
    record_.pausedCpuNs.fetch_add(vcpuCpuNs() - pauseStart);
    if (!reply) {
        if (cancelInFlight()) return Next::Leave;
        // The exchange was claimed while its host call waited (the guest handed an
        // answer over in memory and then called the host): not a protocol step.
        return abortGuest("guest called the host after answering its request");
    }
    if (record_.cpuTimeoutNs) cpuTimer_->arm(cpuLeft == 0 ? 1 : cpuLeft); // expired as we paused it: fire now
    writeHostReturn(reply->bytes);
    writeClockBase();
    return Next::Run;
}

void Sandbox::writeHostReturn(const std::vector<uint8_t> &reply) {
    const GuestLayout &l = layout_;
    uint8_t *input = memory_->at(l.inputAddr, l.inputSize);
    std::vector<uint8_t> tooLarge;
    const std::vector<uint8_t> *bytes = &reply;
    if (reply.size() > l.inputSize) {
        // The answer cannot cross: tell the guest so, in a message that does fit.
        tooLarge = encodeHostError("host function result of " + std::to_string(reply.size()) +
                                       " bytes exceeds the guest input buffer of " + std::to_string(l.inputSize) +
                                       " bytes",
                                   l.inputSize);
        bytes = &tooLarge;
    }
    std::memcpy(input, bytes->data(), bytes->size());
    memory_->write<uint32_t>(l.header.control + AIRLOCK_CTRL_OFF_REQUEST_LEN, static_cast<uint32_t>(bytes->size()));
}

std::string Sandbox::describeExit(const hv::Exit &exit) {
    std::string what = hv::exitKindName(exit.kind);
    switch (exit.kind) {
    case hv::ExitKind::Io:
        what += std::string(" (") + (exit.isWrite ? "out to" : "in from") + " port " + hex(exit.port) + ", " +
                std::to_string(exit.size) + " byte(s)" + (exit.count > 1 ? ", repeated" : "") + ")";
        break;
    case hv::ExitKind::Mmio:
        what += " at " + hex(exit.address);
        break;
    case hv::ExitKind::FailEntry:
    case hv::ExitKind::InternalError:
    case hv::ExitKind::Other:
        what += " (code " + std::to_string(exit.detail) + ")";
        break;
    default:
        break;
    }
    try {
        what += " at RIP " + hex(vcpu_->getRegisters().rip);
    } catch (const std::exception &) {
        // The exit is reported without its RIP when the registers cannot be read.
    }
    return what;
}

} // namespace airlock
