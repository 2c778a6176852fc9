// call-path-counters.test.ts — pollingBudget().counters (host/src/call_path_counters.h)
// count every exchange on exactly one path: each request is handed over in memory or
// posted to the mailbox, each answer taken from memory, by an exit or at a park, and
// each host call taken from memory or made with an exit, whichever path the timing
// chose; a disposed sandbox's counts stay (they are process-wide totals).
import { expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { finalMessage, realGuestBooter, realImagePresent } from './real-guest-vms.js';
import { encodeMessage, loadAddon, type NativeVm } from './raw-guest.js';

// One slot whatever this machine's load (read when the addon loads): both paths occur.
process.env.AIRLOCK_KVM_POLLERS = '1';

const boot = realGuestBooter();
const counters = () => loadAddon().pollingBudget().counters;
const delta = (after: Record<string, number>, before: Record<string, number>, ...names: string[]) =>
  names.reduce((sum, n) => sum + (after[n] - before[n]), 0);

async function call(vm: NativeVm, event: unknown) {
  const m = finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', JSON.stringify(event)]))).output);
  expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  return JSON.parse(m.fields[0].toString()) as unknown;
}

describeKvm('call-path counters', () => {
  it.skipIf(!realImagePresent)('count each request, answer and host call on exactly one path', async () => {
    let vm!: NativeVm;
    vm = await boot(
      "import { twice } from 'host:m'; function handler(e) { let s = 0; for (let i = 0; i < e.k; i++) s += twice(i); return s; }",
      ['m', 'twice'],
      (out, id) => {
        const [x] = JSON.parse(finalMessage(out).fields[2].toString()) as number[];
        vm.hostReturn(encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [String(2 * x)]), id);
      },
    );
    const before = counters();
    const calls = 300;
    for (let i = 0; i < calls; i++) expect(await call(vm, { k: i % 3 })).toBe([0, 0, 2][i % 3]);
    // The last answer may still be claimed by the watcher a moment after the event: a
    // turn of the event loop later it has been counted.
    await new Promise((r) => setTimeout(r, 5));
    const after = counters();
    expect(delta(after, before, 'requestsInMemoryWatched', 'requestsInMemoryExit', 'requestsMailbox')).toBe(calls);
    expect(delta(after, before, 'answersInMemory', 'answersByExit', 'answersAtPark')).toBe(calls);
    const hostCalls = Array.from({ length: calls }, (_, i) => i % 3).reduce((a, b) => a + b, 0);
    expect(delta(after, before, 'hostCallsInMemory', 'hostCallsByExit')).toBe(hostCalls);
    expect(delta(after, before, 'requestsMissedPoll')).toBeLessThanOrEqual(delta(after, before, 'requestsMailbox'));
    await vm.dispose();
    expect(counters().requestsMailbox).toBeGreaterThanOrEqual(after.requestsMailbox);
  });
});
