// lifecycle.test.ts — builder -> proto -> runtime -> handlers -> loaded -> unload, and
// the ERR_CONSUMED rules between those steps.
import { afterEach, expect, it } from 'vitest';
import type { LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

describeEachBackend('lifecycle', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  it('runs the quick start and reports its backend on every object', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    expect(proto.backend).toBe(h.backend);
    const js = await proto.loadRuntime();
    expect(js.backend).toBe(h.backend);
    js.addHandler(
      'greet',
      `function handler(event) {
         event.message = 'Hello, ' + event.name + '!';
         return event;
       }`,
    );
    const loaded = await js.getLoadedSandbox();
    expect(loaded.backend).toBe(h.backend);
    expect(await loaded.callHandler('greet', { name: 'World' })).toEqual({ name: 'World', message: 'Hello, World!' });
  });

  it('accepts the three handler styles: top-level function, exported handler, default export', async () => {
    const loaded = await h.load({
      plain: 'function handler(e) { return { style: "plain", e }; }',
      exported: 'export function handler(e) { return { style: "exported", e }; }',
      dflt: 'export default function (e) { return { style: "default", e }; }',
      arrow: 'export default (e) => ({ style: "arrow", e });',
    });
    open.push(loaded);
    expect(await loaded.callHandler('plain', 1)).toEqual({ style: 'plain', e: 1 });
    expect(await loaded.callHandler('exported', 2)).toEqual({ style: 'exported', e: 2 });
    expect(await loaded.callHandler('dflt', 3)).toEqual({ style: 'default', e: 3 });
    expect(await loaded.callHandler('arrow', 4)).toEqual({ style: 'arrow', e: 4 });
  });

  it('awaits handlers that return promises, including chains of jobs', async () => {
    const loaded = await h.load({
      later: `async function handler(e) {
                let v = e.n;
                for (let i = 0; i < 5; i++) v = await Promise.resolve(v * 2);
                return { v };
              }`,
      rejects: 'async function handler() { await null; throw new RangeError("nope"); }',
    });
    open.push(loaded);
    expect(await loaded.callHandler('later', { n: 1 })).toEqual({ v: 32 });
    await expect(loaded.callHandler('rejects', {})).rejects.toMatchObject({
      code: 'ERR_GUEST_EXCEPTION',
      name: 'RangeError',
      message: 'nope',
    });
  });

  it('keeps state across calls and runs several handlers in one sandbox', async () => {
    const loaded = await h.load({
      count: 'let n = 0; function handler() { n += 1; return n; }',
      twice: 'let m = 0; function handler(e) { m += 2; return { m, e }; }',
    });
    open.push(loaded);
    expect(await loaded.callHandler('count', null)).toBe(1);
    expect(await loaded.callHandler('count', null)).toBe(2);
    expect(await loaded.callHandler('twice', 'x')).toEqual({ m: 2, e: 'x' });
    expect(await loaded.callHandler('count', null)).toBe(3);
    expect(await loaded.callHandler('twice', 'y')).toEqual({ m: 4, e: 'y' });
  });

  it('runs top-level module code once, at getLoadedSandbox()', async () => {
    const loaded = await h.load({
      init: 'globalThis.evaluations = (globalThis.evaluations || 0) + 1; function handler() { return globalThis.evaluations; }',
    });
    open.push(loaded);
    expect(await loaded.callHandler('init', null)).toBe(1);
    expect(await loaded.callHandler('init', null)).toBe(1);
  });

  it('unloads handlers and state, then loads new ones', async () => {
    const loaded = await h.load({ v1: 'let n = 0; function handler() { return { version: 1, n: ++n }; }' });
    open.push(loaded);
    expect(await loaded.callHandler('v1', {})).toEqual({ version: 1, n: 1 });
    const js = await loaded.unload();
    await expect(loaded.callHandler('v1', {})).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    js.addHandler('v2', 'let n = 0; function handler() { return { version: 2, n: ++n, g: typeof globalThis.leftover }; }');
    const again = await js.getLoadedSandbox();
    await expect(again.callHandler('v1', {})).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    expect(await again.callHandler('v2', {})).toEqual({ version: 2, n: 1, g: 'undefined' });
  });

  it('returns undefined for a handler without a return value and accepts an undefined event', async () => {
    const loaded = await h.load({ nothing: 'function handler(e) { return e === undefined ? undefined : 1; }' });
    open.push(loaded);
    expect(await loaded.callHandler('nothing', undefined)).toBeUndefined();
    expect(await loaded.callHandler('nothing', 0)).toBe(1);
  });

  it('refuses consumed objects with ERR_CONSUMED', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    const js = await proto.loadRuntime();
    await expect(proto.loadRuntime()).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    expect(() => proto.hostModule('late')).toThrow(expect.objectContaining({ code: 'ERR_CONSUMED' }));
    js.addHandler('h', 'function handler() { return 1; }');
    const loaded: LoadedJSSandbox = await js.getLoadedSandbox();
    await expect(js.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    expect(await loaded.callHandler('h', {})).toBe(1);
    await loaded.unload();
    await expect(loaded.unload()).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
  });

  it('rejects every operation after dispose() with ERR_CONSUMED, and dispose is idempotent', async () => {
    const loaded = await h.load({ h: 'function handler() { return 1; }' });
    await loaded.dispose();
    await loaded.dispose();
    await expect(loaded.callHandler('h', {})).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    await expect(loaded.snapshot()).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
  });

  it('supports `await using` through Symbol.asyncDispose', async () => {
    let escaped: LoadedJSSandbox | undefined;
    {
      await using loaded = await h.load({ h: 'function handler() { return 7; }' });
      escaped = loaded;
      expect(await loaded.callHandler('h', {})).toBe(7);
    }
    await expect(escaped.callHandler('h', {})).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
  });
});

describeEachBackend('dispose during a call', (h) => {
  it('rejects the running call and the queued ones with ERR_CONSUMED, and other sandboxes carry on', async () => {
    const loaded = await h.load({ spin: 'function handler() { for (;;) {} }' });
    const running = loaded.callHandler('spin', {}).catch((e: { code?: string }) => e.code);
    const queued = loaded.callHandler('spin', {}).catch((e: { code?: string }) => e.code);
    await new Promise((r) => setTimeout(r, 20));
    await loaded.dispose();
    expect(await running).toBe('ERR_CONSUMED');
    expect(await queued).toBe('ERR_CONSUMED');
    const other = await h.load({ one: 'function handler() { return 1; }' });
    expect(await other.callHandler('one', {})).toBe(1);
    await other.dispose();
  });
});
