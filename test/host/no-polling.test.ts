// no-polling.test.ts — the call path with busy-waiting off (AIRLOCK_KVM_POLLERS=0, what
// the budget decides on one core, on a busy host or where exits are cheap): every
// request enters a parked guest and is answered with one exit, nothing spins, and
// calls, host calls, kill and snapshot/restore behave as with polling. Also: the
// removed main-thread spin option is refused, not ignored.
import { expect, it } from 'vitest';
import { finalMessage, realGuestBooter, realImagePresent } from './real-guest-vms.js';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { buildImage, defaultConfig, encodeMessage, loadAddon, programs, rejection, type NativeVm } from './raw-guest.js';

// Read when the addon loads (lazily, in the first test of this file's process).
process.env.AIRLOCK_KVM_POLLERS = '0';

const present = realImagePresent;
const final = finalMessage;
const boot = realGuestBooter();

const callMessage = (event: unknown, gc: boolean) =>
  encodeMessage(abi.AIRLOCK_MSG_CALL, gc ? abi.AIRLOCK_CALL_FLAG_GC : 0, ['h', JSON.stringify(event)]);

async function call(vm: NativeVm, event: unknown, gc = false) {
  const m = final((await vm.send(callMessage(event, gc))).output);
  expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  return JSON.parse(m.fields[0].toString()) as unknown;
}

describeKvm('call path with busy-waiting off', () => {
  it.skipIf(!present)('answers calls with and without GC, and no guest ever holds a polling slot', async () => {
    const vm = await boot('let n = 0; function handler(e) { n += 1; return { n, e }; }');
    const before = loadAddon().pollingBudget().counters;
    for (let i = 1; i <= 300; i++) {
      expect(await call(vm, i, i % 2 === 0)).toEqual({ n: i, e: i });
      expect(loadAddon().pollingBudget()).toMatchObject({ cap: 0, polling: 0 });
    }
    // Back-to-back calls never probe a window that no core could serve (poll_window.h).
    expect(loadAddon().pollingBudget().counters.windowProbes - before.windowProbes).toBe(0);
  });

  it.skipIf(!present)('serves host calls answered at once and later', async () => {
    let vm!: NativeVm;
    vm = await boot(
      "import { twice } from 'host:m'; function handler(e) { let s = 0; for (let i = 0; i < e.k; i++) s += twice(i); return s; }",
      ['m', 'twice'],
      (out, id) => {
        const [x] = JSON.parse(final(out).fields[2].toString()) as number[];
        const reply = encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [String(2 * x)]);
        if (x % 2) setTimeout(() => vm.hostReturn(reply, id), 1);
        else vm.hostReturn(reply, id);
      },
    );
    for (let r = 0; r < 10; r++) expect(await call(vm, { k: 20 })).toBe(380);
  });

  it.skipIf(!present)('kill stops a runaway call; restore brings the sandbox back', async () => {
    const vm = await boot('let n = 0; function handler(e) { if (e.spin) { for (;;) {} } return ++n; }');
    expect(await call(vm, {})).toBe(1);
    const snap = await vm.snapshot();
    const running = vm.send(callMessage({ spin: true }, false));
    setTimeout(() => vm.kill(), 20);
    const err = await rejection(running);
    expect(err.code).toBe('ERR_CANCELLED');
    expect(err.terminatedBy).toBe('kill');
    await vm.restore(snap);
    expect(await call(vm, {})).toBe(2);
  });
});

describeKvm('the removed main-thread spin option', () => {
  it('is refused with ERR_INVALID_ARG', () => {
    let code: unknown;
    try {
      new (loadAddon().Vm)(buildImage(programs.echo), { ...defaultConfig, mainSpinUs: 0 } as typeof defaultConfig, () => {});
    } catch (e) {
      code = (e as { code?: unknown }).code;
    }
    expect(code).toBe('ERR_INVALID_ARG');
  });
});
