// poll-sessions.test.ts — a guest polls only while no more guests run than the budget
// has cores for (host/src/core_budget.h): with one polling slot, a sandbox answering
// while another sandbox's guest runs a call takes an exit and parks instead of
// holding a core that the other guest's thread needs; alone, it polls.
import { expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { finalMessage, realGuestBooter, realGuestConfig, realImagePresent } from './real-guest-vms.js';
import { encodeMessage, loadAddon, type NativeVm } from './raw-guest.js';

// One slot whatever this machine's load (read when the addon loads).
process.env.AIRLOCK_KVM_POLLERS = '1';

// A long window, so a guest that may poll is still polling when the test looks.
const boot = realGuestBooter({ ...realGuestConfig, guestPollUs: 10_000 });
const HANDLER = 'function handler(e) { if (e.busyMs) { const t = Date.now(); while (Date.now() - t < e.busyMs) {} } return e.n; }';

async function call(vm: NativeVm, event: { n: number; busyMs?: number }) {
  const m = finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', JSON.stringify(event)]))).output);
  expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  expect(JSON.parse(m.fields[0].toString())).toBe(event.n);
}

describeKvm('polling slots and running guests', () => {
  it.skipIf(!realImagePresent)('gives no slot while another guest runs a call, and one when the guest runs alone', async () => {
    const busy = await boot(HANDLER);
    const caller = await boot(HANDLER);
    let running = true;
    const long = call(busy, { n: -1, busyMs: 400 }).finally(() => {
      running = false;
    });
    // Let the busy guest's call start before looking.
    await new Promise((r) => setTimeout(r, 20));
    let observed = 0;
    for (let i = 0; running && i < 2000; i++) {
      await call(caller, { n: i });
      if (running) {
        expect(loadAddon().pollingBudget().polling).toBe(0);
        observed++;
      }
    }
    await long;
    expect(observed).toBeGreaterThan(0);
    // Alone, the same sandbox is given the slot and polls after answering.
    let polled = false;
    for (let i = 0; i < 200 && !polled; i++) {
      await call(caller, { n: i });
      polled = loadAddon().pollingBudget().polling === 1;
    }
    expect(polled).toBe(true);
  });
});
