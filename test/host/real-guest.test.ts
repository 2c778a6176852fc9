// real-guest.test.ts — the VMM running the real guest image (out/guest/kvm/
// airlock-guest.img, built by `make -C guest`): boot to READY, load and call handlers,
// a host call, snapshot/restore of JS state, and cancelling a runaway handler. The
// messages are framed here by hand, as guest/include/abi.h defines them.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { decodeMessages, encodeMessage, loadAddon, rejection, type NativeVm } from './raw-guest.js';

const imagePath = join(__dirname, '..', '..', 'out', 'guest', 'kvm', 'airlock-guest.img');
const config = { heapSize: 64 << 20, stackSize: 1 << 20, inputSize: 1 << 20, outputSize: 1 << 20, consoleLimit: 4096 };

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});

/** The final message of an output buffer (console messages may precede it). */
function final(output: Buffer) {
  const msgs = decodeMessages(output);
  expect(msgs.length).toBeGreaterThan(0);
  return msgs[msgs.length - 1];
}

async function request(vm: NativeVm, kind: number, fields: string[], opts?: { cpuTimeoutMs?: number }) {
  return final((await vm.send(encodeMessage(kind, 0, fields), opts)).output);
}

async function bootWithHandler(source: string, hostFunctions: string[] = [], onHostCall = (_o: Buffer, _id: number) => {}) {
  const vm = new (loadAddon().Vm)(readFileSync(imagePath), config, onHostCall);
  live.push(vm);
  const ready = final(await vm.boot());
  expect(ready.kind).toBe(abi.AIRLOCK_MSG_READY);
  expect((await request(vm, abi.AIRLOCK_MSG_LOAD_RUNTIME, hostFunctions)).status).toBe(abi.AIRLOCK_STATUS_OK);
  const loaded = await request(vm, abi.AIRLOCK_MSG_LOAD, ['handler', '', 'h', source]);
  expect(loaded.status, loaded.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  return vm;
}

const call = (vm: NativeVm, event: unknown, opts?: { cpuTimeoutMs?: number }) =>
  request(vm, abi.AIRLOCK_MSG_CALL, ['h', JSON.stringify(event)], opts);

const present = existsSync(imagePath);
if (!present) console.warn(`[airlock tests] skipping real-guest VMM tests: ${imagePath} is missing (run make -C guest)`);

describeKvm('host addon: the real guest image', () => {
  it.skipIf(!present)('boots to READY and answers a CALL', async () => {
    const vm = await bootWithHandler('function handler(e) { return { sum: e.a + e.b }; }');
    const r = await call(vm, { a: 2, b: 3 });
    expect(r.kind).toBe(abi.AIRLOCK_MSG_RESULT);
    expect(r.status).toBe(abi.AIRLOCK_STATUS_OK);
    expect(JSON.parse(r.fields[0].toString())).toEqual({ sum: 5 });
  });

  it.skipIf(!present)('serves a host call from the guest', async () => {
    let vm!: NativeVm;
    const seen: unknown[] = [];
    vm = await bootWithHandler(
      "import { add } from 'host:math'; function handler(e) { return add(e.a, e.b) * 10; }",
      ['math', 'add'],
      (out, id) => {
        const hc = final(out);
        expect(hc.kind).toBe(abi.AIRLOCK_MSG_HOST_CALL);
        const [mod, fn, args] = hc.fields.map(String);
        seen.push([mod, fn, JSON.parse(args)]);
        const [a, b] = JSON.parse(args) as number[];
        setTimeout(() => vm.hostReturn(encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [String(a + b)]), id), 5);
      },
    );
    const r = await call(vm, { a: 4, b: 5 });
    expect(r.status).toBe(abi.AIRLOCK_STATUS_OK);
    expect(JSON.parse(r.fields[0].toString())).toBe(90);
    expect(seen).toEqual([['math', 'add', [4, 5]]]);
  });

  it.skipIf(!present)('rolls JS state back with snapshot/restore, also after a cancelled runaway handler', async () => {
    const vm = await bootWithHandler(
      'let n = 0; function handler(e) { if (e.spin) { for (;;) {} } n += 1; return n; }',
    );
    expect(JSON.parse((await call(vm, {})).fields[0].toString())).toBe(1);
    const snap = await vm.snapshot();
    expect(JSON.parse((await call(vm, {})).fields[0].toString())).toBe(2);
    await vm.restore(snap);
    expect(JSON.parse((await call(vm, {})).fields[0].toString())).toBe(2);
    const err = await rejection(call(vm, { spin: true }, { cpuTimeoutMs: 50 }));
    expect(err.code).toBe('ERR_CANCELLED');
    expect(err.terminatedBy).toBe('cpu-time');
    await vm.restore(snap);
    expect(JSON.parse((await call(vm, {})).fields[0].toString())).toBe(2);
  });
});
