// vm_factory.h — VMs made ahead of need for clones: each one a KVM VM with its vCPU and
// its one memory slot over a reserved, inaccessible host range of the size its guest
// will have. Creating those costs milliseconds here (KVM_CREATE_VM, the slot's SRCU
// grace period, KVM_CREATE_VCPU); a clone takes a ready one and only maps its template
// over the reservation. A background thread keeps a spare for each guest size asked
// for before. The spare's vCPU has never run, so its first KVM_RUN on the clone's own
// thread costs nothing extra (KVM waits for an RCU grace period only when a vCPU that
// has run moves to another thread).
#pragma once

#include <cstdint>
#include <memory>

#include "../hv/hypervisor.h"

namespace airlock {

// Host address space for a guest: `size` bytes at `base` (2 MiB aligned), inside a
// larger PROT_NONE mapping that the GuestMemory taking it will own.
struct Reservation {
    void *mapping = nullptr;
    size_t mappingSize = 0;
    uint8_t *base = nullptr;
    uint64_t size = 0;
};

// Throws std::system_error.
Reservation reserveGuestRange(uint64_t size);

struct PreparedVm {
    std::unique_ptr<hv::Vm> vm;
    std::unique_ptr<hv::Vcpu> vcpu;
    Reservation memory; // slot 0 maps guest-physical 0 to memory.base
};

// A VM for a guest of `size` bytes: a spare if one is ready, else made now. Asks the
// background thread to prepare the next one. Throws what VM creation throws.
PreparedVm takePreparedVm(uint64_t size);

} // namespace airlock
