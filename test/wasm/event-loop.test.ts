// event-loop.test.ts — the WebAssembly tier never holds the Node event loop: timers fire
// while calls run back to back and while a guest calls host functions in a loop, and
// sandboxes run on workers of their own, so their calls are in flight at once.
import { afterEach, describe, expect, it } from 'vitest';
import { SandboxBuilder, type LoadedJSSandbox } from '../../src/index.js';
import { ticksDuring } from '../support/ticks.js';

const sandboxes: LoadedJSSandbox[] = [];
afterEach(async () => {
  await Promise.all(sandboxes.splice(0).map((s) => s.dispose()));
});

async function load(handlers: Record<string, string>, setup?: (p: import('../../src/index.js').ProtoJSSandbox) => void): Promise<LoadedJSSandbox> {
  const proto = await new SandboxBuilder().setBackend('wasm').build();
  setup?.(proto);
  const js = await proto.loadRuntime();
  for (const [name, code] of Object.entries(handlers)) js.addHandler(name, code);
  const loaded = await js.getLoadedSandbox();
  sandboxes.push(loaded);
  return loaded;
}


describe('WebAssembly tier and the event loop', () => {
  it('a 1 ms interval keeps firing during 2000 back-to-back calls', async () => {
    const sandbox = await load({ echo: 'function handler(e) { return e; }' });
    let results = 0;
    const ticks = await ticksDuring(async () => {
      for (let i = 0; i < 2000; i++) if ((await sandbox.callHandler('echo', { i })).i === i) results++;
    });
    expect(results).toBe(2000);
    // A main thread that kept the calls in microtasks would let the timer run at most
    // once (after the loop); several ticks prove the loop ran between calls.
    expect(ticks).toBeGreaterThanOrEqual(5);
  });

  it('a 1 ms interval keeps firing during a storm of host calls', async () => {
    let served = 0;
    const sandbox = await load(
      { storm: 'import { ping } from "host:storm";\nfunction handler(e) { let n = 0; for (let i = 0; i < e.n; i++) n += ping(i); return n; }' },
      (p) =>
        p.register('storm', 'ping', () => {
          served++;
          return 1;
        }),
    );
    let result = 0;
    const ticks = await ticksDuring(async () => {
      result = await sandbox.callHandler('storm', { n: 3000 }, { gc: false });
    });
    expect(result).toBe(3000);
    expect(served).toBe(3000);
    expect(ticks).toBeGreaterThanOrEqual(5);
  });

  it('sandboxes run on workers of their own, with calls in flight at once', async () => {
    // Each handler waits (in a host call) until every sandbox has entered its handler:
    // if sandboxes shared a thread, or a call held the main thread, this never finishes.
    const count = 3;
    let entered = 0;
    let release!: () => void;
    const allEntered = new Promise<void>((r) => (release = r));
    const setup = (p: import('../../src/index.js').ProtoJSSandbox) =>
      p.register('gate', 'arrive', async () => {
        if (++entered === count) release();
        await allEntered;
        return entered;
      });
    const handler = 'import { arrive } from "host:gate";\nfunction handler(e) { let x = 0; for (let i = 0; i < 1e5; i++) x += i; return [e.id, arrive(), x]; }';
    const all = await Promise.all(Array.from({ length: count }, () => load({ run: handler }, setup)));
    const results = await Promise.all(all.map((s, id) => s.callHandler('run', { id })));
    expect(results).toEqual(Array.from({ length: count }, (_, id) => [id, count, 4999950000]));
  });
});
