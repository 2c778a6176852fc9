// guest_run_aftermath_probe.cc — what a guest run costs the host code that runs next on
// the same CPU: with the main thread and the runner on one CPU, the main thread's share
// of a call is ~2.3x its share when they run apart (docs/ARCHITECTURE.md, "The same-core
// round trip"). This probe asks which simple causes explain it: a fixed data-touching
// workload (caches and TLB) after a KVM_RUN of this thread, after a KVM_RUN of another
// thread on the same CPU, and after neither; and whether a KVM_RUN costs more right after
// a switch from another thread. Pinned to the first CPU it may use.
// Build and run: bash scripts/probe-guest-run-aftermath.sh [rounds]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "../src/out_loop_vm.h"
#include "probe_report.h"

using namespace airlock;
using airlock::probe::nowUs;
using airlock::probe::report;

namespace {

// Two threads on one CPU taking turns through a futex word: even values are the
// caller's turns, odd values the helper's.
class Turns {
public:
    void waitWhile(int v) {
        while (word_.load() == v) syscall(SYS_futex, &word_, FUTEX_WAIT_PRIVATE, v, nullptr, nullptr, 0);
    }
    void pass(int v) {
        word_.store(v);
        syscall(SYS_futex, &word_, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    }

private:
    std::atomic<int> word_{0};
};

// A fixed workload: one read per 4 KiB page of a buffer, then a strided pass over it.
class Workload {
public:
    explicit Workload(size_t bytes) : buf_(bytes / sizeof(uint64_t)) {
        for (size_t i = 0; i < buf_.size(); ++i) buf_[i] = i * 2654435761u;
    }
    double run() {
        const double t0 = nowUs();
        uint64_t x = 0;
        for (size_t i = 0; i < buf_.size(); i += 512) x += buf_[i];
        for (size_t i = 0; i < buf_.size(); i += 8) x ^= buf_[(i * 40503u) % buf_.size()];
        sink_ = x;
        return nowUs() - t0;
    }

private:
    std::vector<uint64_t> buf_;
    volatile uint64_t sink_ = 0;
};

} // namespace

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? std::max(10, std::atoi(argv[1])) : 2000;
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 1;
    int first = 0;
    while (first < CPU_SETSIZE && !CPU_ISSET(first, &allowed)) ++first;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) return 1; // threads started below inherit it
    OutLoopVm guest = makeOutLoopVm(64);
    hv::Vcpu &vcpu = *guest.vcpu;

    for (size_t kib : {64, 256, 1024}) {
        Workload work(kib * 1024);
        std::vector<double> none, ownRun, otherRun;
        for (int i = 0; i < rounds; ++i) {
            work.run();
            none.push_back(work.run());
        }
        for (int i = 0; i < rounds; ++i) {
            work.run();
            vcpu.run();
            ownRun.push_back(work.run());
        }
        Turns turns;
        std::thread runner([&] {
            for (int i = 0; i < rounds; ++i) {
                turns.waitWhile(2 * i);
                vcpu.run();
                turns.pass(2 * i + 2);
            }
        });
        for (int i = 0; i < rounds; ++i) {
            work.run();
            turns.pass(2 * i + 1);
            turns.waitWhile(2 * i + 1);
            otherRun.push_back(work.run());
        }
        runner.join();
        std::printf("workload over %zu KiB on CPU %d, %d rounds\n", kib, first, rounds);
        report("  with no guest run before it", none);
        report("  right after a KVM_RUN of this thread", ownRun);
        report("  right after a KVM_RUN of another thread", otherRun);
    }

    std::vector<double> backToBack, afterSwitch;
    for (int i = 0; i < rounds; ++i) {
        const double t0 = nowUs();
        vcpu.run();
        backToBack.push_back(nowUs() - t0);
    }
    Turns turns;
    std::thread idle([&] {
        for (int i = 0; i < rounds; ++i) {
            turns.waitWhile(2 * i);
            turns.pass(2 * i + 2);
        }
    });
    for (int i = 0; i < rounds; ++i) {
        turns.pass(2 * i + 1);
        turns.waitWhile(2 * i + 1);
        const double t0 = nowUs();
        vcpu.run();
        afterSwitch.push_back(nowUs() - t0);
    }
    idle.join();
    std::printf("KVM_RUN round trip (bare ring-3 `out` loop) on CPU %d\n", first);
    report("  back to back on one thread", backToBack);
    report("  right after a switch from another thread", afterSwitch);
    return 0;
}
