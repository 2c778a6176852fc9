// sleep-steps.ts — guest outputs that look like the event loop's `airlock:loop` `sleep`
// step but are not a well-formed lone one. Both tiers' sleep servers (the KVM runner's
// loop_wait.cc and the WebAssembly worker's loop-sleep.ts) must leave each of them to
// the main thread, which judges (and poisons) it: one list, so the tiers cannot drift.
import * as abi from '../../src/engine/abi.generated.js';
import { encodeMessage } from '../../src/engine/protocol.js';

export const sleepStep = (name: string, args: string, module = 'airlock:loop') => encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, [module, name, args]);
export const consoleLine = (text: string) => encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['log', text]);

export const forgedSleepSteps: readonly [string, Buffer][] = [
  ['a wait step', sleepStep('wait', '[1]')],
  ['another module', sleepStep('sleep', '[1]', 'airlock:loopx')],
  ['a negative delay', sleepStep('sleep', '[-1]')],
  ['a delay that is a string', sleepStep('sleep', '["5"]')],
  ['a delay past a double', sleepStep('sleep', '[1e999]')],
  ['a hexadecimal delay', sleepStep('sleep', '[0x10]')],
  ['an infinite delay', sleepStep('sleep', '[Infinity]')],
  ['three arguments', sleepStep('sleep', '[1,2,3]')],
  ['an instant that is a string', sleepStep('sleep', '[1,"2"]')],
  ['a negative instant', sleepStep('sleep', '[1,-2]')],
  ['an empty instant', sleepStep('sleep', '[1,]')],
  ['no argument', sleepStep('sleep', '[]')],
  ['an unbracketed delay', sleepStep('sleep', '1')],
  ['a delay longer than any number', sleepStep('sleep', `[${'1'.repeat(40)}]`)],
  ['a fourth field', encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, ['airlock:loop', 'sleep', '[1]', 'x'])],
  ['console lines before it', Buffer.concat([consoleLine('printed first'), sleepStep('sleep', '[1]')])],
  ['bytes after it', Buffer.concat([sleepStep('sleep', '[1]'), Buffer.from('tail')])],
  [
    'a field overrunning its message',
    (() => {
      const m = sleepStep('sleep', '[1]');
      m.writeUInt32LE(0x7fff_ffff, abi.AIRLOCK_MSG_HEADER_SIZE);
      return m;
    })(),
  ],
];

/** What a sleep server answers a served sleep with: a HOST_RETURN with no completions. */
export const servedSleepReply = encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, ['[]']);
