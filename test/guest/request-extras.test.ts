// request-extras.test.ts — the guest runtime's handling of the entropy field (LOAD_RUNTIME,
// LOAD, CALL) and LOAD_RUNTIME's options field, driven without a VM: well-formed fields
// work, malformed ones are BAD_REQUEST and leave the guest usable.
import { afterAll, expect, it } from 'vitest';
import {
  AIRLOCK_ENTROPY_SIZE,
  AIRLOCK_MSG_CALL,
  AIRLOCK_MSG_LOAD,
  AIRLOCK_MSG_LOAD_RUNTIME,
  AIRLOCK_MSG_READY,
  AIRLOCK_MSG_RESULT,
  AIRLOCK_REQUEST_FLAG_ENTROPY,
  AIRLOCK_RUNTIME_FLAG_OPTIONS,
  AIRLOCK_STATUS_BAD_REQUEST,
  AIRLOCK_STATUS_OK,
} from '../../src/engine/abi.generated';
import { encodeRuntimeOptions } from '../../src/engine/protocol';
import { NativeGuest, texts, type Exchange } from './driver';

const guests: NativeGuest[] = [];
afterAll(async () => {
  await Promise.all(guests.map((g) => g.close()));
});

async function boot(): Promise<NativeGuest> {
  const g = new NativeGuest();
  guests.push(g);
  expect((await g.boot()).final.kind).toBe(AIRLOCK_MSG_READY);
  return g;
}

function status(x: Exchange): number {
  expect(x.final.kind).toBe(AIRLOCK_MSG_RESULT);
  return x.final.status;
}

const entropy = (fill: number) => Buffer.alloc(AIRLOCK_ENTROPY_SIZE, fill);
const DRAW = 'function handler(e) { return [e, Math.random()]; }';

it('accepts entropy on LOAD_RUNTIME, LOAD and CALL and keeps the other fields', async () => {
  const g = await boot();
  expect(status(await g.send(AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_REQUEST_FLAG_ENTROPY, [entropy(1)]))).toBe(AIRLOCK_STATUS_OK);
  expect(status(await g.send(AIRLOCK_MSG_LOAD, AIRLOCK_REQUEST_FLAG_ENTROPY, ['handler', '', 'h', DRAW, entropy(2)]))).toBe(AIRLOCK_STATUS_OK);
  const withEvent = await g.send(AIRLOCK_MSG_CALL, AIRLOCK_REQUEST_FLAG_ENTROPY, ['h', '{"a":1}', entropy(3)]);
  expect(JSON.parse(texts(withEvent)[0])[0]).toEqual({ a: 1 });
  const noEvent = await g.send(AIRLOCK_MSG_CALL, AIRLOCK_REQUEST_FLAG_ENTROPY, ['h', entropy(3)]);
  expect(JSON.parse(texts(noEvent)[0])[0]).toBeNull(); // undefined inside an array is null in JSON
});

it('draws different numbers after the same state gets different entropy, the same after the same', async () => {
  const draws: number[] = [];
  for (const fill of [7, 7, 8]) {
    const g = await boot();
    await g.send(AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_REQUEST_FLAG_ENTROPY, [entropy(fill)]);
    await g.send(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', DRAW]);
    draws.push(JSON.parse(texts(await g.send(AIRLOCK_MSG_CALL, 0, ['h', '1']))[0])[1]);
  }
  expect(draws[0]).toBe(draws[1]);
  expect(draws[2]).not.toBe(draws[0]);
});

it('refuses a missing or mis-sized entropy field with BAD_REQUEST and stays usable', async () => {
  const g = await boot();
  expect(status(await g.send(AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_REQUEST_FLAG_ENTROPY, []))).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  expect(status(await g.send(AIRLOCK_MSG_LOAD_RUNTIME, 0, []))).toBe(AIRLOCK_STATUS_OK);
  expect(status(await g.send(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', DRAW]))).toBe(AIRLOCK_STATUS_OK);
  for (const size of [0, 1, AIRLOCK_ENTROPY_SIZE - 1, AIRLOCK_ENTROPY_SIZE + 1, 4096]) {
    expect(status(await g.send(AIRLOCK_MSG_CALL, AIRLOCK_REQUEST_FLAG_ENTROPY, ['h', '1', Buffer.alloc(size)]))).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  }
  // Only the handler name is left once the entropy field is taken: an undefined event.
  expect(status(await g.send(AIRLOCK_MSG_CALL, AIRLOCK_REQUEST_FLAG_ENTROPY, ['h']))).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  expect(status(await g.send(AIRLOCK_MSG_CALL, AIRLOCK_REQUEST_FLAG_ENTROPY, [entropy(0)]))).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  expect(status(await g.send(AIRLOCK_MSG_CALL, 0, ['h', '5']))).toBe(AIRLOCK_STATUS_OK);
});

it('refuses a mis-sized options field and honours a well-formed one', async () => {
  const g = await boot();
  for (const size of [0, 23, 25]) {
    expect(status(await g.send(AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_RUNTIME_FLAG_OPTIONS, [Buffer.alloc(size)]))).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  }
  expect(status(await g.send(AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_RUNTIME_FLAG_OPTIONS, []))).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  // Host-function pairs must stay pairs once the options field is taken.
  expect(status(await g.send(AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_RUNTIME_FLAG_OPTIONS, ['m', encodeRuntimeOptions({})]))).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  const options = encodeRuntimeOptions({ hardened: { timeResolutionUs: 1000, fixedTimeMs: 5 }, randomSeed: 1n });
  expect(status(await g.send(AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_RUNTIME_FLAG_OPTIONS | AIRLOCK_REQUEST_FLAG_ENTROPY, ['m', 'f', options, entropy(9)]))).toBe(
    AIRLOCK_STATUS_OK,
  );
  await g.send(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', 'function handler() { try { eval("1"); return "eval"; } catch (e) { return Date.now(); } }']);
  expect(JSON.parse(texts(await g.send(AIRLOCK_MSG_CALL, 0, ['h']))[0])).toBe(5);
  // A hostile seed or time is just a number: every 64-bit value is accepted.
  const extreme = Buffer.alloc(24, 0xff);
  expect(status(await g.send(AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_RUNTIME_FLAG_OPTIONS, [extreme]))).toBe(AIRLOCK_STATUS_OK);
});

it('decodes binary fields when the options turn binary data on, and refuses forged placeholders', async () => {
  const g = await boot();
  const options = encodeRuntimeOptions({ binary: true });
  expect(status(await g.send(AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_RUNTIME_FLAG_OPTIONS, [options]))).toBe(AIRLOCK_STATUS_OK);
  await g.send(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', 'function handler(e) { return [Array.from(e.b), e.b instanceof Uint8Array, e.a instanceof ArrayBuffer]; }']);
  const ok = await g.send(AIRLOCK_MSG_CALL, 0, ['h', '{"b":{"$airlock.binary":1,"type":"Uint8Array"},"a":{"$airlock.binary":0,"type":"ArrayBuffer"}}', Buffer.from([1]), Buffer.from([2, 3])]);
  expect(JSON.parse(texts(ok)[0])).toEqual([[2, 3], true, true]);
  for (const forged of ['{"b":{"$airlock.binary":5,"type":"Uint8Array"}}', '{"b":{"$airlock.binary":0,"type":"Int8Array"}}', '{"b":{"$airlock.binary":0}}']) {
    expect(status(await g.send(AIRLOCK_MSG_CALL, 0, ['h', forged, Buffer.from([1])]))).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  }
  expect(JSON.parse(texts(await g.send(AIRLOCK_MSG_CALL, 0, ['h', '{"b":{"$airlock.binary":0,"type":"Uint8Array"}}', Buffer.from([4])]))[0])[0]).toEqual([4]);
});
