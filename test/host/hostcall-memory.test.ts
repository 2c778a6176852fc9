// hostcall-memory.test.ts — host calls handed over through memory (abi.h, "Polling":
// HOST_CALL, HOST_CALL_TAKEN, HOST_CALL_EXIT). A raw guest that never exits for its
// host call gets its reply only if the host really takes the call from memory; each
// state the guest can forge is a valid step or poisons the sandbox; kill, the
// monitors and dispose still end a call handed over; the real guest behaves the same
// whichever way its host calls cross.
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { hostcall } from './hostcall-programs.js';
import { bootTwiceGuest, finalMessage, hostReturnOk } from './twice-guest.js';
import { buildImage, decodeMessages, defaultConfig, encodeMessage, loadAddon, rejection, type NativeVm } from './raw-guest.js';

// The hand-over needs a watcher and a polling guest, whatever load this machine has
// now (host/src/core_budget.h would otherwise turn polling off on a busy host).
process.env.AIRLOCK_KVM_POLLERS ??= '8';

// A window long enough that the guest still polls when the request is sent.
const polling = { ...defaultConfig, guestPollUs: 10_000 };
const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function boot(code: Buffer, onHostCall: (vm: NativeVm, output: Buffer, id: number) => void = () => {}) {
  const vm: NativeVm = new (loadAddon().Vm)(buildImage(code), polling, (out, id) => onHostCall(vm, out, id));
  live.push(vm);
  return vm;
}
const reply = hostReturnOk;

type Sent = { output?: Buffer; code?: string; message?: string; terminatedBy?: string; attempts?: number };
/** Sends until a request reaches the guest in memory while the watcher watches (the
 *  programs answer a request entered by an exit at once, with no output, and the
 *  watcher may stop watching before a loaded machine runs the guest). */
async function sendWatched(vm: NativeVm, opts: { wallClockTimeoutMs?: number; cpuTimeoutMs?: number } = {}): Promise<Sent> {
  for (let i = 0; ; i++) {
    const r: Sent = await vm.send(Buffer.from('x'), { wallClockTimeoutMs: 5000, ...opts }).then(
      (v) => ({ output: v.output }),
      (e: Error & { code?: string; terminatedBy?: string }) => ({ code: e.code, message: e.message, terminatedBy: e.terminatedBy }),
    );
    // A loaded machine may keep the guest off its core past the watcher's bound on
    // one attempt; never on all of them.
    if (r.code || r.output!.length > 0 || i === 1000) return { ...r, attempts: i + 1 };
  }
}

describeKvm('host calls handed over in memory: the protocol steps', () => {
  it('a guest that never exits for its host call gets the reply in memory', async () => {
    const calls: number[] = [];
    const vm = boot(hostcall.inMemory(), (v, out, id) => {
      calls.push(out.length);
      v.hostReturn(reply('"in memory"'), id);
    });
    await vm.boot();
    // The guest waits for its reply without an exit: only the memory path releases it.
    const r = await sendWatched(vm);
    expect(r.code).toBeUndefined();
    expect(calls, `after ${r.attempts} attempts`).toEqual([0]); // one call, its HOST_CALL output empty
    expect(r.output!.equals(reply('"in memory"'))).toBe(true); // it echoed the HOST_RETURN
  });

  it('a guest that gives up waiting for a taken call gets the same reply after its exit, once', async () => {
    let calls = 0;
    const vm = boot(hostcall.givesUpAfterTake(), (v, _out, id) => {
      calls += 1;
      setTimeout(() => v.hostReturn(reply('"late"'), id), 20);
    });
    await vm.boot();
    const r = await sendWatched(vm);
    expect(r.code).toBeUndefined();
    expect(calls).toBe(1);
    expect(decodeMessages(r.output!)[0].fields[0].toString()).toBe('"late"');
  });

  it('the CPU monitor still ends a guest that keeps spinning after the allowance for its wait', async () => {
    const vm = boot(hostcall.callsAndSpins(), () => {}); // never answered
    await vm.boot();
    // The guest spins on long after its host-call allowance (150 us of CPU).
    const r = await sendWatched(vm, { cpuTimeoutMs: 20, wallClockTimeoutMs: 20_000 });
    expect(r.code).toBe('ERR_CANCELLED');
    expect(r.terminatedBy).toBe('cpu-time');
  });

  it('kill ends a request whose host call was taken and never answered; a late reply is dropped', async () => {
    let callId = 0;
    const vm = boot(hostcall.callsAndSpins(), (v, _out, id) => {
      callId = id;
      v.kill();
    });
    await vm.boot();
    const r = await sendWatched(vm, { wallClockTimeoutMs: 20_000 });
    expect(r.code).toBe('ERR_CANCELLED');
    expect(r.terminatedBy).toBe('kill');
    expect(callId).toBeGreaterThan(0);
    vm.hostReturn(reply('"too late"'), callId);
    expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
  });

  it('dispose finishes while a host call is taken and the guest waits in memory', async () => {
    let taken!: () => void;
    const tookCall = new Promise<void>((r) => (taken = r));
    const vm = boot(hostcall.callsAndSpins(), () => taken());
    await vm.boot();
    const sent = sendWatched(vm, { wallClockTimeoutMs: 20_000 });
    await Promise.race([tookCall, sent]);
    await vm.dispose();
    expect((await sent).code).toBe('ERR_CANCELLED');
  });
});

describeKvm('host calls handed over in memory: forged states', () => {
  for (const state of [abi.AIRLOCK_POLL_HOST_CALL, abi.AIRLOCK_POLL_HOST_CALL_TAKEN, abi.AIRLOCK_POLL_HOST_CALL_EXIT]) {
    it(`an exit for a host call with poll_state ${state} aborts the guest`, async () => {
      const vm = boot(hostcall.exitsWithState(state), () => {
        throw new Error('no host call may be dispatched');
      });
      await vm.boot();
      const err = await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 5000 }));
      expect(err.code).toBe('ERR_GUEST_ABORT');
      expect(err.message).toMatch(/poll_state|never took/);
      expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
    });

    it(`poll_state ${state} with no request in flight poisons the sandbox`, async () => {
      const vm = boot(hostcall.stateWithoutRequest(state));
      await vm.boot();
      await sleep(20);
      // Met during a request instead (the guest ran only once it was entered with one,
      // on a loaded machine), the same value is a valid step and the budget ends it.
      const err = await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 300 }));
      expect(['ERR_POISONED', 'ERR_CANCELLED']).toContain(err.code);
      if (err.code === 'ERR_POISONED') expect(err.message).toMatch(/poll_state/);
      expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
    });
  }

  for (const state of [abi.AIRLOCK_POLL_HOST_CALL_TAKEN, abi.AIRLOCK_POLL_HOST_CALL_EXIT, 0x7777]) {
    it(`poll_state ${state} written while the host watches a request aborts the guest`, async () => {
      const vm = boot(hostcall.forgesWhileWatched(state), () => {
        throw new Error('no host call may be dispatched');
      });
      await vm.boot();
      // ERR_CANCELLED: the watcher stopped watching (after its bound) before it saw
      // the value, so the guest spins until the wall clock.
      const r = await sendWatched(vm, { wallClockTimeoutMs: 2000 });
      expect(['ERR_GUEST_ABORT', 'ERR_CANCELLED']).toContain(r.code);
      if (r.code === 'ERR_GUEST_ABORT') expect(r.message).toMatch(/poll_state/);
      await sleep(20);
      expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
    });
  }

  it('a value no step produces, written while a host call is taken, aborts the guest; the late reply is dropped', async () => {
    let callId = 0;
    const vm = boot(hostcall.forgesWhileTaken(0x7777), (_v, _out, id) => (callId = id));
    await vm.boot();
    const r = await sendWatched(vm);
    expect(r.code).toBe('ERR_GUEST_ABORT');
    expect(r.message).toMatch(/poll_state 30583/);
    expect(callId).toBeGreaterThan(0);
    vm.hostReturn(reply('"late"'), callId);
    expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
  });
});

describeKvm('host calls handed over in memory: the real guest', () => {
  const final = finalMessage;
  const bootReal = (answer: (x: number, send: () => void) => void, guestPollUs: number) =>
    bootTwiceGuest(live, answer, guestPollUs);
  const call = async (vm: NativeVm, k: number, opts?: { cpuTimeoutMs?: number }) => {
    const r = await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', JSON.stringify({ k })]), opts);
    const m = final(r.output);
    expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
    return { value: JSON.parse(m.fields[0].toString()) as number, cpuTimeNs: r.cpuTimeNs, wallTimeNs: r.wallTimeNs };
  };

  for (const [name, answer] of [
    ['at once', (_x: number, send: () => void) => send()],
    ['in a later macrotask', (_x: number, send: () => void) => void setImmediate(send)],
    ['after a few ms (the guest gives up waiting)', (_x: number, send: () => void) => void setTimeout(send, 3)],
    ['mixed', (x: number, send: () => void) => (x % 3 === 0 ? send() : x % 3 === 1 ? setImmediate(send) : setTimeout(send, 1))],
  ] as const) {
    it(`answers every host call with its own reply: replies ${name}`, async () => {
      const vm = await bootReal(answer, 10_000);
      for (let r = 0; r < 10; r++) expect((await call(vm, 12)).value).toBe(132);
    });
  }

  it('a host function slower than the CPU budget does not use it up', async () => {
    const vm = await bootReal((_x, send) => void setTimeout(send, 15), 10_000);
    await call(vm, 1);
    // 4 calls of 15 ms each: 60 ms of waiting against a 20 ms CPU budget.
    const { value, cpuTimeNs, wallTimeNs } = await call(vm, 4, { cpuTimeoutMs: 20 });
    expect(value).toBe(12);
    expect(cpuTimeNs).toBeLessThan(wallTimeNs);
  });
});

