// timers-sleep-step.test.ts — which guest outputs the WebAssembly worker takes as a
// timer sleep of its own (src/engine/wasm/loop-sleep.ts): a lone, well-formed
// `airlock:loop` `sleep` step, by the rules host/src/loop_wait.cc applies on KVM
// (test/host/loop-sleep.test.ts); every other output goes to the main thread as it came.
import { describe, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { encodeMessage } from '../../src/engine/protocol.js';
import { loopSleepStep } from '../../src/engine/wasm/loop-sleep.js';
import { forgedSleepSteps } from '../support/sleep-steps.js';

const step = (name: string, args: string, module = 'airlock:loop') => encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, [module, name, args]);
const line = (text: string) => encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['log', text]);
const parse = (out: Buffer) => loopSleepStep(out, out.length);

describe('the WebAssembly worker\'s timer sleep step', () => {
  it('takes a lone sleep step with one or two plain numbers from 0 up', () => {
    expect(parse(step('sleep', '[0]'))).toEqual({ delayMs: 0, atMs: undefined });
    expect(parse(step('sleep', '[0.25]'))).toEqual({ delayMs: 0.25, atMs: undefined });
    expect(parse(step('sleep', '[1.5e-3]'))).toEqual({ delayMs: 1.5e-3, atMs: undefined });
    expect(parse(step('sleep', '[3E0]'))).toEqual({ delayMs: 3, atMs: undefined });
    expect(parse(step('sleep', '[2,123456.789]'))).toEqual({ delayMs: 2, atMs: 123456.789 });
    expect(parse(step('sleep', '[2,1e300]'))).toEqual({ delayMs: 2, atMs: 1e300 });
  });

  it('reads only the bytes the guest published', () => {
    const out = Buffer.concat([step('sleep', '[1]'), Buffer.from('stale bytes of an earlier turn')]);
    expect(parse(out)).toBeUndefined();
    expect(loopSleepStep(out, step('sleep', '[1]').length)).toEqual({ delayMs: 1, atMs: undefined });
    expect(loopSleepStep(out, out.length + 1)).toBeUndefined();
  });

  const handedOver: [string, Buffer][] = [
    ...forgedSleepSteps,
    ['a delay with spaces', step('sleep', '[ 1]')],
    ['a truncated header', step('sleep', '[1]').subarray(0, abi.AIRLOCK_MSG_HEADER_SIZE - 1)],
  ];
  for (const [what, output] of handedOver) {
    it(`leaves ${what} to the main thread`, () => {
      expect(parse(output)).toBeUndefined();
    });
  }
});
