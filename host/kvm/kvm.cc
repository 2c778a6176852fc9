// kvm.cc — the KVM backend of the hypervisor seam: /dev/kvm, VM and vCPU file
// descriptors, the shared kvm_run page, register translation and exit decoding, and
// what a vCPU may see and reach (its CPUID table, MSR filter, system-call MSRs;
// docs/ISOLATION.md).
// The only file of the addon that includes <linux/kvm.h> or calls ioctl.
#include "../hv/hypervisor.h"

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <csignal>
#include <string>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <stdexcept>
#include <system_error>
#include <unistd.h>

namespace airlock::hv {

namespace {

constexpr int kExpectedApiVersion = 12;
constexpr uint32_t kMsrIa32Tsc = 0x10;
constexpr uint32_t kMsrSysenterEsp = 0x175;
constexpr uint32_t kMsrSysenterEip = 0x176;
constexpr uint32_t kMsrStar = 0xC0000081;
constexpr uint32_t kMsrSyscallMask = 0xC0000084;

// <linux/kvm.h>'s flexible-array structs have a different size in C++ than in C
// (its __DECLARE_FLEX_ARRAY wrapper), which changes the size encoded in these ioctl
// numbers; so they are spelled here over the C layout: a two-word header, then entries.
struct CpuidHeader {
    uint32_t nent;
    uint32_t padding;
};
struct MsrsHeader {
    uint32_t nmsrs;
    uint32_t pad;
};
static_assert(sizeof(CpuidHeader) == 8 && sizeof(MsrsHeader) == 8, "C layout of kvm_cpuid2 / kvm_msrs headers");
constexpr unsigned long kIoctlGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
constexpr unsigned long kIoctlSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
constexpr unsigned long kIoctlGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
constexpr unsigned long kIoctlSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
// struct kvm_xsave is 4096 bytes in C (a region plus a flexible tail that only
// KVM_GET_XSAVE2 fills); the ioctl numbers encode that C size.
struct XsaveRegion {
    uint32_t region[1024];
};
static_assert(sizeof(XsaveRegion) == 4096, "C size of struct kvm_xsave");
constexpr unsigned long kIoctlGetXsave = _IOR(KVMIO, 0xa4, XsaveRegion);
constexpr unsigned long kIoctlSetXsave = _IOW(KVMIO, 0xa5, XsaveRegion);
constexpr unsigned long kIoctlGetXsave2 = _IOR(KVMIO, 0xcf, XsaveRegion);

[[noreturn]] void throwErrno(const char *what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// An owned file descriptor: closed exactly once, by its owner.
class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd &&o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
    Fd &operator=(Fd &&o) noexcept {
        if (this != &o) {
            reset();
            fd_ = o.fd_;
            o.fd_ = -1;
        }
        return *this;
    }
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    ~Fd() { reset(); }
    int get() const { return fd_; }
    explicit operator bool() const { return fd_ >= 0; }
    void reset() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_ = -1;
};

Fd openKvm() {
    Fd fd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!fd) throwErrno("open /dev/kvm");
    return fd;
}

Segment fromKvm(const kvm_segment &s) {
    Segment o;
    o.base = s.base;
    o.limit = s.limit;
    o.selector = s.selector;
    o.type = s.type;
    o.present = s.present;
    o.dpl = s.dpl;
    o.db = s.db;
    o.s = s.s;
    o.l = s.l;
    o.g = s.g;
    o.avl = s.avl;
    o.unusable = s.unusable;
    return o;
}

kvm_segment toKvm(const Segment &s) {
    kvm_segment o{};
    o.base = s.base;
    o.limit = s.limit;
    o.selector = s.selector;
    o.type = s.type;
    o.present = s.present;
    o.dpl = s.dpl;
    o.db = s.db;
    o.s = s.s;
    o.l = s.l;
    o.g = s.g;
    o.avl = s.avl;
    o.unusable = s.unusable;
    return o;
}

class KvmVcpu final : public Vcpu {
public:
    KvmVcpu(Fd fd, kvm_run *run, size_t runSize, size_t xsaveSize, bool useXsave2, bool useSync)
        : fd_(std::move(fd)), run_(run), runSize_(runSize), xsaveSize_(xsaveSize), useXsave2_(useXsave2),
          useSync_(useSync) {}
    ~KvmVcpu() override { ::munmap(run_, runSize_); }

    Exit run() override {
        Exit exit;
        int r = ::ioctl(fd_.get(), KVM_RUN, 0);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                exitNeedsSettle_ = false;
                exit.kind = ExitKind::Interrupted;
                return exit;
            }
            throwErrno("KVM_RUN");
        }
        exitNeedsSettle_ = false;
        switch (run_->exit_reason) {
        case KVM_EXIT_IO: {
            exitNeedsSettle_ = true;
            exit.kind = ExitKind::Io;
            exit.port = run_->io.port;
            exit.size = run_->io.size;
            exit.count = run_->io.count;
            exit.isWrite = run_->io.direction == KVM_EXIT_IO_OUT;
            // Invariant: KVM places the I/O data inside the kvm_run mapping at
            // data_offset; we still bound the read by the mapping's size.
            if (exit.isWrite && exit.size <= 4 && run_->io.data_offset <= runSize_ - 4) {
                uint32_t v = 0;
                std::memcpy(&v, reinterpret_cast<const uint8_t *>(run_) + run_->io.data_offset, exit.size);
                exit.value = v;
            }
            break;
        }
        case KVM_EXIT_MMIO:
            exitNeedsSettle_ = true;
            exit.kind = ExitKind::Mmio;
            exit.address = run_->mmio.phys_addr;
            exit.isWrite = run_->mmio.is_write;
            exit.size = static_cast<uint8_t>(run_->mmio.len);
            break;
        case KVM_EXIT_HLT:
            exit.kind = ExitKind::Hlt;
            break;
        case KVM_EXIT_SHUTDOWN:
            exit.kind = ExitKind::Shutdown;
            break;
        case KVM_EXIT_FAIL_ENTRY:
            exit.kind = ExitKind::FailEntry;
            exit.detail = run_->fail_entry.hardware_entry_failure_reason;
            break;
        case KVM_EXIT_INTERNAL_ERROR:
            exit.kind = ExitKind::InternalError;
            exit.detail = run_->internal.suberror;
            break;
        case KVM_EXIT_INTR:
            exit.kind = ExitKind::Interrupted;
            break;
        default:
            exit.kind = ExitKind::Other;
            exit.detail = run_->exit_reason;
            break;
        }
        return exit;
    }

    void settle() override {
        if (!exitNeedsSettle_) return;
        // KVM completes an I/O or MMIO instruction on the next KVM_RUN; with
        // immediate_exit set it does that and returns EINTR before guest code runs.
        run_->immediate_exit = 1;
        int r = ::ioctl(fd_.get(), KVM_RUN, 0);
        int err = errno;
        run_->immediate_exit = 0;
        exitNeedsSettle_ = false;
        if (r < 0 && err != EINTR && err != EAGAIN) {
            errno = err;
            throwErrno("KVM_RUN (settle)");
        }
    }

    bool settled() const override { return !exitNeedsSettle_; }

    // Registers set through kvm_run's sync area (KVM_CAP_SYNC_REGS) reach the vCPU at
    // the next KVM_RUN, with no ioctl now (each vCPU ioctl costs 7-8 us on nested
    // hosts). Until then they are the vCPU's registers, so reads return them.
    bool pending(uint64_t flag) const { return useSync_ && (run_->kvm_dirty_regs & flag); }

    Registers getRegisters() override {
        kvm_regs k{};
        if (pending(KVM_SYNC_X86_REGS))
            k = run_->s.regs.regs;
        else if (::ioctl(fd_.get(), KVM_GET_REGS, &k) < 0)
            throwErrno("KVM_GET_REGS");
        Registers r;
        r.rax = k.rax, r.rbx = k.rbx, r.rcx = k.rcx, r.rdx = k.rdx;
        r.rsi = k.rsi, r.rdi = k.rdi, r.rsp = k.rsp, r.rbp = k.rbp;
        r.r8 = k.r8, r.r9 = k.r9, r.r10 = k.r10, r.r11 = k.r11;
        r.r12 = k.r12, r.r13 = k.r13, r.r14 = k.r14, r.r15 = k.r15;
        r.rip = k.rip, r.rflags = k.rflags;
        return r;
    }

    void setRegisters(const Registers &r) override {
        kvm_regs k{};
        k.rax = r.rax, k.rbx = r.rbx, k.rcx = r.rcx, k.rdx = r.rdx;
        k.rsi = r.rsi, k.rdi = r.rdi, k.rsp = r.rsp, k.rbp = r.rbp;
        k.r8 = r.r8, k.r9 = r.r9, k.r10 = r.r10, k.r11 = r.r11;
        k.r12 = r.r12, k.r13 = r.r13, k.r14 = r.r14, k.r15 = r.r15;
        k.rip = r.rip, k.rflags = r.rflags;
        if (useSync_) {
            run_->s.regs.regs = k;
            run_->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
        } else if (::ioctl(fd_.get(), KVM_SET_REGS, &k) < 0) {
            throwErrno("KVM_SET_REGS");
        }
    }

    SpecialRegisters getSpecialRegisters() override {
        kvm_sregs k{};
        if (pending(KVM_SYNC_X86_SREGS))
            k = run_->s.regs.sregs;
        else if (::ioctl(fd_.get(), KVM_GET_SREGS, &k) < 0)
            throwErrno("KVM_GET_SREGS");
        SpecialRegisters s;
        s.cs = fromKvm(k.cs), s.ds = fromKvm(k.ds), s.es = fromKvm(k.es), s.fs = fromKvm(k.fs);
        s.gs = fromKvm(k.gs), s.ss = fromKvm(k.ss), s.tr = fromKvm(k.tr), s.ldt = fromKvm(k.ldt);
        s.gdt = {k.gdt.base, k.gdt.limit};
        s.idt = {k.idt.base, k.idt.limit};
        s.cr0 = k.cr0, s.cr2 = k.cr2, s.cr3 = k.cr3, s.cr4 = k.cr4, s.cr8 = k.cr8;
        s.efer = k.efer, s.apic_base = k.apic_base;
        s.opaque.assign(reinterpret_cast<const uint8_t *>(k.interrupt_bitmap),
                        reinterpret_cast<const uint8_t *>(k.interrupt_bitmap) + sizeof(k.interrupt_bitmap));
        return s;
    }

    void setSpecialRegisters(const SpecialRegisters &s) override {
        kvm_sregs k{};
        k.cs = toKvm(s.cs), k.ds = toKvm(s.ds), k.es = toKvm(s.es), k.fs = toKvm(s.fs);
        k.gs = toKvm(s.gs), k.ss = toKvm(s.ss), k.tr = toKvm(s.tr), k.ldt = toKvm(s.ldt);
        k.gdt.base = s.gdt.base, k.gdt.limit = s.gdt.limit;
        k.idt.base = s.idt.base, k.idt.limit = s.idt.limit;
        k.cr0 = s.cr0, k.cr2 = s.cr2, k.cr3 = s.cr3, k.cr4 = s.cr4, k.cr8 = s.cr8;
        k.efer = s.efer, k.apic_base = s.apic_base;
        if (s.opaque.size() == sizeof(k.interrupt_bitmap))
            std::memcpy(k.interrupt_bitmap, s.opaque.data(), sizeof(k.interrupt_bitmap));
        if (useSync_) {
            run_->s.regs.sregs = k;
            run_->kvm_dirty_regs |= KVM_SYNC_X86_SREGS;
        } else if (::ioctl(fd_.get(), KVM_SET_SREGS, &k) < 0) {
            throwErrno("KVM_SET_SREGS");
        }
    }

    FpuState getFpu() override {
        kvm_fpu k{};
        if (::ioctl(fd_.get(), KVM_GET_FPU, &k) < 0) throwErrno("KVM_GET_FPU");
        FpuState f;
        static_assert(sizeof(f.fpr) == sizeof(k.fpr) && sizeof(f.xmm) == sizeof(k.xmm), "fpu layout");
        std::memcpy(f.fpr, k.fpr, sizeof(f.fpr));
        std::memcpy(f.xmm, k.xmm, sizeof(f.xmm));
        f.fcw = k.fcw, f.fsw = k.fsw, f.ftwx = k.ftwx, f.last_opcode = k.last_opcode;
        f.last_ip = k.last_ip, f.last_dp = k.last_dp, f.mxcsr = k.mxcsr;
        return f;
    }

    void setFpu(const FpuState &f) override {
        kvm_fpu k{};
        std::memcpy(k.fpr, f.fpr, sizeof(f.fpr));
        std::memcpy(k.xmm, f.xmm, sizeof(f.xmm));
        k.fcw = f.fcw, k.fsw = f.fsw, k.ftwx = f.ftwx, k.last_opcode = f.last_opcode;
        k.last_ip = f.last_ip, k.last_dp = f.last_dp, k.mxcsr = f.mxcsr;
        if (::ioctl(fd_.get(), KVM_SET_FPU, &k) < 0) throwErrno("KVM_SET_FPU");
    }

    ExtendedState getExtendedState() override {
        ExtendedState st;
        // KVM_GET_XSAVE2 writes xsaveSize_ bytes (>= 4096) when the VM offers it; the
        // classic call writes exactly 4096.
        st.xsave.assign(xsaveSize_, 0);
        if (::ioctl(fd_.get(), useXsave2_ ? kIoctlGetXsave2 : kIoctlGetXsave,
                    st.xsave.data()) < 0)
            throwErrno("KVM_GET_XSAVE");
        kvm_xcrs x{};
        if (::ioctl(fd_.get(), KVM_GET_XCRS, &x) < 0) throwErrno("KVM_GET_XCRS");
        st.xcrs.assign(reinterpret_cast<const uint8_t *>(&x), reinterpret_cast<const uint8_t *>(&x) + sizeof x);
        xcrsHeld_ = st.xcrs;
        return st;
    }

    void setExtendedState(const ExtendedState &st) override {
        if (st.xsave.size() != xsaveSize_ || st.xcrs.size() != sizeof(kvm_xcrs))
            throw std::invalid_argument("extended CPU state of another size than this vCPU's");
        // XCR0 first: the XSAVE image may hold components only a wider XCR0 enables.
        // Skipped when the vCPU already holds these XCRs: XSETBV faults outside ring 0,
        // so the guest cannot change what this host last read or wrote.
        if (st.xcrs != xcrsHeld_) {
            kvm_xcrs x{};
            std::memcpy(&x, st.xcrs.data(), sizeof x);
            if (::ioctl(fd_.get(), KVM_SET_XCRS, &x) < 0) throwErrno("KVM_SET_XCRS");
            xcrsHeld_ = st.xcrs;
        }
        // Invariant: st.xsave holds xsaveSize_ bytes, what KVM_SET_XSAVE reads here.
        if (::ioctl(fd_.get(), kIoctlSetXsave, const_cast<uint8_t *>(st.xsave.data())) < 0) throwErrno("KVM_SET_XSAVE");
    }

    uint64_t getMsr(uint32_t index) override { return oneMsr(kIoctlGetMsrs, index, 0, "KVM_GET_MSRS"); }

    void getMsrs(const uint32_t *indices, uint64_t *values, size_t n) override {
        if (n == 0) return;
        if (n > kMaxMsrsAtOnce) throw std::invalid_argument("getMsrs: too many MSRs at once");
        struct {
            MsrsHeader header;
            kvm_msr_entry entries[kMaxMsrsAtOnce];
        } msrs{};
        static_assert(offsetof(decltype(msrs), entries) == sizeof(MsrsHeader), "entries follow the header");
        msrs.header.nmsrs = static_cast<uint32_t>(n);
        for (size_t i = 0; i < n; ++i) msrs.entries[i].index = indices[i];
        if (::ioctl(fd_.get(), kIoctlGetMsrs, &msrs) != static_cast<int>(n)) throwErrno("KVM_GET_MSRS");
        for (size_t i = 0; i < n; ++i) values[i] = msrs.entries[i].data;
    }

    void setMsr(uint32_t index, uint64_t value) override {
        oneMsr(kIoctlSetMsrs, index, value, "KVM_SET_MSRS");
    }

    void requestInterrupt() noexcept override {
        // Invariant: run_ stays mapped while this vCPU exists, and signals are only
        // sent to the thread that owns it while it exists.
        __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST);
    }

    void clearInterrupt() noexcept override { __atomic_store_n(&run_->immediate_exit, 0, __ATOMIC_SEQ_CST); }

    uint64_t tscKhz() override {
        int r = ::ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
        if (r < 0) throwErrno("KVM_GET_TSC_KHZ");
        return static_cast<uint64_t>(r);
    }

    uint64_t guestTsc() override { return oneMsr(kIoctlGetMsrs, kMsrIa32Tsc, 0, "KVM_GET_MSRS(TSC)"); }

private:
    // KVM_GET_MSRS / KVM_SET_MSRS of one MSR; both answer the number of MSRs done.
    uint64_t oneMsr(unsigned long request, uint32_t index, uint64_t value, const char *what) {
        struct {
            MsrsHeader header;
            kvm_msr_entry entry;
        } msrs{};
        static_assert(offsetof(decltype(msrs), entry) == sizeof(MsrsHeader), "entries follow the header");
        msrs.header.nmsrs = 1;
        msrs.entry.index = index;
        msrs.entry.data = value;
        if (::ioctl(fd_.get(), request, &msrs) != 1) throwErrno(what);
        return msrs.entry.data;
    }

    Fd fd_;
    std::vector<uint8_t> xcrsHeld_; // the XCRs the vCPU holds, as last read or written here
    kvm_run *run_;
    size_t runSize_;
    size_t xsaveSize_;
    bool useXsave2_;
    bool useSync_; // KVM_CAP_SYNC_REGS covers regs and sregs
    bool exitNeedsSettle_ = false;
};

class KvmVm final : public Vm {
public:
    KvmVm(Fd vm, std::vector<uint8_t> cpuid, size_t runSize)
        : vm_(std::move(vm)), cpuid_(std::move(cpuid)), runSize_(runSize) {}

    void mapMemory(uint32_t slot, uint64_t guestPhys, void *hostAddr, uint64_t size) override {
        kvm_userspace_memory_region region{};
        region.slot = slot;
        region.guest_phys_addr = guestPhys;
        region.memory_size = size;
        region.userspace_addr = reinterpret_cast<uint64_t>(hostAddr);
        if (::ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, &region) < 0) throwErrno("KVM_SET_USER_MEMORY_REGION");
    }

    std::unique_ptr<Vcpu> createVcpu() override {
        Fd fd(::ioctl(vm_.get(), KVM_CREATE_VCPU, 0));
        if (!fd) throwErrno("KVM_CREATE_VCPU");
        // Invariant: cpuid_ holds a CpuidHeader followed by its nent entries, as
        // minimalCpuid built it.
        if (::ioctl(fd.get(), kIoctlSetCpuid2, cpuid_.data()) < 0) throwErrno("KVM_SET_CPUID2");
        void *run = ::mmap(nullptr, runSize_, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        if (run == MAP_FAILED) throwErrno("mmap kvm_run");
        // KVM_CAP_XSAVE2 on the VM fd gives the XSAVE area's size (>= 4096) for the CPUID
        // just set; ask after KVM_SET_CPUID2.
        int xsave2 = ::ioctl(vm_.get(), KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
        size_t xsaveSize = xsave2 > static_cast<int>(sizeof(XsaveRegion)) ? static_cast<size_t>(xsave2) : sizeof(XsaveRegion);
        const int sync = ::ioctl(vm_.get(), KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
        const int both = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
        auto vcpu = std::make_unique<KvmVcpu>(std::move(fd), static_cast<kvm_run *>(run), runSize_, xsaveSize,
                                              xsave2 > 0, sync > 0 && (sync & both) == both);
        disableSystemCallEntries(*vcpu);
        return vcpu;
    }

private:
    // The guest has no kernel: every way into ring 0 must fault. SYSENTER faults with
    // SYSENTER_CS = 0 and SYSCALL with EFER.SCE = 0 on hardware that honours it; KVM with
    // PVM does not (SYSCALL from ring 3 enters ring 0 at LSTAR whatever EFER.SCE says),
    // so LSTAR/CSTAR are 0 as well: virtual address 0 is never mapped (guest_memory.cc
    // maps only the TSS page in the first 2 MiB), and the entry faults there. All of
    // these are KVM's reset values; they are written anyway so no default is relied on.
    static void disableSystemCallEntries(Vcpu &vcpu) {
        for (uint32_t msr : {kMsrSysenterCs, kMsrSysenterEsp, kMsrSysenterEip, kMsrStar, kMsrLstar, kMsrCstar,
                             kMsrSyscallMask})
            vcpu.setMsr(msr, 0);
        SpecialRegisters sregs = vcpu.getSpecialRegisters();
        if (sregs.efer & kEferSce) {
            sregs.efer &= ~kEferSce;
            vcpu.setSpecialRegisters(sregs);
        }
    }

    Fd vm_;
    std::vector<uint8_t> cpuid_;
    size_t runSize_;
};

std::vector<uint8_t> supportedCpuid(int kvm) {
    for (uint32_t nent = 128; nent <= 4096; nent *= 2) {
        std::vector<uint8_t> buf(sizeof(CpuidHeader) + nent * sizeof(kvm_cpuid_entry2));
        CpuidHeader header{nent, 0};
        std::memcpy(buf.data(), &header, sizeof header);
        if (::ioctl(kvm, kIoctlGetSupportedCpuid, buf.data()) == 0) {
            std::memcpy(&header, buf.data(), sizeof header);
            buf.resize(sizeof(CpuidHeader) + header.nent * sizeof(kvm_cpuid_entry2));
            return buf;
        }
        if (errno != E2BIG) throwErrno("KVM_GET_SUPPORTED_CPUID");
    }
    throw std::runtime_error("KVM_GET_SUPPORTED_CPUID: too many entries");
}

// CPUID bits by name (Intel SDM vol. 2A, AMD APM vol. 3, "CPUID").
constexpr uint32_t bit(unsigned n) { return 1u << n; }
// Leaf 1 EDX: what baseline x86-64 code (the runtime is built with musl-gcc -O2, no
// -march, and has no CPUID dispatch: no cpuid, xgetbv or VEX instruction in the image)
// and KVM's checks of the 64-bit paging state rely on: FPU, PSE, TSC, PAE, CX8, CMOV,
// CLFSH, MMX, FXSR, SSE, SSE2. Not SEP: SYSENTER is not offered.
constexpr uint32_t kLeaf1Edx =
    bit(0) | bit(3) | bit(4) | bit(6) | bit(8) | bit(15) | bit(19) | bit(23) | bit(24) | bit(25) | bit(26);
// Leaf 1 EBX: only the CLFLUSH line size (bits 15:8); APIC ID, logical-processor count
// and brand index read as 0.
constexpr uint32_t kLeaf1EbxClflushSize = 0xff00;
// Leaf 0x80000001 EDX: NX and LM, which KVM requires before it accepts EFER.NXE/LME/LMA.
// Not SYSCALL (bit 11) and not RDTSCP (bit 27).
constexpr uint32_t kExtLeaf1Edx = bit(20) | bit(29);
constexpr uint32_t kLeafXsave = 0xd;
constexpr uint32_t kExtMaxLeaf = 0x80000008;

const kvm_cpuid_entry2 *findCpuid(const std::vector<uint8_t> &table, uint32_t function, uint32_t index) {
    CpuidHeader header;
    std::memcpy(&header, table.data(), sizeof header);
    // Invariant: table holds a CpuidHeader followed by header.nent entries (supportedCpuid
    // sized it so), and its vector storage is aligned for kvm_cpuid_entry2.
    const auto *entries = reinterpret_cast<const kvm_cpuid_entry2 *>(table.data() + sizeof header);
    for (uint32_t i = 0; i < header.nent; ++i) {
        const kvm_cpuid_entry2 &e = entries[i];
        bool indexed = e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        if (e.function == function && (!indexed || e.index == index)) return &e;
    }
    return nullptr;
}

// The CPUID table a vCPU gets: the few leaves the ring-3 runtime and KVM need, each
// cut down from what KVM supports on this host. Left out: the hypervisor leaves
// (0x40000000+), the brand string, cache and topology leaves (2, 4, 0xb, 0x1f,
// 0x8000001d/1e), the PMU and power leaves, and every feature bit above (AVX, AVX-512,
// RDTSCP, RDPID, RDRAND, XSAVE, the hypervisor bit). Where the hardware lets ring 3 run
// CPUID untrapped (KVM with PVM: docs/ISOLATION.md) the guest reads the host's CPUID
// instead, and this table then only steers KVM itself.
std::vector<uint8_t> minimalCpuid(const std::vector<uint8_t> &supported) {
    std::vector<kvm_cpuid_entry2> out;
    // Each pointer take() returns is used before the next take() may reallocate out.
    auto take = [&](uint32_t function, uint32_t index) -> kvm_cpuid_entry2 * {
        const kvm_cpuid_entry2 *e = findCpuid(supported, function, index);
        if (!e) return nullptr;
        out.push_back(*e);
        return &out.back();
    };
    const kvm_cpuid_entry2 *xsaveRoot = findCpuid(supported, kLeafXsave, 0);
    if (kvm_cpuid_entry2 *e = take(0, 0)) e->eax = xsaveRoot ? kLeafXsave : 1; // vendor kept: KVM emulates by it
    if (kvm_cpuid_entry2 *e = take(1, 0)) {
        e->ebx &= kLeaf1EbxClflushSize;
        e->ecx = 0;
        e->edx &= kLeaf1Edx;
    }
    // Leaf 0xd is what KVM derives the guest's XCR0 mask from, and upstream KVM limits
    // KVM_GET_XSAVE2 to that mask (plus x87/SSE). On PVM ring 3 runs AVX and AVX-512
    // under the host's XCR0 whatever CPUID says, so without this leaf such a kernel
    // would drop YMM/ZMM/opmask from snapshots and a restore would reset them instead
    // of putting the snapshot's back. (This host's kernel was measured not to limit
    // it; docs/ISOLATION.md.) KVM_GET_SUPPORTED_CPUID already leaves out dynamic
    // components (AMX) the process has no permission for, which KVM_SET_CPUID2 would
    // refuse.
    if (xsaveRoot) {
        take(kLeafXsave, 0);
        if (kvm_cpuid_entry2 *e = take(kLeafXsave, 1)) e->eax = e->ebx = e->ecx = e->edx = 0; // no XSAVES/XSS
        uint64_t xcr0 = xsaveRoot->eax | (static_cast<uint64_t>(xsaveRoot->edx) << 32);
        for (uint32_t component = 2; component < 64; ++component)
            if (xcr0 & (1ull << component)) take(kLeafXsave, component);
    }
    const kvm_cpuid_entry2 *extRoot = findCpuid(supported, 0x80000000, 0);
    if (extRoot && extRoot->eax >= kExtMaxLeaf) {
        if (kvm_cpuid_entry2 *e = take(0x80000000, 0)) e->eax = kExtMaxLeaf;
        if (kvm_cpuid_entry2 *e = take(0x80000001, 0)) {
            e->eax = e->ebx = e->ecx = 0;
            e->edx &= kExtLeaf1Edx;
        }
        // The address sizes: KVM's reserved-bit checks of guest page tables use them.
        if (kvm_cpuid_entry2 *e = take(kExtMaxLeaf, 0)) {
            e->eax &= 0xffff;
            e->ebx = e->ecx = e->edx = 0;
        }
    }
    std::vector<uint8_t> table(sizeof(CpuidHeader) + out.size() * sizeof(kvm_cpuid_entry2));
    CpuidHeader header{static_cast<uint32_t>(out.size()), 0};
    std::memcpy(table.data(), &header, sizeof header);
    std::memcpy(table.data() + sizeof header, out.data(), out.size() * sizeof(kvm_cpuid_entry2));
    return table;
}

// Guest RDMSR/WRMSR are denied unless a range allows them, and this filter allows none:
// the guest runs at CPL 3 where both fault anyway, so this only matters if guest code
// ever reached ring 0. The host's own KVM_GET_MSRS/KVM_SET_MSRS are not filtered.
// Returns false when KVM offers no MSR filter.
bool denyGuestMsrs(int vm) {
    if (::ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_X86_MSR_FILTER) <= 0) return false;
    kvm_msr_filter filter{};
    filter.flags = KVM_MSR_FILTER_DEFAULT_DENY;
    // KVM refuses a deny-by-default filter without ranges (EINVAL), so it gets one range
    // whose bitmap allows nothing. KVM copies the bitmap during the ioctl.
    uint8_t allowNone = 0;
    filter.ranges[0].flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
    filter.ranges[0].nmsrs = 1;
    filter.ranges[0].base = 0;
    filter.ranges[0].bitmap = &allowNone;
    if (::ioctl(vm, KVM_X86_SET_MSR_FILTER, &filter) < 0) throwErrno("KVM_X86_SET_MSR_FILTER");
    return true;
}

} // namespace

const char *exitKindName(ExitKind kind) {
    switch (kind) {
    case ExitKind::Io: return "port I/O";
    case ExitKind::Mmio: return "MMIO";
    case ExitKind::Hlt: return "HLT";
    case ExitKind::Shutdown: return "shutdown (CPU fault or triple fault)";
    case ExitKind::FailEntry: return "entry failure";
    case ExitKind::InternalError: return "hypervisor internal error";
    case ExitKind::Interrupted: return "interrupted";
    case ExitKind::Other: return "unexpected exit";
    }
    return "unknown exit";
}

// KVM_CREATE_VM registers the VM with the process's memory map and gives up with EINTR
// when a signal is pending; in a large process that takes long enough for a sampling
// profiler's SIGPROF (node --cpu-prof) to land on every retry. Blocking the thread's
// signals for the ioctl defers them (a pending kill is handled after it, as before).
static int createVmFd(int kvm) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int fd = -1, err = 0;
    for (int attempt = 0; attempt < 8 && fd < 0; ++attempt) {
        fd = ::ioctl(kvm, KVM_CREATE_VM, 0);
        err = errno;
        if (fd < 0 && err != EINTR) break;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    errno = err;
    return fd;
}

std::unique_ptr<Vm> createVm() {
    Fd kvm = openKvm();
    int version = ::ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
    if (version != kExpectedApiVersion)
        throw std::runtime_error("unsupported KVM API version " + std::to_string(version));
    int runSize = ::ioctl(kvm.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (runSize < static_cast<int>(sizeof(kvm_run))) throwErrno("KVM_GET_VCPU_MMAP_SIZE");
    std::vector<uint8_t> cpuid = supportedCpuid(kvm.get());
    Fd vm(createVmFd(kvm.get()));
    if (!vm) throwErrno("KVM_CREATE_VM");
    denyGuestMsrs(vm.get());
    return std::make_unique<KvmVm>(std::move(vm), minimalCpuid(cpuid), static_cast<size_t>(runSize));
}

ProbeResult probe() {
    ProbeResult result;
    Fd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm) {
        int err = errno;
        if (err == ENOENT)
            result.reasons.push_back(
                "/dev/kvm does not exist: enable hardware virtualisation (or nested virtualisation) and load the "
                "kvm module (modprobe kvm_intel or kvm_amd)");
        else if (err == EACCES || err == EPERM)
            result.reasons.push_back(
                "no permission to open /dev/kvm: add the user to the kvm group (usermod -aG kvm $USER, then log in "
                "again) or grant access with a udev rule");
        else
            result.reasons.push_back(std::string("cannot open /dev/kvm: ") + std::strerror(err));
        return result;
    }
    int version = ::ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
    if (version != kExpectedApiVersion) {
        result.reasons.push_back("KVM API version " + std::to_string(version) + " is not the supported version " +
                                 std::to_string(kExpectedApiVersion) + ": use a newer kernel");
        return result;
    }
    if (::ioctl(kvm.get(), KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0)
        result.reasons.push_back("KVM lacks KVM_CAP_IMMEDIATE_EXIT (needed to cancel guests): use Linux 4.11 or newer");
    if (::ioctl(kvm.get(), KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) <= 0)
        result.reasons.push_back("KVM lacks KVM_CAP_USER_MEMORY: use a newer kernel");
    Fd vm(createVmFd(kvm.get()));
    if (!vm)
        result.reasons.push_back(std::string("KVM_CREATE_VM failed: ") + std::strerror(errno) +
                                 " (is another hypervisor holding the virtualisation extensions?)");
    result.usable = result.reasons.empty();
    return result;
}

} // namespace airlock::hv
