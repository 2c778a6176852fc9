// loop_wait.cc — the vCPU thread's side of the guest's timer sleep: recognising the
// `airlock:loop` `sleep` step in guest output (every byte guest-written) and sleeping
// until its deadline without a main-thread round trip, woken at once by a cancel
// reason (kill, monitors, dispose). A sleep with more than a short linger left lets
// go of its runner (host_wait.cc's parking) until the sleep timer (sleep_timers.h)
// queues it for its precise end. The sleep is not guest CPU time.
#include "loop_wait.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sched.h>
#include <sys/prctl.h>
#include <x86intrin.h>

#include "../../guest/include/abi.h"
#include "call_path_counters.h"
#include "core_budget.h"
#include "hostcall_memory.h"
#include "messages.h"
#include "runner.h"
#include "sleep_timers.h"
#include "timing.h"
#include "vcpu_thread.h"

namespace airlock {

namespace {

constexpr char kModule[] = "airlock:loop";
constexpr char kStep[] = "sleep";
// The longest number a guest's JSON.stringify writes ("-1.2345678901234567e-308" is 24).
constexpr size_t kMaxNumberChars = 32;
// The kernel's default timer slack (50 us) would make every sleep that late.
constexpr unsigned long kTimerSlackNs = 1'000;

// Reads the bounds of the field at `off` in a message body, moving `off` past it; false
// when it overruns `end`.
bool nextField(const uint8_t *p, size_t &off, size_t end, const uint8_t *&data, uint32_t &len) {
    if (end - off < AIRLOCK_FIELD_HEADER_SIZE) return false;
    std::memcpy(&len, p + off, sizeof len); // unaligned: fields have no padding
    off += AIRLOCK_FIELD_HEADER_SIZE;
    if (len > end - off) return false;
    data = p + off;
    off += len;
    return true;
}

bool equals(const uint8_t *data, uint32_t len, const char *text) {
    return len == std::strlen(text) && std::memcmp(data, text, len) == 0;
}

// A JSON number >= 0 in milliseconds (digits, '.', exponent only: no inf/nan/hex that
// strtod would take).
std::optional<double> parseMs(const uint8_t *data, size_t len) {
    if (len == 0 || len > kMaxNumberChars) return std::nullopt;
    char text[kMaxNumberChars + 1];
    for (size_t i = 0; i < len; ++i) {
        const char c = static_cast<char>(data[i]);
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) return std::nullopt;
        text[i] = c;
    }
    text[len] = '\0';
    char *end = nullptr;
    const double ms = std::strtod(text, &end);
    if (end != text + len || !std::isfinite(ms) || !(ms >= 0)) return std::nullopt;
    return ms;
}

uint64_t msToNs(double ms) {
    const double ns = ms * 1e6;
    return ns >= static_cast<double>(kMaxLoopSleepNs) ? kMaxLoopSleepNs : static_cast<uint64_t>(std::ceil(ns));
}

// `[ms]` or `[ms,atMs]`.
std::optional<LoopSleep> parseArgs(const uint8_t *data, uint32_t len) {
    if (len < 3 || data[0] != '[' || data[len - 1] != ']') return std::nullopt;
    const uint8_t *inner = data + 1;
    const size_t innerLen = len - 2;
    const void *comma = std::memchr(inner, ',', innerLen);
    const size_t delayLen = comma ? static_cast<size_t>(static_cast<const uint8_t *>(comma) - inner) : innerLen;
    const std::optional<double> delay = parseMs(inner, delayLen);
    if (!delay) return std::nullopt;
    LoopSleep sleep;
    sleep.delayNs = msToNs(*delay);
    if (comma) {
        const std::optional<double> at = parseMs(inner + delayLen + 1, innerLen - delayLen - 1);
        if (!at) return std::nullopt;
        // Past the guest clock's range, the instant cannot shorten anything: not given.
        const double atNs = *at * 1e6;
        sleep.atGuestNs = atNs < 1.8e19 ? static_cast<uint64_t>(atNs) : 0;
    }
    return sleep;
}

} // namespace

std::optional<LoopSleep> loopSleepStep(const std::vector<uint8_t> &output) {
    if (output.size() < AIRLOCK_MSG_HEADER_SIZE) return std::nullopt;
    airlock_msg m;
    std::memcpy(&m, output.data(), sizeof m);
    const size_t end = output.size();
    // Exactly one message: console lines before it must reach the main thread.
    if (m.kind != AIRLOCK_MSG_HOST_CALL || m.count != 3 || m.length != end - AIRLOCK_MSG_HEADER_SIZE) return std::nullopt;
    const uint8_t *p = output.data();
    size_t off = AIRLOCK_MSG_HEADER_SIZE;
    const uint8_t *module, *step, *args;
    uint32_t moduleLen, stepLen, argsLen;
    if (!nextField(p, off, end, module, moduleLen) || !nextField(p, off, end, step, stepLen) ||
        !nextField(p, off, end, args, argsLen) || off != end)
        return std::nullopt;
    if (!equals(module, moduleLen, kModule) || !equals(step, stepLen, kStep)) return std::nullopt;
    return parseArgs(args, argsLen);
}

uint64_t loopSleepRemainingNs(const LoopSleep &sleep, uint64_t guestNowNs) {
    if (sleep.atGuestNs == 0) return sleep.delayNs;
    const uint64_t toAt = sleep.atGuestNs > guestNowNs ? sleep.atGuestNs - guestNowNs : 0;
    return std::min(sleep.delayNs, toAt);
}

// The guest waits in a host call, so like any host call its wait is not its CPU time:
// the CPU monitor and the accounting pause from before the sleep until the reply is
// written. The host sets the deadline from its own clock; the guest only names a
// delay (and the instant it meant, which can only shorten it), and the wall-clock
// monitor still runs (its signal ends the sleep).
VcpuThread::Next VcpuThread::sleepInLoop(const LoopSleep &sleep) {
    Sandbox::HostWait &w = s_.hostWait_;
    w.cpuLeftNs = s_.record_.cpuTimeoutNs ? s_.cpuTimer_->disarm() : 0;
    w.pauseStartNs = s_.vcpuCpuNs();
    // The guest's clock now, as the guest reads it (guest/platform/kvm: its TSC in ns at
    // tsc_khz): its exit took tens of µs since it computed the delay. Invariant: guest
    // TSC = host TSC + tscOffset_ at the same rate (attachClockAndHandover); were it off,
    // a sleep would only end early, and the guest's loop sleeps again for the rest.
    const uint64_t guestNowNs =
        s_.tscKhz_ ? static_cast<uint64_t>(static_cast<unsigned __int128>(__rdtsc() + static_cast<uint64_t>(s_.tscOffset_)) *
                                           1'000'000u / s_.tscKhz_)
                   : 0;
    const uint64_t delayNs = s_.tscKhz_ ? loopSleepRemainingNs(sleep, guestNowNs) : sleep.delayNs;
    // Never 0: it marks the wait as a sleep (a 0 ns sleep ends at once either way).
    w.sleepUntilNs = monotonicNs() + std::max<uint64_t>(delayNs, 1);
    return continueSleep();
}

// Sleeps until hostWait_.sleepUntilNs on the runner while at most kLoopSleepLingerNs
// of it is left (kLoopSleepPreciseNs when another sandbox waits for a runner), and
// lets the sandbox go for any longer part: a sleep holds a runner only for its end.
VcpuThread::Next VcpuThread::continueSleep() {
    const uint64_t deadline = s_.hostWait_.sleepUntilNs;
    // The wall clock ends the exchange at its own deadline (the runner's wall timer,
    // re-armed by the next hold): past it, the sleep's rest is never waited for.
    const uint64_t wallEnd = s_.record_.wallTimeoutNs ? s_.record_.wallStart + s_.record_.wallTimeoutNs : UINT64_MAX;
    const uint64_t end = std::min(deadline, wallEnd);
    static thread_local bool slackSet = false;
    if (!slackSet) slackSet = prctl(PR_SET_TIMERSLACK, kTimerSlackNs, 0, 0, 0) == 0;
    // A futex wake-up comes 40-150 us late here (later after longer sleeps: an idle
    // core wakes slowly), so the last vcpuSpinUs are spun, as the vCPU thread's other
    // waits spin, while a core is free for it.
    const uint64_t spinNs =
        CoreBudget::instance().spinAllowed() ? std::min(s_.spin_.vcpuSpinNs, deadline - std::min(deadline, monotonicNs())) : 0;
    uint64_t nextYield = 0;
    bool claimed = false;
    for (;;) {
        const uint32_t seq = s_.handover_.wakeSeq();
        if (s_.cancel_.cancelled()) break;
        // The main thread took the exchange (the guest handed an answer over in memory
        // before calling): the sleep must not outlive it.
        if (s_.handover_.settle() != Handover::kInFlight) {
            claimed = true;
            break;
        }
        if (s_.cancel_.wantsInterrupt()) ackInterrupt(); // not in the guest: the bell is heard
        const uint64_t now = monotonicNs();
        if (now >= deadline) break;
        const uint64_t left = end > now ? end - now : 0;
        if (left > kLoopSleepLingerNs || (left > kLoopSleepPreciseNs && RunnerPool::contention().load() > 0)) {
            if (std::optional<Next> parked = parkSleep(end - kLoopSleepPreciseNs)) return *parked;
        }
        if (now + spinNs < deadline) {
            // Asleep, the runner lets the pool start another for waiting sandboxes.
            RunnerPool::instance().sleeping(true);
            s_.handover_.sleepUntil(seq, !s_.cancel_.cancelled(), deadline - spinNs);
            RunnerPool::instance().sleeping(false);
            continue;
        }
        for (int i = 0; i < 64; ++i) __builtin_ia32_pause();
        // The thread that would end the wait (a kill) may share this core.
        if (now >= nextYield) {
            sched_yield();
            nextYield = now + kSpinYieldNs;
        }
    }
    if (s_.cancel_.cancelled() || claimed) return endHostWait(); // host_wait.cc
    Sandbox::HostWait &w = s_.hostWait_;
    // No completion is delivered: the guest sleeps only with no async call in flight
    // (a guest that lies gets its completions at its next wait).
    writeHostReturn(*s_.memory_, s_.layout_, encodeHostReturn("[]"));
    s_.writeClockBase();
    s_.record_.pausedCpuNs.fetch_add(s_.vcpuCpuNs() - w.pauseStartNs);
    if (s_.record_.cpuTimeoutNs) s_.cpuTimer_->arm(w.cpuLeftNs == 0 ? 1 : w.cpuLeftNs); // expired as we paused it: fire now
    w = Sandbox::HostWait{};
    return Next::Run;
}

// Lets the sandbox go until `wakeAtNs`, when the sleep timer queues it again (a
// cancel, an op or a monitor queues it sooner), as a host call's slow reply does
// (parkHostCall). nullopt: the timer thread cannot start, so the runner sleeps on.
std::optional<VcpuThread::Next> VcpuThread::parkSleep(uint64_t wakeAtNs) {
    s_.sleepDue_.store(false);
    try {
        SleepTimers::instance().arm(s_.shared_from_this(), wakeAtNs);
    } catch (const std::exception &) {
        return std::nullopt;
    }
    AIRLOCK_COUNT(loopSleepsParked);
    return parkHostCall(); // host_wait.cc
}

// A runner took up a sandbox let go in its sleep: the timer queued it (the sleep's
// precise part is left), or a cancel, a monitor or an op did.
VcpuThread::Next VcpuThread::resumeSleep() {
    SleepTimers::instance().disarm(&s_);
    s_.sleepDue_.store(false);
    return continueSleep();
}

} // namespace airlock
