// template-hostile.test.ts — importTemplate() treats a serialized KVM template as
// an attacker's: every forged or corrupted field is refused with ERR_INVALID_ARG naming
// the problem, nothing crashes (also run against the sanitizer build), and what the
// host rebuilds itself (system region, code) cannot be supplied.
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import type { EngineTemplate, SerializedTemplate } from '../../src/engine/engine.js';
import { KvmEngine } from '../../src/engine/kvm-engine.js';
import { kvmTemplateSupport } from '../../src/engine/kvm-template.js';
import { describeKvm } from '../support/kvm.js';
import { decodeMessages, encodeMessage } from './raw-guest.js';

const MiB = 1 << 20;
const config = { heapSize: 8 * MiB, stackSize: 1 * MiB, inputSize: 64 * 1024, outputSize: 64 * 1024, consoleLimit: 4096 };

// Offsets in the version-1 CPU state encoding (host/src/template.cc).
const RFLAGS = 8 + 17 * 8;
const SEGMENTS = 8 + 18 * 8;
const SEGMENT_SIZE = 23;
const seg = (i: number) => SEGMENTS + i * SEGMENT_SIZE; // cs ds es fs gs ss tr ldt
const [CS, DS, , , , SS, TR, LDT] = [0, 1, 2, 3, 4, 5, 6, 7].map(seg);
const TABLES = seg(8);
const CONTROL_REGS = TABLES + 20; // cr0 cr2 cr3 cr4 cr8 efer apic_base
const CR3 = CONTROL_REGS + 16;
const EFER = CONTROL_REGS + 40;
const INTERRUPTS = CONTROL_REGS + 56; // u32 length, then the bitmap
const XSAVE = INTERRUPTS + 4 + 32; // u32 length, then the area

let engine: KvmEngine;
let template: EngineTemplate;
let good: SerializedTemplate;

beforeAll(async () => {
  engine = new KvmEngine(config, async () => new Uint8Array());
  await engine.boot();
  await engine.exchange(encodeMessage(abi.AIRLOCK_MSG_LOAD_RUNTIME, 0, []));
  template = await engine.template!(await engine.snapshot());
  good = kvmTemplateSupport.exportTemplate(template);
});

afterAll(async () => {
  template?.release();
  await engine?.dispose();
});

/** A deep copy of the good export with `change` applied. */
function forged(change: (t: { -readonly [K in keyof SerializedTemplate]: any }) => void): SerializedTemplate {
  const t = {
    ...good,
    config: { ...good.config },
    cpuState: new Uint8Array(good.cpuState),
    memory: good.memory.map((r) => ({ offset: r.offset, bytes: new Uint8Array(r.bytes) })),
  };
  change(t);
  return t as SerializedTemplate;
}

function cpu(change: (view: DataView, bytes: Uint8Array) => void) {
  return forged((t) => change(new DataView(t.cpuState.buffer), t.cpuState));
}

const cases: Array<[string, SerializedTemplate, RegExp]> = [];
function refuses(name: string, input: () => SerializedTemplate, message: RegExp) {
  cases.push([name, undefined as unknown as SerializedTemplate, message]);
  const i = cases.length - 1;
  Object.defineProperty(cases[i], 1, { get: input });
}

refuses('another backend', () => forged((t) => (t.backend = 'wasm')), /backend wasm/);
refuses('another ABI version', () => forged((t) => (t.abiVersion = good.abiVersion + 1)), /abiVersion/);
refuses('another guest image', () => forged((t) => (t.imageSha256 = '0'.repeat(64))), /imageSha256/);
refuses('a config that is not an object', () => forged((t) => (t.config = null)), /config must be an object/);
refuses('a size that is not a number', () => forged((t) => (t.config.heapSize = '8')), /config.heapSize/);
refuses('a size the tier cannot use', () => forged((t) => (t.config.heapSize = 0)), /heapSize 0 is outside/);
refuses('a fractional size', () => forged((t) => (t.config.stackSize = 1.5)), /config.stackSize must be a non-negative integer/);
refuses('cpuState of another type', () => forged((t) => (t.cpuState = [1, 2, 3])), /cpuState must be a Uint8Array/);
refuses('an empty cpuState', () => forged((t) => (t.cpuState = new Uint8Array())), /ends inside the magic/);
refuses('a truncated cpuState', () => forged((t) => (t.cpuState = t.cpuState.subarray(0, 200))), /ends inside a segment/);
refuses('a cpuState with a bad magic', () => cpu((v) => v.setUint32(0, 0x12345678, true)), /bad magic/);
refuses('a cpuState of a future version', () => cpu((v) => v.setUint32(4, 2, true)), /version 2/);
refuses('trailing bytes after the cpuState', () => forged((t) => (t.cpuState = new Uint8Array([...t.cpuState, 0]))), /trailing bytes/);
refuses('a blob length past the end', () => cpu((v) => v.setUint32(XSAVE, 0xfffff, true)), /XSAVE area is longer/);
refuses('a huge blob length', () => cpu((v) => v.setUint32(XSAVE, 0xffffffff, true)), /XSAVE area is longer/);
refuses('SYSCALL enabled (EFER.SCE)', () => cpu((v) => v.setUint8(EFER, v.getUint8(EFER) | 1)), /EFER/);
refuses('another page-table root', () => cpu((v) => v.setBigUint64(CR3, 0x5000n, true)), /CR0\/CR3\/CR4/);
refuses('a ring-0 code segment', () => cpu((v) => v.setUint8(CS + 16, 0)), /CS is not the ring-3 code segment/);
refuses('a ring-0 stack segment', () => cpu((v) => v.setUint16(SS + 12, 0x10, true)), /SS is not/);
refuses('a forged TSS', () => cpu((v) => v.setBigUint64(TR, 0x200000n, true)), /TR is not the host's TSS/);
refuses('an LDT in guest memory', () => cpu((v) => v.setBigUint64(LDT, 0x400000n, true)), /LDT/);
refuses('a kernel data selector', () => cpu((v) => v.setUint16(DS + 12, 0x10, true)), /data segment selector 0x10/);
refuses('an IDT', () => cpu((v) => v.setUint16(TABLES + 18, 0xfff, true)), /GDT\/IDT/);
refuses('a pending interrupt', () => cpu((_v, b) => (b[INTERRUPTS + 4 + 3] = 1)), /interrupts are pending/);
refuses('interrupts enabled', () => cpu((v) => v.setBigUint64(RFLAGS, v.getBigUint64(RFLAGS, true) | 0x200n, true)), /RFLAGS/);
// XSTATE_BV (byte 512 of the area) naming every component, most of which no CPU has.
refuses('an XSAVE area the hypervisor rejects', () => cpu((_v, b) => b.fill(0xff, XSAVE + 4 + 512, XSAVE + 4 + 520)), /hypervisor refuses its XSAVE area/);
refuses('memory that is not an array', () => forged((t) => (t.memory = {})), /memory must be an array/);
refuses('a range that is not an object', () => forged((t) => (t.memory[0] = 5)), /memory\[0\] must be an object/);
refuses('a range offset that is not an integer', () => forged((t) => (t.memory[0].offset = -4096)), /memory\[0\].offset must be a non-negative integer/);
refuses('range bytes of another type', () => forged((t) => (t.memory[0].bytes = 'x')), /memory\[0\].bytes must be a Uint8Array/);
refuses('a range over the host-built system region', () => forged((t) => t.memory.unshift({ offset: 0x1000, bytes: new Uint8Array(8) })), /memory\[0\]: offset 0x1000 is below/);
refuses('a range over the code', () => forged((t) => t.memory.unshift({ offset: abi.AIRLOCK_IMAGE_BASE, bytes: new Uint8Array(8) })), /is below the guest's writable memory/);
refuses('overlapping ranges', () => forged((t) => t.memory.push({ offset: t.memory[0].offset, bytes: new Uint8Array(8) })), /overlaps or precedes/);
refuses('a range past the guest memory', () => forged((t) => t.memory.push({ offset: 2 ** 40, bytes: new Uint8Array(8) })), /ends past the guest memory/);

describeKvm('KVM template import (hostile input)', () => {
  it('imports the untouched export', () => {
    const t = kvmTemplateSupport.importTemplate(good);
    t.release();
  });

  for (let i = 0; i < cases.length; i++) {
    it(`refuses ${cases[i][0]}`, () => {
      let thrown: unknown;
      try {
        kvmTemplateSupport.importTemplate(cases[i][1]).release();
      } catch (e) {
        thrown = e;
      }
      expect(thrown, 'accepted').toBeDefined();
      expect((thrown as { code?: string }).code).toBe('ERR_INVALID_ARG');
      expect((thrown as Error).message).toMatch(cases[i][2]);
    });
  }

  it('refuses a range over the stack guard', () => {
    // The guard is the 2 MiB below the stack: find it from the first range at or above
    // the stack (the stack top is resident), knowing the layout's order.
    const ranges = good.memory;
    const top = ranges[ranges.length - 1].offset;
    let thrown: unknown;
    for (let guard = top - (top % (2 * MiB)); guard > 0 && !thrown; guard -= 2 * MiB) {
      try {
        kvmTemplateSupport.importTemplate(forged((t) => (t.memory = [{ offset: guard, bytes: new Uint8Array(8) }]))).release();
      } catch (e) {
        if (/stack guard/.test((e as Error).message)) thrown = e;
      }
    }
    expect((thrown as { code?: string })?.code).toBe('ERR_INVALID_ARG');
  });

  it('takes nothing below the writable memory from the input: a clone of an import runs the host-built code', async () => {
    const imported = kvmTemplateSupport.importTemplate(good);
    const clone = kvmTemplateSupport.clone(imported, async () => new Uint8Array());
    try {
      const out = decodeMessages(Buffer.from((await clone.exchange(encodeMessage(abi.AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', 'function handler(){return 7}']))).output));
      expect(out[out.length - 1].status).toBe(abi.AIRLOCK_STATUS_OK);
    } finally {
      await clone.dispose();
      imported.release();
    }
  });
});
