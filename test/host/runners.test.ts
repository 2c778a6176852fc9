// runners.test.ts — threads follow calls, not live sandboxes: an idle sandbox holds no
// thread; CPU-bound guests share the runner pool (a short call elsewhere still gets a
// runner); kills, monitors and the CPU budget follow a sandbox across runners and
// reach it while it waits in the queue; a runner asleep in a host call's wait does not
// hold up the queue; a sandbox goes back to the runner that ran it last.
import { readdirSync, readFileSync } from 'node:fs';
import { afterEach, expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';
import { type NativeVm, buildImage, defaultConfig, loadAddon, programs } from './raw-guest.js';

const addon = loadAddon();
const live: NativeVm[] = [];

async function booted(code: Buffer, onHostCall: (out: Buffer, id: number) => void = () => {}): Promise<NativeVm> {
  const vm = new addon.Vm(buildImage(code), defaultConfig, onHostCall);
  live.push(vm);
  await vm.boot();
  return vm;
}

function rejection(p: Promise<unknown>): Promise<{ code?: string; terminatedBy?: string; cpuTimeNs: number; wallTimeNs: number }> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e) => e,
  );
}

/** Names of the process's threads (KVM's per-VM kernel threads, kvm-*, among them). */
function threadNames(): string[] {
  return readdirSync('/proc/self/task').flatMap((tid) => {
    try {
      return [readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim()];
    } catch {
      return []; // ended meanwhile
    }
  });
}

/** CPU time (ns) of each runner thread (airlock-run-N) now. */
function runnerCpu(): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      if (!readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').startsWith('airlock-run-')) continue;
      out.set(tid, Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]));
    } catch {
      // ended meanwhile
    }
  }
  return out;
}

afterEach(async () => {
  for (const vm of live.splice(0)) {
    vm.kill();
    await vm.dispose().catch(() => {});
  }
});

describeKvm('host addon: the runner pool', () => {
  it('keeps no thread for an idle sandbox', async () => {
    const { limit } = addon.runnerPool();
    const own = () => threadNames().filter((n) => !n.startsWith('kvm-')).length;
    const before = own();
    const n = 3 * limit;
    const vms = await Promise.all(Array.from({ length: n }, () => booted(programs.echo)));
    const outputs = await Promise.all(vms.map((vm, i) => vm.send(Buffer.from(`call ${i}`))));
    expect(outputs.map((o) => o.output.toString())).toEqual(vms.map((_, i) => `call ${i}`));
    // Every sandbox is alive and idle: the threads are the pool's, not one per sandbox.
    expect(addon.runnerPool().runners).toBeLessThanOrEqual(limit);
    expect(threadNames().filter((n) => n.startsWith('airlock-run-')).length).toBeLessThanOrEqual(limit);
    // Besides runners, only the process-wide helpers the first sandbox starts (the
    // answer watcher, airlock-watch) may have appeared.
    expect(own() - before).toBeLessThanOrEqual(limit + 1);
  });

  it('gives a short call a runner while more CPU-bound guests than runners spin', async () => {
    const { limit } = addon.runnerPool();
    const spinners = await Promise.all(Array.from({ length: 3 * limit }, () => booted(programs.spin)));
    const spinning = spinners.map((vm) => rejection(vm.send(Buffer.from('spin'), { wallClockTimeoutMs: 600_000 })));
    // Booted and called while every runner could be busy with a spinner: it needs a
    // runner twice, and gets one each time only if the spinners yield theirs.
    const echo = await booted(programs.echo);
    const r = await echo.send(Buffer.from('still served'));
    expect(r.output.toString()).toBe('still served');
    // Some spinners wait in the queue now: the kill must still reach each of them.
    for (const vm of spinners) vm.kill();
    for (const err of await Promise.all(spinning)) {
      expect(err.code).toBe('ERR_CANCELLED');
      expect(err.terminatedBy).toBe('kill');
    }
    expect(addon.runnerPool().runners).toBeLessThanOrEqual(addon.runnerPool().hardCap);
  }, 60_000);

  it('charges a guest moved between runners its own CPU time only', async () => {
    const { limit } = addon.runnerPool();
    const spinners = await Promise.all(Array.from({ length: 2 * limit }, () => booted(programs.spin)));
    const budgetMs = 150;
    const errors = await Promise.all(
      spinners.map((vm) => rejection(vm.send(Buffer.from('spin'), { cpuTimeoutMs: budgetMs, wallClockTimeoutMs: 600_000 }))),
    );
    for (const err of errors) {
      expect(err.code).toBe('ERR_CANCELLED');
      expect(err.terminatedBy).toBe('cpu-time');
      // The monitor fired on the sandbox's own CPU clock (the sum over the runners that
      // held it), which can neither stop short of the budget nor outrun the wall clock.
      expect(err.cpuTimeNs).toBeGreaterThanOrEqual(budgetMs * 1e6);
      expect(err.cpuTimeNs).toBeLessThanOrEqual(err.wallTimeNs);
    }
  }, 60_000);

  it('ends guests on their wall clock while they wait in the queue', async () => {
    const { limit } = addon.runnerPool();
    const spinners = await Promise.all(Array.from({ length: 3 * limit }, () => booted(programs.spin)));
    const errors = await Promise.all(
      spinners.map((vm) => rejection(vm.send(Buffer.from('spin'), { wallClockTimeoutMs: 200 }))),
    );
    for (const err of errors) {
      expect(err.code).toBe('ERR_CANCELLED');
      expect(err.terminatedBy).toBe('wall-clock');
      expect(err.wallTimeNs).toBeGreaterThanOrEqual(200e6);
    }
  }, 60_000);

  it('hands a sandbox back to the runner that ran it last when that runner is idle', async () => {
    // Two guests spinning at once start a second runner (both stay, idle, for seconds).
    const spinners = await Promise.all([booted(programs.spin), booted(programs.spin)]);
    await Promise.all(spinners.map((vm) => rejection(vm.send(Buffer.from('spin'), { wallClockTimeoutMs: 50 }))));
    expect(addon.runnerPool().runners).toBeGreaterThanOrEqual(2);
    const vm = await booted(programs.echo);
    const carriers: string[] = [];
    for (let round = 0; round < 6; round++) {
      const before = runnerCpu();
      for (let i = 0; i < 20; i++) await vm.send(Buffer.from(`call ${i}`));
      const grown = [...runnerCpu()].map(([tid, ns]) => ({ tid, grew: ns - (before.get(tid) ?? ns) })).sort((a, b) => b.grew - a.grew);
      carriers.push(grown[0].tid);
      // Longer than a runner lingers on an idle sandbox: it lets go, and goes idle
      // after the other runner, so the queue's oldest waiter is the other one.
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(new Set(carriers).size).toBe(1);
  });

  it('serves the queue while runners sleep in host calls nobody answers yet', async () => {
    const { limit } = addon.runnerPool();
    const calls: { vm: NativeVm; out: Buffer; id: number }[] = [];
    const waiting = await Promise.all(
      Array.from({ length: limit + 2 }, async () => {
        const vm = await booted(programs.hostCall, (out, id) => calls.push({ vm, out, id }));
        return vm;
      }),
    );
    const answers = waiting.map((vm, i) => vm.send(Buffer.from(`host ${i}`)));
    while (calls.length < waiting.length) await new Promise((r) => setTimeout(r, 5));
    const echo = await booted(programs.echo);
    expect((await echo.send(Buffer.from('served'))).output.toString()).toBe('served');
    for (const c of calls) c.vm.hostReturn(Buffer.from(`reply ${c.out.toString()}`), c.id);
    expect((await Promise.all(answers)).map((a) => a.output.toString())).toEqual(
      waiting.map((_, i) => `reply host ${i}`),
    );
  }, 60_000);
});
