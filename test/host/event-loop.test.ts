// event-loop.test.ts — the Node main thread never busy-waits for a guest: results and
// host calls reach JavaScript as turns of the event loop of their own, so a 1 ms
// interval keeps firing during back-to-back calls and during a guest that calls a
// host function in a loop (each HOST_CALL is its own macrotask, never dispatched
// synchronously from the previous answer). Counts firings, never times them; and
// checks the order of turns: a setImmediate queued when a request (or an answer to a
// host call) leaves always runs before the guest's reply reaches JavaScript.
import { expect, it } from 'vitest';
import { finalMessage, realGuestBooter, realImagePresent } from './real-guest-vms.js';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { encodeMessage, loadAddon, type NativeVm } from './raw-guest.js';
import { ticksDuring } from '../support/ticks.js';

const present = realImagePresent;
const final = finalMessage;
const boot = realGuestBooter();

async function call(vm: NativeVm, event: unknown, gc: boolean) {
  const r = await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, gc ? abi.AIRLOCK_CALL_FLAG_GC : 0, ['h', JSON.stringify(event)]));
  const m = final(r.output);
  expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  return JSON.parse(m.fields[0].toString()) as unknown;
}


describeKvm('the event loop keeps turning while guests work', () => {
  for (const gc of [true, false]) {
    it.skipIf(!present)(`a 1 ms interval fires during 2000 back-to-back calls (gc: ${gc})`, async () => {
      const vm = await boot('let n = 0; function handler(e) { n += 1; return n; }');
      let last = 0;
      let sameTurn = 0;
      const fired = await ticksDuring(async () => {
        for (let i = 0; i < 2000; i++) {
          let turned = false;
          setImmediate(() => {
            turned = true;
          });
          last = (await call(vm, {}, gc)) as number;
          if (!turned) sameTurn += 1;
        }
      });
      expect(last).toBe(2000);
      expect(sameTurn).toBe(0);
      expect(fired).toBeGreaterThanOrEqual(3);
    });
  }

  it.skipIf(!present)('a 1 ms interval fires during a storm of 2000 host calls answered at once', async () => {
    let vm!: NativeVm;
    let hostCalls = 0;
    let sameTurn = 0;
    let turned = true;
    vm = await boot(
      "import { twice } from 'host:m'; function handler(e) { let s = 0; for (let i = 0; i < e.k; i++) s += twice(i); return s; }",
      ['m', 'twice'],
      (out, id) => {
        hostCalls += 1;
        if (!turned) sameTurn += 1;
        turned = false;
        setImmediate(() => {
          turned = true;
        });
        const [x] = JSON.parse(final(out).fields[2].toString()) as number[];
        // Answered synchronously, inside the callback: the next HOST_CALL must still
        // wait for a later turn of the loop.
        vm.hostReturn(encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [String(2 * x)]), id);
      },
    );
    let value: unknown;
    const fired = await ticksDuring(async () => {
      value = await call(vm, { k: 2000 }, false);
    });
    expect(value).toBe(2 * ((1999 * 2000) / 2));
    expect(hostCalls).toBe(2000);
    expect(sameTurn).toBe(0);
    expect(fired).toBeGreaterThanOrEqual(3);
  });

  it.skipIf(!present)('two sandboxes called in a loop each keep the interval firing', async () => {
    const vms = await Promise.all([0, 1].map(() => boot('let n = 0; function handler(e) { n += 1; return n; }')));
    const fired = await ticksDuring(async () => {
      await Promise.all(
        vms.map(async (vm) => {
          for (let i = 0; i < 1000; i++) await call(vm, {}, false);
        }),
      );
    });
    expect(fired).toBeGreaterThanOrEqual(3);
  });

  it.skipIf(!present)('the busy-wait budget measured the exit floor, and disposed guests hold no polling slot', async () => {
    const vm = await boot('function handler(e) { return e; }');
    for (let i = 0; i < 50; i++) await call(vm, i, false);
    const budget = loadAddon().pollingBudget();
    expect(budget.exitFloorUs).toBeGreaterThan(0);
    expect(budget.cap).toBeGreaterThanOrEqual(0);
    await vm.dispose();
    expect(loadAddon().pollingBudget().polling).toBe(0);
  });
});
