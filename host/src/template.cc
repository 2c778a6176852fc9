// template.cc — templates from snapshots, the CPU-state encoding, and the validating
// import (see template.h).
#include "template.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../../guest/include/abi.h"

namespace airlock {

namespace {

// CPU state encoding, version 1, every integer little-endian:
//   u32 magic 'ACPU', u32 version
//   18 x u64: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
//   8 segments (cs ds es fs gs ss tr ldt), each: u64 base, u32 limit, u16 selector,
//     u8 type present dpl db s l g avl unusable
//   gdt, idt: u64 base, u16 limit
//   u64 cr0 cr2 cr3 cr4 cr8 efer apic_base
//   u32 n + n bytes: pending-interrupt bitmap (backend-private)
//   u32 n + n bytes: XSAVE area;  u32 n + n bytes: XCR list (backend's layouts)
constexpr uint32_t kCpuMagic = 0x55504341; // "ACPU"
constexpr uint32_t kCpuVersion = 1;
constexpr uint32_t kMaxBlob = 1u << 20;

class Writer {
public:
    template <typename T> void put(T v) {
        static_assert(std::is_integral_v<T>, "integers only");
        for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i)));
    }
    void blob(const std::vector<uint8_t> &b) {
        put<uint32_t>(static_cast<uint32_t>(b.size()));
        out.insert(out.end(), b.begin(), b.end());
    }
    std::vector<uint8_t> out;
};

class Reader {
public:
    Reader(const uint8_t *p, size_t n) : p_(p), n_(n) {}
    template <typename T> T get(const char *what) {
        if (n_ - off_ < sizeof(T)) bad(std::string("it ends inside ") + what);
        uint64_t v = 0;
        for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<uint64_t>(p_[off_ + i]) << (8 * i);
        off_ += sizeof(T);
        return static_cast<T>(v);
    }
    std::vector<uint8_t> blob(const char *what) {
        const uint32_t len = get<uint32_t>(what);
        if (len > kMaxBlob || n_ - off_ < len) bad(std::string(what) + " is longer than the bytes left");
        std::vector<uint8_t> b(p_ + off_, p_ + off_ + len);
        off_ += len;
        return b;
    }
    bool atEnd() const { return off_ == n_; }
    [[noreturn]] static void bad(const std::string &why) { throw ArgumentError("invalid template cpuState: " + why); }

private:
    const uint8_t *p_;
    size_t n_;
    size_t off_ = 0;
};

void putSegment(Writer &w, const hv::Segment &s) {
    w.put<uint64_t>(s.base), w.put<uint32_t>(s.limit), w.put<uint16_t>(s.selector);
    for (uint8_t b : {s.type, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable}) w.put<uint8_t>(b);
}

hv::Segment getSegment(Reader &r) {
    hv::Segment s;
    s.base = r.get<uint64_t>("a segment"), s.limit = r.get<uint32_t>("a segment"), s.selector = r.get<uint16_t>("a segment");
    for (uint8_t *b : {&s.type, &s.present, &s.dpl, &s.db, &s.s, &s.l, &s.g, &s.avl, &s.unusable}) *b = r.get<uint8_t>("a segment");
    return s;
}

uint64_t *registerFields(hv::Registers &r, size_t &n) {
    static_assert(sizeof(hv::Registers) == 18 * sizeof(uint64_t), "Registers is 18 packed u64 fields");
    n = 18;
    // Invariant: hv::Registers is exactly 18 uint64_t members (asserted above).
    return reinterpret_cast<uint64_t *>(&r);
}

bool sameSegment(const hv::Segment &a, const hv::Segment &b) {
    return a.base == b.base && a.limit == b.limit && a.selector == b.selector && a.type == b.type &&
           a.present == b.present && a.dpl == b.dpl && a.db == b.db && a.s == b.s && a.l == b.l && a.g == b.g;
}

// Flags ring-3 code can change itself (CF PF AF ZF SF TF DF OF NT RF AC ID), and IOPL,
// which the host starts at 3 and which PVM hosts clear (both are safe: the host-built
// TSS bitmap gates ports); every other bit must be the host's start value (bit 1 set,
// IF clear, no VM86).
constexpr uint64_t kUserFlags =
    0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x3000 | 0x4000 | 0x10000 | 0x40000 | 0x200000;

// A CPU state a clone may start from: exactly the host's ring-3 state apart from what
// ring-3 code can change (general registers, flags above, FS base, data selectors).
void checkRing3(const CpuState &cpu) {
    const hv::SpecialRegisters want = ring3SpecialRegisters(cpu.sregs, cpu.sregs.fs.base);
    const hv::SpecialRegisters &s = cpu.sregs;
    auto bad = [](const std::string &why) { throw ArgumentError("invalid template cpuState: " + why); };
    if (s.efer != want.efer) bad("EFER " + hex(s.efer) + " is not the ring-3 value " + hex(want.efer) + " (system calls stay off)");
    if (s.cr0 != want.cr0 || s.cr3 != want.cr3 || s.cr4 != want.cr4)
        bad("CR0/CR3/CR4 differ from the host's ring-3 values");
    if (!sameSegment(s.cs, want.cs)) bad("CS is not the ring-3 code segment");
    if (!sameSegment(s.ss, want.ss)) bad("SS is not the ring-3 data segment");
    if (!sameSegment(s.tr, want.tr)) bad("TR is not the host's TSS");
    if (s.gdt.base != want.gdt.base || s.gdt.limit != want.gdt.limit || s.idt.base != 0 || s.idt.limit != 0)
        bad("GDT/IDT differ from the host's");
    // Ring 3 cannot load an LDT; one that lies elsewhere than the host-built system
    // region could hold call gates into ring 0.
    if (s.ldt.selector != 0 || s.ldt.base != 0 || s.ldt.limit > 0xffff) bad("an LDT outside the system region is loaded");
    for (const hv::Segment *seg : {&s.ds, &s.es, &s.fs, &s.gs}) {
        const bool null = seg->selector == 0, user = seg->selector == kUserDataSelector;
        if (!null && !user) bad("a data segment selector " + hex(seg->selector) + " is neither null nor the ring-3 data selector");
        if (seg->dpl != 3 && seg->present) bad("a data segment is not DPL 3");
    }
    for (uint8_t b : s.opaque)
        if (b) bad("interrupts are pending");
    if ((cpu.regs.rflags & ~kUserFlags) != (kRing3Rflags & ~kUserFlags))
        bad("RFLAGS " + hex(cpu.regs.rflags) + " sets bits ring-3 code cannot");
}

// The XSAVE area and XCRs are the backend's formats: only the hypervisor can say
// whether this host accepts them, so a throwaway vCPU is given them now rather than
// every clone failing later.
void checkWithHypervisor(const CpuState &cpu) {
    std::unique_ptr<hv::Vm> vm = hv::createVm();
    std::unique_ptr<hv::Vcpu> vcpu = vm->createVcpu();
    try {
        vcpu->setExtendedState(cpu.extended);
    } catch (const std::exception &e) {
        throw ArgumentError(std::string("invalid template cpuState: the hypervisor refuses its XSAVE area or XCRs (") +
                            e.what() + ")");
    }
}

} // namespace

std::shared_ptr<const Template> templateFromSnapshot(const Snapshot &snap) {
    if (!snap.memory->pin()) throw ArgumentError("the snapshot's sandbox has been disposed");
    auto t = std::make_shared<Template>();
    t->layout = snap.layout;
    t->cpu = snap.cpu;
    t->memory = snap.memory;
    return t;
}

std::vector<uint8_t> encodeCpuState(const CpuState &cpu) {
    Writer w;
    w.put<uint32_t>(kCpuMagic), w.put<uint32_t>(kCpuVersion);
    hv::Registers regs = cpu.regs;
    size_t n;
    const uint64_t *f = registerFields(regs, n);
    for (size_t i = 0; i < n; ++i) w.put<uint64_t>(f[i]);
    const hv::SpecialRegisters &s = cpu.sregs;
    for (const hv::Segment *seg : {&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt}) putSegment(w, *seg);
    w.put<uint64_t>(s.gdt.base), w.put<uint16_t>(s.gdt.limit), w.put<uint64_t>(s.idt.base), w.put<uint16_t>(s.idt.limit);
    for (uint64_t v : {s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base}) w.put<uint64_t>(v);
    w.blob(s.opaque);
    w.blob(cpu.extended.xsave);
    w.blob(cpu.extended.xcrs);
    return std::move(w.out);
}

std::vector<PageRun> exportedRuns(const Template &t) {
    std::vector<PageRun> out;
    for (PageRun r : t.memory->dataRuns()) {
        r.from = std::max(r.from, t.layout.header.dataStart);
        if (r.from < r.to) out.push_back(r);
    }
    return out;
}

std::vector<MappedRange> guestMappedRanges(const GuestLayout &l) {
    const ImageHeader &h = l.header;
    return {{h.loadAddr, h.dataStart, false, true},
            {h.dataStart, l.imageRegionEnd, true, false},
            {l.stackBottom, l.stackTop, true, false},
            {l.heapAddr, l.memoryEnd, true, false}};
}

std::shared_ptr<const Template> importTemplate(const uint8_t *image, size_t imageSize, const SandboxConfig &config,
                                               const uint8_t *cpuState, size_t cpuStateSize,
                                               const std::vector<SerializedRange> &ranges) {
    auto t = std::make_shared<Template>();
    t->layout = computeLayout(parseImageHeader(image, imageSize), imageSize, config);
    const GuestLayout &l = t->layout;

    Reader r(cpuState, cpuStateSize);
    if (r.get<uint32_t>("the magic") != kCpuMagic) Reader::bad("bad magic");
    const uint32_t version = r.get<uint32_t>("the version");
    if (version != kCpuVersion) Reader::bad("version " + std::to_string(version) + " (this host reads " + std::to_string(kCpuVersion) + ")");
    size_t n;
    uint64_t *f = registerFields(t->cpu.regs, n);
    for (size_t i = 0; i < n; ++i) f[i] = r.get<uint64_t>("the registers");
    hv::SpecialRegisters &s = t->cpu.sregs;
    for (hv::Segment *seg : {&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt}) *seg = getSegment(r);
    s.gdt.base = r.get<uint64_t>("the GDT"), s.gdt.limit = r.get<uint16_t>("the GDT");
    s.idt.base = r.get<uint64_t>("the IDT"), s.idt.limit = r.get<uint16_t>("the IDT");
    for (uint64_t *v : {&s.cr0, &s.cr2, &s.cr3, &s.cr4, &s.cr8, &s.efer, &s.apic_base}) *v = r.get<uint64_t>("the control registers");
    s.opaque = r.blob("the interrupt bitmap");
    t->cpu.extended.xsave = r.blob("the XSAVE area");
    t->cpu.extended.xcrs = r.blob("the XCR list");
    if (!r.atEnd()) Reader::bad("trailing bytes");
    checkRing3(t->cpu);
    checkWithHypervisor(t->cpu);

    // The guest's own memory is taken from the ranges; the system region and the code
    // are rebuilt here: they decide what ring-3 code can do, and the guest cannot
    // change them either (never mapped / mapped read-only).
    uint64_t prevEnd = l.header.dataStart;
    for (size_t i = 0; i < ranges.size(); ++i) {
        const SerializedRange &sr = ranges[i];
        const std::string name = "invalid template memory[" + std::to_string(i) + "]: ";
        if (sr.offset < l.header.dataStart)
            throw ArgumentError(name + "offset " + hex(sr.offset) + " is below the guest's writable memory at " + hex(l.header.dataStart));
        if (sr.offset < prevEnd) throw ArgumentError(name + "overlaps or precedes the previous range");
        if (sr.len > l.memoryEnd || sr.offset > l.memoryEnd - sr.len)
            throw ArgumentError(name + "ends past the guest memory (" + hex(l.memoryEnd) + ")");
        if (sr.offset < l.stackBottom && sr.offset + sr.len > l.guardStart)
            throw ArgumentError(name + "covers the stack guard [" + hex(l.guardStart) + ", " + hex(l.stackBottom) + ")");
        prevEnd = sr.offset + sr.len;
    }
    // Assembled in scratch memory (committed only where written), then frozen with
    // the all-zero pages left out.
    GuestMemory scratch(l.memoryEnd);
    buildSystemRegion(scratch, guestMappedRanges(l));
    const uint64_t codeBytes = l.header.dataStart - l.header.loadAddr;
    std::memcpy(scratch.at(l.header.loadAddr, codeBytes), image, codeBytes);
    std::vector<PageRun> runs{{0, kHugePageSize}, {l.header.loadAddr, l.header.dataStart}};
    for (const SerializedRange &sr : ranges) {
        if (sr.len == 0) continue;
        std::memcpy(scratch.at(sr.offset, sr.len), sr.bytes, sr.len);
        const PageRun pr{sr.offset / kPageSize * kPageSize, alignUp(sr.offset + sr.len, kPageSize)};
        if (runs.back().to >= pr.from)
            runs.back().to = std::max(runs.back().to, pr.to);
        else
            runs.push_back(pr);
    }
    t->memory = MemoryImage::capture(scratch.base(), l.memoryEnd, runs);
    return t;
}

} // namespace airlock
