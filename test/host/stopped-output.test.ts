// stopped-output.test.ts — hostile guest: what the host reads from a guest it stopped
// mid-request (the console lines of a cancelled call). The guest's response_len is a
// claim: the host copies at most the output buffer, nothing for a larger claim, only
// the leading CONSOLE messages that lie within it, never the previous request's
// output, and src/ decodes the bytes as hostile.
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { consoleBeforeStop } from '../../src/engine/protocol.js';
import { describeKvm } from '../support/kvm.js';
import { buildImage, defaultConfig, encodeMessage, loadAddon, rejection, type NativeVm } from './raw-guest.js';

const hex = (h: string) => Buffer.from(h.replace(/\s+/g, ''), 'hex');
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b.toString('hex');
};

// Assembled with C = 0x401000 (the control block), PORT = AIRLOCK_PORT (0x3a1), as in
// raw-guest.ts. Boot: mov dx, PORT; mov dword [C+112], 0; mov eax, 1; out dx, eax.
const BOOT_ANSWERS = '66baa103 c7042570104000 00000000 b801000000 ef';
// mov rsi,[C+8]; mov rdi,[C+24]; mov ecx,[C+104]; mov [C+112],ecx; rep movsb
const COPY_INPUT_TO_OUTPUT = '488b342508104000 488b3c2518104000 8b0c2568104000 890c2570104000 f3a4';
/** Boot answers; the first request sets response_len to `claim` and spins (jmp $). */
const claimThenSpin = (claim: number) => hex(`${BOOT_ANSWERS} c7042570104000 ${u32(claim)} ebfe`);
/** Boot answers; the first request is copied to the output (response_len = its
 *  length), then the guest spins. */
const copyThenSpin = hex(`${BOOT_ANSWERS} ${COPY_INPUT_TO_OUTPUT} ebfe`);
/** Boot answers; each request is answered with itself (a RESPONSE exit), except that
 *  the second one spins without writing anything: mov dx, PORT; copy; out (RESPONSE);
 *  copy-less spin on the next request. */
const answerOnceThenSpin = hex(`${BOOT_ANSWERS} ${COPY_INPUT_TO_OUTPUT} b801000000 ef ebfe`);

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});

async function bootVm(code: Buffer): Promise<NativeVm> {
  const vm = new (loadAddon().Vm)(buildImage(code), defaultConfig, () => {});
  live.push(vm);
  await vm.boot();
  return vm;
}

describeKvm('hostile guest: the output of a stopped request', () => {
  it('a response_len past the output buffer gives no output, whatever its size', async () => {
    for (const claim of [0xffff_ffff, defaultConfig.outputSize + 1, 0x8000_0000]) {
      const vm = await bootVm(claimThenSpin(claim));
      const e = await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 30 }));
      expect(e.code).toBe('ERR_CANCELLED');
      expect(e.output).toBeUndefined();
    }
  });

  it('a response_len of exactly the output buffer is read within it, and zeros give no line', async () => {
    const vm = await bootVm(claimThenSpin(defaultConfig.outputSize));
    const e = await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 30 }));
    expect(e.code).toBe('ERR_CANCELLED');
    expect(e.output).toBeUndefined();
  });

  it('console messages are copied up to one whose length overruns the published bytes', async () => {
    const vm = await bootVm(copyThenSpin);
    const line = encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['log', 'kept']);
    const overrun = encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['log', 'lost']);
    overrun.writeUInt32LE(0x7fff_ffff, 8); // the header's body length
    const e = await rejection(vm.send(Buffer.concat([line, overrun, line]), { wallClockTimeoutMs: 30 }));
    expect(e.code).toBe('ERR_CANCELLED');
    expect(Buffer.compare(e.output as Buffer, line)).toBe(0);
  });

  it('lines followed by a HOST_CALL are not copied: they went out with it', async () => {
    const vm = await bootVm(copyThenSpin);
    const line = encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['log', 'sent with the host call']);
    const hostCall = encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, ['m', 'f', '[]']);
    const e = await rejection(vm.send(Buffer.concat([line, hostCall]), { wallClockTimeoutMs: 30 }));
    expect(e.code).toBe('ERR_CANCELLED');
    expect(e.output).toBeUndefined();
  });

  it('the published bytes reach the rejection as they are, and decode only as far as they are well-formed', async () => {
    const vm = await bootVm(copyThenSpin);
    const line = encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['log', 'written before the stop']);
    // A console line, then one whose field claims more bytes than the output holds.
    const forged = encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['warn', 'cut']);
    forged.writeUInt32LE(0x7fff_ffff, abi.AIRLOCK_MSG_HEADER_SIZE);
    const request = Buffer.concat([line, forged]);
    const e = await rejection(vm.send(request, { wallClockTimeoutMs: 30 }));
    expect(e.code).toBe('ERR_CANCELLED');
    expect(Buffer.compare(e.output as Buffer, request)).toBe(0);
    const entries = consoleBeforeStop(e.output as Buffer);
    expect(entries.map((x) => [x.level, x.text.toString()])).toEqual([['log', 'written before the stop']]);
  });

  it('a request stopped before the guest wrote anything carries nothing of the last answer', async () => {
    const vm = await bootVm(answerOnceThenSpin);
    const line = encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['log', 'an answered line']);
    const answered = await vm.send(line);
    expect(Buffer.compare(answered.output, line)).toBe(0);
    const e = await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 30 }));
    expect(e.code).toBe('ERR_CANCELLED');
    expect(e.output).toBeUndefined();
  });
});
