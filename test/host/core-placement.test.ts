// core-placement.test.ts — the busy-wait budget follows where the call path's threads
// may run, as re-pinned while sandboxes live: every thread on one CPU leaves no core
// for a poll (cap 0, every call one exit, nothing polls); a vCPU thread pinned apart
// from the main thread gives the process that second core (host/src/core_budget.h).
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { allowedCpus, cpuList, pinProcess, pinThread, threadIds, threadName } from '../bench/threads.js';
import { finalMessage, realGuestBooter, realImagePresent } from './real-guest-vms.js';
import { encodeMessage, loadAddon, type NativeVm } from './raw-guest.js';

// The measured budget, not an operator's cap (read when the addon loads).
delete process.env.AIRLOCK_KVM_POLLERS;

const boot = realGuestBooter();
const original = allowedCpus();
const cpus = cpuList(original);

afterEach(() => pinProcess(original));

async function call(vm: NativeVm, n: number) {
  const m = finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', JSON.stringify(n)]))).output);
  expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  expect(JSON.parse(m.fields[0].toString())).toBe(n + 1);
}

/** Calls until the budget reports `cores` (it re-checks placement every 10 ms); the cores it settled on. */
async function callUntilCores(vm: NativeVm, cores: number): Promise<number> {
  let seen = 0;
  for (let i = 0; i < 400; i++) {
    await call(vm, i);
    seen = loadAddon().pollingBudget().cores;
    if (seen === cores) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  return seen;
}

const vcpuThreads = () => threadIds().filter((t) => threadName(t).startsWith('airlock-run-'));

describeKvm('the busy-wait budget and thread placement', () => {
  it.skipIf(!realImagePresent)('allows no polling with every thread on one CPU, and answers every call', async () => {
    const vm = await boot('function handler(e) { return e + 1; }');
    await call(vm, 0);
    pinProcess(String(cpus[0]));
    expect(await callUntilCores(vm, 1)).toBe(1);
    for (let i = 0; i < 200; i++) {
      await call(vm, i);
      expect(loadAddon().pollingBudget()).toMatchObject({ cores: 1, cap: 0, polling: 0 });
    }
  });

  it.skipIf(!realImagePresent || cpus.length < 2)('counts a core a vCPU thread is pinned to apart from the main thread', async () => {
    const vm = await boot('function handler(e) { return e + 1; }');
    await call(vm, 0);
    pinProcess(String(cpus[0]));
    expect(await callUntilCores(vm, 1)).toBe(1);
    const vcpus = vcpuThreads();
    expect(vcpus.length).toBeGreaterThan(0);
    for (const tid of vcpus) expect(pinThread(tid, String(cpus[1]))).toBe(true);
    expect(await callUntilCores(vm, 2)).toBe(2);
    // The cap itself also depends on the load others put on both CPUs now: never more
    // than one poller beside the main thread's core.
    expect(loadAddon().pollingBudget().cap).toBeLessThanOrEqual(1);
    // Back on one CPU, the budget follows again.
    pinProcess(String(cpus[0]));
    expect(await callUntilCores(vm, 1)).toBe(1);
    expect(loadAddon().pollingBudget().cap).toBe(0);
  });
});
