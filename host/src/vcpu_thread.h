// vcpu_thread.h — the code of a sandbox's vCPU thread, as one type: its mailbox loop,
// guest setup and teardown, snapshot/restore calls, and the run loop of an exchange
// with one handler per exit kind. It lives on the thread's own stack for the
// thread's lifetime and owns the VM and vCPU; everything it shares with the main
// thread is in its Sandbox (sandbox.h says who may touch what).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "../hv/hypervisor.h"
#include "sandbox.h"

namespace airlock {

class VcpuThread {
public:
    explicit VcpuThread(Sandbox &sandbox) : s_(sandbox) {}
    VcpuThread(const VcpuThread &) = delete;
    VcpuThread &operator=(const VcpuThread &) = delete;

    // The thread's body: serves the mailbox until Stop, then tears the guest down.
    void run();

private:
    // What the run loop does after handling an exit.
    enum class Next { Run, Leave };

    void createTimers();
    void deleteTimers();
    void ackInterrupt();
    std::optional<Outcome> handle(const Op &op);
    std::optional<Outcome> boot();
    Outcome bootFromTemplate(); // clone_boot.cc
    void attachClockAndHandover();
    Outcome takeSnapshot();
    Outcome restore(const Snapshot &snap);
    void startExchange(const Op &op);
    void runSession();
    Next onInterrupted();
    Next onResponse();
    Next onIdle();
    Next onAbort();
    Next onHostCall();
    Next onHostCallGivenUp(); // hostcall_memory.cc
    bool awaitHostReply(uint64_t id);
    Next abortGuest(std::string message, bool claimed = false);
    bool cancelInFlight();
    void done(Outcome o);
    void leave();
    void releasePollSlot();
    bool mayPoll();
    bool windowOver() const;
    void rearmWindow();
    void setUpGuest();
    void tearDownGuest();
    void emit(Event ev);
    template <typename Ready> bool waitFor(Ready ready, bool stopOnCancel);
    std::string describeExit(const hv::Exit &exit);

    Sandbox &s_;
    std::unique_ptr<hv::Vm> vm_;
    std::unique_ptr<hv::Vcpu> vcpu_;
};

} // namespace airlock
