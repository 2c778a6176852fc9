// memory-protection.test.ts — the guest cannot rewrite its own code (which restore()
// would not undo) or execute its data: slots below data_start are mapped read-only and
// the others no-execute. Checked with a raw image whose data starts one 2 MiB slot
// after its code, as the real image is linked (guest/platform/kvm/image.ld).
import { afterEach, describe, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { defaultConfig, loadAddon, rejection, type NativeVm } from './raw-guest.js';

const BASE = abi.AIRLOCK_IMAGE_BASE; // 0x200000: code slot
const DATA = BASE + abi.AIRLOCK_HUGE_PAGE_SIZE; // 0x400000: data slot
const CONTROL = DATA + 0x1000; // 0x401000, in bss

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
// mov dx, 0x3a1; mov dword [CONTROL+112], 0; mov eax, 1; out dx, eax   (boot answers)
const BOOT = '66baa103 c7042570104000 00000000 b801000000 ef';
// mov eax, 1; out dx, eax   (answer the request, empty output)
const ANSWER = 'b801000000 ef';

function image(code: string, dataBytes = ''): Buffer {
  const fileEnd = DATA + 0x1000;
  const img = Buffer.alloc(fileEnd - BASE);
  img.writeUInt32LE(abi.AIRLOCK_IMAGE_MAGIC, abi.AIRLOCK_IMG_OFF_MAGIC);
  img.writeUInt32LE(abi.AIRLOCK_ABI_VERSION, abi.AIRLOCK_IMG_OFF_ABI_VERSION);
  img.writeBigUInt64LE(BigInt(BASE), abi.AIRLOCK_IMG_OFF_LOAD_ADDR);
  img.writeBigUInt64LE(BigInt(BASE + abi.AIRLOCK_IMG_HEADER_SIZE), abi.AIRLOCK_IMG_OFF_ENTRY);
  img.writeBigUInt64LE(BigInt(fileEnd), abi.AIRLOCK_IMG_OFF_FILE_END);
  img.writeBigUInt64LE(BigInt(CONTROL + 0x1000), abi.AIRLOCK_IMG_OFF_BSS_END);
  img.writeBigUInt64LE(BigInt(DATA), abi.AIRLOCK_IMG_OFF_DATA_START);
  img.writeBigUInt64LE(BigInt(CONTROL), abi.AIRLOCK_IMG_OFF_CONTROL);
  img.writeBigUInt64LE(BigInt(DATA + 0x800), abi.AIRLOCK_IMG_OFF_TLS_BLOCK);
  hex(code).copy(img, abi.AIRLOCK_IMG_HEADER_SIZE);
  hex(dataBytes).copy(img, DATA - BASE);
  return img;
}

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});

/** Boots `img` and sends one request; resolves with that request's outcome. */
async function run(img: Buffer): Promise<{ outcome: Promise<unknown> }> {
  const vm = new (loadAddon().Vm)(img, defaultConfig, () => {});
  live.push(vm);
  await vm.boot();
  return { outcome: vm.send(Buffer.from('go')) };
}

describeKvm('host addon: guest memory protection', () => {
  it('faults a write to the guest code slot (ERR_GUEST_ABORT)', async () => {
    // mov byte [BASE+0x40], 0x90
    const err = await rejection((await run(image(`${BOOT} c6042540002000 90 ${ANSWER}`))).outcome);
    expect(err.code).toBe('ERR_GUEST_ABORT');
    expect(err.message).toMatch(/shutdown .* at RIP 0x20005/);
  });

  it('faults a jump into the data slot (no-execute)', async () => {
    // mov eax, DATA; jmp rax — where DATA holds "mov eax,1; out dx,eax"
    const err = await rejection((await run(image(`${BOOT} b800004000 ffe0`, ANSWER))).outcome);
    expect(err.code).toBe('ERR_GUEST_ABORT');
    expect(err.message).toMatch(/at RIP 0x400000/);
  });

  it('lets the guest write its data slot and then answers', async () => {
    // mov byte [DATA], 1; then the answer. The outcome is the answer's (empty) output.
    const r = (await (await run(image(`${BOOT} c6042500004000 01 ${ANSWER}`))).outcome) as { output: Buffer };
    expect(r.output.length).toBe(0);
  });

  describe('the real guest image', () => {
    // The real image with its entry point overwritten by a raw program: its own header,
    // data, bss and control block stay, so the test checks the mapping the host gives
    // the image it really ships, not a stand-in.
    async function realImageRunning(program: (control: number, dataStart: number) => string) {
      const { kvmGuestImage } = await import('../../src/engine/kvm-engine.js');
      const img = Buffer.from(kvmGuestImage());
      const entry = Number(img.readBigUInt64LE(abi.AIRLOCK_IMG_OFF_ENTRY));
      const control = Number(img.readBigUInt64LE(abi.AIRLOCK_IMG_OFF_CONTROL));
      const dataStart = Number(img.readBigUInt64LE(abi.AIRLOCK_IMG_OFF_DATA_START));
      hex(program(control, dataStart)).copy(img, entry - BASE);
      return { ...(await run(img)), entry, dataStart };
    }
    const le32 = (v: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(v);
      return b.toString('hex');
    };
    // mov dx, 0x3a1; mov dword [control+112], 0; mov eax, 1; out dx, eax
    const boot = (control: number) => `66baa103 c70425${le32(control + abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN)} 00000000 b801000000 ef`;

    it('starts its data on a 2 MiB slot of its own, which the guest may write', async () => {
      // mov byte [data_start], 1; answer
      const { outcome, dataStart } = await realImageRunning((c, d) => `${boot(c)} c60425${le32(d)} 01 ${ANSWER}`);
      expect(dataStart % abi.AIRLOCK_HUGE_PAGE_SIZE).toBe(0);
      expect(((await outcome) as { output: Buffer }).output.length).toBe(0);
    });

    it('maps its code read-only: a write to it aborts the guest', async () => {
      // mov byte [load_addr + 0x40], 0x90
      const { outcome } = await realImageRunning((c) => `${boot(c)} c60425${le32(BASE + 0x40)} 90 ${ANSWER}`);
      const err = await rejection(outcome);
      expect(err.code).toBe('ERR_GUEST_ABORT');
      expect(err.message).toMatch(/shutdown/);
    });

    it('maps its data no-execute: a jump into it aborts the guest there', async () => {
      // mov eax, data_start; jmp rax
      const { outcome, dataStart } = await realImageRunning((c, d) => `${boot(c)} b8${le32(d)} ffe0`);
      const err = await rejection(outcome);
      expect(err.code).toBe('ERR_GUEST_ABORT');
      expect(err.message).toContain(`at RIP 0x${dataStart.toString(16)}`);
    });
  });
});
