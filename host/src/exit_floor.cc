// exit_floor.cc — the raw exit round trip of this machine: a bare ring-3 guest doing
// `out` in a loop, timed per KVM_RUN -> exit -> KVM_RUN, as the floor every call
// latency is compared against.
#include <ctime>

#include "../../guest/include/abi.h"
#include "guest_memory.h"
#include "layout.h"
#include "sandbox.h"

namespace airlock {

std::vector<double> measureExitFloor(uint32_t iterations) {
    constexpr uint64_t kCodeAddr = AIRLOCK_IMAGE_BASE;
    // mov dx, AIRLOCK_PORT; mov eax, 1; loop: out dx, eax; jmp loop
    const uint8_t code[] = {0x66, 0xBA, AIRLOCK_PORT & 0xff, AIRLOCK_PORT >> 8, 0xB8, 0x01, 0x00, 0x00, 0x00,
                            0xEF, 0xEB, 0xFD};
    GuestMemory mem(kCodeAddr + kHugePageSize);
    buildSystemRegion(mem, {{kCodeAddr, kCodeAddr + kHugePageSize, false, true}});
    std::memcpy(mem.at(kCodeAddr, sizeof code), code, sizeof code);
    mem.populate(kCodeAddr, kHugePageSize);

    auto vm = hv::createVm();
    vm->mapMemory(0, 0, mem.base(), mem.size());
    auto vcpu = vm->createVcpu();
    vcpu->setSpecialRegisters(ring3SpecialRegisters(vcpu->getSpecialRegisters(), 0));
    hv::Registers regs;
    regs.rip = kCodeAddr;
    regs.rflags = kRing3Rflags;
    vcpu->setRegisters(regs);

    auto now = [] {
        timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
    };
    auto expectOut = [&](const hv::Exit &exit) {
        if (exit.kind != hv::ExitKind::Io || exit.port != AIRLOCK_PORT)
            throw std::runtime_error(std::string("exit-floor guest stopped with ") + hv::exitKindName(exit.kind));
    };
    for (int i = 0; i < 32; ++i) expectOut(vcpu->run()); // first entries fault pages in
    std::vector<double> micros;
    micros.reserve(iterations);
    for (uint32_t i = 0; i < iterations; ++i) {
        double t0 = now();
        hv::Exit exit = vcpu->run();
        double t1 = now();
        expectOut(exit);
        micros.push_back((t1 - t0) / 1000.0);
    }
    return micros;
}

} // namespace airlock
