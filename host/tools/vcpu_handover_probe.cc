// vcpu_handover_probe.cc — measures what a runner pool pays when a vCPU changes
// threads: the first KVM_RUN on a vCPU after another thread last ran it, against a
// KVM_RUN from the thread that ran it last. Some kernels wait in synchronize_rcu when
// a vCPU's pid changes; the figures decide how often a sandbox may move between runners.
// Build and run: bash scripts/probe-vcpu-handover.sh [rounds]
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <thread>
#include <vector>

#include "../src/out_loop_vm.h"
#include "probe_report.h"

using namespace airlock;
using airlock::probe::nowUs;
using airlock::probe::report;

namespace {

// Two threads take turns on one vCPU; each hand-over is ordered by a mutex, as a
// runner queue's lock would order it.
class PingPong {
public:
    explicit PingPong(hv::Vcpu &vcpu) : vcpu_(vcpu) {}
    std::vector<double> run(int rounds) {
        std::vector<double> first;
        std::thread other([&] { turns(1, rounds, first); });
        std::vector<double> mine;
        turns(0, rounds, mine);
        other.join();
        first.insert(first.end(), mine.begin(), mine.end());
        return first;
    }

private:
    void turns(int me, int rounds, std::vector<double> &out) {
        for (int i = 0; i < rounds; ++i) {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return turn_ == me; });
            const double t0 = nowUs();
            const hv::Exit exit = vcpu_.run();
            out.push_back(nowUs() - t0);
            if (exit.kind != hv::ExitKind::Io) std::abort();
            turn_ = 1 - me;
            cv_.notify_all();
        }
    }
    hv::Vcpu &vcpu_;
    std::mutex mu_;
    std::condition_variable cv_;
    int turn_ = 0;
};

} // namespace

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? std::atoi(argv[1]) : 2000;
    OutLoopVm guest = makeOutLoopVm(64); // the first entries fault pages in
    hv::Vcpu *vcpu = guest.vcpu.get();

    // Same thread, back to back: the exit floor.
    std::vector<double> same;
    for (int i = 0; i < rounds; ++i) {
        const double t0 = nowUs();
        vcpu->run();
        same.push_back(nowUs() - t0);
    }
    // Same thread, but with a futex hand-over to a second thread that does not touch
    // the vCPU in between: what the synchronisation alone costs.
    std::vector<double> sameAfterWait;
    {
        std::mutex mu;
        std::condition_variable cv;
        int turn = 0;
        std::thread idle([&] {
            for (int i = 0; i < rounds; ++i) {
                std::unique_lock<std::mutex> lock(mu);
                cv.wait(lock, [&] { return turn == 1; });
                turn = 0;
                cv.notify_all();
            }
        });
        for (int i = 0; i < rounds; ++i) {
            std::unique_lock<std::mutex> lock(mu);
            cv.wait(lock, [&] { return turn == 0; });
            const double t0 = nowUs();
            vcpu->run();
            sameAfterWait.push_back(nowUs() - t0);
            turn = 1;
            cv.notify_all();
        }
        idle.join();
    }
    // Every KVM_RUN from the other thread than the last one.
    std::vector<double> moved = PingPong(*vcpu).run(rounds / 2);
    // A fresh thread per KVM_RUN (a runner that retired and a new one started).
    std::vector<double> freshThread;
    for (int i = 0; i < std::max(1, rounds / 10); ++i) {
        std::thread([&] {
            const double t0 = nowUs();
            vcpu->run();
            freshThread.push_back(nowUs() - t0);
        }).join();
    }
    std::printf("kernel KVM_RUN round trip (bare ring-3 `out` loop), %d rounds\n", rounds);
    report("same thread, back to back", same);
    report("same thread, after a wait on another thread", sameAfterWait);
    report("other thread than the last KVM_RUN", moved);
    report("first KVM_RUN of a new thread", freshThread);
    return 0;
}
