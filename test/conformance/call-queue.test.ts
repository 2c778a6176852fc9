// call-queue.test.ts — how callHandler() queues and settles on every tier: calls made at
// once run one at a time in call order; a bad argument rejects (never throws) without
// disturbing the calls around it; a call queued behind one that poisons the sandbox is
// refused, and the queue carries on after a restore; each call's stats are its own.
import { afterEach, expect, it } from 'vitest';
import type { LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const COUNTER = 'let n = 0;\nfunction handler(e) { n++; return { id: e.id, n }; }';
const SPIN = 'function handler() { for (;;) {} }';
const THROWS = 'function handler() { throw new RangeError("no"); }';

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(
    () => undefined,
    (e: { code?: string }) => e.code,
  );
}

describeEachBackend('call queue', (h) => {
  const open: LoadedJSSandbox[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });
  const load = async (handlers: Record<string, string>) => {
    const s = await h.load(handlers);
    open.push(s);
    return s;
  };

  it('runs calls made at once one at a time, in call order, each with its own result', async () => {
    const s = await load({ count: COUNTER });
    const results = await Promise.all(Array.from({ length: 40 }, (_, id) => s.callHandler('count', { id })));
    expect(results).toEqual(Array.from({ length: 40 }, (_, id) => ({ id, n: id + 1 })));
  });

  it('rejects bad arguments with ERR_INVALID_ARG instead of throwing, and the calls queued around them run', async () => {
    const s = await load({ count: COUNTER });
    let first: Promise<unknown> | undefined;
    let last: Promise<unknown> | undefined;
    // Each rejection is handled as it is made (codeOf), before the first call settles.
    const refused: Promise<string | undefined>[] = [];
    expect(() => {
      first = s.callHandler('count', { id: 0 });
      refused.push(codeOf(s.callHandler('', {})));
      refused.push(codeOf(s.callHandler('count', { big: 1n })));
      refused.push(codeOf(s.callHandler('count', {}, { wallClockTimeoutMs: -1 })));
      refused.push(codeOf(s.callHandler('count', {}, null as never)));
      refused.push(codeOf(s.callHandler('count', {}, { gc: 'yes' as never })));
      last = s.callHandler('count', { id: 1 });
    }).not.toThrow();
    expect(await first).toEqual({ id: 0, n: 1 });
    expect(await Promise.all(refused)).toEqual(refused.map(() => 'ERR_INVALID_ARG'));
    expect(await last).toEqual({ id: 1, n: 2 });
  });

  it('refuses a call queued behind one that was killed as poisoned, and serves the queue again after a restore', async () => {
    const s = await load({ spin: SPIN, count: COUNTER });
    const snap = await s.snapshot();
    const killed = codeOf(s.callHandler('spin', {}));
    const queued = codeOf(s.callHandler('count', { id: 1 }));
    setTimeout(() => s.interruptHandle.kill(), 20);
    expect(await killed).toBe('ERR_CANCELLED');
    expect(await queued).toBe('ERR_POISONED');
    await s.restore(snap);
    const again = await Promise.all([s.callHandler('count', { id: 2 }), s.callHandler('count', { id: 3 })]);
    expect(again).toEqual([
      { id: 2, n: 1 },
      { id: 3, n: 2 },
    ]);
  });

  it("records each call's own stats: a handler's exception ends it normally, a wall clock by its monitor", async () => {
    const s = await load({ throws: THROWS, spin: SPIN, count: COUNTER });
    expect(await codeOf(s.callHandler('throws', {}))).toBe('ERR_GUEST_EXCEPTION');
    const thrown = s.lastCallStats!;
    expect(thrown.terminatedBy).toBeNull();
    expect(thrown.wallClockMs).toBeGreaterThan(0);
    expect(await codeOf(s.callHandler('spin', {}, { wallClockTimeoutMs: 20 }))).toBe('ERR_CANCELLED');
    expect(s.lastCallStats?.terminatedBy).toBe('wall-clock');
    expect(s.lastCallStats).not.toBe(thrown);
  });
});
