// loop-sleep-parked.test.ts — a guest's long timer sleep holds no runner thread
// (host/src/loop_wait.cc lets the sandbox go; sleep_timers.cc queues it for the sleep's
// end): sleepers beyond the pool's cap leave runners for other tenants, kill, dispose,
// the wall clock and the environment's end still end a parked sleep, a parked sleep
// ends with its reply and is not guest CPU time, and forged long steps are judged as before.
import { readdirSync, readFileSync } from 'node:fs';
import { afterEach, expect, it, vi } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { SandboxBuilder } from '../../src/index.js';
import { describeKvm } from '../support/kvm.js';
import { expectAbandonedSandboxesFreed } from '../support/worker-teardown.js';
import { type NativeVm, addonPath, buildImage, defaultConfig, encodeMessage, loadAddon, programs, rejection } from './raw-guest.js';
import { servedSleepReply } from '../support/sleep-steps.js';

const addon = loadAddon();
const live: NativeVm[] = [];

afterEach(async () => {
  for (const vm of live.splice(0)) {
    vm.kill();
    await vm.dispose().catch(() => {});
  }
});

const step = (name: string, args: string, module = 'airlock:loop') => encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, [module, name, args]);

/** Sandboxes whose every request goes out as their host call (a sleep step is served
 *  by the vCPU thread); any call that reaches the main thread is answered `main:<id>`
 *  and recorded in `seen`. */
async function sleepers(n: number, seen: Buffer[] = []): Promise<NativeVm[]> {
  return Promise.all(
    Array.from({ length: n }, async () => {
      let vm!: NativeVm;
      vm = new addon.Vm(buildImage(programs.hostCall), defaultConfig, (out, id) => {
        seen.push(Buffer.from(out));
        vm.hostReturn(Buffer.from(`main:${id}`), id);
      });
      live.push(vm);
      await vm.boot();
      return vm;
    }),
  );
}

/** A served sleep's answer, as the raw guest hands it back. */
function expectServed(output: Buffer): void {
  expect(output).toEqual(servedSleepReply);
}

const parkedSleeps = () => addon.pollingBudget().counters.loopSleepsParked ?? 0;

function threadsNamed(prefix: string): number {
  return readdirSync('/proc/self/task').filter((tid) => {
    try {
      return readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').startsWith(prefix);
    } catch {
      return false; // ended meanwhile
    }
  }).length;
}

const threadNames = () =>
  readdirSync('/proc/self/task').map((tid) => {
    try {
      return readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim();
    } catch {
      return '';
    }
  });

/** Every thread of the process but KVM's own per-VM kernel threads. */
const ownThreads = () => readdirSync('/proc/self/task').length - threadsNamed('kvm-');

describeKvm('host addon: a long timer sleep holds no runner', () => {
  it("serves another tenant's call while more sandboxes than the pool's cap sleep, within the pool's size", async () => {
    const { limit, hardCap } = addon.runnerPool();
    const n = Math.max(48, hardCap + 16);
    const other = (await sleepers(1))[0];
    const vms = await sleepers(n);
    const parkedBefore = parkedSleeps();
    let woke = 0;
    const sleeps = vms.map((vm) =>
      vm.send(step('sleep', '[3000]')).then((r) => {
        woke++;
        return r;
      }),
    );
    // Every sleeper has let go of its runner (a runner held by each would stop here).
    await vi.waitFor(() => expect(parkedSleeps() - parkedBefore).toBeGreaterThanOrEqual(n), { timeout: 2_500, interval: 5 });
    expect(threadsNamed('airlock-run-')).toBeLessThanOrEqual(limit);
    // A call of another tenant: main-thread host call and all, it needs a runner now.
    const answer = await other.send(Buffer.from('not a sleep'));
    expect(answer.output.toString()).toMatch(/^main:\d+$/);
    expect(woke).toBe(0);
    expect(threadsNamed('airlock-run-')).toBeLessThanOrEqual(limit);
    for (const r of await Promise.all(sleeps)) {
      expectServed(r.output);
      expect(r.wallTimeNs).toBeGreaterThanOrEqual(3000e6); // a sleep never ends early
    }
  }, 60_000);

  it('ends parked sleeps on kill and dispose, and leaves no runner or thread behind', async () => {
    // Runners and the sleep timer retire after 2 s idle: start from none of them,
    // with the process-wide helpers (answer watcher) started by a served call.
    expectServed((await (await sleepers(1))[0].send(step('sleep', '[0]'))).output);
    await vi.waitFor(() => expect(addon.runnerPool().runners).toBe(0), { timeout: 10_000, interval: 50 });
    await vi.waitFor(() => expect(threadsNamed('airlock-sleep')).toBe(0), { timeout: 10_000, interval: 50 });
    const threadsBefore = ownThreads();

    const { limit } = addon.runnerPool();
    const vms = await sleepers(2 * limit + 2);
    const parkedBefore = parkedSleeps();
    const sends = vms.map((vm) => rejection(vm.send(step('sleep', '[60000]'))));
    await vi.waitFor(() => expect(parkedSleeps() - parkedBefore).toBeGreaterThanOrEqual(vms.length), { timeout: 10_000, interval: 5 });

    const killed = vms.filter((_, i) => i % 2 === 0);
    const disposed = vms.filter((_, i) => i % 2 === 1);
    for (const vm of killed) vm.kill();
    await Promise.all(disposed.map((vm) => vm.dispose()));
    for (const err of await Promise.all(sends)) {
      expect(err.code).toBe('ERR_CANCELLED');
      expect(err.terminatedBy).toBe('kill');
    }
    // A cancelled sleep poisons its sandbox, as any cancelled call does.
    await expect(killed[0].send(step('sleep', '[1]'))).rejects.toMatchObject({ code: 'ERR_POISONED' });
    await Promise.all(killed.map((vm) => vm.dispose()));
    live.splice(0);
    await vi.waitFor(() => expect(addon.runnerPool().runners).toBe(0), { timeout: 10_000, interval: 50 });
    await vi.waitFor(() => expect(ownThreads(), threadNames().join(' ')).toBe(threadsBefore), { timeout: 10_000, interval: 50 });
  }, 60_000);

  it('ends parked sleeps on their wall clock, however long they asked for', async () => {
    const { limit } = addon.runnerPool();
    const vms = await sleepers(2 * limit + 2);
    const errors = await Promise.all(
      vms.map((vm, i) => rejection(vm.send(step('sleep', i % 2 ? '[60000]' : '[1e300]'), { wallClockTimeoutMs: 300 }))),
    );
    for (const err of errors) {
      expect(err.code).toBe('ERR_CANCELLED');
      expect(err.terminatedBy).toBe('wall-clock');
    }
  }, 60_000);

  it("stops parked sleepers when their environment ends (a worker's teardown runs the finalizers)", async () => {
    const { limit } = addon.runnerPool();
    // Plain JavaScript: the worker loads the addon itself and drops its sleeping sandboxes.
    await expectAbandonedSandboxesFreed(
      addon,
      `const { workerData, parentPort } = require('node:worker_threads');
       const addon = require(workerData.addonPath);
       const parked = () => addon.pollingBudget().counters.loopSleepsParked;
       (async () => {
         const vms = [];
         for (let i = 0; i < workerData.n; i++) {
           const vm = new addon.Vm(Buffer.from(workerData.image), workerData.config, () => {});
           await vm.boot();
           vms.push(vm);
         }
         const start = parked();
         for (const vm of vms) vm.send(Buffer.from(workerData.sleep)).catch(() => {});
         const check = setInterval(() => {
           if (parked() - start < workerData.n) return;
           clearInterval(check);
           parentPort.postMessage('all parked');
         }, 5);
       })();`,
      { addonPath, n: 2 * limit + 2, image: buildImage(programs.hostCall), config: defaultConfig, sleep: step('sleep', '[60000]') },
    );
  }, 60_000);

  it('ends a parked sleep at its deadline with its reply, not charged to a CPU budget far below it', async () => {
    const [vm] = await sleepers(1);
    const parkedBefore = parkedSleeps();
    const r = await vm.send(step('sleep', '[200]'), { cpuTimeoutMs: 20 });
    expectServed(r.output);
    expect(parkedSleeps()).toBeGreaterThan(parkedBefore);
    expect(r.wallTimeNs).toBeGreaterThanOrEqual(200e6);
    expect(r.cpuTimeNs).toBeLessThan(20e6);
    // The guest goes on after it: the next call is served as before.
    expectServed((await vm.send(step('sleep', '[5]'))).output);
  }, 30_000);

  it('wakes each of many short parked sleeps in turn, far within a wall-clock budget', async () => {
    const [vm] = await sleepers(1);
    const parkedBefore = parkedSleeps();
    // Each parks (3 ms > the 2 ms linger), so each needs the sleep timer to queue it
    // again: one the timer thread missed would wait out the budget instead.
    for (let i = 0; i < 30; i++) expectServed((await vm.send(step('sleep', '[3]'), { wallClockTimeoutMs: 1_000 })).output);
    // At least once each: a sleep the pool took back early with over 1 ms left while
    // another sandbox wanted a runner parks again.
    expect(parkedSleeps() - parkedBefore).toBeGreaterThanOrEqual(30);
  }, 60_000);

  // Long delays in forged steps: a malformed one is the main thread's to judge (it
  // poisons, src/hostcalls/event-loop.ts), never a parked sleep of the guest's choosing.
  it('hands malformed long sleep steps to the main thread without parking them', async () => {
    const seen: Buffer[] = [];
    const [vm] = await sleepers(1, seen);
    const forged = [step('sleep', '[60000,-1]'), step('sleep', '["60000"]'), step('sleep', '[60000,1,2]'), step('sleep', '[60000]', 'airlock:loopx')];
    const parkedBefore = parkedSleeps();
    for (const request of forged) expect((await vm.send(request)).output.toString()).toMatch(/^main:\d+$/);
    expect(seen).toEqual(forged);
    expect(parkedSleeps()).toBe(parkedBefore);
  }, 30_000);
});

describeKvm('KVM sandboxes: a handler awaiting a timer lets go of its runner', () => {
  it("returns the handler's value after a parked 200 ms timer under a 20 ms CPU budget", async () => {
    const js = await (await new SandboxBuilder().setBackend('kvm').build()).loadRuntime();
    js.addHandler('h', `export default async function (e) {
      const t0 = Date.now();
      await new Promise((r) => setTimeout(r, 200));
      return { after: e.x, slept: Date.now() - t0 >= 200 };
    }`);
    const loaded = await js.getLoadedSandbox();
    try {
      const parkedBefore = parkedSleeps();
      expect(await loaded.callHandler('h', { x: 'timer' }, { cpuTimeoutMs: 20 })).toEqual({ after: 'timer', slept: true });
      expect(loaded.lastCallStats?.terminatedBy).toBeNull();
      expect(parkedSleeps()).toBeGreaterThan(parkedBefore);
    } finally {
      await loaded.dispose();
    }
  }, 30_000);
});
