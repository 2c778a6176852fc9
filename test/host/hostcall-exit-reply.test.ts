// hostcall-exit-reply.test.ts — a host call made with an exit whose reply the main
// thread writes into guest memory itself (HOST_CALL_TAKEN while the guest is stopped,
// host/src/hostcall_memory.cc): the counters show the reply and the request's next host
// calls crossing in memory; kill, the wall clock and dispose end such a call in each
// state (the runner waiting, the runner let go, the reply written); a guest that goes
// on while a taken call waits for its reply is aborted.
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { hostcall } from './hostcall-programs.js';
import { bootTwiceGuest, finalMessage, hostReturnOk } from './twice-guest.js';
import { buildImage, decodeMessages, defaultConfig, encodeMessage, loadAddon, rejection, type NativeVm } from './raw-guest.js';

// A core to spare whatever load this machine has now: the budget (core_budget.h) would
// otherwise keep a busy host's requests on exits, which these tests do not cover.
process.env.AIRLOCK_KVM_POLLERS ??= '8';

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const reply = hostReturnOk;
const counters = () => (loadAddon() as unknown as { pollingBudget(): { counters: Record<string, number> } }).pollingBudget().counters;
const delta = (after: Record<string, number>, before: Record<string, number>, name: string) => after[name] - before[name];

type Answer = (vm: NativeVm, id: number) => void;
function bootRaw(code: Buffer, answer: Answer, config = defaultConfig) {
  const vm: NativeVm = new (loadAddon().Vm)(buildImage(code), config, (_out, id) => answer(vm, id));
  live.push(vm);
  return vm;
}

const final = finalMessage;

/** The real guest (test/host/twice-guest.ts) with `guestPollUs` 0 by default: it never
 *  polls, so every request enters it by an exit and its first host call is an exit. */
const bootReal = (answer: (x: number, send: () => void, id: number) => void, guestPollUs = 0) =>
  bootTwiceGuest(live, answer, guestPollUs);
const callReal = (vm: NativeVm, k: number, opts: { wallClockTimeoutMs?: number } = {}) =>
  vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', JSON.stringify({ k })]), opts).then(
    (r) => ({ value: JSON.parse(final(r.output).fields[0].toString()) as number, code: undefined, terminatedBy: undefined }),
    (e: Error & { code?: string; terminatedBy?: string }) => ({ value: undefined, code: e.code, terminatedBy: e.terminatedBy }),
  );

describeKvm('host calls made with an exit, answered in guest memory', () => {
  it('the first host call of a request entered by an exit gets its reply in memory, whatever the watcher does', async () => {
    const vm = await bootReal((_x, send) => send());
    const k = 20;
    for (let r = 0; r < 5; r++) {
      const before = counters();
      expect((await callReal(vm, k)).value).toBe(k * (k - 1));
      const after = counters();
      // Every host call is counted on exactly one path.
      expect(delta(after, before, 'hostCallsInMemory') + delta(after, before, 'hostCallsByExit')).toBe(k);
      // The request entered by an exit (the guest does not poll), so its first call was
      // an exit, and the main thread wrote its reply into memory (no watcher held it).
      // The later calls cross in memory when the watcher takes them within the guest's
      // wait, which a loaded machine does not promise (the next test does not wait).
      expect(delta(after, before, 'hostCallsByExit')).toBeGreaterThanOrEqual(1);
      expect(delta(after, before, 'hostRepliesInMemory')).toBeGreaterThanOrEqual(1);
    }
  });

  it('after an exit host call answered in memory, the next host call crosses in memory, taken by the watcher', async () => {
    let calls = 0;
    const vm = bootRaw(
      hostcall.exitCallThenMemoryCall(),
      (v, id) => {
        calls += 1;
        v.hostReturn(reply(`"reply ${calls}"`), id);
      },
      { ...defaultConfig, guestPollUs: 0 },
    );
    await vm.boot();
    // The main thread hands the request back to the watcher only with a core free (the
    // cap is forced above) and only while the watch has not already run out before the
    // guest ran again (a loaded machine): then the guest answers after one call.
    let taken = 0;
    for (let attempt = 0; attempt < 200 && taken === 0; attempt++) {
      const before = counters();
      const callsBefore = calls;
      const r = await vm.send(Buffer.from('x'), { wallClockTimeoutMs: 5000 });
      const after = counters();
      expect(delta(after, before, 'hostRepliesInMemory')).toBe(1);
      taken = delta(after, before, 'hostCallsInMemory');
      expect(calls - callsBefore).toBe(1 + taken);
      expect(decodeMessages(r.output)[0].fields[0].toString()).toBe(`"reply ${calls}"`);
    }
    expect(taken).toBe(1);
  });

  for (const [name, answer] of [
    ['at once', (_x: number, send: () => void) => send()],
    ['after 1 ms (the runner sleeps on its futex)', (_x: number, send: () => void) => void setTimeout(send, 1)],
    ['after 10 ms (the runner let the sandbox go)', (_x: number, send: () => void) => void setTimeout(send, 10)],
  ] as const) {
    it(`answers every host call with its own reply: replies ${name}`, async () => {
      const vm = await bootReal(answer);
      for (let r = 0; r < 3; r++) expect((await callReal(vm, 4)).value).toBe(12);
    });
  }

  it("a raw guest's exit host call finds the reply the main thread wrote into memory, on every request", async () => {
    let calls = 0;
    // No poll window: every request enters by an exit, so no watcher holds it at the call.
    const vm = bootRaw(
      hostcall.exitCallEchoesReply(),
      (v, id) => {
        calls += 1;
        v.hostReturn(reply(`"reply ${calls}"`), id);
      },
      { ...defaultConfig, guestPollUs: 0 },
    );
    await vm.boot();
    const before = counters();
    for (let i = 1; i <= 5; i++) {
      const r = await vm.send(Buffer.from('x'), { wallClockTimeoutMs: 5000 });
      expect(decodeMessages(r.output)[0].fields[0].toString()).toBe(`"reply ${i}"`);
    }
    expect(calls).toBe(5);
    expect(delta(counters(), before, 'hostRepliesInMemory')).toBe(5);
  });
});

describeKvm('host calls made with an exit, answered in guest memory: kill, wall clock, dispose', () => {
  // The runner spins, then sleeps on its futex for 2 ms (host_wait.h), then lets the
  // sandbox go: each delay stops the call in another of those states.
  for (const delayMs of [0, 1, 20]) {
    it(`kill ${delayMs} ms into a never-answered call ends the request; the late reply is dropped`, async () => {
      let callId = 0;
      const vm = await bootReal((_x, _send, id) => {
        callId = id;
        setTimeout(() => vm.kill(), delayMs);
      });
      const r = await callReal(vm, 1, { wallClockTimeoutMs: 20_000 });
      expect(r.code).toBe('ERR_CANCELLED');
      expect(r.terminatedBy).toBe('kill');
      expect(callId).toBeGreaterThan(0);
      vm.hostReturn(reply('1'), callId);
      expect((await rejection(vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', '{"k":1}'])))).code).toBe('ERR_POISONED');
    });

    it(`dispose ${delayMs} ms into a never-answered call finishes and cancels the request`, async () => {
      let called!: () => void;
      const calledNow = new Promise<void>((r) => (called = r));
      const vm = await bootReal(() => called());
      const sent = callReal(vm, 1, { wallClockTimeoutMs: 20_000 });
      await calledNow;
      await sleep(delayMs);
      await vm.dispose();
      expect((await sent).code).toBe('ERR_CANCELLED');
    });
  }

  it('the wall clock ends a request whose host call is never answered', async () => {
    const vm = await bootReal(() => {});
    const r = await callReal(vm, 1, { wallClockTimeoutMs: 30 });
    expect(r.code).toBe('ERR_CANCELLED');
    expect(r.terminatedBy).toBe('wall-clock');
  });

  it('a kill right after the reply is written ends the request or lets it finish, never both or neither', async () => {
    for (let i = 0; i < 20; i++) {
      const vm = await bootReal((_x, send) => {
        send(); // written into memory; the runner may not have seen it yet
        vm.kill();
      });
      const r = await callReal(vm, 2, { wallClockTimeoutMs: 20_000 });
      if (r.code === undefined) expect(r.value).toBe(2);
      else expect([r.code, r.terminatedBy]).toEqual(['ERR_CANCELLED', 'kill']);
      await vm.dispose();
    }
  });
});

describeKvm('host calls taken from memory: a guest that goes on without the reply', () => {
  /** Sends until the watcher takes the call (a request entered by an exit is answered
   *  at once, with no output, by these programs). */
  async function sendUntilTaken(vm: NativeVm, taken: () => boolean) {
    for (let i = 0; i < 1000; i++) {
      const r = await vm.send(Buffer.from('x'), { wallClockTimeoutMs: 5000 }).then(
        (v) => ({ output: v.output, code: undefined, message: '' }),
        (e: Error & { code?: string }) => ({ output: undefined, code: e.code, message: e.message }),
      );
      if (r.code || taken()) return r;
    }
    throw new Error('the watcher never took the call');
  }

  for (const [then, pattern] of [
    ['answer', /answered before the reply/],
    ['call', /called the host again before the reply/],
    ['park', /parked while its taken host call/],
  ] as const) {
    it(`a guest that ${then === 'park' ? 'parks' : `${then}s`} while its taken call waits is aborted; the late reply is dropped`, async () => {
      let callId = 0;
      const vm = bootRaw(hostcall.goesOnWhileTaken(then), (_v, id) => (callId = id), { ...defaultConfig, guestPollUs: 10_000 });
      await vm.boot();
      const r = await sendUntilTaken(vm, () => callId > 0);
      expect(r.code).toBe('ERR_GUEST_ABORT');
      expect(r.message).toMatch(pattern);
      vm.hostReturn(reply('"late"'), callId);
      expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
    });
  }
});
