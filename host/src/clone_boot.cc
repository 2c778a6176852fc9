// clone_boot.cc — the vCPU thread's start of a clone: a new VM over a private mapping
// of its template's image, with the template's CPU state, ready for its first request
// without running a guest instruction. The template's image is shared, never copied.
#include "../../guest/include/abi.h"
#include "vcpu_thread.h"
#include "vm_factory.h"

namespace airlock {

Outcome VcpuThread::bootFromTemplate() {
    Outcome o;
    const Template &t = *s_.template_;
    try {
        // Made ahead (vm_factory.h): the slot already covers the range the image is
        // mapped into now.
        PreparedVm prepared = takePreparedVm(t.memory->size());
        vm_ = std::move(prepared.vm);
        vcpu_ = std::move(prepared.vcpu);
        s_.memory_ = std::make_unique<GuestMemory>(t.memory, prepared.memory);
        s_.signalVcpu_.store(vcpu_.get());
        // The template's CPU state was checked when the template was made (its
        // snapshot's guest ran with it, or the import refused anything outside ring 3).
        vcpu_->setSpecialRegisters(t.cpu.sregs);
        vcpu_->setRegisters(t.cpu.regs);
        vcpu_->setExtendedState(t.cpu.extended);
        checkNoSystemCalls(*vcpu_, t.cpu.sregs);

        attachClockAndHandover();
    } catch (const std::exception &e) {
        tearDownGuest();
        o.code = OutcomeCode::Internal;
        o.message = std::string("cannot create the micro-VM from its template: ") + e.what();
        return o;
    }
    s_.booted_ = true;
    s_.runnable_ = true;
    return o;
}

} // namespace airlock
