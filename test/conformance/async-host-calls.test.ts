// async-host-calls.test.ts — the non-blocking form of host functions
// (`import { f } from 'host:<m>?async'`) on both tiers: calls run concurrently on the
// host, answers arrive in any order, the blocking form is unchanged, the in-flight
// budget is the host's, and answers for a call that has ended are dropped.
import { afterEach, expect, it } from 'vitest';
import type { LoadedJSSandbox, ProtoJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

interface Deferred {
  resolve(value: unknown): void;
  reject(reason: unknown): void;
}

describeEachBackend('async host calls', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  async function load(register: (p: ProtoJSSandbox) => void, handlers: Record<string, string>, builder = h.builder()): Promise<LoadedJSSandbox> {
    const proto = await builder.build();
    open.push(proto);
    register(proto);
    const js = await proto.loadRuntime();
    for (const [k, v] of Object.entries(handlers)) js.addHandler(k, v);
    return js.getLoadedSandbox();
  }

  /** Host functions that count how many of them run at once. */
  function concurrency() {
    const state = { running: 0, most: 0 };
    const fn = async (x: number) => {
      state.running++;
      state.most = Math.max(state.most, state.running);
      await new Promise((r) => setTimeout(r, 20));
      state.running--;
      return x * 2;
    };
    return { state, fn };
  }

  it('runs several calls at once on the host; the blocking form still runs one at a time', async () => {
    const c = concurrency();
    // Answers only once all three calls have started (or after a fallback that a
    // blocking guest would hit): calls that did not overlap cannot pass.
    const arrived: (() => void)[] = [];
    const gather = (x: number) =>
      new Promise((resolve) => {
        arrived.push(() => resolve(x * 2));
        if (arrived.length === 3) arrived.forEach((f) => f());
        else setTimeout(() => resolve('not overlapped'), 5_000);
      });
    const loaded = await load((p) => p.hostModule('db').register('get', c.fn).register('gather', gather), {
      parallel: `import { gather } from 'host:db?async';
        export default async function () { return Promise.all([gather(1), gather(2), gather(3)]); }`,
      blocking: `import { get } from 'host:db';
        export default async function () { return [get(1), get(2), get(3)]; }`,
    });
    expect(await loaded.callHandler('parallel', {})).toEqual([2, 4, 6]);
    expect(await loaded.callHandler('blocking', {})).toEqual([2, 4, 6]);
    expect(c.state.most).toBe(1);
  });

  it('delivers answers in the order the host settles them, while the guest runs its own jobs', async () => {
    const pending = new Map<string, Deferred>();
    const loaded = await load(
      (p) => {
        p.hostModule('db').register('get', (key: string) => new Promise((resolve, reject) => pending.set(key, { resolve, reject })));
        // Blocking: the guest reports it has started both calls, and the host settles them in reverse.
        p.hostModule('ctl').register('started', () => {
          setTimeout(() => pending.get('b')!.resolve('B'), 5);
          setTimeout(() => pending.get('a')!.reject(new Error('a failed')), 15);
        });
      },
      {
        h: `import { get } from 'host:db?async'; import { started } from 'host:ctl';
          export default async function () {
            const order = [];
            const a = get('a').then((v) => order.push('a:' + v), (e) => order.push('a:' + e.name + ':' + e.message));
            const b = get('b').then((v) => order.push('b:' + v));
            let ticks = 0;
            const id = setInterval(() => ticks++, 1);
            started();
            await Promise.all([a, b]);
            clearInterval(id);
            return { order, ticked: ticks > 0 };
          }`,
      },
    );
    expect(await loaded.callHandler('h', {})).toEqual({ order: ['b:B', 'a:HostFunctionError:a failed'], ticked: true });
  });

  it('resolves undefined and rejects unserialisable results with a HostFunctionError', async () => {
    const loaded = await load(
      (p) => p.hostModule('m').register('nothing', async () => undefined).register('big', async () => 1n),
      {
        h: `import { nothing, big } from 'host:m?async';
          export default async function () {
            const a = await nothing();
            const b = await big().then(() => 'resolved', (e) => e.name + ': ' + e.message);
            return [a === undefined, b];
          }`,
      },
    );
    expect(await loaded.callHandler('h', {})).toEqual([true, expect.stringMatching(/^HostFunctionError: .*not JSON-serialisable/)]);
  });

  it('carries bytes in results as the blocking form does when binary data is on', async () => {
    const loaded = await load(
      (p) =>
        p
          .hostModule('m')
          .register('bytes', async (n: number) => ({ n, data: Buffer.from([n, n + 1]), raw: new Uint8Array([n]).buffer }))
          .register('reserved', async () => ({ $airlock: 1, ['$airlock.binary']: 0, type: 'Uint8Array' })),
      {
        h: `import { bytes, reserved } from 'host:m?async';
          export default async function () {
            const all = await Promise.all([bytes(1), bytes(5)]);
            const r = await reserved().then(() => 'resolved', (e) => e.name + ': ' + e.message);
            return [all.map((x) => [x.n, x.data instanceof Uint8Array, Array.from(x.data), x.raw instanceof ArrayBuffer]), r];
          }`,
      },
      h.builder().setBinaryData(),
    );
    expect(await loaded.callHandler('h', {})).toEqual([
      [
        [1, true, [1, 2], true],
        [5, true, [5, 6], true],
      ],
      expect.stringMatching(/^HostFunctionError: .*\$airlock\.binary/),
    ]);
  });

  it('refuses calls past the in-flight limit with a HostFunctionError naming it', async () => {
    // Calls stay in flight until the guest has tried all three; later calls answer at once.
    const held: (() => void)[] = [];
    let released = false;
    const loaded = await load(
      (p) => {
        p.hostModule('m').register('slow', (x: number) => (released ? x : new Promise((resolve) => held.push(() => resolve(x)))));
        p.hostModule('ctl').register('release', () => {
          released = true;
          held.forEach((f) => f());
        });
      },
      {
        h: `import { slow } from 'host:m?async'; import { release } from 'host:ctl';
          export default async function () {
            const calls = [slow(1), slow(2), slow(3)];
            release();
            const r = await Promise.allSettled(calls);
            const again = await slow(4);
            return [r.map((x) => x.status === 'fulfilled' ? x.value : x.reason.name + ': ' + x.reason.message), again];
          }`,
      },
      h.builder().setAsyncHostCallLimit(2),
    );
    expect(await loaded.callHandler('h', {})).toEqual([[1, 2, expect.stringMatching(/^HostFunctionError: too many async host calls in flight: the limit is 2/)], 4]);
  });

  it('frees a slot only when the guest collects the answer, so uncollected answers cannot pile up', async () => {
    const loaded = await load(
      (p) => {
        p.hostModule('m').register('quick', (x: number) => x);
        // Blocking: the two async calls are answered on the host while the guest waits here.
        p.hostModule('ctl').register('pause', () => new Promise((r) => setTimeout(r, 20)));
      },
      {
        h: `import { quick } from 'host:m?async'; import { pause } from 'host:ctl';
          export default async function () {
            const a = quick(1), b = quick(2);
            pause();
            const c = quick(3).then(() => 'started', (e) => e.message);
            return [await a, await b, await c, await quick(4)];
          }`,
      },
      h.builder().setAsyncHostCallLimit(2),
    );
    expect(await loaded.callHandler('h', {})).toEqual([1, 2, expect.stringMatching(/^too many async host calls in flight/), 4]);
  });

  it('rejects a bad limit and a host module name with ? at the API', async () => {
    expect(() => h.builder().setAsyncHostCallLimit(0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => h.builder().setAsyncHostCallLimit(1.5)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    const proto = await h.builder().build();
    open.push(proto);
    expect(() => proto.hostModule('db?async')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  });

  it('drops the answers of calls the handler did not wait for, and the next call is unaffected', async () => {
    const pending: Deferred[] = [];
    const loaded = await load(
      (p) => p.hostModule('m').register('hang', () => new Promise((resolve, reject) => pending.push({ resolve, reject }))),
      {
        leave: `import { hang } from 'host:m?async';
          export default function () { hang().then(() => { globalThis.late = true; }); return 'left'; }`,
        check: `import { hang } from 'host:m?async';
          export default async function () { const v = await hang(); return [v, globalThis.late === true]; }`,
      },
    );
    expect(await loaded.callHandler('leave', {})).toBe('left');
    pending[0].resolve('stale');
    const check = loaded.callHandler('check', {});
    while (pending.length < 2) await new Promise((r) => setTimeout(r, 5));
    pending[1].resolve('fresh');
    expect(await check).toEqual(['fresh', false]);
  });

  it('lets kill() end a call waiting on async host calls; late answers go nowhere', async () => {
    const pending: Deferred[] = [];
    const loaded = await load(
      (p) => p.hostModule('m').register('hang', () => new Promise((resolve, reject) => pending.push({ resolve, reject }))),
      {
        h: `import { hang } from 'host:m?async'; export default async function () { return Promise.all([hang(), hang()]); }`,
        ok: 'export default function () { return "ok"; }',
      },
    );
    const snapshot = await loaded.snapshot();
    const call = loaded.callHandler('h', {});
    while (pending.length < 2) await new Promise((r) => setTimeout(r, 5));
    loaded.interruptHandle.kill();
    await expect(call).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    for (const d of pending) d.resolve('late');
    await loaded.restore(snapshot);
    expect(await loaded.callHandler('ok', {})).toBe('ok');
  });

  it('refuses an async host function that calls into the sandbox waiting for it (ERR_BUSY in the message)', async () => {
    let loaded: LoadedJSSandbox | undefined;
    loaded = await load(
      (p) =>
        p.hostModule('m').register('reenter', async () => {
          await loaded!.callHandler('plain', {});
        }),
      {
        h: `import { reenter } from 'host:m?async';
          export default async function () { try { await reenter(); return 'no error'; } catch (e) { return e.name + ': ' + e.message; } }`,
        plain: 'export default function () { return 1; }',
      },
    );
    expect(await loaded.callHandler('h', {})).toMatch(/^HostFunctionError: .*deadlock/);
  });

  it('ends dispose() during pending async calls with ERR_CONSUMED', async () => {
    const loaded = await load((p) => p.hostModule('m').register('hang', () => new Promise(() => {})), {
      h: `import { hang } from 'host:m?async'; export default async function () { return hang(); }`,
    });
    const call = loaded.callHandler('h', {});
    setTimeout(() => void loaded.dispose(), 50);
    await expect(call).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
  });
});
