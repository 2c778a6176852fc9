// cancellation.cc — the cancellation signal (selection, installation, handler) and
// thread-directed POSIX timers. See cancellation.h and docs/CANCELLATION.md.
#include "cancellation.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <string>
#include <system_error>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

namespace airlock {

const char *terminatedByName(TerminatedBy why) {
    switch (why) {
    case TerminatedBy::Kill: return "kill";
    case TerminatedBy::WallClock: return "wall-clock";
    case TerminatedBy::CpuTime: return "cpu-time";
    case TerminatedBy::None: break;
    }
    return "none";
}

namespace {

// initial-exec: reading it from a signal handler must not allocate.
__thread SignalTarget *t_signalTarget __attribute__((tls_model("initial-exec"))) = nullptr;

void onCancelSignal(int, siginfo_t *info, void *) {
    const int savedErrno = errno;
    SignalTarget *target = t_signalTarget;
    if (target) {
        const int tag = info->si_value.sival_int;
        bool window = false, yield = false;
        if (info->si_code == SI_TIMER) {
            // Monitors name their reason; the first reason recorded wins.
            if (tag == static_cast<int>(TerminatedBy::WallClock) || tag == static_cast<int>(TerminatedBy::CpuTime))
                target->state->requestCancel(static_cast<TerminatedBy>(tag));
            window = tag == static_cast<int>(TimerTag::Window);
            // A quantum is over: the guest steps out only if another sandbox waits.
            if (tag == static_cast<int>(TimerTag::Quantum) && target->contention->load() > 0) {
                target->preempt->store(true);
                yield = true;
            }
        }
        // A bell with nothing to say (its request was already handled) does nothing.
        if (window || yield || target->state->wantsInterrupt()) {
            target->wakeSeq->fetch_add(1);
            if (hv::Vcpu *vcpu = target->vcpu->load()) vcpu->requestInterrupt();
        }
    }
    errno = savedErrno;
}

std::mutex g_signalMu;
int g_requested = 0; // under g_signalMu
int g_installed = 0; // under g_signalMu; never changes once set

bool freeForUs(int sig) {
    struct sigaction old {};
    if (sigaction(sig, nullptr, &old) != 0) return false;
    if (old.sa_flags & SA_SIGINFO) return old.sa_sigaction == nullptr || old.sa_sigaction == onCancelSignal;
    return old.sa_handler == SIG_DFL;
}

void checkRealtime(int sig, const char *from) {
    if (sig < SIGRTMIN || sig > SIGRTMAX)
        throw std::invalid_argument(std::string(from) + ": signal " + std::to_string(sig) +
                                    " is not a real-time signal (" + std::to_string(SIGRTMIN) + ".." +
                                    std::to_string(SIGRTMAX) + ")");
}

} // namespace

void setCancelSignal(int sig) {
    std::lock_guard<std::mutex> lock(g_signalMu);
    if (g_installed) {
        if (sig == g_installed || sig == 0) return;
        throw std::logic_error("the cancellation signal is already " + std::to_string(g_installed) +
                               ": call setCancelSignal() before the first VM");
    }
    if (sig != 0) {
        checkRealtime(sig, "setCancelSignal");
        if (!freeForUs(sig))
            throw std::invalid_argument("signal " + std::to_string(sig) + " already has a handler in this process");
    }
    g_requested = sig;
}

int cancelSignal() {
    std::lock_guard<std::mutex> lock(g_signalMu);
    if (g_installed) return g_installed;
    int wanted = g_requested;
    if (wanted == 0) {
        if (const char *env = std::getenv("AIRLOCK_KVM_SIGNAL"); env && *env) {
            char *end = nullptr;
            const long v = std::strtol(env, &end, 10);
            if (*end != '\0' || v < SIGRTMIN || v > SIGRTMAX)
                throw std::runtime_error(std::string("AIRLOCK_KVM_SIGNAL=") + env + " is not a real-time signal (" +
                                         std::to_string(SIGRTMIN) + ".." + std::to_string(SIGRTMAX) + ")");
            wanted = static_cast<int>(v);
        }
    }
    struct sigaction sa {};
    sa.sa_sigaction = onCancelSignal;
    // No SA_RESTART: blocking calls on the vCPU thread (futex) return EINTR.
    sa.sa_flags = SA_SIGINFO;
    sigfillset(&sa.sa_mask);
    if (wanted != 0) {
        if (!freeForUs(wanted))
            throw std::runtime_error("cancellation signal " + std::to_string(wanted) +
                                     " already has a handler in this process: choose another (AIRLOCK_KVM_SIGNAL)");
        if (sigaction(wanted, &sa, nullptr) != 0)
            throw std::system_error(errno, std::generic_category(), "sigaction(" + std::to_string(wanted) + ")");
        g_installed = wanted;
        return g_installed;
    }
    for (int sig = SIGRTMIN + 4; sig <= SIGRTMAX; ++sig) {
        if (!freeForUs(sig)) continue;
        if (sigaction(sig, &sa, nullptr) == 0) {
            g_installed = sig;
            return g_installed;
        }
    }
    throw std::runtime_error("no free real-time signal for vCPU cancellation (set AIRLOCK_KVM_SIGNAL)");
}

void bindSignalTarget(SignalTarget *target) {
    t_signalTarget = target;
    sigset_t mine;
    sigemptyset(&mine);
    sigaddset(&mine, cancelSignal());
    if (int rc = pthread_sigmask(SIG_UNBLOCK, &mine, nullptr); rc != 0)
        throw std::system_error(rc, std::generic_category(), "pthread_sigmask");
}

void retargetSignal(SignalTarget *target) noexcept {
    // The handler runs on this same thread: a compiler barrier orders the store.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    t_signalTarget = target;
    std::atomic_signal_fence(std::memory_order_seq_cst);
}

void unbindSignalTarget() {
    // Blocked first: a late timer signal then stays pending on a thread that ends.
    sigset_t mine;
    sigemptyset(&mine);
    sigaddset(&mine, cancelSignal());
    pthread_sigmask(SIG_BLOCK, &mine, nullptr); // cannot fail with a valid how and set
    t_signalTarget = nullptr;
}

ThreadTimer::ThreadTimer(clockid_t clock, int tag, pid_t tid) {
    sigevent sev{};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = cancelSignal();
    sev.sigev_value.sival_int = tag;
    sev.sigev_notify_thread_id = tid;
    if (timer_create(clock, &sev, &timer_) != 0) throw std::system_error(errno, std::generic_category(), "timer_create");
}

ThreadTimer::~ThreadTimer() { timer_delete(timer_); }

void ThreadTimer::arm(uint64_t ns, uint64_t intervalNs) {
    if (ns == 0) ns = 1; // a zero it_value would disarm instead
    itimerspec spec{};
    spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000ull);
    spec.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000ull);
    spec.it_interval.tv_sec = static_cast<time_t>(intervalNs / 1'000'000'000ull);
    spec.it_interval.tv_nsec = static_cast<long>(intervalNs % 1'000'000'000ull);
    if (timer_settime(timer_, 0, &spec, nullptr) != 0)
        throw std::system_error(errno, std::generic_category(), "timer_settime");
}

uint64_t ThreadTimer::disarm() {
    itimerspec zero{}, old{};
    if (timer_settime(timer_, 0, &zero, &old) != 0)
        throw std::system_error(errno, std::generic_category(), "timer_settime");
    return static_cast<uint64_t>(old.it_value.tv_sec) * 1'000'000'000ull + old.it_value.tv_nsec;
}

} // namespace airlock
