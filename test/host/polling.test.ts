// polling.test.ts — the polling hand-over between requests (abi.h, "Polling"): with
// the real guest image, every behaviour must be the same whether a request reaches
// the guest through memory while it polls, or by entering a parked guest. Each block
// runs with the poll window off (every request enters a parked guest), tiny (the
// guest parks right after answering, racing the host reading its answer), the
// default, and long (the guest is always polling when a request or an op arrives).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import {
  buildImage,
  decodeMessages,
  defaultConfig,
  encodeMessage,
  loadAddon,
  rejection,
  type NativeVm,
} from './raw-guest.js';

// Every mode must really poll where it asks to, whatever load this machine has now:
// the process-wide budget (host/src/core_budget.h) would otherwise turn polling off
// on a busy host. Read when the addon loads (lazily, in the first test).
process.env.AIRLOCK_KVM_POLLERS ??= '8';

const imagePath = join(__dirname, '..', '..', 'out', 'guest', 'kvm', 'airlock-guest.img');
const base = { heapSize: 64 << 20, stackSize: 1 << 20, inputSize: 1 << 20, outputSize: 1 << 20, consoleLimit: 4096 };
const present = existsSync(imagePath);

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});

function final(output: Buffer) {
  const msgs = decodeMessages(output);
  expect(msgs.length).toBeGreaterThan(0);
  return msgs[msgs.length - 1];
}

type Opts = { cpuTimeoutMs?: number; wallClockTimeoutMs?: number };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const modes = [
  { name: 'poll window off', guestPollUs: 0 },
  { name: '3 us poll window', guestPollUs: 3 },
  { name: 'default poll window', guestPollUs: undefined },
  { name: '10 ms poll window', guestPollUs: 10_000 },
  { name: '10 ms poll window, no vCPU-thread spin', guestPollUs: 10_000, vcpuSpinUs: 0 },
];

for (const mode of modes) {
  const config = {
    ...base,
    ...(mode.guestPollUs === undefined ? {} : { guestPollUs: mode.guestPollUs }),
    ...(mode.vcpuSpinUs === undefined ? {} : { vcpuSpinUs: mode.vcpuSpinUs }),
  };

  async function boot(source: string, hostFunctions: string[] = [], onHostCall = (_o: Buffer, _id: number) => {}) {
    const vm = new (loadAddon().Vm)(readFileSync(imagePath), config, onHostCall);
    live.push(vm);
    expect(final(await vm.boot()).kind).toBe(abi.AIRLOCK_MSG_READY);
    expect(final((await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD_RUNTIME, 0, hostFunctions))).output).status).toBe(
      abi.AIRLOCK_STATUS_OK,
    );
    const loaded = final((await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', source]))).output);
    expect(loaded.status, loaded.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
    return vm;
  }

  async function call(vm: NativeVm, event: unknown, opts?: Opts, gc = true) {
    const r = await vm.send(
      encodeMessage(abi.AIRLOCK_MSG_CALL, gc ? abi.AIRLOCK_CALL_FLAG_GC : 0, ['h', JSON.stringify(event)]),
      opts,
    );
    const m = final(r.output);
    expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
    return { value: JSON.parse(m.fields[0].toString()) as unknown, wallTimeNs: r.wallTimeNs, cpuTimeNs: r.cpuTimeNs };
  }

  describeKvm(`polling hand-over: ${mode.name}`, () => {
    it.skipIf(!present)('answers every request with its own result, back to back and spaced out', async () => {
      const vm = await boot('let n = 0; function handler(e) { n += 1; return { echo: e.i, n }; }');
      let n = 0;
      for (let i = 0; i < 300; i++) {
        const { value } = await call(vm, { i }, undefined, i % 2 === 0);
        expect(value).toEqual({ echo: i, n: ++n });
      }
      for (let i = 0; i < 5; i++) {
        await sleep(3); // longer than the default window: the guest has parked
        expect((await call(vm, { i })).value).toEqual({ echo: i, n: ++n });
      }
    });

    it.skipIf(!present)('reports wall and CPU time of the request only', async () => {
      // A fixed amount of work, not a wall-clock wait: on a loaded machine a 20 ms wait
      // may get only a few ms of CPU. 3M interpreted iterations take well over 5 ms.
      const vm = await boot('function handler(e) { let x = 0; for (let i = 0; i < e.n; i++) x += i & 1; return x; }');
      await call(vm, { n: 0 });
      const { wallTimeNs, cpuTimeNs } = await call(vm, { n: 3_000_000 });
      expect(cpuTimeNs).toBeGreaterThan(5e6);
      expect(wallTimeNs).toBeLessThan(60e9);
      expect(cpuTimeNs).toBeLessThanOrEqual(wallTimeNs + 1e6);
    });

    it.skipIf(!present)('serves host calls made by a request handed over in memory', async () => {
      let vm!: NativeVm;
      vm = await boot(
        "import { twice } from 'host:m'; function handler(e) { let s = 0; for (let i = 0; i < e.k; i++) s += twice(i); return s; }",
        ['m', 'twice'],
        (out, id) => {
          const [, , args] = final(out).fields.map(String);
          const [x] = JSON.parse(args) as number[];
          const reply = encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [String(2 * x)]);
          if (x % 2) setTimeout(() => vm.hostReturn(reply, id), 1);
          else vm.hostReturn(reply, id);
        },
      );
      for (let r = 0; r < 20; r++) expect((await call(vm, { k: 10 })).value).toBe(90);
    });

    it.skipIf(!present)('kill, CPU and wall-clock monitors stop a runaway request; restore brings it back', async () => {
      const vm = await boot('let n = 0; function handler(e) { if (e.spin) { for (;;) {} } return ++n; }');
      expect((await call(vm, {})).value).toBe(1);
      const snap = await vm.snapshot();
      const spin = encodeMessage(abi.AIRLOCK_MSG_CALL, abi.AIRLOCK_CALL_FLAG_GC, ['h', '{"spin":true}']);

      const killed = vm.send(spin);
      setTimeout(() => vm.kill(), 20);
      const k = await rejection(killed);
      expect(k.code).toBe('ERR_CANCELLED');
      expect(k.terminatedBy).toBe('kill');
      expect((await rejection(vm.send(spin))).code).toBe('ERR_POISONED');
      await vm.restore(snap);
      expect((await call(vm, {})).value).toBe(2);

      const cpu = await rejection(vm.send(spin, { cpuTimeoutMs: 30 }));
      expect(cpu.terminatedBy).toBe('cpu-time');
      await vm.restore(snap);
      const wall = await rejection(vm.send(spin, { wallClockTimeoutMs: 30 }));
      expect(wall.terminatedBy).toBe('wall-clock');
      await vm.restore(snap);
      expect((await call(vm, {})).value).toBe(2);
      // A monitor that did not fire leaves nothing behind for the next request: budgets
      // wide enough that a loaded machine cannot exhaust them, then outlived by the sleep.
      expect((await call(vm, {}, { cpuTimeoutMs: 150, wallClockTimeoutMs: 150 })).value).toBe(3);
      await sleep(200);
      expect((await call(vm, {})).value).toBe(4);
    });

    it.skipIf(!present)('snapshot and restore taken while the guest polls round-trip the JS state', async () => {
      const vm = await boot('let n = 0; function handler(e) { return ++n; }');
      expect((await call(vm, {})).value).toBe(1);
      const snap = await vm.snapshot(); // right after a call: the guest is polling or collecting
      for (let i = 2; i <= 4; i++) expect((await call(vm, {})).value).toBe(i);
      await vm.restore(snap);
      expect((await call(vm, {})).value).toBe(2);
      await vm.restore(snap);
      await vm.restore(snap);
      expect((await call(vm, {})).value).toBe(2);
    });

    it.skipIf(!present)('an idle sandbox stops spinning once its poll window is over', async () => {
      const vm = await boot('function handler(e) { return e; }');
      for (let i = 0; i < 50; i++) await call(vm, i);
      await sleep(30); // every window here is at most 10 ms
      const before = process.cpuUsage();
      await sleep(300);
      const used = process.cpuUsage(before);
      // A guest still polling would burn the whole 300 ms on its vCPU thread.
      expect((used.user + used.system) / 1000).toBeLessThan(100);
    });

    it.skipIf(!present)('disposes promptly while the guest polls', async () => {
      const vm = await boot('function handler(e) { return e; }');
      await call(vm, 1);
      const t = performance.now();
      await vm.dispose();
      expect(performance.now() - t).toBeLessThan(1000);
      await expect(vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', '1']))).rejects.toMatchObject({
        code: 'ERR_INVALID_ARG',
      });
    });
  });
}

// Hand-assembled guests that claim to poll and then break the protocol (raw-guest.ts
// explains the encoding; C+116 is guest_flags). The host must neither hang nor crash.
const SET_POLLS = 'c7042574104000 01000000'; // mov dword [C+116], AIRLOCK_GUEST_FLAG_POLLS
const BOOT = '66baa103 c7042570104000 00000000 b801000000 ef'; // mov dx, PORT; response_len = 0; RESPONSE
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describeKvm('polling hand-over: a guest that breaks the protocol', () => {
  // A long window: the host takes a guest out of its poll once the window (plus 2 ms)
  // has passed on the wall clock, and a loaded host can hold the vCPU thread off for
  // longer than a short one before the guest gets to misbehave.
  const raw = (code: string) => {
    const vm = new (loadAddon().Vm)(buildImage(hex(code)), { ...defaultConfig, guestPollUs: 10_000 }, () => {});
    live.push(vm);
    return vm;
  };

  it('answering with no request in flight aborts the guest', async () => {
    const vm = raw(`${SET_POLLS} ${BOOT} b801000000 ef ebfe`); // a second RESPONSE right away
    await vm.boot();
    // Long enough for the vCPU thread to run the guest on even on a loaded host; a
    // request sent before that would make the second RESPONSE a valid answer.
    await sleep(200);
    const err = await rejection(vm.send(Buffer.from('x')));
    expect(err.code).toBe('ERR_POISONED');
    expect(String(err.message)).toContain('aborted');
  });

  it('parking over and over with a request in flight is stopped by the wall-clock monitor', async () => {
    const vm = raw(`${SET_POLLS} ${BOOT} b804000000 ef ebf8`); // loop: IDLE exit
    await vm.boot();
    await sleep(10);
    const err = await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 50 }));
    expect(err.code).toBe('ERR_CANCELLED');
    expect(err.terminatedBy).toBe('wall-clock');
    expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
  });
});
