// hostile-budget.test.ts — no guest runs outside a host budget: after answering, a
// guest may run on only inside the host's post-answer window, so an idle sandbox
// costs no CPU, whatever the guest does (never stops, keeps re-arming its poll, exits
// IDLE in a loop), and the real runtime too. Also dispose() in every state.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { bootPlain, exitWith, hostile, spinForever } from './hostile-programs.js';
import { buildImage, defaultConfig, encodeMessage, loadAddon, rejection, type NativeVm } from './raw-guest.js';

// Guests that run on after answering must really get their window, whatever load this
// machine has: the busy-wait budget (host/src/core_budget.h) would refuse it on a busy host.
process.env.AIRLOCK_KVM_POLLERS ??= '8';

const imagePath = join(__dirname, '..', '..', 'out', 'guest', 'kvm', 'airlock-guest.img');
const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function make(program: Buffer, onHostCall: (o: Buffer, id: number) => void = () => {}): NativeVm {
  const vm = new (loadAddon().Vm)(buildImage(program), { ...defaultConfig, guestPollUs: 50 }, onHostCall);
  live.push(vm);
  return vm;
}

/** Process CPU (all threads, vCPU threads included) over an idle second, in ms. */
async function idleCpuMs(): Promise<number> {
  await sleep(300); // post-answer windows end within a few ms
  const before = process.cpuUsage();
  await sleep(1000);
  const d = process.cpuUsage(before);
  return (d.user + d.system) / 1000;
}

// A whole core for the idle second is 1000 ms; the bound leaves room for the test
// runner's own work on a shared machine while failing any guest left running.
const IDLE_BOUND_MS = 250;

describeKvm('hostile guest: the post-answer window', () => {
  for (const name of ['neverStops', 'keepsReady', 'idleLoop'] as const) {
    it(`${name}: two idle sandboxes use no CPU after answering`, async () => {
      const vms = [make(hostile[name]()), make(hostile[name]())];
      await Promise.all(vms.map((vm) => vm.boot()));
      expect(await idleCpuMs()).toBeLessThan(IDLE_BOUND_MS);
    });
  }

  it('a guest that never stops after answering is stopped, and its next request still runs under its budget', async () => {
    const vm = make(hostile.neverStops());
    await vm.boot();
    await sleep(20);
    // The guest resumes its spin when the request enters it: only the monitor ends it.
    const err = await rejection(vm.send(Buffer.from('x'), { cpuTimeoutMs: 20 }));
    expect(err.code).toBe('ERR_CANCELLED');
    expect(err.terminatedBy).toBe('cpu-time');
  });

  it('time a guest spends after answering is stopped by the window and reported with the next request', async () => {
    const vm = make(hostile.spinsUntilEntered());
    await vm.boot();
    for (let i = 0; i < 3; i++) {
      await sleep(20); // the window ends long before: the host took the guest out
      const r = await vm.send(Buffer.from('x'));
      expect(r.afterCpuTimeNs).toBeGreaterThan(0);
      // At most the window (a few ms) even on a loaded machine: a budget, not a speed.
      expect(r.afterCpuTimeNs).toBeLessThan(500e6);
    }
    expect(await idleCpuMs()).toBeLessThan(IDLE_BOUND_MS);
  });

  it.skipIf(!existsSync(imagePath))('the real guest: ten sandboxes after a call each use no CPU', async () => {
    const vms: NativeVm[] = [];
    for (let i = 0; i < 10; i++) {
      const vm = new (loadAddon().Vm)(
        readFileSync(imagePath),
        { heapSize: 16 << 20, stackSize: 1 << 20, inputSize: 64 << 10, outputSize: 64 << 10, consoleLimit: 4096 },
        () => {},
      );
      live.push(vm);
      vms.push(vm);
      await vm.boot();
      await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD_RUNTIME, 0, []));
      await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', 'function handler(e) { return e; }']));
      await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, abi.AIRLOCK_CALL_FLAG_GC, ['h', '1']));
    }
    expect(await idleCpuMs()).toBeLessThan(IDLE_BOUND_MS);
  });
});

describeKvm('hostile guest: dispose() in every state', () => {
  it('while booting (the boot never answers)', async () => {
    const vm = make(spinForever());
    const booting = rejection(vm.boot());
    await sleep(20);
    await vm.dispose();
    expect((await booting).code).toBe('ERR_CANCELLED');
  });

  it('while a request spins', async () => {
    const vm = make(hostile.spin());
    await vm.boot();
    const sent = rejection(vm.send(Buffer.from('x')));
    await sleep(20);
    await vm.dispose();
    expect((await sent).code).toBe('ERR_CANCELLED');
  });

  it('while a host call waits for its answer', async () => {
    let called = false;
    const vm = make(
      Buffer.concat([bootPlain(), exitWith(abi.AIRLOCK_EXIT_HOST_CALL), spinForever()]),
      () => {
        called = true; // never answered
      },
    );
    await vm.boot();
    const sent = rejection(vm.send(Buffer.from('x')));
    while (!called) await sleep(5);
    await vm.dispose();
    expect((await sent).code).toBe('ERR_CANCELLED');
  });

  it('inside the post-answer window, and after a forged poll state', async () => {
    const a = make(hostile.neverStops());
    const b = make(hostile.forgedRequest());
    await Promise.all([a.boot(), b.boot()]);
    await Promise.all([a.dispose(), b.dispose()]);
    await expect(a.send(Buffer.from('x'))).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });
});

describeKvm('hostile guest: kill that cannot be lost', () => {
  it('kill() stops a spinning request with the real-time signal queue full', async () => {
    const { spawnSync } = await import('node:child_process');
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', join(__dirname, 'fixtures', 'hostile-child.ts'), 'kill-no-signal-queue'],
      { encoding: 'utf8', timeout: 30_000, cwd: join(__dirname, '..', '..') },
    );
    expect(r.error, r.stderr).toBeUndefined();
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toEqual({
      code: 'ERR_CANCELLED',
      terminatedBy: 'kill',
      again: 'ERR_POISONED',
    });
  });
});
