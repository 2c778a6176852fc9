// attack-guest.test.ts — hostile raw guests against the newest KVM paths: a guest that
// misbehaves only in its poll window after a restore (every exit and forged state there
// poisons it with the window named; one that spins without polling is taken out when
// the window ends and holds no runner), and a guest that gives up on its taken host
// call at once, racing the main thread's reply into memory, request after request:
// each request still gets exactly its own call's reply; a malformed host call handed
// over in memory aborts the request and the guest still running is stopped; a kill
// made before the reply of a call taken from memory cancels the request, every time.
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { givesUpAtOnce, memoryHostCallWithLength, misbehavesAfterRestore, windowMisdeeds } from './fixtures/attack-programs.js';
import { hostcall } from './hostcall-programs.js';
import { buildImage, decodeMessages, defaultConfig, encodeMessage, loadAddon, type NativeVm } from './raw-guest.js';

// A poll slot whatever this machine's load (read when the addon loads), and a long
// poll window, so restores open their window and requests cross in memory.
process.env.AIRLOCK_KVM_POLLERS = '1';
const polling = { ...defaultConfig, guestPollUs: 10_000 };

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});
function vmFor(code: Buffer, onHostCall: (vm: NativeVm, output: Buffer, id: number) => void = () => {}): NativeVm {
  const vm: NativeVm = new (loadAddon().Vm)(buildImage(code), polling, (out, id) => onHostCall(vm, out, id));
  live.push(vm);
  return vm;
}
const counters = () => loadAddon().pollingBudget().counters;
const settled = (p: Promise<unknown>) =>
  p.then(
    (v) => ({ ok: true as const, value: v }),
    (e: Error & { code?: string; terminatedBy?: string }) => ({ ok: false as const, code: e.code, message: e.message, terminatedBy: e.terminatedBy }),
  );
/** Waits (bounded) until `cond` holds; the bound is a hang detector, not a timing claim. */
async function eventually(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2000 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(cond(), what).toBe(true);
}

describeKvm('attack: a guest that misbehaves in its poll window after a restore', () => {
  for (const [name, misdeed] of Object.entries(windowMisdeeds)) {
    it(`${name} in the window poisons the sandbox, naming the window; a restore brings it back`, async () => {
      const vm = vmFor(misbehavesAfterRestore(misdeed));
      await vm.boot();
      expect((await vm.send(Buffer.from('first'))).output.toString()).toBe('first');
      const snap = await vm.snapshot();
      const opened = counters().pollsAfterRestore ?? 0;
      await vm.restore(snap); // a call followed the boot: the window opens
      await eventually(() => (counters().pollsAfterRestore ?? 0) > opened, 'the window opened');
      // The guest misbehaves as soon as it runs in the window, before any request.
      await eventually(() => loadAddon().pollingBudget().sessions === 0, 'the window ended');
      const r = await settled(vm.send(Buffer.from('second'), { wallClockTimeoutMs: 10_000 }));
      expect(r).toMatchObject({ ok: false, code: 'ERR_POISONED', message: expect.stringContaining('(in its poll window after a restore)') });
      // Restored again with no call since the last restore: no window, so it behaves.
      await vm.restore(snap);
      expect((await vm.send(Buffer.from('third'))).output.toString()).toBe('third');
    });
  }

  it('a guest that spins without polling in its window is taken out when the window ends, and keeps no runner', async () => {
    const vm = vmFor(misbehavesAfterRestore());
    await vm.boot();
    expect((await vm.send(Buffer.from('first'))).output.toString()).toBe('first');
    const snap = await vm.snapshot();
    const before = counters();
    await vm.restore(snap);
    await eventually(() => (counters().pollsAfterRestore ?? 0) > (before.pollsAfterRestore ?? 0), 'the window opened');
    // Its window (poll + allowance) is over long before this bound: the host ended it.
    await eventually(() => loadAddon().pollingBudget().sessions === 0, 'the guest left its window');
    expect((counters().windowsEndedByHost ?? 0) - (before.windowsEndedByHost ?? 0)).toBeGreaterThan(0);
    // It is stopped mid-spin: the next request runs it under the request's own budget.
    const r = await settled(vm.send(Buffer.from('second'), { wallClockTimeoutMs: 100 }));
    expect(r).toMatchObject({ ok: false, code: 'ERR_CANCELLED', terminatedBy: 'wall-clock' });
    await vm.restore(snap);
    await vm.restore(snap);
    expect((await vm.send(Buffer.from('third'))).output.toString()).toBe('third');
  });
});

describeKvm('attack: a guest that gives up on its taken host call at once', () => {
  it('request after request, each answer is its own call\'s reply, delivered once', async () => {
    const calls = new Map<number, number>();
    let request = 0;
    // Answered in the same turn as the call reaches JavaScript: the main thread writes
    // the reply into memory while the guest swaps HOST_CALL_TAKEN -> HOST_CALL_EXIT.
    const vm = vmFor(givesUpAtOnce(), (v, _out, id) => {
      calls.set(request, (calls.get(request) ?? 0) + 1);
      v.hostReturn(encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [`"request ${request} call ${id}"`]), id);
    });
    await vm.boot();
    let inMemory = 0;
    for (request = 1; request <= 300; request++) {
      const { output } = await vm.send(Buffer.from('x'), { wallClockTimeoutMs: 10_000 });
      // A request entered by an exit is answered with no output and no call.
      if (output.length === 0) {
        expect(calls.get(request)).toBeUndefined();
        continue;
      }
      inMemory++;
      expect(calls.get(request), `request ${request}`).toBe(1);
      const [m] = decodeMessages(output);
      expect(m.kind).toBe(abi.AIRLOCK_MSG_HOST_RETURN);
      expect(m.fields[0].toString()).toMatch(new RegExp(`^"request ${request} call \\d+"$`));
    }
    expect(inMemory).toBeGreaterThan(0);
  });
});

describeKvm('attack: a malformed host call handed over in memory', () => {
  it('aborts the request, takes the still-running guest out within its window, and keeps the first reason', async () => {
    let calls = 0;
    const vm = vmFor(memoryHostCallWithLength(0xffff_fff0), () => calls++);
    await vm.boot();
    // Requests entered by an exit are answered empty; one handed over in memory makes
    // the malformed call (a loaded machine may keep the guest off its core past the
    // watcher's bound on some attempts, never on all of them).
    let r: Awaited<ReturnType<typeof settled>> | undefined;
    for (let i = 0; i < 1000; i++) {
      r = await settled(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 10_000 }));
      if (!r.ok || (r.value as { output: Buffer }).output.length > 0) break;
    }
    expect(r).toMatchObject({ ok: false, code: 'ERR_GUEST_ABORT', message: expect.stringContaining('response_len') });
    expect(calls).toBe(0); // never dispatched to JavaScript
    // The guest still spins where it stopped: the host ends its run (no runner kept).
    await eventually(() => loadAddon().pollingBudget().sessions === 0, 'the aborted guest was stopped');
    const next = await settled(vm.send(Buffer.from('y')));
    expect(next).toMatchObject({ ok: false, code: 'ERR_POISONED', message: expect.stringContaining('response_len') });
  });
});

describeKvm('attack: a kill before the reply of a host call taken from memory', () => {
  it('cancels the request: the reply written after the kill never reaches the guest', async () => {
    let killed = 0;
    // The host function kills the call, then answers it (as a host function that
    // calls kill() and returns does). The guest waits in memory and would answer at
    // once with whatever reply it finds.
    const make = () => {
      const vm = vmFor(hostcall.inMemory(), (v, _out, id) => {
        killed++;
        v.kill();
        v.hostReturn(encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, ['"after the kill"']), id);
      });
      return vm;
    };
    const outcomes: string[] = [];
    for (let round = 0; round < 50; round++) {
      const vm = make();
      await vm.boot();
      const before = killed;
      let r: Awaited<ReturnType<typeof settled>> | undefined;
      // Requests entered by an exit are answered empty, with no host call.
      for (let i = 0; i < 1000 && killed === before; i++) r = await settled(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 10_000 }));
      outcomes.push(r!.ok ? 'answered' : `${r!.code}`);
      await vm.dispose();
    }
    expect(outcomes.filter((o) => o !== 'ERR_CANCELLED')).toEqual([]);
  });
});
