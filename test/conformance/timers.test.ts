// timers.test.ts — setTimeout, setInterval, clearTimeout, clearInterval and
// queueMicrotask inside a call, on both tiers: Node-like arguments, ordering, what
// happens to timers still pending when the handler settles, and the budgets while the
// guest sleeps (wall clock applies, CPU time does not run).
import { afterEach, expect, it, vi } from 'vitest';
import type { LoadedJSSandbox } from '../../src/index.js';
import { OperationLoop } from '../../src/hostcalls/event-loop.js';
import { describeEachBackend } from './backends.js';

const sleep = 'const sleep = (ms) => new Promise((r) => setTimeout(r, ms));';

describeEachBackend('guest timers', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });
  async function load(handlers: Record<string, string>, builder = h.builder()): Promise<LoadedJSSandbox> {
    const loaded = await h.load(handlers, { builder });
    open.push(loaded);
    return loaded;
  }

  it('runs callbacks in deadline order with their extra arguments, microtasks first', async () => {
    const loaded = await load({
      h: `export default async function () {
        const order = [];
        // Far apart: a loaded host may pause the guest for tens of ms between two lines,
        // and deadlines (like Node's) count that time.
        setTimeout((a, b) => order.push('late:' + a + b), 150, 'x', 'y');
        setTimeout(() => order.push('first'), 1);
        setTimeout(() => order.push('tie'), 1);
        queueMicrotask(() => order.push('micro'));
        order.push('sync');
        await new Promise((r) => setTimeout(r, 200));
        return order;
      }`,
    });
    expect(await loaded.callHandler('h', {})).toEqual(['sync', 'micro', 'first', 'tie', 'late:xy']);
  });

  it('coerces the delay as Node does and returns distinct numeric ids', async () => {
    const loaded = await load({
      h: `export default async function () {
        const seen = [];
        const ids = [
          setTimeout(() => seen.push('string 60'), '60'),
          setTimeout(() => seen.push('30'), 30),
          setTimeout(() => seen.push('nan'), 'soon'),
          setTimeout(() => seen.push('negative'), -50),
          setTimeout(() => seen.push('huge'), 2 ** 40),
          setTimeout(() => seen.push('undefined')),
        ];
        await new Promise((r) => setTimeout(r, 100));
        return { seen, numeric: ids.every((id) => typeof id === 'number'), distinct: new Set(ids).size };
      }`,
    });
    // NaN, negative, over 2^31-1 and missing delays all become 1 ms (in creation
    // order); the string '60' is 60 ms, after the 30 ms timer.
    expect(await loaded.callHandler('h', {})).toEqual({
      seen: ['nan', 'negative', 'huge', 'undefined', '30', 'string 60'],
      numeric: true,
      distinct: 6,
    });
  });

  it('cancels with clearTimeout and clearInterval interchangeably, ignoring unknown ids', async () => {
    const loaded = await load({
      h: `${sleep} export default async function () {
        const seen = [];
        const a = setTimeout(() => seen.push('a'), 1);
        const b = setInterval(() => seen.push('b'), 1);
        clearInterval(a);
        clearTimeout(b);
        clearTimeout(undefined); clearTimeout({}); clearTimeout(123456); clearInterval(null);
        setTimeout(() => seen.push('c'), 2);
        await sleep(15);
        return seen;
      }`,
    });
    expect(await loaded.callHandler('h', {})).toEqual(['c']);
  });

  it('repeats an interval until it is cleared, also from its own callback', async () => {
    const loaded = await load({
      h: `export default async function () {
        let n = 0;
        await new Promise((resolve) => {
          const id = setInterval((step) => { n += step; if (n === 6) { clearInterval(id); resolve(); } }, 1, 2);
        });
        return n;
      }`,
    });
    expect(await loaded.callHandler('h', {})).toBe(6);
  });

  it('refuses a callback that is not a function with a TypeError, as Node does', async () => {
    const loaded = await load({
      h: `export default function () {
        const out = [];
        for (const f of [setTimeout, setInterval, queueMicrotask]) {
          try { f('code string', 1); out.push('accepted'); } catch (e) { out.push(e.name + ':' + e.code); }
        }
        return out;
      }`,
    });
    expect(await loaded.callHandler('h', {})).toEqual(Array(3).fill('TypeError:ERR_INVALID_ARG_TYPE'));
  });

  it('cancels timers still pending when the handler settles, silently, and keeps none across calls', async () => {
    const lines: string[] = [];
    const loaded = await load(
      {
        leave: `globalThis.fired = 0;
          export default function () {
            setTimeout(() => { globalThis.fired++; console.log('late timer ran'); }, 1);
            setInterval(() => { globalThis.fired++; }, 1);
            return 'returned';
          }`,
        wait: `${sleep} export default async function () { await sleep(20); return globalThis.fired; }`,
      },
      h.builder().setConsoleHandler((_level, message) => lines.push(message)),
    );
    expect(await loaded.callHandler('leave', {})).toBe('returned');
    expect(await loaded.callHandler('wait', {})).toBe(0);
    expect(lines).toEqual([]);
  });

  it('fails the call with the error a timer or microtask callback throws, and stays usable', async () => {
    const loaded = await load({
      timer: `export default function () {
        return new Promise((resolve) => { setTimeout(() => { throw new RangeError('from a timer'); }, 1); setTimeout(resolve, 50); });
      }`,
      micro: `export default function () { queueMicrotask(() => { throw new Error('from a microtask'); }); return 'sync result'; }`,
      ok: `${sleep} export default async function () { await sleep(1); return 'fine'; }`,
    });
    await expect(loaded.callHandler('timer', {})).rejects.toMatchObject({ code: 'ERR_GUEST_EXCEPTION', name: 'RangeError', message: 'from a timer' });
    await expect(loaded.callHandler('micro', {})).rejects.toMatchObject({ code: 'ERR_GUEST_EXCEPTION', message: 'from a microtask' });
    expect(loaded.poisoned).toBe(false);
    expect(await loaded.callHandler('ok', {})).toBe('fine');
  });

  it('still reports a promise that can never settle (no timer, no async call pending)', async () => {
    const loaded = await load({ h: 'export default function () { return new Promise(() => {}); }' });
    await expect(loaded.callHandler('h', {})).rejects.toMatchObject({ code: 'ERR_GUEST_EXCEPTION', message: expect.stringMatching(/never settled/) });
  });

  it('does not charge the CPU budget while the guest sleeps', async () => {
    const loaded = await load({ h: `${sleep} export default async function () { await sleep(300); return 'woke'; }` });
    expect(await loaded.callHandler('h', {}, { cpuTimeoutMs: 100 })).toBe('woke');
    expect(loaded.lastCallStats?.terminatedBy).toBeNull();
  });

  it('does not charge many short sleeps to the CPU budget, and still stops work after them', async () => {
    const loaded = await load({
      naps: `${sleep} export default async function () { for (let i = 0; i < 100; i++) await sleep(2); return 'rested'; }`,
      spin: `${sleep} export default async function () { await sleep(20); for (;;) {} }`,
    });
    expect(await loaded.callHandler('naps', {}, { cpuTimeoutMs: 50 })).toBe('rested');
    expect(loaded.lastCallStats?.terminatedBy).toBeNull();
    await expect(loaded.callHandler('spin', {}, { cpuTimeoutMs: 50, wallClockTimeoutMs: 10_000 })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    expect(loaded.lastCallStats?.terminatedBy).toBe('cpu-time');
  });

  it('delivers console lines written just before a sleep, in order', async () => {
    const lines: string[] = [];
    const loaded = await load(
      { h: `${sleep} export default async function () { console.log('before'); await sleep(5); console.log('after'); return 'done'; }` },
      h.builder().setConsoleHandler((_level, message) => lines.push(message)),
    );
    expect(await loaded.callHandler('h', {})).toBe('done');
    expect(lines).toEqual(['before', 'after']);
  });

  it('sleeps a lone timer where the guest runs, without the main thread; a sleep with console lines goes there', async () => {
    const steps = vi.spyOn(OperationLoop.prototype, 'waitStep');
    try {
      const loaded = await load({
        naps: `${sleep} export default async function () { for (let i = 0; i < 20; i++) await sleep(1); return 'rested'; }`,
        talks: `${sleep} export default async function () { console.log('before'); await sleep(1); return 'said'; }`,
      });
      for (let i = 0; i < 5; i++) expect(await loaded.callHandler('naps', {})).toBe('rested');
      expect(steps).not.toHaveBeenCalled();
      expect(await loaded.callHandler('talks', {})).toBe('said');
      expect(steps.mock.calls.map(([step]) => step)).toEqual(['sleep']);
    } finally {
      steps.mockRestore();
    }
  });

  it('lets dispose() end a sleeping call', async () => {
    const loaded = await load({ h: `${sleep} export default async function () { await sleep(60_000); return 'woke'; }` });
    const call = loaded.callHandler('h', {}).then(
      () => 'resolved',
      (e: { code?: string }) => e.code,
    );
    await new Promise((r) => setTimeout(r, 50));
    await loaded.dispose();
    // The call ends with the sandbox, as any call in flight at dispose() does.
    expect(await call).toBe('ERR_CONSUMED');
  });

  it('charges the wall clock while the guest sleeps', async () => {
    const loaded = await load({ h: `${sleep} export default async function () { await sleep(60_000); return 'woke'; }` });
    await expect(loaded.callHandler('h', {}, { wallClockTimeoutMs: 100 })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    expect(loaded.lastCallStats?.terminatedBy).toBe('wall-clock');
  });

  it('lets kill() end a sleeping call, and the sandbox recovers by restore()', async () => {
    const loaded = await load({
      h: `${sleep} export default async function () { await sleep(60_000); return 'woke'; }`,
      ok: `${sleep} export default async function () { await sleep(1); return 'fine'; }`,
    });
    const snapshot = await loaded.snapshot();
    const call = loaded.callHandler('h', {});
    // kill() reaches only a call in flight: repeat it until this one has started and ended.
    const killer = setInterval(() => loaded.interruptHandle.kill(), 50);
    await expect(call).rejects.toMatchObject({ code: 'ERR_CANCELLED' }).finally(() => clearInterval(killer));
    expect(loaded.lastCallStats?.terminatedBy).toBe('kill');
    await loaded.restore(snapshot);
    expect(await loaded.callHandler('ok', {})).toBe('fine');
  });

  it('runs timers in module top-level code while the sandbox loads', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    const js = await proto.loadRuntime();
    js.addModule('slow', 'export const value = await new Promise((r) => setTimeout(() => r("ready"), 5));');
    js.addHandler('h', 'import { value } from "user:slow"; export default function () { return value; }');
    const loaded = await js.getLoadedSandbox();
    expect(await loaded.callHandler('h', {})).toBe('ready');
  });
});
