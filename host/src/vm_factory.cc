// vm_factory.cc — the background preparation of VMs for clones (see vm_factory.h).
#include "vm_factory.h"

#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <deque>
#include <map>
#include <mutex>
#include <pthread.h>
#include <sys/mman.h>
#include <system_error>
#include <thread>

#include "layout.h"

namespace airlock {

namespace {

// Spares kept per guest size: one covers a steady stream of clones (it is replaced
// while the clone runs); bursts beyond it make VMs on the caller's thread.
constexpr size_t kSparesPerSize = 2;
// Sizes remembered at most: a process making guests of many sizes gets spares for the
// most recent ones only, so forgotten sizes hold no VMs.
constexpr size_t kMaxSizes = 4;

PreparedVm prepare(uint64_t size) {
    PreparedVm p;
    p.memory = reserveGuestRange(size);
    try {
        p.vm = hv::createVm();
        p.vm->mapMemory(0, 0, p.memory.base, size);
        p.vcpu = p.vm->createVcpu();
    } catch (...) {
        p.vcpu.reset();
        p.vm.reset();
        ::munmap(p.memory.mapping, p.memory.mappingSize);
        throw;
    }
    return p;
}

void release(PreparedVm &p) {
    p.vcpu.reset();
    p.vm.reset();
    if (p.memory.mapping) ::munmap(p.memory.mapping, p.memory.mappingSize);
}

class Factory {
public:
    PreparedVm take(uint64_t size) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            remember(size);
            std::deque<PreparedVm> &spares = spares_[size];
            if (!spares.empty()) {
                PreparedVm p = std::move(spares.front());
                spares.pop_front();
                cv_.notify_one();
                return p;
            }
            cv_.notify_one();
        }
        return prepare(size);
    }

private:
    // Called under mu_: `size` becomes the most recent size, and the thread runs.
    void remember(uint64_t size) {
        for (auto it = recent_.begin(); it != recent_.end(); ++it)
            if (*it == size) {
                recent_.erase(it);
                break;
            }
        recent_.push_front(size);
        while (recent_.size() > kMaxSizes) {
            auto old = spares_.find(recent_.back());
            if (old != spares_.end()) {
                for (PreparedVm &p : old->second) release(p);
                spares_.erase(old);
            }
            recent_.pop_back();
        }
        if (!started_) start();
    }

    void start() {
        // Signals meant for Node (SIGINT, SIGCHLD, the cancel signal) never land here.
        sigset_t all, old;
        sigfillset(&all);
        if (pthread_sigmask(SIG_SETMASK, &all, &old) != 0) return;
        try {
            std::thread([this] { run(); }).detach();
            started_ = true;
        } catch (const std::exception &) {
            // No background thread: every clone makes its VM itself.
        }
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }

    // The size most in need of a spare, under mu_; 0 when all are stocked.
    uint64_t wanted() {
        for (uint64_t size : recent_)
            if (spares_[size].size() < kSparesPerSize) return size;
        return 0;
    }

    void run() {
        pthread_setname_np(pthread_self(), "airlock-vmprep");
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
            cv_.wait(lock, [this] { return wanted() != 0; });
            const uint64_t size = wanted();
            lock.unlock();
            PreparedVm p;
            bool made = true;
            try {
                p = prepare(size);
            } catch (const std::exception &) {
                made = false; // out of VMs or memory: clones make their own and report why
            }
            lock.lock();
            if (!made) {
                // Not again until a clone asks: a failing host must not be retried in a loop.
                cv_.wait(lock);
                continue;
            }
            auto it = spares_.find(size);
            bool stillWanted = false;
            for (uint64_t s : recent_) stillWanted |= s == size;
            if (stillWanted && it != spares_.end())
                it->second.push_back(std::move(p));
            else
                release(p);
        }
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::map<uint64_t, std::deque<PreparedVm>> spares_;
    std::deque<uint64_t> recent_;
    bool started_ = false;
};

Factory &factory() {
    // Never destroyed: its thread runs until the process ends.
    static Factory *f = new Factory();
    return *f;
}

} // namespace

Reservation reserveGuestRange(uint64_t size) {
    Reservation r;
    r.size = size;
    // One huge page more, so the guest base can be 2 MiB aligned.
    r.mappingSize = size + kHugePageSize;
    void *m = ::mmap(nullptr, r.mappingSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "reserve guest memory");
    r.mapping = m;
    r.base = reinterpret_cast<uint8_t *>(alignUp(reinterpret_cast<uint64_t>(m), kHugePageSize));
    ::madvise(m, r.mappingSize, MADV_DONTFORK);
    return r;
}

PreparedVm takePreparedVm(uint64_t size) { return factory().take(size); }

} // namespace airlock
