// out_loop_vm.cc — builds the bare `out`-loop VM of out_loop_vm.h.
#include "out_loop_vm.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "../../guest/include/abi.h"
#include "layout.h"

namespace airlock {

OutLoopVm makeOutLoopVm(int warmRuns) {
    constexpr uint64_t kCodeAddr = AIRLOCK_IMAGE_BASE;
    // mov dx, AIRLOCK_PORT; mov eax, 1; loop: out dx, eax; jmp loop
    const uint8_t code[] = {0x66, 0xBA, AIRLOCK_PORT & 0xff, AIRLOCK_PORT >> 8, 0xB8, 0x01, 0x00, 0x00, 0x00,
                            0xEF, 0xEB, 0xFD};
    OutLoopVm out;
    out.memory = std::make_unique<GuestMemory>(kCodeAddr + kHugePageSize);
    GuestMemory &mem = *out.memory;
    buildSystemRegion(mem, {{kCodeAddr, kCodeAddr + kHugePageSize, false, true}});
    std::memcpy(mem.at(kCodeAddr, sizeof code), code, sizeof code);
    mem.populate(kCodeAddr, kHugePageSize);

    out.vm = hv::createVm();
    out.vm->mapMemory(0, 0, mem.base(), mem.size());
    out.vcpu = out.vm->createVcpu();
    out.vcpu->setSpecialRegisters(ring3SpecialRegisters(out.vcpu->getSpecialRegisters(), 0));
    hv::Registers regs;
    regs.rip = kCodeAddr;
    regs.rflags = kRing3Rflags;
    out.vcpu->setRegisters(regs);
    for (int i = 0; i < warmRuns; ++i) {
        const hv::Exit exit = out.vcpu->run();
        if (!isOutLoopExit(exit))
            throw std::runtime_error(std::string("out-loop guest stopped with ") + hv::exitKindName(exit.kind));
    }
    return out;
}

bool isOutLoopExit(const hv::Exit &exit) { return exit.kind == hv::ExitKind::Io && exit.port == AIRLOCK_PORT; }

} // namespace airlock
