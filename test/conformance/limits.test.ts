// limits.test.ts — snapshot/restore, monitors, kill, poisoning and CallStats: what keeps a
// runaway, exhausted or killed handler from taking anything down with it.
import { afterEach, expect, it } from 'vitest';
import type { LoadedJSSandbox, ProtoJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const SPIN = 'function handler() { for (;;) {} }';
const COUNTER = 'let n = 0; function handler() { return ++n; }';

describeEachBackend('snapshot and restore', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  it('returns handler and module state to the snapshot, any number of times', async () => {
    const loaded = await h.load(
      { count: COUNTER, mod: "import { next } from 'user:m'; function handler() { return next(); }" },
      { modules: [['m', 'let k = 10; export const next = () => ++k;']] },
    );
    open.push(loaded);
    expect(await loaded.callHandler('count', {})).toBe(1);
    const snapshot = await loaded.snapshot();
    for (let round = 0; round < 5; round++) {
      expect(await loaded.callHandler('count', {})).toBe(2);
      expect(await loaded.callHandler('count', {})).toBe(3);
      expect(await loaded.callHandler('mod', {})).toBe(11);
      await loaded.restore(snapshot);
    }
    expect(await loaded.callHandler('mod', {})).toBe(11);
  });

  it('rolls back large heap growth and keeps working after it', async () => {
    const loaded = await h.load({
      grow: 'const keep = []; function handler(e) { for (let i = 0; i < e.n; i++) keep.push("x".repeat(1000) + i); return keep.length; }',
    });
    open.push(loaded);
    const snapshot = await loaded.snapshot();
    expect(await loaded.callHandler('grow', { n: 20_000 })).toBe(20_000);
    await loaded.restore(snapshot);
    expect(await loaded.callHandler('grow', { n: 1 })).toBe(1);
    await loaded.restore(snapshot);
    expect(await loaded.callHandler('grow', { n: 5 })).toBe(5);
  });

  it('leaves host functions and host-side state alone', async () => {
    let callCount = 0;
    const proto = await h.builder().build();
    open.push(proto);
    proto.register('stats', 'hit', () => ++callCount);
    const js = await proto.loadRuntime();
    js.addHandler('handler', 'import * as stats from "host:stats"; function handler() { return { count: stats.hit() }; }');
    const loaded = await js.getLoadedSandbox();
    const snapshot = await loaded.snapshot();
    expect(await loaded.callHandler('handler', {})).toEqual({ count: 1 });
    expect(await loaded.callHandler('handler', {})).toEqual({ count: 2 });
    await loaded.restore(snapshot);
    expect(await loaded.callHandler('handler', {})).toEqual({ count: 3 });
  });

  it('refuses snapshots from another sandbox and things that are not snapshots', async () => {
    const [a, b] = await Promise.all([h.load({ c: COUNTER }), h.load({ c: COUNTER })]);
    open.push(a, b);
    const fromB = await b.snapshot();
    await expect(a.restore(fromB)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(a.restore({} as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(a.restore(undefined as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    expect(await a.callHandler('c', {})).toBe(1);
  });
});

describeEachBackend('monitors, kill and poisoning', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  async function spinner(extra: Record<string, string> = {}, register?: (p: ProtoJSSandbox) => void): Promise<LoadedJSSandbox> {
    const proto = await h.builder().build();
    open.push(proto);
    register?.(proto);
    const js = await proto.loadRuntime();
    js.addHandler('spin', SPIN);
    js.addHandler('count', COUNTER);
    for (const [k, v] of Object.entries(extra)) js.addHandler(k, v);
    return js.getLoadedSandbox();
  }

  it('has no CallStats before the first call, and fresh ones after each call', async () => {
    const loaded = await spinner();
    expect(loaded.lastCallStats).toBeNull();
    await loaded.callHandler('count', {});
    const first = loaded.lastCallStats!;
    expect(first.wallClockMs).toBeGreaterThan(0);
    expect(first.terminatedBy).toBeNull();
    if (h.backend === 'kvm') {
      // The vCPU thread's CPU clock always measures, and a call that ran JavaScript used some.
      expect(first.cpuTimeMs).toBeTypeOf('number');
      expect(first.cpuTimeMs!).toBeGreaterThan(0);
      expect(first.cpuTimeMs!).toBeLessThanOrEqual(first.wallClockMs + 1);
    } else {
      // The worker measures CPU time only where its thread clock is readable: null otherwise.
      expect(first.cpuTimeMs === null || (first.cpuTimeMs >= 0 && first.cpuTimeMs <= first.wallClockMs + 1)).toBe(true);
    }
    await loaded.callHandler('count', {});
    expect(loaded.lastCallStats).not.toBe(first);
  });

  it('stops a spinning handler by wall clock, poisons, and recovers with restore()', async () => {
    const loaded = await spinner();
    const snapshot = await loaded.snapshot();
    await expect(loaded.callHandler('spin', {}, { wallClockTimeoutMs: 100 })).rejects.toMatchObject({
      code: 'ERR_CANCELLED',
      terminatedBy: 'wall-clock',
    });
    expect(loaded.lastCallStats).toMatchObject({ terminatedBy: 'wall-clock' });
    expect(loaded.lastCallStats!.wallClockMs).toBeGreaterThanOrEqual(90);
    expect(loaded.poisoned).toBe(true);
    await expect(loaded.callHandler('count', {})).rejects.toMatchObject({ code: 'ERR_POISONED' });
    await expect(loaded.snapshot()).rejects.toMatchObject({ code: 'ERR_POISONED' });
    await loaded.restore(snapshot);
    expect(loaded.poisoned).toBe(false);
    expect(await loaded.callHandler('count', {})).toBe(1);
  });

  it('stops a spinning handler by CPU time', async () => {
    const loaded = await spinner();
    await expect(loaded.callHandler('spin', {}, { cpuTimeoutMs: 100 })).rejects.toMatchObject({
      code: 'ERR_CANCELLED',
      terminatedBy: 'cpu-time',
    });
    expect(loaded.lastCallStats).toMatchObject({ terminatedBy: 'cpu-time' });
    expect(loaded.poisoned).toBe(true);
  });

  it('lets the CPU monitor win for compute-bound work when both are set', async () => {
    const loaded = await spinner();
    await expect(loaded.callHandler('spin', {}, { cpuTimeoutMs: 100, wallClockTimeoutMs: 5000 })).rejects.toMatchObject({
      terminatedBy: 'cpu-time',
    });
  });

  it('does not count time spent in host functions as guest CPU time', async () => {
    const loaded = await spinner(
      { wait: 'import { sleep } from "host:timer"; function handler(e) { for (let i = 0; i < e.n; i++) sleep(50); return e.n; }' },
      (p) => p.register('timer', 'sleep', (ms: number) => new Promise((r) => setTimeout(() => r(ms), ms))),
    );
    // 6 x 50 ms waiting on the host: far beyond the CPU limit, far within the wall limit.
    expect(await loaded.callHandler('wait', { n: 6 }, { cpuTimeoutMs: 100, wallClockTimeoutMs: 5000 })).toBe(6);
    // While the guest waits on the host, only the wall clock can fire.
    await expect(loaded.callHandler('wait', { n: 100 }, { cpuTimeoutMs: 100, wallClockTimeoutMs: 300 })).rejects.toMatchObject({
      code: 'ERR_CANCELLED',
      terminatedBy: 'wall-clock',
    });
  });

  it('kills from a timer, poisons, and unload() also recovers', async () => {
    const loaded = await spinner();
    const handle = loaded.interruptHandle;
    expect(loaded.interruptHandle).toBe(handle);
    const timer = setTimeout(() => handle.kill(), 50);
    await expect(loaded.callHandler('spin', {})).rejects.toMatchObject({ code: 'ERR_CANCELLED', terminatedBy: 'kill' });
    clearTimeout(timer);
    expect(loaded.lastCallStats).toMatchObject({ terminatedBy: 'kill' });
    expect(loaded.poisoned).toBe(true);
    const js = await loaded.unload();
    js.addHandler('count', COUNTER);
    const again = await js.getLoadedSandbox();
    expect(again.poisoned).toBe(false);
    expect(await again.callHandler('count', {})).toBe(1);
  });

  it('kills a handler that is waiting inside a host function', async () => {
    let entered = false;
    const loaded = await spinner(
      { hang: 'import { forever } from "host:slow"; function handler() { return forever(); }' },
      (p) =>
        p.register('slow', 'forever', () => {
          entered = true;
          return new Promise(() => undefined);
        }),
    );
    const pending = loaded.callHandler('hang', {});
    while (!entered) await new Promise((r) => setTimeout(r, 5));
    loaded.interruptHandle.kill();
    await expect(pending).rejects.toMatchObject({ code: 'ERR_CANCELLED', terminatedBy: 'kill' });
    expect(loaded.poisoned).toBe(true);
  });

  it('treats kill() with no call running as a no-op', async () => {
    const loaded = await spinner();
    loaded.interruptHandle.kill();
    expect(await loaded.callHandler('count', {})).toBe(1);
    expect(loaded.poisoned).toBe(false);
  });

  it('turns heap exhaustion into ERR_OUT_OF_MEMORY, poisons, and never crashes the host', async () => {
    const loaded = await h.load(
      { hog: 'const keep = []; function handler() { for (;;) keep.push(new Array(100000).fill(1.5)); }', count: COUNTER },
      { builder: h.builder().setHeapSize(8 * 1024 * 1024) },
    );
    open.push(loaded);
    const snapshot = await loaded.snapshot();
    await expect(loaded.callHandler('hog', {})).rejects.toMatchObject({ code: 'ERR_OUT_OF_MEMORY' });
    expect(loaded.poisoned).toBe(true);
    await loaded.restore(snapshot);
    expect(await loaded.callHandler('count', {})).toBe(1);
  });

  it('turns unbounded recursion into ERR_STACK_OVERFLOW, poisons, and recovers', async () => {
    const loaded = await h.load({ deep: 'function f(n) { return f(n + 1) + 1; }\nfunction handler() { return f(0); }', count: COUNTER });
    open.push(loaded);
    const snapshot = await loaded.snapshot();
    await expect(loaded.callHandler('deep', {})).rejects.toMatchObject({ code: 'ERR_STACK_OVERFLOW' });
    expect(loaded.poisoned).toBe(true);
    await loaded.restore(snapshot);
    expect(await loaded.callHandler('count', {})).toBe(1);
  });

  it('does not poison when the handler catches its own stack overflow', async () => {
    const loaded = await h.load({
      caught: 'function f(n) { return f(n + 1) + 1; }\nfunction handler() { try { return f(0); } catch (e) { return e.name; } }',
    });
    open.push(loaded);
    expect(await loaded.callHandler('caught', {})).toMatch(/Error/);
    expect(loaded.poisoned).toBe(false);
  });

  it('runs the guest GC after a call unless gc is false', async () => {
    const loaded = await h.load({
      make: 'function handler() { const a = {}; const b = { a }; a.b = b; globalThis.ref = new WeakRef(a); return true; }',
      alive: 'function handler() { return globalThis.ref.deref() !== undefined; }',
    });
    open.push(loaded);
    await loaded.callHandler('make', {}, { gc: false });
    expect(await loaded.callHandler('alive', {}, { gc: false })).toBe(true);
    await loaded.callHandler('make', {}, { gc: true });
    expect(await loaded.callHandler('alive', {}, { gc: false })).toBe(false);
  });
});
