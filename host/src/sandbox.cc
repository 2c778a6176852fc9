// sandbox.cc — the vCPU thread of one sandbox: guest setup, the exchange loop,
// cancellation through a signal plus the hypervisor's immediate exit, monitors as
// POSIX timers aimed at the vCPU thread, snapshot/restore, the handoffs, and requests
// handed to a polling guest through its memory (abi.h, "Polling").
#include "sandbox.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <ctime>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#include "../../guest/include/abi.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

namespace airlock {

namespace {

std::atomic<uint64_t> g_nextSandboxId{1};

uint64_t monotonicNs() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
}

int64_t realtimeNs() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000ll + ts.tv_nsec;
}

inline void cpuRelax() { __builtin_ia32_pause(); }

// A spinning thread yields this often: when the thread it waits for shares its core
// (2 cores here, and the scheduler does not always spread them), spinning without
// yielding would hold off the very work it waits for until the spin budget ends.
constexpr uint64_t kSpinYieldNs = 20'000;

std::string hex(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

void futexWait(std::atomic<uint32_t> *word, uint32_t expected) {
    // Invariant: std::atomic<uint32_t> is a plain 32-bit word (lock-free), so the
    // kernel may treat its address as a futex.
    static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futexWake(std::atomic<uint32_t> *word) {
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

// ---- cancellation signal -------------------------------------------------------

// What the signal handler may touch on the thread it interrupts. Lives on the vCPU
// thread's stack for the thread's lifetime; only lock-free atomics are used.
struct SignalTarget {
    std::atomic<uint32_t> *reason;
    std::atomic<bool> *kick;
    std::atomic<uint32_t> *wakeSeq;
    std::atomic<hv::Vcpu *> *vcpu;
};

// initial-exec: reading it from a signal handler must not allocate.
__thread SignalTarget *t_signalTarget __attribute__((tls_model("initial-exec"))) = nullptr;

void onCancelSignal(int, siginfo_t *info, void *) {
    int savedErrno = errno;
    SignalTarget *target = t_signalTarget;
    if (target) {
        uint32_t why = static_cast<uint32_t>(info->si_value.sival_int);
        // Timers name their monitor; the first reason recorded wins. kill() records
        // its reason itself before signalling.
        if (info->si_code == SI_TIMER &&
            (why == static_cast<uint32_t>(TerminatedBy::WallClock) || why == static_cast<uint32_t>(TerminatedBy::CpuTime))) {
            uint32_t none = 0;
            target->reason->compare_exchange_strong(none, why);
        }
        if (target->reason->load() != 0 || target->kick->load()) {
            target->wakeSeq->fetch_add(1);
            if (hv::Vcpu *vcpu = target->vcpu->load()) vcpu->requestInterrupt();
        }
    }
    errno = savedErrno;
}

int g_cancelSignal = 0;
std::once_flag g_signalOnce;

int cancelSignal() {
    std::call_once(g_signalOnce, [] {
        // A real-time signal nobody else in the process handles; no SA_RESTART so
        // blocking calls on the vCPU thread return EINTR.
        for (int sig = SIGRTMIN + 4; sig <= SIGRTMAX; ++sig) {
            struct sigaction old {};
            if (sigaction(sig, nullptr, &old) != 0) continue;
            if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler != SIG_DFL) continue;
            if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction != nullptr) continue;
            struct sigaction sa {};
            sa.sa_sigaction = onCancelSignal;
            sa.sa_flags = SA_SIGINFO;
            sigfillset(&sa.sa_mask);
            if (sigaction(sig, &sa, nullptr) == 0) {
                g_cancelSignal = sig;
                return;
            }
        }
    });
    if (g_cancelSignal == 0) throw std::runtime_error("no free real-time signal for vCPU cancellation");
    return g_cancelSignal;
}

// A POSIX timer that signals one thread; deleted with its owner.
timer_t createThreadTimer(clockid_t clock, TerminatedBy reason) {
    sigevent sev{};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = cancelSignal();
    sev.sigev_value.sival_int = static_cast<int>(reason);
    sev.sigev_notify_thread_id = static_cast<pid_t>(syscall(SYS_gettid));
    timer_t timer{};
    if (timer_create(clock, &sev, &timer) != 0) throw std::system_error(errno, std::generic_category(), "timer_create");
    return timer;
}

void armTimer(timer_t timer, uint64_t ns) {
    itimerspec spec{};
    spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000ull);
    spec.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000ull);
    timer_settime(timer, 0, &spec, nullptr);
}

// Disarms and returns the time that was left (0 when it was not armed).
uint64_t disarmTimer(timer_t timer) {
    itimerspec zero{}, old{};
    if (timer_settime(timer, 0, &zero, &old) != 0) return 0;
    return static_cast<uint64_t>(old.it_value.tv_sec) * 1'000'000'000ull + old.it_value.tv_nsec;
}

// poll_state is shared with the guest: atomic read-modify-write only (abi.h, Polling).
uint32_t pollLoad(uint32_t *w) { return __atomic_load_n(w, __ATOMIC_ACQUIRE); }
void pollStore(uint32_t *w, uint32_t v) { __atomic_store_n(w, v, __ATOMIC_RELEASE); }
bool pollSwap(uint32_t *w, uint32_t from, uint32_t to) {
    return __atomic_compare_exchange_n(w, &from, to, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

bool isPrintableUtf8(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            if (c < 0x20 && c != '\n' && c != '\t' && c != '\r') return false;
            if (c == 0x7f) return false;
            ++i;
            continue;
        }
        size_t extra = (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 0;
        if (extra == 0 || c == 0xc0 || c == 0xc1 || c > 0xf4 || i + extra >= n) return false;
        for (size_t k = 1; k <= extra; ++k)
            if ((p[i + k] & 0xc0) != 0x80) return false;
        i += extra + 1;
    }
    return true;
}

} // namespace

const char *terminatedByName(TerminatedBy why) {
    switch (why) {
    case TerminatedBy::Kill: return "kill";
    case TerminatedBy::WallClock: return "wall-clock";
    case TerminatedBy::CpuTime: return "cpu-time";
    case TerminatedBy::None: break;
    }
    return "none";
}

size_t Snapshot::bytes() const {
    size_t n = 0;
    for (const Range &r : ranges) n += r.bytes.size();
    return n;
}

// ---- construction and the main-thread side ------------------------------------------

Sandbox::Sandbox(const uint8_t *image, size_t imageSize, const SandboxConfig &config, const SpinConfig &spin,
                 std::function<void()> notify)
    : id_(g_nextSandboxId.fetch_add(1)), image_(image, image + imageSize), spin_(spin), notify_(std::move(notify)) {
    ImageHeader header = parseImageHeader(image_.data(), image_.size());
    layout_ = computeLayout(header, image_.size(), config);
    cancelSignal(); // fail here, synchronously, if no signal is available
}

Sandbox::~Sandbox() { stopAndJoin(); }

void Sandbox::wake() {
    wakeSeq_.fetch_add(1);
    if (vcpuSleeping_.load()) futexWake(&wakeSeq_);
}

void Sandbox::post(Op op) {
    if (op.kind == OpKind::Boot || op.kind == OpKind::Exchange) cancelReason_.store(0);
    {
        std::lock_guard<std::mutex> lock(mu_);
        ops_.push_back(std::move(op));
        opReady_.store(true);
    }
    if (!threadStarted_) {
        threadStarted_ = true;
        // The vCPU thread takes only its cancellation signal: process signals meant
        // for Node (SIGINT, SIGCHLD, ...) go to other threads and never interrupt KVM_RUN.
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        try {
            thread_ = std::thread([this] { threadMain(); });
        } catch (...) {
            pthread_sigmask(SIG_SETMASK, &old, nullptr);
            threadStarted_ = false;
            throw;
        }
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        return;
    }
    wake();
    // A guest polling for requests keeps the vCPU thread inside KVM_RUN: interrupt it
    // so the thread takes the op. (The thread re-checks opReady_ after raising
    // session_, so one of the two always sees the other.)
    if (session_.load()) {
        kick_.store(true);
        sigval value{};
        pthread_sigqueue(thread_.native_handle(), cancelSignal(), value);
    }
}

bool Sandbox::postFast(const Op &op) {
    if (op.kind != OpKind::Exchange || !session_.load() || !runnable_.load()) return false;
    uint32_t *w = pollWord();
    if (pollLoad(w) != AIRLOCK_POLL_READY) return false;
    // The guest polls and reads nothing of the request until poll_state says REQUEST.
    cancelReason_.store(0);
    exchange_.store(kPosting);
    beginExchange(OpKind::Exchange, &op.request, op.wallTimeoutNs, op.cpuTimeoutNs);
    record_.guestEntered = true;
    if (pollSwap(w, AIRLOCK_POLL_READY, AIRLOCK_POLL_REQUEST)) {
        exchange_.store(kInFlight);
        fastInFlight_ = true;
        pollHit();
        return true;
    }
    // The guest parked first: the vCPU thread must run it.
    if (record_.wallTimeoutNs) disarmTimer(static_cast<timer_t>(wallTimer_));
    if (record_.cpuTimeoutNs) disarmTimer(static_cast<timer_t>(cpuTimer_));
    exchange_.store(kNoExchange);
    return false;
}

void Sandbox::postHostReply(uint64_t hostCallId, std::vector<uint8_t> reply) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        reply_ = Reply{hostCallId, std::move(reply)};
        replyReady_.store(true);
    }
    wake();
}

void Sandbox::cancel(TerminatedBy why) {
    uint32_t none = 0;
    if (!cancelReason_.compare_exchange_strong(none, static_cast<uint32_t>(why))) return; // first reason wins
    if (threadStarted_ && !joined_) {
        sigval value{};
        value.sival_int = static_cast<int>(why);
        pthread_sigqueue(thread_.native_handle(), cancelSignal(), value);
    }
}

std::vector<Event> Sandbox::drainEvents() {
    handoff_.store(kIdle);
    std::vector<Event> out;
    std::lock_guard<std::mutex> lock(mu_);
    while (!events_.empty()) {
        Event &ev = events_.front();
        if (ev.kind == EventKind::Done && ev.op == OpKind::Exchange) fastInFlight_ = false;
        out.push_back(std::move(ev));
        events_.pop_front();
    }
    return out;
}

// Only the guest moves poll_state off REQUEST (to READY, with its response written;
// then maybe on to IDLE when its poll window ends before we look), except the vCPU
// thread when it cancels or aborts, which claims the exchange first.
bool Sandbox::fastAnswered(uint32_t poll) { return poll != AIRLOCK_POLL_REQUEST && poll != AIRLOCK_POLL_REQUEST_EXIT; }

std::optional<Event> Sandbox::takeFastResult() {
    if (!fastInFlight_ || !fastAnswered(pollLoad(pollWord()))) return std::nullopt;
    // The response is in the output buffer. If the vCPU thread claimed the exchange
    // first (cancel, abort, or the guest parked before we looked), its event follows.
    if (!claimExchange()) return std::nullopt;
    fastInFlight_ = false;
    Outcome o;
    // The guest is running (its post-call GC), but it writes the output buffer only
    // for the next request.
    std::string error;
    if (!readOutput(o.output, error)) {
        poison("the guest aborted");
        o.code = OutcomeCode::GuestAbort;
        o.message = std::move(error);
    }
    Event ev;
    ev.kind = EventKind::Done;
    ev.op = OpKind::Exchange;
    ev.outcome = finishExchange(std::move(o));
    exchange_.store(kNoExchange);
    return ev;
}

std::vector<Event> Sandbox::awaitEvents(uint64_t spinNs) {
    auto withFast = [this](std::vector<Event> events) {
        if (std::optional<Event> fast = takeFastResult()) events.push_back(std::move(*fast));
        return events;
    };
    int expected = kIdle;
    if (!handoff_.compare_exchange_strong(expected, kSpinning)) return withFast(drainEvents());
    mainCpu_.store(sched_getcpu(), std::memory_order_relaxed);
    uint32_t *w = fastInFlight_ ? pollWord() : nullptr;
    if (spinNs > 0) {
        const uint64_t start = monotonicNs();
        uint64_t nextYield = start + kSpinYieldNs;
        for (uint64_t now = start; now < start + spinNs; now = monotonicNs()) {
            for (int i = 0; i < 64; ++i) {
                if (handoff_.load(std::memory_order_acquire) == kPosted) return withFast(drainEvents());
                if (w && fastAnswered(pollLoad(w))) {
                    if (std::optional<Event> fast = takeFastResult()) {
                        std::vector<Event> events = drainEvents();
                        events.push_back(std::move(*fast));
                        return events;
                    }
                    w = nullptr; // the vCPU thread finishes this exchange: wait for its event
                }
                cpuRelax();
            }
            // Spinning on the vCPU thread's core would only delay it.
            if (now >= nextYield || vcpuCpu_.load(std::memory_order_relaxed) == sched_getcpu()) {
                sched_yield();
                nextYield = now + kSpinYieldNs;
            }
        }
    }
    // Stop spinning: a guest still working on a fast exchange must now answer with an
    // exit, so the vCPU thread can notify. If it already answered, take that.
    if (fastInFlight_ && !pollSwap(pollWord(), AIRLOCK_POLL_REQUEST, AIRLOCK_POLL_REQUEST_EXIT))
        return withFast(drainEvents());
    expected = kSpinning;
    if (handoff_.compare_exchange_strong(expected, kIdle)) return {};
    return drainEvents();
}

void Sandbox::join() {
    if (threadStarted_ && !joined_) {
        thread_.join();
        joined_ = true;
    }
}

void Sandbox::stopAndJoin() {
    if (!threadStarted_ || joined_) return;
    cancel(TerminatedBy::Kill);
    Op stop;
    stop.kind = OpKind::Stop;
    post(std::move(stop));
    join();
}

// ---- vCPU thread ------------------------------------------------------------------

void Sandbox::emit(Event ev) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        events_.push_back(std::move(ev));
    }
    if (handoff_.exchange(kPosted) != kSpinning) notify_();
}

template <typename Ready> bool Sandbox::waitFor(Ready ready, bool stopOnCancel) {
    const uint64_t deadline = monotonicNs() + spin_.vcpuSpinNs;
    uint64_t nextYield = deadline - spin_.vcpuSpinNs + kSpinYieldNs;
    bool spinning = spin_.vcpuSpinNs > 0;
    for (;;) {
        uint32_t seq = wakeSeq_.load();
        if (ready()) return true;
        if (stopOnCancel && cancelReason_.load() != 0) return false;
        if (spinning) {
            for (int i = 0; i < 64; ++i) cpuRelax();
            uint64_t now = monotonicNs();
            int cpu = sched_getcpu();
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
        if (!ready() && !(stopOnCancel && cancelReason_.load() != 0)) futexWait(&wakeSeq_, seq);
        vcpuSleeping_.store(false);
    }
}

void Sandbox::threadMain() {
    SignalTarget target{&cancelReason_, &kick_, &wakeSeq_, &signalVcpu_};
    t_signalTarget = &target;
    sigset_t mine;
    sigemptyset(&mine);
    sigaddset(&mine, cancelSignal());
    pthread_sigmask(SIG_UNBLOCK, &mine, nullptr);

    std::string timerError;
    try {
        clockid_t cpuClock;
        if (pthread_getcpuclockid(pthread_self(), &cpuClock) != 0) throw std::runtime_error("pthread_getcpuclockid");
        wallTimer_ = createThreadTimer(CLOCK_MONOTONIC, TerminatedBy::WallClock);
        cpuTimer_ = createThreadTimer(cpuClock, TerminatedBy::CpuTime);
        vcpuClock_ = cpuClock;
        timersReady_ = true;
    } catch (const std::exception &e) {
        timerError = e.what();
    }

    for (;;) {
        waitFor([this] { return opReady_.load(); }, false);
        Op op;
        {
            std::lock_guard<std::mutex> lock(mu_);
            op = std::move(ops_.front());
            ops_.pop_front();
            opReady_.store(!ops_.empty());
        }
        kick_.store(false);
        if (op.kind == OpKind::Stop) break;
        std::optional<Outcome> outcome;
        if (!timersReady_ && (op.kind == OpKind::Boot || op.kind == OpKind::Exchange)) {
            outcome = Outcome{};
            outcome->code = OutcomeCode::Internal;
            outcome->message = "cannot create the monitor timers: " + timerError;
        } else {
            try {
                outcome = handle(op);
            } catch (const std::exception &e) {
                session_.store(false);
                std::string reason = std::string("a hypervisor operation failed: ") + e.what();
                poison(reason);
                if (memory_) pollStore(pollWord(), AIRLOCK_POLL_IDLE);
                outcome.reset();
                bool session = op.kind == OpKind::Boot || op.kind == OpKind::Exchange;
                // An exchange still unanswered fails; one already answered owes nothing.
                if (!session || claimExchange()) {
                    Outcome o;
                    o.code = OutcomeCode::Internal;
                    o.message = reason;
                    outcome = session ? finishExchange(std::move(o)) : std::move(o);
                    if (session) exchange_.store(kNoExchange);
                } else if (timersReady_) {
                    // A monitor left armed by the failed exchange must not cancel a later one.
                    disarmTimer(static_cast<timer_t>(wallTimer_));
                    disarmTimer(static_cast<timer_t>(cpuTimer_));
                }
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
    if (wallTimer_) timer_delete(static_cast<timer_t>(wallTimer_));
    if (cpuTimer_) timer_delete(static_cast<timer_t>(cpuTimer_));
    wallTimer_ = cpuTimer_ = nullptr;
    t_signalTarget = nullptr;
    Event done;
    done.kind = EventKind::Done;
    done.op = OpKind::Stop;
    emit(std::move(done));
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
        return restoreSnapshot(*op.snapshot);
    case OpKind::Stop:
        break;
    }
    o.code = OutcomeCode::Internal;
    o.message = "unexpected operation";
    return o;
}

void Sandbox::setUpGuest() {
    const GuestLayout &l = layout_;
    const ImageHeader &h = l.header;
    memory_ = std::make_unique<GuestMemory>(l.memoryEnd);
    GuestMemory &mem = *memory_;

    std::vector<MappedRange> ranges;
    // Image slots that end at or before data_start hold only text and rodata: mapped
    // read-only so the guest cannot patch its own code (data shares the slot otherwise).
    uint64_t textEnd = h.dataStart / kHugePageSize * kHugePageSize;
    if (textEnd > h.loadAddr) ranges.push_back({h.loadAddr, textEnd, false, true});
    uint64_t rwStart = std::max(textEnd, h.loadAddr);
    uint64_t execEnd = alignUp(h.dataStart, kHugePageSize);
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
    uint64_t before = __rdtsc();
    uint64_t guest = vcpu_->guestTsc();
    uint64_t after = __rdtsc();
    tscOffset_ = static_cast<int64_t>(guest - (before + (after - before) / 2));
}

void Sandbox::tearDownGuest() {
    signalVcpu_.store(nullptr);
    vcpu_.reset();
    vm_.reset();
    memory_.reset();
    booted_ = false;
    runnable_ = false;
}

void Sandbox::writeClockBase() {
    const uint64_t c = layout_.header.control;
    uint64_t tsc = __rdtsc();
    int64_t wall = realtimeNs();
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

std::string Sandbox::abortMessage(const uint8_t *out, uint32_t len) {
    // Walk the messages; every header and field length is checked against `len`.
    size_t off = 0;
    while (len - off >= AIRLOCK_MSG_HEADER_SIZE) {
        airlock_msg m;
        std::memcpy(&m, out + off, sizeof m);
        size_t bodyStart = off + AIRLOCK_MSG_HEADER_SIZE;
        if (m.length > len - bodyStart) break;
        if (m.kind == AIRLOCK_MSG_ABORT) {
            if (m.count < 1 || m.length < AIRLOCK_FIELD_HEADER_SIZE) break;
            uint32_t fieldLen;
            std::memcpy(&fieldLen, out + bodyStart, sizeof fieldLen);
            if (fieldLen > m.length - AIRLOCK_FIELD_HEADER_SIZE) break;
            const uint8_t *text = out + bodyStart + AIRLOCK_FIELD_HEADER_SIZE;
            size_t n = std::min<size_t>(fieldLen, 2048);
            while (n > 0 && n < fieldLen && (text[n] & 0xc0) == 0x80) --n; // cut on a character boundary
            if (!isPrintableUtf8(text, n)) return "";
            return std::string(reinterpret_cast<const char *>(text), n) + (n < fieldLen ? "..." : "");
        }
        off = bodyStart + m.length;
    }
    return "";
}

void Sandbox::writeHostReturn(const std::vector<uint8_t> &reply) {
    const GuestLayout &l = layout_;
    uint8_t *input = memory_->at(l.inputAddr, l.inputSize);
    uint32_t len;
    if (reply.size() <= l.inputSize) {
        std::memcpy(input, reply.data(), reply.size());
        len = static_cast<uint32_t>(reply.size());
    } else {
        // The answer cannot cross: tell the guest so, in a message that does fit.
        std::string text = "host function result of " + std::to_string(reply.size()) +
                           " bytes exceeds the guest input buffer of " + std::to_string(l.inputSize) + " bytes";
        size_t room = l.inputSize - AIRLOCK_MSG_HEADER_SIZE;
        bool withField = room >= AIRLOCK_FIELD_HEADER_SIZE;
        if (withField) text.resize(std::min(text.size(), room - AIRLOCK_FIELD_HEADER_SIZE));
        airlock_msg m{};
        m.kind = AIRLOCK_MSG_HOST_RETURN;
        m.status = AIRLOCK_STATUS_HOST_ERROR;
        m.count = withField ? 1 : 0;
        m.length = withField ? static_cast<uint32_t>(AIRLOCK_FIELD_HEADER_SIZE + text.size()) : 0;
        std::memcpy(input, &m, sizeof m);
        if (withField) {
            uint32_t fieldLen = static_cast<uint32_t>(text.size());
            std::memcpy(input + AIRLOCK_MSG_HEADER_SIZE, &fieldLen, sizeof fieldLen);
            std::memcpy(input + AIRLOCK_MSG_HEADER_SIZE + AIRLOCK_FIELD_HEADER_SIZE, text.data(), text.size());
        }
        len = AIRLOCK_MSG_HEADER_SIZE + m.length;
    }
    memory_->write<uint32_t>(l.header.control + AIRLOCK_CTRL_OFF_REQUEST_LEN, len);
}

// ---- exchanges ----------------------------------------------------------------------

// Reads response_len (guest-written, hostile: read once, bounded) and copies the output.
bool Sandbox::readOutput(std::vector<uint8_t> &out, std::string &error) const {
    const GuestLayout &l = layout_;
    uint32_t len = memory_->read<uint32_t>(l.header.control + AIRLOCK_CTRL_OFF_RESPONSE_LEN);
    if (len > l.outputSize) {
        error = "guest response_len " + std::to_string(len) + " exceeds the output buffer of " +
                std::to_string(l.outputSize) + " bytes";
        return false;
    }
    const uint8_t *p = memory_->at(l.outputAddr, len);
    out.assign(p, p + len);
    return true;
}

uint32_t *Sandbox::pollWord() const {
    // Invariant: the control block lies inside the image (parseImageHeader) and
    // poll_state is 4-byte aligned in it (abi.h static asserts).
    return reinterpret_cast<uint32_t *>(memory_->at(layout_.header.control + AIRLOCK_CTRL_OFF_POLL_STATE, 4));
}

uint64_t Sandbox::vcpuCpuNs() const {
    timespec ts;
    if (clock_gettime(vcpuClock_, &ts) != 0) return 0;
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
}

void Sandbox::poison(std::string reason) {
    std::lock_guard<std::mutex> lock(mu_);
    if (runnable_.exchange(false) || notRunnableReason_.empty()) notRunnableReason_ = std::move(reason);
}

// Called by the side that publishes the exchange, before it does.
void Sandbox::beginExchange(OpKind kind, const std::vector<uint8_t> *request, uint64_t wallTimeoutNs,
                            uint64_t cpuTimeoutNs) {
    const GuestLayout &l = layout_;
    if (request) {
        // The caller checked request->size() <= inputSize.
        std::memcpy(memory_->at(l.inputAddr, request->size()), request->data(), request->size());
        memory_->write<uint32_t>(l.header.control + AIRLOCK_CTRL_OFF_REQUEST_LEN, static_cast<uint32_t>(request->size()));
    }
    writeClockBase();
    record_.op = kind;
    record_.wallTimeoutNs = wallTimeoutNs;
    record_.cpuTimeoutNs = cpuTimeoutNs;
    record_.pausedCpuNs.store(0);
    record_.guestEntered = false;
    record_.wallStart = monotonicNs();
    record_.cpuStart = vcpuCpuNs();
    if (wallTimeoutNs) armTimer(static_cast<timer_t>(wallTimer_), wallTimeoutNs);
    if (cpuTimeoutNs) armTimer(static_cast<timer_t>(cpuTimer_), cpuTimeoutNs);
}

bool Sandbox::claimExchange() {
    int expected = kInFlight;
    if (!exchange_.compare_exchange_strong(expected, kClaimed)) return false;
    lastAnswerNs_.store(monotonicNs(), std::memory_order_relaxed);
    return true;
}

namespace {
constexpr uint64_t kPollStepNs = 4'000; // smallest window after zero; below half of it, zero
}

// Either thread. The guest reads poll_ticks each time it starts to wait.
void Sandbox::setPollWindow(uint64_t ns) {
    ns = std::min(ns, spin_.guestPollNs);
    if (ns < kPollStepNs / 2) ns = 0;
    if (pollNs_.exchange(ns) == ns || !memory_) return;
    memory_->write<uint64_t>(layout_.header.control + AIRLOCK_CTRL_OFF_POLL_TICKS,
                             static_cast<uint64_t>(static_cast<unsigned __int128>(ns) * tscKhz_ / 1'000'000));
}

void Sandbox::pollHit() { setPollWindow(std::max(kPollStepNs, pollNs_.load() * 2)); }

// The exchange state once a main-thread post attempt (which lasts nanoseconds) is over.
int Sandbox::settledExchange() {
    int state;
    while ((state = exchange_.load()) == kPosting) cpuRelax();
    return state;
}

// By the side that claimed the exchange: monitors off, timing filled in.
Outcome Sandbox::finishExchange(Outcome o) {
    if (record_.wallTimeoutNs) disarmTimer(static_cast<timer_t>(wallTimer_));
    if (record_.cpuTimeoutNs) disarmTimer(static_cast<timer_t>(cpuTimer_));
    o.wallNs = monotonicNs() - record_.wallStart;
    uint64_t cpu = vcpuCpuNs() - record_.cpuStart;
    uint64_t paused = record_.pausedCpuNs.load();
    o.cpuNs = cpu > paused ? cpu - paused : 0;
    return o;
}

// vCPU thread, guest stopped: a Boot or an Exchange the guest answers with an exit.
void Sandbox::startExchange(const Op &op) {
    // A request this soon after the last answer would have met a polling guest.
    const uint64_t last = lastAnswerNs_.load(std::memory_order_relaxed);
    if (op.kind == OpKind::Exchange && last && monotonicNs() - last < spin_.guestPollNs) pollHit();
    beginExchange(op.kind, op.kind == OpKind::Exchange ? &op.request : nullptr, op.wallTimeoutNs, op.cpuTimeoutNs);
    pollStore(pollWord(), AIRLOCK_POLL_REQUEST_EXIT);
    exchange_.store(kInFlight);
}

// vCPU thread: runs the guest while an exchange is in flight and, for a guest that
// polls, on between exchanges until it parks or an op waits. Emits the Done event of
// every exchange the vCPU thread claims.
void Sandbox::runSession() {
    const GuestLayout &l = layout_;
    const uint64_t control = l.header.control;
    uint32_t *w = pollWord();
    timer_t cpuTimer = static_cast<timer_t>(cpuTimer_);

    auto leave = [&] {
        session_.store(false);
        kick_.store(false);
    };
    auto done = [&](Outcome o) {
        OpKind kind = record_.op;
        o = finishExchange(std::move(o));
        if (kind == OpKind::Boot && o.code != OutcomeCode::Ok)
            // Even a boot cancelled before the first instruction leaves no usable guest.
            poison("the guest never finished booting");
        exchange_.store(kNoExchange);
        Event ev;
        ev.kind = EventKind::Done;
        ev.op = kind;
        ev.outcome = std::move(o);
        emit(std::move(ev));
    };
    // The guest broke down or broke the protocol: it never runs again before a restore.
    auto abortGuest = [&](std::string message, bool claimed = false) {
        poison("the guest aborted");
        pollStore(w, AIRLOCK_POLL_IDLE);
        leave();
        if (claimed || claimExchange()) {
            Outcome o;
            o.code = OutcomeCode::GuestAbort;
            o.message = std::move(message);
            done(std::move(o));
        }
    };
    // Cancels the exchange in flight; false if it was answered first.
    auto cancelled = [&]() {
        if (!claimExchange()) return false;
        if (record_.guestEntered) poison("the guest was cancelled mid-request");
        pollStore(w, AIRLOCK_POLL_IDLE);
        leave();
        Outcome o;
        o.code = OutcomeCode::Cancelled;
        o.terminatedBy = static_cast<TerminatedBy>(cancelReason_.load());
        o.message = std::string("execution cancelled by ") + terminatedByName(o.terminatedBy);
        done(std::move(o));
        return true;
    };
    session_.store(true);
    for (;;) {
        const int state = settledExchange();
        if (state == kInFlight && cancelReason_.load() != 0 && cancelled()) return;
        if (state != kInFlight && (opReady_.load() || !runnable_.load())) {
            // Other work waits (or the guest is done for): take it out of its poll.
            if (pollSwap(w, AIRLOCK_POLL_READY, AIRLOCK_POLL_IDLE) || pollLoad(w) != AIRLOCK_POLL_REQUEST) {
                leave();
                return;
            }
            continue; // a fast request got in first: serve it
        }
        vcpuCpu_.store(sched_getcpu(), std::memory_order_relaxed);
        if (state == kInFlight) record_.guestEntered = true;
        hv::Exit exit = vcpu_->run();
        if (exit.kind == hv::ExitKind::Interrupted) {
            if (settledExchange() == kInFlight && cancelReason_.load() != 0 && cancelled()) return;
            vcpu_->clearInterrupt(); // a kick, or a signal that came after its exchange ended
            continue;
        }
        bool protocol = exit.kind == hv::ExitKind::Io && exit.isWrite && exit.port == AIRLOCK_PORT && exit.size == 4 &&
                        exit.count == 1;
        if (!protocol) return abortGuest("guest stopped outside the protocol: " + describeExit(exit));

        switch (exit.value) {
        case AIRLOCK_EXIT_RESPONSE: {
            if (settledExchange() != kInFlight || !claimExchange())
                return abortGuest("guest answered with no request in flight");
            Outcome o;
            std::string error;
            if (!readOutput(o.output, error)) return abortGuest(error, true);
            bool polls = (memory_->read<uint32_t>(control + AIRLOCK_CTRL_OFF_GUEST_FLAGS) & AIRLOCK_GUEST_FLAG_POLLS) &&
                         pollNs_.load() > 0;
            // The output is copied: the guest may run on (its post-call GC, then poll).
            pollStore(w, polls ? AIRLOCK_POLL_READY : AIRLOCK_POLL_IDLE);
            done(std::move(o));
            if (!polls) {
                leave();
                return;
            }
            continue;
        }
        case AIRLOCK_EXIT_IDLE: {
            const int now = settledExchange();
            const uint32_t poll = pollLoad(w);
            // It waited in vain (or answered and nobody looked in time): poll less.
            setPollWindow(pollNs_.load() / 2);
            if (poll == AIRLOCK_POLL_IDLE && now == kInFlight) {
                // It answered through memory and its poll window ended before the
                // main thread looked (or it broke the protocol): the output buffer
                // is the answer, whoever claims it first delivers it.
                if (claimExchange()) {
                    Outcome o;
                    std::string error;
                    if (!readOutput(o.output, error)) return abortGuest(error, true);
                    leave();
                    done(std::move(o));
                    return;
                }
            }
            if (poll == AIRLOCK_POLL_IDLE) {
                leave();
                return;
            }
            // Parked without saying so: take it at its word unless a request got in.
            if (poll == AIRLOCK_POLL_READY && pollSwap(w, AIRLOCK_POLL_READY, AIRLOCK_POLL_IDLE)) {
                leave();
                return;
            }
            continue;
        }
        case AIRLOCK_EXIT_ABORT: {
            std::vector<uint8_t> out;
            std::string text, error;
            if (readOutput(out, error)) text = abortMessage(out.data(), static_cast<uint32_t>(out.size()));
            return abortGuest(text.empty() ? "guest aborted (no readable abort message)" : "guest aborted: " + text);
        }
        case AIRLOCK_EXIT_HOST_CALL: {
            if (settledExchange() != kInFlight) return abortGuest("guest called the host with no request in flight");
            Event ev;
            ev.kind = EventKind::HostCall;
            ev.hostCallId = nextHostCallId_++;
            std::string error;
            if (!readOutput(ev.hostCallOutput, error)) return abortGuest(error);
            const uint64_t id = ev.hostCallId;
            // Time spent waiting for the host function is not guest CPU time: pause
            // the CPU monitor and the accounting while we wait.
            uint64_t cpuLeft = record_.cpuTimeoutNs ? disarmTimer(cpuTimer) : 0;
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
                if (cancelled()) return;
                continue; // (cannot happen: only a cancel ends the wait without a reply)
            }
            if (record_.cpuTimeoutNs) {
                if (cpuLeft == 0) cpuLeft = 1; // it expired as we paused it: fire now
                armTimer(cpuTimer, cpuLeft);
            }
            writeHostReturn(reply->bytes);
            writeClockBase();
            continue;
        }
        default:
            return abortGuest("guest used unknown exit code " + std::to_string(exit.value) + " at RIP " +
                              hex(vcpu_->getRegisters().rip));
        }
    }
}

uint64_t Sandbox::clampHeapHighWater() {
    const GuestLayout &l = layout_;
    uint64_t hw = memory_->read<uint64_t>(l.header.control + AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER);
    return std::clamp(hw, l.heapAddr, l.heapAddr + l.heapSize);
}

// The refusal of an operation that needs a booted, runnable guest; nullopt if it may run.
std::optional<Outcome> Sandbox::refuseUnlessRunnable(const char *advice) {
    Outcome o;
    if (!booted_) {
        o.code = OutcomeCode::InvalidArg;
        o.message = "the VM has not booted";
        return o;
    }
    if (runnable_) return std::nullopt;
    o.code = OutcomeCode::Poisoned;
    std::lock_guard<std::mutex> lock(mu_);
    o.message = notRunnableReason_ + "; " + advice;
    return o;
}

Outcome Sandbox::takeSnapshot() {
    Outcome o;
    if (std::optional<Outcome> refused = refuseUnlessRunnable("its state cannot be snapshotted")) return *refused;
    const GuestLayout &l = layout_;
    vcpu_->settle();
    auto snap = std::make_shared<Snapshot>();
    snap->ownerId = id_;
    snap->regs = vcpu_->getRegisters();
    snap->sregs = vcpu_->getSpecialRegisters();
    snap->cpuExtended = vcpu_->getExtendedState();
    auto capture = [&](uint64_t from, uint64_t to) {
        if (to <= from) return;
        const uint8_t *p = memory_->at(from, to - from);
        snap->ranges.push_back(Snapshot::Range{from, std::vector<uint8_t>(p, p + (to - from))});
    };
    capture(l.header.dataStart, l.header.bssEnd);
    // The live stack: rsp is guest-controlled, so clamp it into the stack; the 128
    // bytes below it are the System V red zone.
    uint64_t rsp = snap->regs.rsp;
    uint64_t stackFrom = rsp < l.stackBottom + 128 ? l.stackBottom : rsp - 128;
    stackFrom = std::min(stackFrom, l.stackTop);
    capture(stackFrom, l.stackTop);
    snap->heapHighWater = clampHeapHighWater();
    capture(l.heapAddr, snap->heapHighWater);
    o.snapshot = std::move(snap);
    return o;
}

Outcome Sandbox::restoreSnapshot(const Snapshot &snap) {
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
    // Heap handed out since the snapshot goes back to zero, as it was then; the
    // rest of the heap above the snapshot's high water was never touched or was
    // zeroed by an earlier restore (as far as the guest reported it).
    uint64_t currentHw = clampHeapHighWater();
    if (currentHw > snap.heapHighWater)
        std::memset(memory_->at(snap.heapHighWater, currentHw - snap.heapHighWater), 0, currentHw - snap.heapHighWater);
    for (const Snapshot::Range &r : snap.ranges)
        std::memcpy(memory_->at(r.gpa, r.bytes.size()), r.bytes.data(), r.bytes.size());
    vcpu_->setSpecialRegisters(snap.sregs);
    vcpu_->setRegisters(snap.regs);
    vcpu_->setExtendedState(snap.cpuExtended);
    vcpu_->clearInterrupt();
    {
        std::lock_guard<std::mutex> lock(mu_);
        notRunnableReason_.clear();
    }
    runnable_ = true;
    o.wallNs = monotonicNs() - start;
    return o;
}

} // namespace airlock
