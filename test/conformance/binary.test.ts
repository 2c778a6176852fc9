// binary.test.ts — binary data across the boundary (setBinaryData) on both tiers: bytes in
// events, results and host-function arguments and results, nested in JSON values, and the
// default JSON.stringify semantics when it is off.
import { expect, it } from 'vitest';
import { describeEachBackend } from './backends.js';

const ECHO = `function handler(e) {
  const describe = (v) => v instanceof Uint8Array ? { u8: Array.from(v) } : v instanceof ArrayBuffer ? { ab: Array.from(new Uint8Array(v)) } : v;
  return { seen: [describe(e.a), describe(e.deep.list[1]), describe(e.buf)], back: e };
}`;

describeEachBackend('binary data', (h) => {
  it('carries Uint8Array, Buffer and ArrayBuffer in events and results, nested anywhere', async () => {
    const sandbox = await h.load({ echo: ECHO }, { builder: h.builder().setBinaryData() });
    try {
      const ab = new Uint8Array([5, 6]).buffer;
      const event = { a: new Uint8Array([1, 2, 3]), deep: { list: ['x', ab] }, buf: Buffer.from([0, 255]), empty: new Uint8Array(0) };
      const out = (await sandbox.callHandler('echo', event)) as { seen: unknown[]; back: { a: Uint8Array; deep: { list: [string, ArrayBuffer] }; buf: Uint8Array; empty: Uint8Array } };
      expect(out.seen).toEqual([{ u8: [1, 2, 3] }, { ab: [5, 6] }, { u8: [0, 255] }]);
      expect(out.back.a).toBeInstanceOf(Uint8Array);
      expect(Array.from(out.back.a)).toEqual([1, 2, 3]);
      expect(out.back.deep.list[1]).toBeInstanceOf(ArrayBuffer);
      expect(Array.from(new Uint8Array(out.back.deep.list[1]))).toEqual([5, 6]);
      expect(Array.from(out.back.buf)).toEqual([0, 255]);
      expect(out.back.empty).toEqual(new Uint8Array(0));
      expect(await sandbox.callHandler('echo', { a: 1, deep: { list: [0, 2] }, buf: 'plain' })).toMatchObject({ seen: [1, 2, 'plain'] });
    } finally {
      await sandbox.dispose();
    }
  });

  it('carries bytes in host-function arguments and results', async () => {
    const proto = await h.builder().setBinaryData().build();
    const seen: unknown[] = [];
    proto.hostModule('blob').register('roundTrip', (key: string, data: Uint8Array) => {
      seen.push(key, data instanceof Uint8Array, Array.from(data));
      return { data: Buffer.concat([Buffer.from(data), Buffer.from([9])]), raw: new Uint8Array([4]).buffer };
    });
    const js = await proto.loadRuntime();
    js.addHandler('h', `import { roundTrip } from 'host:blob';
      export function handler() {
        const r = roundTrip('k', new Uint8Array([1, 2]).subarray(1));
        return [r.data instanceof Uint8Array, Array.from(r.data), r.raw instanceof ArrayBuffer, r.raw.byteLength];
      }`);
    const sandbox = await js.getLoadedSandbox();
    try {
      expect(await sandbox.callHandler('h', {})).toEqual([true, [2, 9], true, 1]);
      expect(seen).toEqual(['k', true, [2]]);
    } finally {
      await sandbox.dispose();
    }
  });

  it('keeps JSON.stringify semantics when off', async () => {
    const sandbox = await h.load({ echo: 'function handler(e) { return [e, new Uint8Array([1, 2])]; }' });
    try {
      expect(await sandbox.callHandler('echo', Buffer.from([7]))).toEqual([{ type: 'Buffer', data: [7] }, { 0: 1, 1: 2 }]);
    } finally {
      await sandbox.dispose();
    }
  });

  it("refuses the placeholder's reserved key in user values, on both sides", async () => {
    const proto = await h.builder().setBinaryData().build();
    proto.hostModule('m').register('forge', () => ({ '$airlock.binary': 0, type: 'Uint8Array' }));
    const js = await proto.loadRuntime();
    js.addHandler('ret', `function handler() { return { '$airlock.binary': 0, type: 'Uint8Array' }; }`);
    js.addHandler('host', `import { forge } from 'host:m'; export function handler() { try { forge(); return 'accepted'; } catch (e) { return e.name + ': ' + e.message; } }`);
    const sandbox = await js.getLoadedSandbox();
    try {
      await expect(sandbox.callHandler('ret', {})).rejects.toMatchObject({ code: 'ERR_GUEST_EXCEPTION', message: expect.stringContaining('$airlock.binary') });
      expect(await sandbox.callHandler('host', {})).toMatch(/^HostFunctionError: .*\$airlock\.binary/);
      await expect(sandbox.callHandler('ret', { '$airlock.binary': 0, type: 'Uint8Array' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
      expect(sandbox.poisoned).toBe(false);
    } finally {
      await sandbox.dispose();
    }
  });
});
