// hypervisor.h — the hypervisor-neutral seam of the VMM: VMs, guest memory slots, vCPUs,
// register files and typed exits. Backends (host/kvm/ today) implement it; nothing
// outside a backend's folder sees its headers or issues its system calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace airlock::hv {

struct Segment {
    uint64_t base = 0;
    uint32_t limit = 0;
    uint16_t selector = 0;
    uint8_t type = 0;
    uint8_t present = 0;
    uint8_t dpl = 0;
    uint8_t db = 0;
    uint8_t s = 0;
    uint8_t l = 0;
    uint8_t g = 0;
    uint8_t avl = 0;
    uint8_t unusable = 0;
};

struct DescriptorTable {
    uint64_t base = 0;
    uint16_t limit = 0;
};

struct Registers {
    uint64_t rax = 0, rbx = 0, rcx = 0, rdx = 0, rsi = 0, rdi = 0, rsp = 0, rbp = 0;
    uint64_t r8 = 0, r9 = 0, r10 = 0, r11 = 0, r12 = 0, r13 = 0, r14 = 0, r15 = 0;
    uint64_t rip = 0, rflags = 0;
};

struct SpecialRegisters {
    Segment cs, ds, es, fs, gs, ss, tr, ldt;
    DescriptorTable gdt, idt;
    uint64_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, cr8 = 0, efer = 0, apic_base = 0;
    // Backend-private state that must round-trip unchanged (e.g. pending interrupts).
    std::vector<uint8_t> opaque;
};

// x87 + SSE state (the FXSAVE image's architectural content).
struct FpuState {
    uint8_t fpr[8][16] = {};
    uint16_t fcw = 0, fsw = 0;
    uint8_t ftwx = 0;
    uint16_t last_opcode = 0;
    uint64_t last_ip = 0, last_dp = 0;
    uint8_t xmm[16][16] = {};
    uint32_t mxcsr = 0;
};

// The complete extended CPU state (XSAVE image: x87, SSE, AVX/YMM and every other
// component the hypervisor exposes, plus the XCRs). Opaque bytes owned by the backend
// that produced them; a snapshot carries it so a restore leaves no register of a later
// tenant visible to an earlier one's state, or the reverse.
struct ExtendedState {
    std::vector<uint8_t> xsave; // backend's XSAVE area (KVM: struct kvm_xsave, or kvm_xsave2's size)
    std::vector<uint8_t> xcrs;  // backend's XCR list (KVM: struct kvm_xcrs)
};

// x86 MSRs the sandbox pins. The guest runs at CPL 3 with no kernel: SYSCALL must stay
// disabled (EFER.SCE = 0) and SYSENTER must fault (SYSENTER_CS = 0).
constexpr uint32_t kMsrSysenterCs = 0x174;
constexpr uint32_t kMsrEfer = 0xC0000080;
constexpr uint64_t kEferSce = 1ull << 0;
// SYSCALL's 64-bit and compat entry points. On PVM hosts SYSCALL ignores EFER.SCE and
// enters the guest's ring 0 at LSTAR (docs/ISOLATION.md): LSTAR = 0, never mapped, is
// what makes it fault there, so a restore checks these too.
constexpr uint32_t kMsrLstar = 0xC0000082;
constexpr uint32_t kMsrCstar = 0xC0000083;

enum class ExitKind {
    Io,            // port I/O: port, size, isWrite, value (for writes)
    Mmio,          // access to guest-physical memory no slot backs: address
    Hlt,
    Shutdown,      // triple fault or other CPU shutdown
    FailEntry,     // the hypervisor refused to enter the guest: detail = hardware reason
    InternalError, // the hypervisor could not emulate something: detail = sub-error
    Interrupted,   // run() returned because an interrupt was requested (signal/immediate exit)
    Other,         // anything else: detail = the backend's raw exit reason
};

struct Exit {
    ExitKind kind = ExitKind::Other;
    uint16_t port = 0;
    uint8_t size = 0;     // bytes of one I/O access
    uint32_t count = 0;   // I/O repetitions (rep outs)
    bool isWrite = false;
    uint32_t value = 0;   // data of a single I/O write, zero-extended
    uint64_t address = 0; // MMIO address
    uint64_t detail = 0;
};

const char *exitKindName(ExitKind kind);

class Vcpu {
public:
    virtual ~Vcpu() = default;
    Vcpu() = default;
    Vcpu(const Vcpu &) = delete;
    Vcpu &operator=(const Vcpu &) = delete;

    // Runs the guest until its next exit. Throws std::system_error when the hypervisor
    // fails (not when the guest misbehaves: that is a typed exit).
    virtual Exit run() = 0;
    // Finishes the exit that run() last returned (e.g. completes an I/O instruction)
    // without executing further guest instructions, so registers read afterwards are
    // consistent and registers written afterwards are not disturbed by it.
    virtual void settle() = 0;
    // Whether settle() has nothing to finish (no exit since the last one, or it was
    // interrupted): registers may then be written from any thread without a KVM_RUN.
    virtual bool settled() const = 0;

    virtual Registers getRegisters() = 0;
    virtual void setRegisters(const Registers &regs) = 0;
    virtual SpecialRegisters getSpecialRegisters() = 0;
    virtual void setSpecialRegisters(const SpecialRegisters &sregs) = 0;
    virtual FpuState getFpu() = 0;
    virtual void setFpu(const FpuState &fpu) = 0;
    // Full extended state (supersedes getFpu/setFpu for snapshots). setExtendedState
    // accepts only bytes that getExtendedState of a vCPU of the same backend produced
    // (throws std::invalid_argument otherwise).
    virtual ExtendedState getExtendedState() = 0;
    virtual void setExtendedState(const ExtendedState &state) = 0;
    // One MSR by index (throws std::system_error when the hypervisor refuses).
    virtual uint64_t getMsr(uint32_t index) = 0;
    // Several MSRs in one call (n <= kMaxMsrsAtOnce): a restore checks three.
    static constexpr size_t kMaxMsrsAtOnce = 8;
    virtual void getMsrs(const uint32_t *indices, uint64_t *values, size_t n) = 0;
    virtual void setMsr(uint32_t index, uint64_t value) = 0;

    // Async-signal-safe: makes the current or next run() return Interrupted promptly.
    // Called from a signal handler on the thread that runs this vCPU.
    virtual void requestInterrupt() noexcept = 0;
    // Undoes requestInterrupt() before the next run (call on the vCPU's thread).
    virtual void clearInterrupt() noexcept = 0;

    // The guest's TSC frequency in kHz, and its current TSC value (for the guest clock).
    virtual uint64_t tscKhz() = 0;
    virtual uint64_t guestTsc() = 0;
};

class Vm {
public:
    virtual ~Vm() = default;
    Vm() = default;
    Vm(const Vm &) = delete;
    Vm &operator=(const Vm &) = delete;

    // Backs guest-physical [guestPhys, guestPhys + size) with host memory at hostAddr.
    // The caller keeps the host memory alive for the VM's lifetime.
    virtual void mapMemory(uint32_t slot, uint64_t guestPhys, void *hostAddr, uint64_t size) = 0;
    // The one vCPU of this VM, prepared for 64-bit ring-3 guests: a minimal CPUID
    // table (only what the guest runtime needs), SYSCALL/SYSENTER disabled, and guest
    // MSR access denied by default where the hypervisor offers an MSR filter.
    virtual std::unique_ptr<Vcpu> createVcpu() = 0;
};

struct ProbeResult {
    bool usable = false;
    std::vector<std::string> reasons; // each names the problem and how to fix it
};

// The hypervisor the platform offers (KVM on Linux).
std::unique_ptr<Vm> createVm();
ProbeResult probe();

} // namespace airlock::hv
