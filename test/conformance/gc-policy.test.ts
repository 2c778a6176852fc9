// gc-policy.test.ts — the post-call garbage collection on every tier: `gc: true` collects
// after the call (as in the mirrored API), the default collects only once the heap has
// grown by a share of itself, and cyclic garbage stays bounded across thousands of
// calls whatever the option.
import { afterEach, expect, it } from 'vitest';
import type { LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const MiB = 1024 * 1024;

// `cycle` leaves one self-referencing object (freed only by a collection) watched by a
// WeakRef; `alive` says whether a collection has run since. `garbage` leaves `kb` KiB
// of cyclic garbage.
const HANDLERS = {
  cycle: 'function handler() { const o = { pad: "x".repeat(64) }; o.self = o; globalThis.watched = new WeakRef(o); return true; }',
  alive: 'function handler() { return globalThis.watched.deref() !== undefined; }',
  garbage:
    'function handler(e) { const a = []; for (let i = 0; i < e.kb; i++) { const o = { s: "y".repeat(1000) + i }; o.self = o; a.push(o); } a.push(a); return a.length; }',
};

describeEachBackend('post-call garbage collection', (h) => {
  const sandboxes: LoadedJSSandbox[] = [];
  afterEach(async () => {
    await Promise.all(sandboxes.splice(0).map((s) => s.dispose()));
  });
  const load = async (heapBytes?: number) => {
    const builder = h.builder();
    if (heapBytes !== undefined) builder.setHeapSize(heapBytes);
    const s = await h.load(HANDLERS, { builder });
    sandboxes.push(s);
    // Start from a collected heap, so the default's growth is counted from here.
    await s.callHandler('alive', undefined, { gc: true }).catch(() => undefined);
    return s;
  };

  it('gc: true collects the garbage of the call', async () => {
    const s = await load();
    await s.callHandler('cycle', undefined, { gc: true });
    expect(await s.callHandler('alive', undefined, { gc: false })).toBe(false);
  });

  it('by default, a call that leaves little garbage is not followed by a collection', async () => {
    const s = await load();
    await s.callHandler('cycle', undefined, { gc: true });
    await s.callHandler('cycle', undefined);
    expect(await s.callHandler('alive', undefined)).toBe(true);
    expect(await s.callHandler('alive', undefined)).toBe(true);
  });

  it('by default, a collection follows once the heap has grown enough', async () => {
    const s = await load();
    await s.callHandler('cycle', undefined);
    // About 2 MiB of cyclic garbage: more than the growth the policy waits for.
    expect(await s.callHandler('garbage', { kb: 2048 })).toBe(2049);
    expect(await s.callHandler('alive', undefined)).toBe(false);
  });

  for (const gc of [undefined, false, true]) {
    it(`5000 calls that each leave cyclic garbage stay within a small heap (gc: ${gc})`, async () => {
      // 5000 x ~8 KiB is 40 MiB of garbage through a 4 MiB heap: without collections
      // the calls would run out of memory.
      const s = await load(4 * MiB);
      const options = gc === undefined ? undefined : { gc };
      for (let i = 0; i < 5000; i++) {
        const n = await s.callHandler('garbage', { kb: 8 }, options);
        if (n !== 9) expect(n).toBe(9);
      }
    }, 120_000);
  }
});
