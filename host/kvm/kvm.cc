// kvm.cc — the KVM backend of the hypervisor seam: /dev/kvm, VM and vCPU file
// descriptors, the shared kvm_run page, register translation and exit decoding.
// The only file of the addon that includes <linux/kvm.h> or calls ioctl.
#include "../hv/hypervisor.h"

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fcntl.h>
#include <linux/kvm.h>
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
    KvmVcpu(Fd fd, kvm_run *run, size_t runSize, size_t xsaveSize, bool useXsave2)
        : fd_(std::move(fd)), run_(run), runSize_(runSize), xsaveSize_(xsaveSize), useXsave2_(useXsave2) {}
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

    Registers getRegisters() override {
        kvm_regs k{};
        if (::ioctl(fd_.get(), KVM_GET_REGS, &k) < 0) throwErrno("KVM_GET_REGS");
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
        if (::ioctl(fd_.get(), KVM_SET_REGS, &k) < 0) throwErrno("KVM_SET_REGS");
    }

    SpecialRegisters getSpecialRegisters() override {
        kvm_sregs k{};
        if (::ioctl(fd_.get(), KVM_GET_SREGS, &k) < 0) throwErrno("KVM_GET_SREGS");
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
        if (::ioctl(fd_.get(), KVM_SET_SREGS, &k) < 0) throwErrno("KVM_SET_SREGS");
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
        return st;
    }

    void setExtendedState(const ExtendedState &st) override {
        if (st.xsave.size() != xsaveSize_ || st.xcrs.size() != sizeof(kvm_xcrs))
            throw std::invalid_argument("extended CPU state of another size than this vCPU's");
        kvm_xcrs x{};
        std::memcpy(&x, st.xcrs.data(), sizeof x);
        // XCR0 first: the XSAVE image may hold components only a wider XCR0 enables.
        if (::ioctl(fd_.get(), KVM_SET_XCRS, &x) < 0) throwErrno("KVM_SET_XCRS");
        // Invariant: st.xsave holds xsaveSize_ bytes, what KVM_SET_XSAVE reads here.
        if (::ioctl(fd_.get(), kIoctlSetXsave, const_cast<uint8_t *>(st.xsave.data())) < 0) throwErrno("KVM_SET_XSAVE");
    }

    uint64_t getMsr(uint32_t index) override {
        struct {
            MsrsHeader header;
            kvm_msr_entry entry;
        } msrs{};
        msrs.header.nmsrs = 1;
        msrs.entry.index = index;
        if (::ioctl(fd_.get(), kIoctlGetMsrs, &msrs) != 1) throwErrno("KVM_GET_MSRS");
        return msrs.entry.data;
    }

    void setMsr(uint32_t index, uint64_t value) override {
        struct {
            MsrsHeader header;
            kvm_msr_entry entry;
        } msrs{};
        msrs.header.nmsrs = 1;
        msrs.entry.index = index;
        msrs.entry.data = value;
        if (::ioctl(fd_.get(), kIoctlSetMsrs, &msrs) != 1) throwErrno("KVM_SET_MSRS");
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

    uint64_t guestTsc() override {
        struct {
            MsrsHeader header;
            kvm_msr_entry entry;
        } msrs{};
        static_assert(offsetof(decltype(msrs), entry) == sizeof(MsrsHeader), "entries follow the header");
        msrs.header.nmsrs = 1;
        msrs.entry.index = kMsrIa32Tsc;
        if (::ioctl(fd_.get(), kIoctlGetMsrs, &msrs) != 1) throwErrno("KVM_GET_MSRS(TSC)");
        return msrs.entry.data;
    }

private:
    Fd fd_;
    kvm_run *run_;
    size_t runSize_;
    size_t xsaveSize_;
    bool useXsave2_;
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
        // Invariant: cpuid_ holds a CpuidHeader followed by its nent entries, exactly
        // as KVM_GET_SUPPORTED_CPUID filled it.
        if (::ioctl(fd.get(), kIoctlSetCpuid2, cpuid_.data()) < 0) throwErrno("KVM_SET_CPUID2");
        void *run = ::mmap(nullptr, runSize_, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        if (run == MAP_FAILED) throwErrno("mmap kvm_run");
        // KVM_CAP_XSAVE2 on the VM fd gives the XSAVE area's size (>= 4096).
        int xsave2 = ::ioctl(vm_.get(), KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
        size_t xsaveSize = xsave2 > static_cast<int>(sizeof(XsaveRegion)) ? static_cast<size_t>(xsave2) : sizeof(XsaveRegion);
        return std::make_unique<KvmVcpu>(std::move(fd), static_cast<kvm_run *>(run), runSize_, xsaveSize, xsave2 > 0);
    }

private:
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

std::unique_ptr<Vm> createVm() {
    Fd kvm = openKvm();
    int version = ::ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
    if (version != kExpectedApiVersion)
        throw std::runtime_error("unsupported KVM API version " + std::to_string(version));
    int runSize = ::ioctl(kvm.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (runSize < static_cast<int>(sizeof(kvm_run))) throwErrno("KVM_GET_VCPU_MMAP_SIZE");
    auto cpuid = supportedCpuid(kvm.get());
    Fd vm;
    // KVM_CREATE_VM can fail with EINTR while the kernel is busy; retrying is the norm.
    for (int attempt = 0; attempt < 8 && !vm; ++attempt) {
        vm = Fd(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
        if (!vm && errno != EINTR) break;
    }
    if (!vm) throwErrno("KVM_CREATE_VM");
    return std::make_unique<KvmVm>(std::move(vm), std::move(cpuid), static_cast<size_t>(runSize));
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
    Fd vm(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
    if (!vm)
        result.reasons.push_back(std::string("KVM_CREATE_VM failed: ") + std::strerror(errno) +
                                 " (is another hypervisor holding the virtualisation extensions?)");
    result.usable = result.reasons.empty();
    return result;
}

} // namespace airlock::hv
