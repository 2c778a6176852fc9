// attack-caller.test.ts — a hostile caller against the host-call paths of both tiers:
// host functions that turn on their own sandbox (kill, dispose, restore, another call)
// while the guest waits for them, an event whose toJSON does the same, thenables that
// answer twice, late or never, and binary results of awkward sizes. Every call must
// settle exactly once, with its own answer (ERR_CONSUMED once dispose() was called),
// and the sandbox must stay usable (or be restorable) afterwards.
import { afterEach, expect, it } from 'vitest';
import type { LoadedJSSandbox, ProtoJSSandbox, Snapshot } from '../../src/index.js';
import { describeEachBackend } from '../conformance/backends.js';

const CALLS_F = 'import { f } from "host:m"; function handler(e) { return f(e); }';
const CATCHES_F =
  'import { f } from "host:m"; function handler(e) { try { return f(e); } catch (err) { return err.name + ": " + err.message; } }';
const PLAIN = 'function handler(e) { return "plain " + JSON.stringify(e); }';

describeEachBackend('attack: a host function that turns on its own sandbox', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  async function loadWith(register: (p: ProtoJSSandbox) => void, binary = false): Promise<LoadedJSSandbox> {
    const builder = h.builder();
    if (binary) builder.setBinaryData();
    const proto = await builder.build();
    open.push(proto);
    register(proto);
    const js = await proto.loadRuntime();
    js.addHandler('calls', CALLS_F);
    js.addHandler('catches', CATCHES_F);
    js.addHandler('plain', PLAIN);
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    return loaded;
  }

  it('a host function that kills its own call: the call ends cancelled, and a restore brings the sandbox back', async () => {
    let loaded: LoadedJSSandbox | undefined;
    loaded = await loadWith((p) =>
      p.register('m', 'f', () => {
        loaded!.interruptHandle.kill();
        return 'answered after the kill';
      }),
    );
    const snap = await loaded.snapshot();
    const outcome = await loaded.callHandler('calls', 1, { wallClockTimeoutMs: 20_000 }).then(
      (v) => ({ value: v as unknown }),
      (e: { code?: string }) => ({ code: e.code }),
    );
    // The kill lands while the guest waits for the reply: the call is cancelled (the
    // reply is dropped), never answered with it.
    expect(outcome).toEqual({ code: 'ERR_CANCELLED' });
    await loaded.restore(snap);
    expect(await loaded.callHandler('plain', 2, { wallClockTimeoutMs: 20_000 })).toBe('plain 2');
  });

  it('a host function that disposes its own sandbox: the call rejects ERR_CONSUMED and dispose() finishes', async () => {
    let loaded: LoadedJSSandbox | undefined;
    let disposing: Promise<void> | undefined;
    loaded = await loadWith((p) =>
      p.register('m', 'f', () => {
        // Work queued before dispose() holds the main thread after this function
        // returns: its answer reaches the guest, which may finish the call before the
        // dispose goes on (as a loaded machine can also make it).
        queueMicrotask(() => {
          const until = performance.now() + 100;
          while (performance.now() < until);
        });
        disposing = loaded!.dispose();
        return 'answered after dispose';
      }),
    );
    await expect(loaded.callHandler('calls', 1, { wallClockTimeoutMs: 20_000 })).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    await disposing;
    await expect(loaded.callHandler('plain', 2)).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
  });

  it('an async host function that disposes its own sandbox: the call rejects ERR_CONSUMED and dispose() finishes', async () => {
    let loaded: LoadedJSSandbox | undefined;
    let disposing: Promise<void> | undefined;
    loaded = await loadWith((p) =>
      p.register('m', 'f', async () => {
        disposing = loaded!.dispose();
        await new Promise((r) => setImmediate(r));
        return 'answered after dispose';
      }),
    );
    await expect(loaded.callHandler('calls', 1, { wallClockTimeoutMs: 20_000 })).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    await disposing;
  });

  for (const op of ['restore', 'snapshot', 'callHandler'] as const) {
    it(`a host function that awaits ${op}() on its own sandbox gets ERR_BUSY, not a deadlock`, async () => {
      let loaded: LoadedJSSandbox | undefined;
      let snap: Snapshot | undefined;
      loaded = await loadWith((p) =>
        p.register('m', 'f', async () => {
          const r = op === 'restore' ? loaded!.restore(snap!) : op === 'snapshot' ? loaded!.snapshot() : loaded!.callHandler('plain', 0);
          return r.then(
            () => 'went through',
            (e: { code?: string }) => e.code,
          );
        }),
      );
      snap = await loaded.snapshot();
      expect(await loaded.callHandler('calls', 1, { wallClockTimeoutMs: 20_000 })).toBe('ERR_BUSY');
      expect(loaded.poisoned).toBe(false);
      expect(await loaded.callHandler('plain', 3)).toBe('plain 3');
    });
  }
  it("an event whose toJSON disposes the sandbox: the call rejects ERR_CONSUMED and dispose() finishes", async () => {
    const loaded = await loadWith((p) => p.register('m', 'f', (x) => x));
    let disposing: Promise<void> | undefined;
    const event = {
      toJSON() {
        disposing = loaded.dispose();
        return 1;
      },
    };
    await expect(loaded.callHandler('plain', event)).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    await disposing;
  });

  it("an event whose toJSON calls into the same sandbox: both calls settle, in order, each with its own answer", async () => {
    const loaded = await loadWith((p) => p.register('m', 'f', (x) => x));
    let inner: Promise<unknown> | undefined;
    const order: string[] = [];
    const event = {
      toJSON() {
        inner ??= loaded.callHandler('calls', 'inner', { wallClockTimeoutMs: 20_000 }).then((v) => {
          order.push('inner');
          return v;
        });
        return 'outer';
      },
    };
    const outer = loaded.callHandler('calls', event, { wallClockTimeoutMs: 20_000 }).then((v) => {
      order.push('outer');
      return v;
    });
    expect(await outer).toBe('outer');
    expect(await inner).toBe('inner');
    expect(order).toEqual(['inner', 'outer']);
  });
});

describeEachBackend('attack: thenables and late answers', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  async function loadWith(fn: (e: unknown) => unknown, binary = false): Promise<LoadedJSSandbox> {
    const builder = h.builder();
    if (binary) builder.setBinaryData();
    const proto = await builder.build();
    open.push(proto);
    proto.register('m', 'f', fn);
    const js = await proto.loadRuntime();
    js.addHandler('calls', CALLS_F);
    js.addHandler('catches', CATCHES_F);
    js.addHandler('twice', 'import { f } from "host:m"; function handler(e) { return [f(e), f(e + 1)]; }');
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    return loaded;
  }

  it('a thenable that resolves twice, then rejects, then throws answers once with its first value', async () => {
    const loaded = await loadWith((e) => ({
      then(resolve: (v: unknown) => void, reject: (e: unknown) => void) {
        resolve(`first ${String(e)}`);
        resolve('second');
        reject(new Error('third'));
        throw new Error('fourth');
      },
    }));
    // Each host call gets its own first answer: none is carried over to the next call.
    expect(await loaded.callHandler('twice', 1, { wallClockTimeoutMs: 20_000 })).toEqual(['first 1', 'first 2']);
    expect(await loaded.callHandler('twice', 5, { wallClockTimeoutMs: 20_000 })).toEqual(['first 5', 'first 6']);
  });

  it('a thenable that answers later, from a timer, answers its own call only', async () => {
    const loaded = await loadWith((e) => ({
      then(resolve: (v: unknown) => void) {
        setTimeout(() => resolve(`late ${String(e)}`), 2);
      },
    }));
    expect(await loaded.callHandler('twice', 1, { wallClockTimeoutMs: 20_000 })).toEqual(['late 1', 'late 2']);
  });

  it("a reply that comes after its call was cancelled is never taken for the next call's", async () => {
    const answers: ((v: unknown) => void)[] = [];
    const loaded = await loadWith(
      (e) =>
        new Promise((resolve) => {
          // Call 1 never answers before its wall clock; the others answer at once.
          if (e === 1) answers.push(resolve);
          else resolve(`own ${String(e)}`);
        }),
    );
    const snap = await loaded.snapshot();
    await expect(loaded.callHandler('calls', 1, { wallClockTimeoutMs: 200 })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    await loaded.restore(snap);
    // The next call's host call is in flight while the stale reply arrives.
    const next = loaded.callHandler('calls', 2, { wallClockTimeoutMs: 20_000 });
    for (const answer of answers) answer('stale 1');
    expect(await next).toBe('own 2');
    // Answered late again, after the call ended: nothing changes.
    for (const answer of answers) answer('stale again');
    expect(await loaded.callHandler('calls', 3, { wallClockTimeoutMs: 20_000 })).toBe('own 3');
  });

  it('a thenable that never settles ends with the wall clock; a restore brings the sandbox back', async () => {
    let asked = 0;
    const loaded = await loadWith((e) => {
      asked++;
      return e === 'hang' ? { then() {} } : `own ${String(e)}`;
    });
    const snap = await loaded.snapshot();
    await expect(loaded.callHandler('calls', 'hang', { wallClockTimeoutMs: 200 })).rejects.toMatchObject({
      code: 'ERR_CANCELLED',
      terminatedBy: 'wall-clock',
    });
    expect(asked).toBe(1);
    await loaded.restore(snap);
    expect(await loaded.callHandler('calls', 'x', { wallClockTimeoutMs: 20_000 })).toBe('own x');
  });

  it('binary results of every awkward size cross exactly, or fail as a catchable guest error when they cannot fit', async () => {
    const INPUT = 64 * 1024;
    let size = 0;
    const builder = h.builder().setBinaryData().setInputBufferSize(INPUT);
    const proto = await builder.build();
    open.push(proto);
    proto.register('m', 'f', () => new Uint8Array(size).map((_, i) => (i * 7 + size) & 0xff));
    const js = await proto.loadRuntime();
    js.addHandler(
      'len',
      'import { f } from "host:m"; function handler() { try { const b = f(); let s = 0; for (const x of b) s = (s * 31 + x) >>> 0; return [b.length, s]; } catch (err) { return err.name; } }',
    );
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    const digest = (n: number) => {
      let s = 0;
      for (let i = 0; i < n; i++) s = (s * 31 + ((i * 7 + n) & 0xff)) >>> 0;
      return s;
    };
    // The reply is a 16-byte header, the JSON placeholder field and the bytes' field.
    const json = JSON.stringify({ '$airlock.binary': 0, type: 'Uint8Array' });
    const fits = INPUT - 16 - (4 + Buffer.byteLength(json)) - 4;
    for (const n of [0, 1, 3, 4095, 4096, 4097, fits - 1, fits]) {
      size = n;
      expect(await loaded.callHandler('len', {}, { wallClockTimeoutMs: 20_000 }), `size ${n}`).toEqual([n, digest(n)]);
    }
    for (const n of [fits + 1, INPUT, INPUT + 1]) {
      size = n;
      expect(await loaded.callHandler('len', {}, { wallClockTimeoutMs: 20_000 }), `size ${n}`).toBe('HostFunctionError');
    }
    expect(loaded.poisoned).toBe(false);
  });
});
