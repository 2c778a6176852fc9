// hostwait.test.ts — a runner is never held through a host call's wait: sandboxes
// whose guests wait for host functions hold no thread, so host functions that wait for
// each other (a barrier, a call into another sandbox) complete however many wait;
// kill, dispose and the wall clock still end a waiting sandbox; a late or misdirected
// reply is never written; the pool's thread count stays within its size.
import { readdirSync, readFileSync } from 'node:fs';
import { afterEach, expect, it, vi } from 'vitest';
import { describeKvm } from '../support/kvm.js';
import { expectAbandonedSandboxesFreed } from '../support/worker-teardown.js';
import { type NativeVm, addonPath, buildImage, defaultConfig, loadAddon, programs } from './raw-guest.js';

const addon = loadAddon();
const live: NativeVm[] = [];

type Call = { vm: NativeVm; out: Buffer; id: number };

async function booted(code: Buffer, onHostCall: (out: Buffer, id: number) => void = () => {}): Promise<NativeVm> {
  const vm = new addon.Vm(buildImage(code), defaultConfig, onHostCall);
  live.push(vm);
  await vm.boot();
  return vm;
}

/** `n` sandboxes running programs.hostCall, each host call recorded in `calls`. */
function hostCallers(n: number, calls: Call[]): Promise<NativeVm[]> {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const vm: NativeVm = await booted(programs.hostCall, (out, id) => calls.push({ vm, out, id }));
      return vm;
    }),
  );
}

function rejection(p: Promise<unknown>): Promise<{ code?: string; terminatedBy?: string }> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e) => e,
  );
}

/** Threads of this process that Airlock's runner pool started. */
function runnerThreads(): number {
  return readdirSync('/proc/self/task').filter((tid) => {
    try {
      return readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').startsWith('airlock-run-');
    } catch {
      return false; // ended meanwhile
    }
  }).length;
}

/** Every thread of the process but KVM's own per-VM kernel threads. */
function ownThreads(): number {
  return readdirSync('/proc/self/task').filter((tid) => {
    try {
      return !readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').startsWith('kvm-');
    } catch {
      return false;
    }
  }).length;
}

afterEach(async () => {
  for (const vm of live.splice(0)) {
    vm.kill();
    await vm.dispose().catch(() => {});
  }
});

describeKvm('host addon: host-call waits hold no runner', () => {
  it('completes 48 host functions that each wait until all of them have been called', async () => {
    const { hardCap } = addon.runnerPool();
    const n = Math.max(48, hardCap + 16);
    const calls: Call[] = [];
    const vms = await hostCallers(n, calls);
    const answers = vms.map((vm, i) => vm.send(Buffer.from(`barrier ${i}`)));
    // The barrier opens only once every guest is inside its host call: with a runner
    // held by each waiting guest, the guests beyond the pool's cap would never get in.
    await vi.waitFor(() => expect(calls.length).toBe(n), { timeout: 30_000, interval: 5 });
    for (const c of calls) c.vm.hostReturn(Buffer.from(`opened ${c.out.toString()}`), c.id);
    expect((await Promise.all(answers)).map((a) => a.output.toString())).toEqual(vms.map((_, i) => `opened barrier ${i}`));
    expect(runnerThreads()).toBeLessThanOrEqual(addon.runnerPool().limit);
  }, 60_000);

  it("answers a host function that awaits a call into another sandbox while the pool's worth of sandboxes wait", async () => {
    const { hardCap } = addon.runnerPool();
    const blockers: Call[] = [];
    const waiting = await hostCallers(hardCap + 4, blockers);
    const blocked = waiting.map((vm, i) => vm.send(Buffer.from(`blocked ${i}`)));
    await vi.waitFor(() => expect(blockers.length).toBe(waiting.length), { timeout: 30_000, interval: 5 });

    const b = await booted(programs.echo);
    let a: NativeVm | undefined;
    a = await booted(programs.hostCall, (out, id) => {
      // The host function of A calls into B and answers A with B's result.
      void b.send(Buffer.from(`B saw ${out.toString()}`)).then((r) => a!.hostReturn(r.output, id));
    });
    expect((await a.send(Buffer.from('from A'))).output.toString()).toBe('B saw from A');

    for (const c of blockers) c.vm.hostReturn(Buffer.from(`freed ${c.out.toString()}`), c.id);
    expect((await Promise.all(blocked)).map((r) => r.output.toString())).toEqual(waiting.map((_, i) => `freed blocked ${i}`));
  }, 60_000);

  it('ends sandboxes waiting in host calls on kill and dispose, and leaves no runner behind', async () => {
    // Runners retire after 2 s idle: start from none, so the count can come back to it.
    await vi.waitFor(() => expect(addon.runnerPool().runners).toBe(0), { timeout: 10_000, interval: 50 });
    await booted(programs.echo); // the process-wide helpers (answer watcher) exist from here
    await vi.waitFor(() => expect(addon.runnerPool().runners).toBe(0), { timeout: 10_000, interval: 50 });
    const threadsBefore = ownThreads();

    const { limit } = addon.runnerPool();
    const calls: Call[] = [];
    const vms = await hostCallers(2 * limit + 2, calls);
    const sends = vms.map((vm, i) => rejection(vm.send(Buffer.from(`wait ${i}`))));
    await vi.waitFor(() => expect(calls.length).toBe(vms.length), { timeout: 30_000, interval: 5 });

    const killed = vms.filter((_, i) => i % 2 === 0);
    const disposed = vms.filter((_, i) => i % 2 === 1);
    for (const vm of killed) vm.kill();
    await Promise.all(disposed.map((vm) => vm.dispose()));
    for (const err of await Promise.all(sends)) {
      expect(err.code).toBe('ERR_CANCELLED');
      expect(err.terminatedBy).toBe('kill');
    }
    await Promise.all(killed.map((vm) => vm.dispose()));
    live.splice(0);
    await vi.waitFor(() => expect(addon.runnerPool().runners).toBe(0), { timeout: 10_000, interval: 50 });
    await vi.waitFor(() => expect(ownThreads()).toBe(threadsBefore), { timeout: 10_000, interval: 50 });
  }, 60_000);

  it("stops sandboxes waiting in host calls when their environment ends (a worker's teardown runs the finalizers)", async () => {
    const { limit } = addon.runnerPool();
    const n = 2 * limit + 2;
    // Plain JavaScript: the worker loads the addon itself and never answers its guests.
    await expectAbandonedSandboxesFreed(
      addon,
      `const { workerData, parentPort } = require('node:worker_threads');
       const addon = require(workerData.addonPath);
       let calls = 0;
       (async () => {
         const vms = [];
         for (let i = 0; i < workerData.n; i++) {
           const vm = new addon.Vm(Buffer.from(workerData.image), workerData.config, () => {
             if (++calls === workerData.n) parentPort.postMessage('all waiting');
           });
           await vm.boot();
           vms.push(vm);
         }
         for (const vm of vms) vm.send(Buffer.from('never answered')).catch(() => {});
       })();`,
      { addonPath, n, image: buildImage(programs.hostCall), config: defaultConfig },
    );
  }, 60_000);

  it('ends sandboxes on their wall clock while their host calls wait', async () => {
    const { limit } = addon.runnerPool();
    const calls: Call[] = [];
    const vms = await hostCallers(2 * limit + 2, calls);
    const errors = await Promise.all(
      vms.map((vm, i) => rejection(vm.send(Buffer.from(`never answered ${i}`), { wallClockTimeoutMs: 200 }))),
    );
    expect(calls.length).toBe(vms.length);
    for (const err of errors) {
      expect(err.code).toBe('ERR_CANCELLED');
      expect(err.terminatedBy).toBe('wall-clock');
    }
  }, 60_000);

  it('does not charge a host call its wait: a CPU budget far below the wait is not spent', async () => {
    const calls: Call[] = [];
    const [vm] = await hostCallers(1, calls);
    const answer = vm.send(Buffer.from('slow host'), { cpuTimeoutMs: 20 });
    await vi.waitFor(() => expect(calls.length).toBe(1), { timeout: 10_000, interval: 5 });
    // Long enough that the runner has let the sandbox go, and past the CPU budget.
    await new Promise((r) => setTimeout(r, 200));
    vm.hostReturn(Buffer.from('late but fine'), calls[0].id);
    expect((await answer).output.toString()).toBe('late but fine');
  }, 30_000);

  it('drops a reply that comes after a kill or names another call, and serves the next call after a restore', async () => {
    const calls: Call[] = [];
    const [vm] = await hostCallers(1, calls);
    const snap = await vm.snapshot();
    const first = rejection(vm.send(Buffer.from('first')));
    await vi.waitFor(() => expect(calls.length).toBe(1), { timeout: 10_000, interval: 5 });
    vm.kill();
    expect(await first).toMatchObject({ code: 'ERR_CANCELLED', terminatedBy: 'kill' });
    vm.hostReturn(Buffer.from('late reply'), calls[0].id); // nobody waits for it: dropped

    await expect(vm.send(Buffer.from('poisoned'))).rejects.toMatchObject({ code: 'ERR_POISONED' });
    await vm.restore(snap);
    const second = vm.send(Buffer.from('second'));
    await vi.waitFor(() => expect(calls.length).toBe(2), { timeout: 10_000, interval: 5 });
    expect(calls[1].out.toString()).toBe('second');
    // A reply naming the killed call is not this call's answer; the right one is.
    vm.hostReturn(Buffer.from('stale'), calls[0].id);
    await new Promise((r) => setTimeout(r, 20));
    vm.hostReturn(Buffer.from('right reply'), calls[1].id);
    expect((await second).output.toString()).toBe('right reply');
  }, 30_000);

  it("keeps Airlock's runner threads within the pool's size with 100 sandboxes waiting in host calls", async () => {
    const { limit, hardCap } = addon.runnerPool();
    const calls: Call[] = [];
    const vms = await hostCallers(100, calls);
    const answers = vms.map((vm, i) => vm.send(Buffer.from(`w${i}`)));
    await vi.waitFor(() => expect(calls.length).toBe(100), { timeout: 30_000, interval: 5 });
    expect(addon.runnerPool().runners).toBeLessThanOrEqual(limit);
    expect(runnerThreads()).toBeLessThanOrEqual(Math.min(limit, hardCap));
    for (const c of calls) c.vm.hostReturn(Buffer.from(`r${c.out.toString()}`), c.id);
    expect((await Promise.all(answers)).map((a) => a.output.toString())).toEqual(vms.map((_, i) => `rw${i}`));
  }, 60_000);
});
