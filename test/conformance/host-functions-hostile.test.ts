// host-functions-hostile.test.ts — host functions that throw or return awkward values,
// callbacks that outlive their call, and operations cut short by dispose(): the call
// always settles, the guest gets a readable, catchable error, and every rejection has
// a code.
import { afterEach, expect, it } from 'vitest';
import type { LoadedJSSandbox, ProtoJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const CATCHER =
  'import { f } from "host:m"; async function handler() { try { await f(); return "no error"; } catch (e) { return e.name + ": " + e.message; } }';

describeEachBackend('hostile host functions', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  async function loadWith(register: (p: ProtoJSSandbox) => void, handlers: Record<string, string>): Promise<LoadedJSSandbox> {
    const proto = await h.builder().build();
    open.push(proto);
    register(proto);
    const js = await proto.loadRuntime();
    for (const [k, v] of Object.entries(handlers)) js.addHandler(k, v);
    return js.getLoadedSandbox();
  }

  const awkward: [string, () => unknown, RegExp][] = [
    ['throws a null-prototype object', () => { throw Object.create(null); }, /^HostFunctionError: .*was thrown/],
    ['throws an Error whose message is a number', () => { const e = new Error('x'); (e as { message: unknown }).message = 42; throw e; }, /^HostFunctionError: 42$/],
    ['throws an object whose toString throws', () => { throw { toString() { throw new Error('no'); } }; }, /^HostFunctionError: .*was thrown/],
    ['throws null', () => { throw null; }, /^HostFunctionError: null was thrown$/],
    ['throws undefined', () => { throw undefined; }, /^HostFunctionError: undefined was thrown$/],
    ['returns a value whose toJSON throws null', () => ({ toJSON() { throw null; } }), /^HostFunctionError: .*not JSON-serialisable: null was thrown/],
    ['rejects with a null-prototype object', () => Promise.reject(Object.create(null)), /^HostFunctionError: .*was thrown/],
    ['rejects with a string', () => Promise.reject('plain words'), /^HostFunctionError: plain words$/],
    ['returns a BigInt', () => 1n, /^HostFunctionError: .*not JSON-serialisable/],
    ['returns a cyclic object', () => { const o: Record<string, unknown> = {}; o.self = o; return o; }, /^HostFunctionError: .*not JSON-serialisable/],
  ];
  for (const [what, fn, expected] of awkward) {
    it(`answers the guest with a catchable error when the callback ${what}`, async () => {
      const loaded = await loadWith((p) => p.register('m', 'f', fn), { h: CATCHER });
      expect(await loaded.callHandler('h', {}, { wallClockTimeoutMs: 10_000 })).toMatch(expected);
      // The sandbox is not poisoned and keeps answering.
      expect(loaded.poisoned).toBe(false);
      expect(await loaded.callHandler('h', {}, { wallClockTimeoutMs: 10_000 })).toMatch(expected);
    });
  }

  it('lets work started inside a callback call into the sandbox once that callback has returned', async () => {
    let loaded: LoadedJSSandbox | undefined;
    let later: Promise<unknown> | undefined;
    loaded = await loadWith(
      (p) =>
        p.register('m', 'schedule', () => {
          later = new Promise((resolve) => setTimeout(() => resolve(loaded!.callHandler('plain', {}).catch((e: { code?: string }) => e.code)), 5));
          return 'scheduled';
        }),
      {
        outer: 'import { schedule } from "host:m"; function handler() { return schedule(); }',
        plain: 'function handler() { return "plain"; }',
      },
    );
    expect(await loaded.callHandler('outer', {})).toBe('scheduled');
    expect(await later).toBe('plain');
  });

  it('still refuses, with ERR_BUSY, a call from a timer into a sandbox that waits for that callback', async () => {
    let loaded: LoadedJSSandbox | undefined;
    loaded = await loadWith(
      (p) =>
        p.register('m', 'wait', () => new Promise((resolve) => setTimeout(() => resolve(loaded!.callHandler('plain', {}).catch((e: { code?: string }) => e.code)), 5))),
      {
        outer: 'import { wait } from "host:m"; function handler() { return wait(); }',
        plain: 'function handler() { return "plain"; }',
      },
    );
    expect(await loaded.callHandler('outer', {})).toBe('ERR_BUSY');
  });

  it('rejects snapshot() cut short by dispose() with ERR_CONSUMED', async () => {
    const loaded = await loadWith(() => undefined, { plain: 'function handler() { return 1; }' });
    const pending = loaded.snapshot();
    const disposing = loaded.dispose();
    const outcome = await pending.then(
      () => 'snapshot taken first',
      (e: { code?: string }) => e.code,
    );
    await disposing;
    expect(['snapshot taken first', 'ERR_CONSUMED']).toContain(outcome);
    await expect(loaded.snapshot()).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
  });

  it('names the setter to change when a result is too large', async () => {
    const proto = await h.builder().setOutputBufferSize(4096).build();
    open.push(proto);
    const js = await proto.loadRuntime();
    js.addHandler('big', 'function handler() { return "x".repeat(10000); }');
    const loaded = await js.getLoadedSandbox();
    await expect(loaded.callHandler('big', {})).rejects.toMatchObject({
      code: 'ERR_TOO_LARGE',
      message: expect.stringContaining('setOutputBufferSize()'),
    });
  });
});
