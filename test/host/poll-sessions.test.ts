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

// The caller: a long window, so a guest that may poll is still polling when the test
// looks. The busy sandbox never polls, so the one slot can only be the caller's (a
// guest given a request in memory keeps its slot while it runs it).
const boot = realGuestBooter({ ...realGuestConfig, guestPollUs: 10_000 });
const bootNeverPolling = realGuestBooter({ ...realGuestConfig, guestPollUs: 0 });
// The busy call reports through a host call that it runs, then runs for busyMs of wall time.
const HANDLER =
  "import { started } from 'host:m';\n" +
  'function handler(e) { if (e.busyMs) { started(); const t = Date.now(); while (Date.now() - t < e.busyMs) {} } return e.n; }';
const BUSY_MS = 600;
// The busy call's session is surely still running this long after it reported: the
// rest of BUSY_MS is the margin for a loaded machine.
const OBSERVE_MS = 200;

async function call(vm: NativeVm, event: { n: number; busyMs?: number }) {
  const m = finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', JSON.stringify(event)]))).output);
  expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  expect(JSON.parse(m.fields[0].toString())).toBe(event.n);
}

describeKvm('polling slots and running guests', () => {
  it.skipIf(!realImagePresent)('gives no slot while another guest runs a call, and one when the guest runs alone', async () => {
    let startedAt = 0;
    let onStarted = () => {};
    const startedNow = new Promise<void>((r) => (onStarted = r));
    let busy!: NativeVm;
    busy = await bootNeverPolling(HANDLER, ['m', 'started'], (_out, id) => {
      startedAt = performance.now();
      onStarted();
      busy.hostReturn(encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, ['null']), id);
    });
    const caller = await boot(HANDLER, ['m', 'started']);
    const long = call(busy, { n: -1, busyMs: BUSY_MS });
    await startedNow;
    let observed = 0;
    for (let i = 0; performance.now() - startedAt < OBSERVE_MS; i++) {
      await call(caller, { n: i });
      // The caller's guest answered while the busy guest ran: it holds no slot.
      if (performance.now() - startedAt < OBSERVE_MS) {
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
