// cpu-isolation.test.ts — the CPU state a KVM sandbox hands from one tenant to the next:
// vector registers come back exactly as snapshotted, every way into ring 0 faults before
// and after a restore, and what the guest reads of the host (CPUID, CPU number) is one
// of the two cases docs/ISOLATION.md describes.
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { afterEach, expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';
import {
  DUMP,
  FXSAVE_IMAGE_BYTES,
  FXSAVE_LOAD_OFFSET,
  FSGS_IMAGE_BYTES,
  FSGS_LOAD_OFFSET,
  LOAD,
  YMM_IMAGE_BYTES,
  YMM_LOAD_OFFSET,
  ZMM_IMAGE_BYTES,
  ZMM_LOAD_OFFSET,
  cpuPrograms,
  pattern,
} from './cpu-programs.js';
import { buildImage, defaultConfig, loadAddon, programs, rejection, type NativeVm } from './raw-guest.js';

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});

async function booted(code: Buffer): Promise<NativeVm> {
  const vm = new (loadAddon().Vm)(buildImage(code), defaultConfig, () => {});
  live.push(vm);
  await vm.boot();
  return vm;
}

type Failure = Error & Record<string, unknown>;

/** The request's output, or the error it was rejected with. */
async function outcome(vm: NativeVm, request: Buffer): Promise<Buffer | Failure> {
  try {
    return (await vm.send(request)).output;
  } catch (e) {
    return e as Failure;
  }
}

function expectCpuFault(result: Buffer | Failure): void {
  expect(result).toBeInstanceOf(Error);
  const err = result as Failure;
  expect(err.code).toBe('ERR_GUEST_ABORT');
  expect(err.message).toMatch(/shutdown \(CPU fault or triple fault\)/);
}

const dumpRequest = () => Buffer.from([DUMP]);

function loadRequest(offset: number, image: Buffer): Buffer {
  const request = Buffer.alloc(offset + image.length);
  request[0] = LOAD;
  image.copy(request, offset);
  return request;
}

interface RoundTrip {
  tenantA: Buffer;
  tenantB: Buffer;
  beforeRestore: Buffer;
  afterRestore: Buffer;
}

/** Tenant A's registers are snapshotted, tenant B overwrites them, the snapshot is
 *  restored and the registers are dumped. The guest's failure when it cannot run the
 *  program at all (the registers it uses do not exist for it). */
async function snapshotRoundTrip(
  code: Buffer,
  offset: number,
  imageFor: (seed: number) => Buffer,
): Promise<RoundTrip | Failure> {
  const vm = await booted(code);
  const probe = await outcome(vm, dumpRequest());
  if (probe instanceof Error) return probe;
  const tenantA = imageFor(1);
  const tenantB = imageFor(2);
  await vm.send(loadRequest(offset, tenantA));
  const snap = await vm.snapshot();
  await vm.send(loadRequest(offset, tenantB));
  const beforeRestore = (await vm.send(dumpRequest())).output;
  await vm.restore(snap);
  const afterRestore = (await vm.send(dumpRequest())).output;
  return { tenantA, tenantB, beforeRestore, afterRestore };
}

/** An FXSAVE image with valid control words: x87 control and tags, MXCSR, ST0-7, XMM0-15. */
function fxsaveImage(seed: number): Buffer {
  const image = Buffer.alloc(FXSAVE_IMAGE_BYTES);
  const random = pattern(seed, FXSAVE_IMAGE_BYTES);
  image.writeUInt16LE(seed % 2 ? 0x037f : 0x027f, 0); // FCW: precision control differs
  image[4] = 0xff; // abridged tag word: ST0-7 all in use
  image.writeUInt32LE(seed % 2 ? 0x1f80 : 0x7f80, 24); // MXCSR: rounding mode differs
  for (let i = 0; i < 8; i++) random.copy(image, 32 + i * 16, i * 16, i * 16 + 10);
  random.copy(image, 160, 160, 416);
  return image;
}

/** The FXSAVE fields that must round-trip: FCW, abridged FTW, MXCSR, ST0-7, XMM0-15. */
function fxsaveArchitectural(image: Buffer): Buffer {
  const parts = [image.subarray(0, 2), image.subarray(4, 5), image.subarray(24, 28)];
  for (let i = 0; i < 8; i++) parts.push(image.subarray(32 + i * 16, 32 + i * 16 + 10));
  parts.push(image.subarray(160, 416));
  return Buffer.concat(parts);
}

interface HostCpu {
  vendor: string;
  modelName: string;
  apicIds: Set<number>;
  flags: Set<string>;
}

function hostCpu(): HostCpu {
  const text = readFileSync('/proc/cpuinfo', 'utf8');
  const field = (name: string) =>
    [...text.matchAll(new RegExp(`^${name}\\s*: ?(.*)$`, 'gm'))].map((m) => m[1].trim());
  return {
    vendor: field('vendor_id')[0] ?? '',
    modelName: field('model name')[0] ?? '',
    apicIds: new Set(field('apicid').map(Number)),
    flags: new Set((field('flags')[0] ?? '').split(/\s+/)),
  };
}

describeKvm('KVM sandbox CPU state: exact, private restore', () => {
  it('restores x87 and SSE registers exactly as snapshotted, not as the next tenant left them', async () => {
    const r = await snapshotRoundTrip(cpuPrograms.fxsave, FXSAVE_LOAD_OFFSET, fxsaveImage);
    if (r instanceof Error) throw r;
    expect(fxsaveArchitectural(r.beforeRestore)).toEqual(fxsaveArchitectural(r.tenantB));
    expect(fxsaveArchitectural(r.afterRestore)).toEqual(fxsaveArchitectural(r.tenantA));
  });

  it('restores the full YMM registers (upper halves included), or AVX faults in the guest', async () => {
    const host = hostCpu();
    const r = await snapshotRoundTrip(cpuPrograms.ymm, YMM_LOAD_OFFSET, (seed) => pattern(seed, YMM_IMAGE_BYTES));
    if (r instanceof Error) {
      // No AVX in the guest (bare-metal KVM keeps CR4.OSXSAVE clear): no YMM state to leak.
      expectCpuFault(r);
      return;
    }
    expect(host.flags.has('avx')).toBe(true);
    expect(r.beforeRestore).toEqual(r.tenantB);
    expect(r.afterRestore).toEqual(r.tenantA);
  });

  it('restores ZMM and opmask registers exactly, or AVX-512 faults in the guest', async () => {
    const host = hostCpu();
    const r = await snapshotRoundTrip(cpuPrograms.zmm, ZMM_LOAD_OFFSET, (seed) => pattern(seed, ZMM_IMAGE_BYTES));
    if (r instanceof Error) {
      expectCpuFault(r);
      return;
    }
    expect(host.flags.has('avx512f')).toBe(true);
    expect(r.beforeRestore).toEqual(r.tenantB);
    expect(r.afterRestore).toEqual(r.tenantA);
  });

  it('restores FS and GS base set with WRFSBASE/WRGSBASE, or those instructions fault', async () => {
    // Canonical user addresses, distinct per tenant.
    const bases = (seed: number) => {
      const image = Buffer.alloc(FSGS_IMAGE_BYTES);
      image.writeBigUInt64LE(BigInt(seed) * 0x1111000n, 0);
      image.writeBigUInt64LE(BigInt(seed) * 0x2222000n, 8);
      return image;
    };
    const r = await snapshotRoundTrip(cpuPrograms.fsgsBase, FSGS_LOAD_OFFSET, bases);
    if (r instanceof Error) {
      expectCpuFault(r);
      return;
    }
    expect(r.beforeRestore).toEqual(r.tenantB);
    expect(r.afterRestore).toEqual(r.tenantA);
  });

  it('keeps the XCR0 the guest reads across restore, consistent with the registers it can use', async () => {
    const vm = await booted(cpuPrograms.xgetbv);
    const before = await outcome(vm, dumpRequest());
    const snap = before instanceof Error ? null : await vm.snapshot();
    const avx = await booted(cpuPrograms.ymm);
    const guestHasAvx = !((await outcome(avx, dumpRequest())) instanceof Error);
    if (before instanceof Error) {
      // XGETBV faults with CR4.OSXSAVE clear, and then so does every AVX instruction.
      expectCpuFault(before);
      expect(guestHasAvx).toBe(false);
      return;
    }
    const xcr0 = before.readBigUInt64LE(0);
    expect(xcr0 & 3n).toBe(3n); // x87 and SSE always
    expect((xcr0 & 4n) !== 0n).toBe(guestHasAvx);
    await vm.restore(snap!);
    const after = await outcome(vm, dumpRequest());
    expect(after).toEqual(before);
  });
});

describeKvm('KVM sandbox CPU state: no way into ring 0', () => {
  const cases: [string, Buffer][] = [
    ['SYSCALL', cpuPrograms.syscall],
    ['SYSENTER', cpuPrograms.sysenter],
    ['RDMSR', cpuPrograms.rdmsr],
  ];
  for (const [what, code] of cases) {
    it(`ends a request that runs ${what} with ERR_GUEST_ABORT, before and after a restore`, async () => {
      const vm = await booted(code);
      const snap = await vm.snapshot();
      expectCpuFault(await outcome(vm, Buffer.from('x')));
      expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
      await vm.restore(snap);
      // The restored vCPU still has SYSCALL/SYSENTER disabled and MSRs out of reach.
      expectCpuFault(await outcome(vm, Buffer.from('x')));
      await vm.restore(snap);
      expectCpuFault(await outcome(vm, Buffer.from('x')));
      // The host process and other sandboxes carry on.
      const other = await booted(programs.echo);
      expect((await other.send(Buffer.from('still here'))).output.toString()).toBe('still here');
    });
  }
});

// /proc/cpuinfo's names for CPUID leaf 1's feature bits (ECX bit 27, OSXSAVE, has none).
const LEAF1_ECX: Record<number, string> = {
  0: 'pni', 1: 'pclmulqdq', 2: 'dtes64', 3: 'monitor', 4: 'ds_cpl', 5: 'vmx', 6: 'smx', 7: 'est', 8: 'tm2',
  9: 'ssse3', 10: 'cid', 11: 'sdbg', 12: 'fma', 13: 'cx16', 14: 'xtpr', 15: 'pdcm', 17: 'pcid', 18: 'dca',
  19: 'sse4_1', 20: 'sse4_2', 21: 'x2apic', 22: 'movbe', 23: 'popcnt', 24: 'tsc_deadline_timer', 25: 'aes',
  26: 'xsave', 28: 'avx', 29: 'f16c', 30: 'rdrand',
};
const LEAF1_EDX: Record<number, string> = {
  0: 'fpu', 1: 'vme', 2: 'de', 3: 'pse', 4: 'tsc', 5: 'msr', 6: 'pae', 7: 'mce', 8: 'cx8', 9: 'apic', 11: 'sep',
  12: 'mtrr', 13: 'pge', 14: 'mca', 15: 'cmov', 16: 'pat', 17: 'pse36', 18: 'pn', 19: 'clflush', 21: 'dts',
  22: 'acpi', 23: 'mmx', 24: 'fxsr', 25: 'sse', 26: 'sse2', 27: 'ss', 28: 'ht', 29: 'tm', 30: 'ia64', 31: 'pbe',
};

describeKvm('KVM sandbox CPU state: what the guest reads of the host', () => {
  const leaves: [number, number][] = [
    [0, 0],
    [1, 0],
    [7, 0],
    [0xb, 0],
    [0x40000000, 0],
    [0x80000001, 0],
    [0x80000002, 0],
    [0x80000003, 0],
    [0x80000004, 0],
  ];
  type Regs = { eax: number; ebx: number; ecx: number; edx: number };

  async function guestCpuid(): Promise<Map<number, Regs>> {
    const vm = await booted(cpuPrograms.cpuid);
    const request = Buffer.alloc(leaves.length * 8);
    leaves.forEach(([leaf, sub], i) => {
      request.writeUInt32LE(leaf, i * 8);
      request.writeUInt32LE(sub, i * 8 + 4);
    });
    const out = (await vm.send(request)).output;
    expect(out.length).toBe(leaves.length * 16);
    const result = new Map<number, Regs>();
    leaves.forEach(([leaf], i) => {
      const [eax, ebx, ecx, edx] = [0, 1, 2, 3].map((k) => out.readUInt32LE(i * 16 + k * 4));
      result.set(leaf, { eax, ebx, ecx, edx });
    });
    return result;
  }

  const text = (words: number[]) => {
    const b = Buffer.alloc(words.length * 4);
    words.forEach((w, i) => b.writeUInt32LE(w, i * 4));
    return b.toString('latin1').replace(/\0+$/, '').trim();
  };

  it('sees either the minimal CPUID table or, where ring-3 CPUID is not trapped, the host CPUID', async () => {
    const host = hostCpu();
    const id = await guestCpuid();
    const get = (leaf: number) => id.get(leaf)!;
    expect(text([get(0).ebx, get(0).edx, get(0).ecx])).toBe(host.vendor);
    const brand = text([0x80000002, 0x80000003, 0x80000004].flatMap((l) => Object.values(get(l))));
    const kvmSignature = text([get(0x40000000).ebx, get(0x40000000).ecx, get(0x40000000).edx]);
    const apicId = get(1).ebx >>> 24;
    if (brand !== '') {
      // Untrapped (KVM with PVM): the host's own CPUID, APIC ID and brand string leak.
      expect(brand).toBe(host.modelName);
      expect(host.apicIds.has(apicId)).toBe(true);
      expect(host.apicIds.has(get(0xb).edx)).toBe(true);
      expect((get(1).ecx >>> 31) === 1).toBe(host.flags.has('hypervisor'));
      expect((get(7).ebx & (1 << 5)) !== 0).toBe(host.flags.has('avx2'));
    } else {
      // Trapped: the minimal table. No APIC ID, topology, brand or hypervisor signature,
      // no SYSCALL/RDTSCP bits.
      expect(apicId).toBe(0);
      const ecx = get(1).ecx;
      const edx = get(1).edx;
      if (ecx === 0) {
        // The table's leaf 1 as written: no feature beyond baseline x86-64, no SEP.
        expect(edx & (1 << 11)).toBe(0);
      } else {
        // Measured on an Intel host with KVM + PVM (docs/ISOLATION.md): every leaf is
        // the table's except leaf 1's feature words, which are the host's own less a few
        // (hypervisor, OSXSAVE, x2APIC, PCID, ...). A leak of the host's features, not
        // of its identity: each bit must be one the host has, the hypervisor bit clear.
        expect(ecx >>> 31).toBe(0);
        for (let b = 0; b < 31; b++) if (b !== 27 && ecx & (1 << b)) expect(host.flags.has(LEAF1_ECX[b] ?? `ecx bit ${b}`), `leaf 1 ECX bit ${b}`).toBe(true);
        for (let b = 0; b < 32; b++) if (edx & (1 << b)) expect(host.flags.has(LEAF1_EDX[b] ?? `edx bit ${b}`), `leaf 1 EDX bit ${b}`).toBe(true);
      }
      expect(get(7)).toEqual({ eax: 0, ebx: 0, ecx: 0, edx: 0 });
      expect(get(0xb)).toEqual({ eax: 0, ebx: 0, ecx: 0, edx: 0 });
      expect(kvmSignature).not.toBe('KVMKVMKVM');
      expect(get(0x80000001).edx & ((1 << 11) | (1 << 27))).toBe(0);
    }
  });

  it('RDTSCP and RDPID either fault or show a host CPU number (a documented leak)', async () => {
    for (const code of [cpuPrograms.rdtscp, cpuPrograms.rdpid]) {
      const vm = await booted(code);
      const r = await outcome(vm, dumpRequest());
      if (r instanceof Error) {
        expectCpuFault(r);
        continue;
      }
      // Linux keeps (node << 12) | cpu in TSC_AUX.
      expect(r.readUInt32LE(0) & 0xfff).toBeLessThan(cpus().length);
    }
  });
});
