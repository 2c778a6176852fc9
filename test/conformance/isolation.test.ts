// isolation.test.ts — sandboxes share nothing: globals, module state and failures stay
// inside the sandbox that made them.
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

describeEachBackend('isolation', (h) => {
  let a: LoadedJSSandbox;
  let b: LoadedJSSandbox;
  const code = {
    set: 'function handler(e) { globalThis.secret = e; Object.prototype.polluted = true; return "set"; }',
    get: 'function handler() { return { secret: globalThis.secret ?? null, polluted: ({}).polluted ?? false }; }',
    fail: 'function handler() { throw new Error("only here"); }',
  };
  beforeAll(async () => {
    [a, b] = await Promise.all([h.load(code), h.load(code)]);
  });
  afterAll(async () => {
    await Promise.all([a?.dispose(), b?.dispose()]);
  });

  it('does not leak globals or prototype changes between sandboxes', async () => {
    expect(await a.callHandler('set', 'a-only')).toBe('set');
    expect(await a.callHandler('get', {})).toEqual({ secret: 'a-only', polluted: true });
    expect(await b.callHandler('get', {})).toEqual({ secret: null, polluted: false });
  });

  it('runs calls on different sandboxes concurrently and keeps their results apart', async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).callHandler('set', `v${i}`).then(() => (i % 2 ? a : b).callHandler('get', {}))),
    );
    for (const r of results) expect(r).toHaveProperty('secret');
    expect(((await a.callHandler('get', {})) as { secret: string }).secret).toMatch(/^v\d*[13579]$/);
    expect(((await b.callHandler('get', {})) as { secret: string }).secret).toMatch(/^v\d*[02468]$/);
  });

  it('keeps one sandbox failing from affecting the other', async () => {
    await expect(a.callHandler('fail', {})).rejects.toMatchObject({ code: 'ERR_GUEST_EXCEPTION' });
    expect(await b.callHandler('set', 'b-still-fine')).toBe('set');
  });

  it('serialises concurrent calls on one sandbox in call order', async () => {
    const loaded = await h.load({ seq: 'let n = 0; function handler(e) { n += 1; return [e, n]; }' });
    try {
      const results = await Promise.all(Array.from({ length: 25 }, (_, i) => loaded.callHandler('seq', i)));
      expect(results).toEqual(Array.from({ length: 25 }, (_, i) => [i, i + 1]));
    } finally {
      await loaded.dispose();
    }
  });
});
