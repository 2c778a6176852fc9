// loop-sleep.test.ts — the guest event loop's timer sleep served by the vCPU thread
// (host/src/loop_wait.cc), against a hand-assembled guest that sends each request as
// its host call and answers with the reply: which steps the vCPU thread takes (a lone,
// well-formed `airlock:loop` `sleep`) and which it hands to the main thread to judge,
// and that kill, the monitors and dispose end a sleep while its time is not guest CPU.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { buildImage, decodeMessages, defaultConfig, encodeMessage, loadAddon, programs, rejection, type NativeVm } from './raw-guest.js';
import { forgedSleepSteps, servedSleepReply } from '../support/sleep-steps.js';

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});

/** A guest whose every request goes out as its host call; the main thread's answers
 *  are `main:<call id>`, and the calls it saw are collected in `seen`. */
async function sleeper(): Promise<{ vm: NativeVm; seen: Buffer[] }> {
  const seen: Buffer[] = [];
  let vm!: NativeVm;
  vm = new (loadAddon().Vm)(buildImage(programs.hostCall), defaultConfig, (out, id) => {
    seen.push(Buffer.from(out));
    vm.hostReturn(Buffer.from(`main:${id}`), id);
  });
  live.push(vm);
  await vm.boot();
  return { vm, seen };
}

const step = (name: string, args: string, module = 'airlock:loop') => encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, [module, name, args]);
const line = (text: string) => encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['log', text]);

/** A served sleep's answer, as the raw guest hands it back. */
function expectServed(output: Buffer): void {
  expect(output).toEqual(servedSleepReply);
}

describeKvm('host addon: the event loop sleep on the vCPU thread', () => {
  // [60000,1] is due at 1 ms on the guest's clock, long past: it ends at once.
  it('answers a lone sleep step itself, without the main thread', async () => {
    const { vm, seen } = await sleeper();
    for (const args of ['[0]', '[2]', '[0.25]', '[1.5e-3]', '[3E0]', '[2,0]', '[2,1e300]', '[2,123456.789]', '[60000,1]']) {
      expectServed((await vm.send(step('sleep', args))).output);
    }
    expect(seen).toEqual([]);
  });

  // Each is either another step, or a malformed one the main thread turns into a
  // protocol violation (src/hostcalls/event-loop.ts): never a sleep of the guest's choosing.
  const handedOver = forgedSleepSteps;
  for (const [what, request] of handedOver) {
    it(`hands ${what} to the main thread as it came`, async () => {
      const { vm, seen } = await sleeper();
      const { output } = await vm.send(request);
      expect(output.toString()).toMatch(/^main:\d+$/);
      expect(seen).toEqual([request]);
    });
  }

  it('ends a sleep at kill(), and the call is cancelled', async () => {
    const { vm } = await sleeper();
    const call = vm.send(step('sleep', '[60000]'));
    // kill() reaches only a call in flight: repeat it until this one has started.
    const killer = setInterval(() => vm.kill(), 20);
    const err = await rejection(call).finally(() => clearInterval(killer));
    expect(err.code).toBe('ERR_CANCELLED');
    expect(err.terminatedBy).toBe('kill');
  });

  it('ends a sleep past the wall-clock budget with the timeout, however long it asked for', async () => {
    for (const ms of ['60000', '1e300']) {
      const { vm } = await sleeper(); // a cancelled call poisons its VM
      const err = await rejection(vm.send(step('sleep', `[${ms}]`), { wallClockTimeoutMs: 50 }));
      expect(err.code).toBe('ERR_CANCELLED');
      expect(err.terminatedBy).toBe('wall-clock');
    }
  });

  it('ends a sleep when the sandbox is disposed', async () => {
    const { vm } = await sleeper();
    const ended = rejection(vm.send(step('sleep', '[60000]')));
    await new Promise((r) => setTimeout(r, 20));
    await vm.dispose();
    expect((await ended).code).toBe('ERR_CANCELLED');
  });

  it('does not charge the sleep to the CPU budget or the CPU time', async () => {
    const { vm } = await sleeper();
    const r = await vm.send(step('sleep', '[200]'), { cpuTimeoutMs: 50 });
    expectServed(r.output);
    expect(r.wallTimeNs).toBeGreaterThanOrEqual(200e6);
    expect(r.cpuTimeNs).toBeLessThan(50e6);
  });

  it('keeps the CPU monitor armed after a sleep: the guest cannot spend the paused time', async () => {
    // Boot answers; the request goes out as a host call; after the reply, spin (jmp $).
    const spinsAfterCall = Buffer.from(
      `66baa103 c7042570104000 00000000 b801000000 ef
       488b342508104000 488b3c2518104000 8b0c2568104000 890c2570104000 f3a4
       b802000000 ef ebfe`.replace(/\s+/g, ''),
      'hex',
    );
    const vm = new (loadAddon().Vm)(buildImage(spinsAfterCall), defaultConfig, () => {});
    live.push(vm);
    await vm.boot();
    const err = await rejection(vm.send(step('sleep', '[100]'), { cpuTimeoutMs: 50, wallClockTimeoutMs: 10_000 }));
    expect(err.code).toBe('ERR_CANCELLED');
    expect(err.terminatedBy).toBe('cpu-time');
  });
});

// The real guest's sleeps while a host thread watches its request (a host call just
// answered in memory leaves it watched): each must still exit to the vCPU thread, never
// cross in memory to the main thread as a plain host call.
const imagePath = join(__dirname, '..', '..', 'out', 'guest', 'kvm', 'airlock-guest.img');
const realConfig = { heapSize: 64 << 20, stackSize: 1 << 20, inputSize: 1 << 20, outputSize: 1 << 20, consoleLimit: 4096 };

describeKvm('host addon: the real guest sleeps on the vCPU thread while watched', () => {
  it('a timer sleep after a host call answered in memory never reaches the main thread', async () => {
    // A watcher and a polling guest whatever this machine's load (host/src/core_budget.h).
    const pollers = process.env.AIRLOCK_KVM_POLLERS;
    process.env.AIRLOCK_KVM_POLLERS = '8';
    const steps: string[] = [];
    try {
      const final = (output: Buffer) => decodeMessages(output).at(-1)!;
      let vm!: NativeVm;
      vm = new (loadAddon().Vm)(readFileSync(imagePath), { ...realConfig, guestPollUs: 10_000 }, (out, id) => {
        const call = final(out);
        const [module, fn] = call.fields.map(String);
        steps.push(`${module}.${fn}`);
        // A sleep that did reach this thread is still answered, as the main thread would.
        const answer = module === 'airlock:loop' ? '[]' : '1';
        vm.hostReturn(encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [answer]), id);
      });
      live.push(vm);
      await vm.boot();
      await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD_RUNTIME, 0, ['m', 'one']));
      const source = `import { one } from 'host:m';
        function handler(e) {
          return (async () => {
            let n = 0;
            for (let i = 0; i < e.k; i++) { n += one(); await new Promise((r) => setTimeout(r, 1)); }
            return n;
          })();
        }`;
      expect(final((await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', source]))).output).status).toBe(abi.AIRLOCK_STATUS_OK);
      for (let r = 0; r < 10; r++) {
        const m = final((await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', JSON.stringify({ k: 20 })]))).output);
        expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
        expect(JSON.parse(m.fields[0].toString())).toBe(20);
      }
    } finally {
      if (pollers === undefined) delete process.env.AIRLOCK_KVM_POLLERS;
      else process.env.AIRLOCK_KVM_POLLERS = pollers;
    }
    expect(steps.filter((s) => s !== 'm.one')).toEqual([]);
    expect(steps.length).toBe(200);
  });
});
