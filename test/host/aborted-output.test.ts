// aborted-output.test.ts — hostile guest: what the host reads from a guest that aborts or
// breaks down mid-request (the console lines of an ERR_GUEST_ABORT call). As for a
// stopped call, response_len is a claim: the host copies at most the output buffer,
// nothing for a larger claim, only the leading CONSOLE messages that lie within it (an
// ABORT message, after them or alone at the start, is not copied), and src/ decodes the
// bytes as hostile.
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
/** How the guest ends the request: an ABORT exit (mov eax, 3; out dx, eax), a triple
 *  fault (ud2 with no IDT), or an out to another port (mov dx, 0x80; out dx, al). */
const ENDINGS = { abort: 'b803000000 ef', 'triple fault': '0f0b', 'bad port': '66ba8000 ee' };
type Ending = keyof typeof ENDINGS;
/** Boot answers; the first request is copied to the output (response_len = its length). */
const copyThen = (end: Ending) => hex(`${BOOT_ANSWERS} ${COPY_INPUT_TO_OUTPUT} ${ENDINGS[end]}`);
/** Boot answers; the request is copied, response_len is set to `claim`, then the end. */
const copyClaimThen = (claim: number, end: Ending) =>
  hex(`${BOOT_ANSWERS} ${COPY_INPUT_TO_OUTPUT} c7042570104000 ${u32(claim)} ${ENDINGS[end]}`);
/** Boot answers; the first request is answered with itself (RESPONSE); the guest
 *  aborts on the next one without touching its output or response_len. */
const answerOnceThenAbort = hex(`${BOOT_ANSWERS} ${COPY_INPUT_TO_OUTPUT} b801000000 ef b803000000 ef`);

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

const line = (level: string, text: string) => encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, [level, text]);
const lines = (bytes: unknown) => (bytes ? consoleBeforeStop(bytes as Buffer).map((x) => [x.level, x.text.toString()]) : []);

describeKvm('hostile guest: the output of an aborted request', () => {
  for (const end of Object.keys(ENDINGS) as Ending[]) {
    it(`copies the console lines written before ${end === 'abort' ? 'an abort' : `a ${end}`}`, async () => {
      const vm = await bootVm(copyThen(end));
      const written = Buffer.concat([line('log', 'one'), line('warn', 'two')]);
      const request = end === 'abort' ? Buffer.concat([written, encodeMessage(abi.AIRLOCK_MSG_ABORT, 0, ['out of luck'])]) : written;
      const e = await rejection(vm.send(request));
      expect(e.code).toBe('ERR_GUEST_ABORT');
      if (end === 'abort') expect(e.message).toBe('guest aborted: out of luck');
      // Only the lines: the ABORT message after them is not console output.
      expect(Buffer.compare(e.output as Buffer, written)).toBe(0);
      expect(lines(e.output)).toEqual([
        ['log', 'one'],
        ['warn', 'two'],
      ]);
      expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
    });
  }

  it('copies nothing for an ABORT message at the start of the output, and still reads its text', async () => {
    const vm = await bootVm(copyThen('abort'));
    const e = await rejection(vm.send(Buffer.concat([encodeMessage(abi.AIRLOCK_MSG_ABORT, 0, ['alone']), line('log', 'after')])));
    expect(e.code).toBe('ERR_GUEST_ABORT');
    expect(e.message).toBe('guest aborted: alone');
    expect(e.output).toBeUndefined();
  });

  it('a response_len past the output buffer gives no output, whatever its size', async () => {
    for (const claim of [0xffff_ffff, defaultConfig.outputSize + 1, 0x8000_0000]) {
      for (const end of ['abort', 'triple fault'] as const) {
        const vm = await bootVm(copyClaimThen(claim, end));
        const e = await rejection(vm.send(line('log', 'not read')));
        expect(e.code).toBe('ERR_GUEST_ABORT');
        expect(e.output).toBeUndefined();
      }
    }
  });

  it('a response_len of exactly the output buffer is read within it', async () => {
    const vm = await bootVm(copyClaimThen(defaultConfig.outputSize, 'triple fault'));
    const e = await rejection(vm.send(line('log', 'in front of zeros')));
    expect(e.code).toBe('ERR_GUEST_ABORT');
    expect(lines(e.output)).toEqual([['log', 'in front of zeros']]);
  });

  it('forged lengths end the lines: only well-formed ones within the published bytes decode', async () => {
    const overrun = line('log', 'lost');
    overrun.writeUInt32LE(0x7fff_ffff, 8); // the header's body length
    const forgedField = line('warn', 'cut');
    forgedField.writeUInt32LE(0x7fff_ffff, abi.AIRLOCK_MSG_HEADER_SIZE);
    for (const bad of [overrun, forgedField]) {
      const vm = await bootVm(copyThen('abort'));
      const e = await rejection(vm.send(Buffer.concat([line('log', 'kept'), bad, line('log', 'after')])));
      expect(e.code).toBe('ERR_GUEST_ABORT');
      expect(lines(e.output)).toEqual([['log', 'kept']]);
    }
  });

  it('lines followed by a HOST_CALL are not copied: they went out with it', async () => {
    const vm = await bootVm(copyThen('triple fault'));
    const hostCall = encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, ['m', 'f', '[]']);
    const e = await rejection(vm.send(Buffer.concat([line('log', 'sent with the host call'), hostCall])));
    expect(e.code).toBe('ERR_GUEST_ABORT');
    expect(e.output).toBeUndefined();
  });

  it('an abort before the guest wrote anything carries nothing of the last answer', async () => {
    const vm = await bootVm(answerOnceThenAbort);
    const answered = line('log', 'an answered line');
    expect(Buffer.compare((await vm.send(answered)).output, answered)).toBe(0);
    const e = await rejection(vm.send(Buffer.from('x')));
    expect(e.code).toBe('ERR_GUEST_ABORT');
    expect(e.output).toBeUndefined();
  });
});
