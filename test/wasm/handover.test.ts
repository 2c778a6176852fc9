// handover.test.ts — the WebAssembly tier's call hand-over (wasm-engine.ts exchange()):
// the usual call settles in one reaction to the worker's answer, and everything that can
// happen during that wait (kill, wall clock, dispose, a worker that dies, host calls,
// outputs as large as the data area, many sandboxes at once) ends the call the way it
// did through the general path, and leaves the sandbox in the state its error says.
// Every test here waits on the wake socket (wake-socket.ts), as calls do once it is up.
import { readFileSync, readdirSync } from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SandboxBuilder, type LoadedJSSandbox, type ProtoJSSandbox } from '../../src/index.js';
import type { AirlockError } from '../../src/errors.js';
import type { GuestWorker } from '../../src/engine/wasm/pool.js';
import { startWakeSocket, wakeSocketSkips, wakeSocketWakes } from '../../src/engine/wasm/wake-socket.js';
import { ticksDuring } from '../support/ticks.js';

const sandboxes: LoadedJSSandbox[] = [];
afterEach(async () => {
  await Promise.all(sandboxes.splice(0).map((s) => s.dispose()));
});

const SPIN = 'function handler() { for (;;) {} }';
const ECHO = 'function handler(e) { return e; }';
const OUTPUT_SIZE = 64 << 10;

async function load(handlers: Record<string, string>, setup?: (p: ProtoJSSandbox) => void): Promise<LoadedJSSandbox> {
  const proto = await new SandboxBuilder().setBackend('wasm').setOutputBufferSize(OUTPUT_SIZE).build();
  setup?.(proto);
  const js = await proto.loadRuntime();
  for (const [name, code] of Object.entries(handlers)) js.addHandler(name, code);
  const loaded = await js.getLoadedSandbox();
  sandboxes.push(loaded);
  return loaded;
}

/** The worker serving a sandbox (internal: the test ends its thread as a crash would). */
function workerOf(s: LoadedJSSandbox): GuestWorker {
  const core = (s as unknown as { core: { engine: { worker: GuestWorker } } }).core;
  return core.engine.worker;
}

async function rejection(p: Promise<unknown>): Promise<AirlockError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, 'the call should have failed').toBeDefined();
  return e as AirlockError;
}


describe('WebAssembly call hand-over', () => {
  beforeAll(async () => {
    // Unix sockets exist on every host the tier supports but Windows.
    expect(await startWakeSocket()).toBe(process.platform !== 'win32');
  });

  it('settles each back-to-back call through one wake-up of the wake socket, with timers running between', async () => {
    const s = await load({ echo: ECHO });
    await s.callHandler('echo', {});
    const before = wakeSocketWakes();
    const skipped = wakeSocketSkips();
    const ticks = await ticksDuring(async () => {
      for (let i = 0; i < 1000; i++) expect(await s.callHandler('echo', { i })).toEqual({ i });
    });
    // Each call either woke through the socket or found its answer as it armed it
    // (then no byte was written either); none waited some other way.
    const wakes = wakeSocketWakes() - before;
    expect(wakes + wakeSocketSkips() - skipped).toBe(1000);
    // A worker answers in microseconds, after the main thread has armed the socket.
    expect(wakes).toBeGreaterThanOrEqual(500);
    // A main thread kept busy in microtasks would let the interval fire once at most.
    expect(ticks).toBeGreaterThanOrEqual(2);
  });

  it('settles restores and snapshots through the wake socket too, each restoring the state it should', async () => {
    const s = await load({ count: 'let n = 0;\nfunction handler() { return ++n; }' });
    const snap = await s.snapshot();
    const calls = wakeSocketWakes();
    const ops = wakeSocketWakes(true);
    const rounds = 20;
    for (let i = 0; i < rounds; i++) {
      expect(await s.callHandler('count', {})).toBe(1);
      expect(await s.callHandler('count', {})).toBe(2);
      // The call wrote memory, so the restore copies the image: tens of µs of the
      // worker's time, during which the main thread is already waiting for its byte.
      await s.restore(snap);
    }
    const later = await s.snapshot();
    expect(await s.callHandler('count', {})).toBe(1);
    await s.restore(later);
    expect(await s.callHandler('count', {})).toBe(1);
    expect(wakeSocketWakes() - calls).toBe(2 * rounds + 2);
    // An operation the worker finished before the main thread looked needs no wake-up,
    // so not every one counts; most must, or they waited some other way.
    expect(wakeSocketWakes(true) - ops).toBeGreaterThanOrEqual(rounds / 2);
  });

  it('kill() during the wait for the answer cancels the call; a restore makes the sandbox usable again', async () => {
    const s = await load({ spin: SPIN, echo: ECHO });
    const snap = await s.snapshot();
    const before = wakeSocketWakes();
    const p = s.callHandler('spin', {});
    setTimeout(() => s.interruptHandle.kill(), 20);
    const err = await rejection(p);
    expect(wakeSocketWakes() - before).toBe(1);
    expect(err.code).toBe('ERR_CANCELLED');
    expect(s.lastCallStats?.terminatedBy).toBe('kill');
    expect(s.poisoned).toBe(true);
    await s.restore(snap);
    expect(await s.callHandler('echo', { back: 1 })).toEqual({ back: 1 });
  });

  it('the wall clock cancels a call waiting for its answer, and the next call without one runs as usual', async () => {
    const s = await load({ spin: SPIN, echo: ECHO });
    const snap = await s.snapshot();
    const err = await rejection(s.callHandler('spin', {}, { wallClockTimeoutMs: 30 }));
    expect(err.code).toBe('ERR_CANCELLED');
    expect(s.lastCallStats?.terminatedBy).toBe('wall-clock');
    await s.restore(snap);
    for (let i = 0; i < 50; i++) expect(await s.callHandler('echo', { i })).toEqual({ i });
  });

  it('dispose() during the wait rejects the call as consumed and ends the worker', async () => {
    const s = await load({ spin: SPIN });
    const w = workerOf(s);
    const p = s.callHandler('spin', {});
    await new Promise((r) => setTimeout(r, 20));
    const failed = rejection(p); // handled before dispose() makes it reject
    await s.dispose();
    expect((await failed).code).toBe('ERR_CONSUMED');
    expect(w.reusable).toBe(false);
  });

  it('a worker that dies during a call fails that call, and the guest is lost until restored', async () => {
    const s = await load({ spin: SPIN, echo: ECHO });
    const snap = await s.snapshot();
    const w = workerOf(s);
    const p = s.callHandler('spin', {});
    await new Promise((r) => setTimeout(r, 20));
    const failed = rejection(p); // handled before the worker's exit makes it reject
    const before = wakeSocketWakes();
    await w.thread.terminate();
    const err = await failed;
    // A dead worker writes no byte: its exit settles the wait.
    expect(wakeSocketWakes() - before).toBe(1);
    expect(err.code).toBe('ERR_INTERNAL');
    expect(err.message).toContain('the worker exited');
    expect((await rejection(s.callHandler('echo', {}))).code).toMatch(/^ERR_(GUEST_ABORT|POISONED)$/);
    await s.restore(snap);
    expect(await s.callHandler('echo', { alive: true })).toEqual({ alive: true });
    expect(workerOf(s)).not.toBe(w);
  });

  it('carries outputs as large as the output buffer, and reports one larger as too large', async () => {
    const s = await load({ big: 'function handler(e) { return "x".repeat(e.n); }' });
    // The output buffer holds the RESULT message's header and field around the JSON text.
    const fits = OUTPUT_SIZE - 256;
    expect(((await s.callHandler('big', { n: fits })) as string).length).toBe(fits);
    const err = await rejection(s.callHandler('big', { n: OUTPUT_SIZE }));
    expect(err.code).not.toBe('ERR_INTERNAL');
    // A failed call leaves the hand-over intact: the next one is served.
    expect(((await s.callHandler('big', { n: 3 })) as string).length).toBe(3);
  });

  it('serves host calls made during a call, then settles the call', async () => {
    let served = 0;
    const s = await load({ twice: 'import { inc } from "host:h";\nfunction handler(e) { return inc(inc(e.v)); }' }, (p) =>
      p.register('h', 'inc', (v: number) => {
        served++;
        return v + 1;
      }),
    );
    const before = wakeSocketWakes();
    const skipped = wakeSocketSkips();
    for (let i = 0; i < 100; i++) expect(await s.callHandler('twice', { v: i })).toBe(i + 2);
    expect(served).toBe(200);
    // Every turn of a call waits on the socket: the wait for the first host call (100),
    // and the wait after each reply for the next host call or the answer (200). A turn
    // whose worker answered before the main thread looked needs no wait at all; most do.
    const waits = wakeSocketWakes() - before + wakeSocketSkips() - skipped;
    expect(waits).toBeGreaterThanOrEqual(200);
    expect(waits).toBeLessThanOrEqual(300);
  });

  it('keeps sixteen sandboxes apart while each is called back to back, and the event loop ticks meanwhile', async () => {
    const all = await Promise.all(Array.from({ length: 16 }, () => load({ echo: 'let n = 0;\nfunction handler(e) { n++; return { id: e.id, n }; }' })));
    const seen = all.map(() => 0);
    const before = wakeSocketWakes();
    const skipped = wakeSocketSkips();
    const ticks = await ticksDuring(async () => {
      await Promise.all(
        all.map(async (s, id) => {
          for (let i = 1; i <= 100; i++) {
            const r = (await s.callHandler('echo', { id })) as { id: number; n: number };
            if (r.id === id && r.n === i) seen[id]++;
          }
        }),
      );
    });
    expect(seen).toEqual(all.map(() => 100));
    // One socket serves every sandbox: a byte wakes every exchange whose worker answered.
    // With sixteen in flight a worker often answers before the main thread gets to arm
    // the socket for its call; then that call needs no wake-up.
    expect(wakeSocketWakes() - before + wakeSocketSkips() - skipped).toBe(1600);
    // A main thread kept busy in microtasks would let the interval fire once at most.
    expect(ticks).toBeGreaterThanOrEqual(5);
  });

  it.runIf(process.platform === 'linux')('runs its workers at a lower priority than the main thread', async () => {
    const s = await load({ echo: ECHO });
    await s.callHandler('echo', {});
    // Field 19 of /proc/<tid>/stat (after the parenthesised name) is the thread's nice value.
    // A thread may exit between the listing and the read (an earlier test's worker
    // winding down): it has no nice value to count.
    const nice = (tid: string): number | undefined => {
      try {
        return Number(readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ')[16]);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ESRCH') return undefined;
        throw e;
      }
    };
    const main = nice(String(process.pid))!;
    const threads = readdirSync('/proc/self/task').map(nice);
    expect(threads.filter((n) => n === Math.min(19, main + 5)).length).toBeGreaterThanOrEqual(1);
  });
});
