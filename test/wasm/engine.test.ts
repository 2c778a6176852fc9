// engine.test.ts — the WebAssembly tier's engine against the real guest module: boot,
// load and call round trips in abi.h framing, host calls, monitors, kill, snapshots,
// traps and disposal. Needs out/guest/wasm/airlock-guest.wasm (make -C guest wasm).
import { describe, expect, it } from 'vitest';
import {
  AIRLOCK_MSG_CALL,
  AIRLOCK_MSG_HOST_RETURN,
  AIRLOCK_MSG_LOAD,
  AIRLOCK_MSG_LOAD_RUNTIME,
  AIRLOCK_MSG_READY,
  AIRLOCK_MSG_RESULT,
  AIRLOCK_STATUS_EXCEPTION,
  AIRLOCK_STATUS_HOST_ERROR,
  AIRLOCK_STATUS_NO_HANDLER,
  AIRLOCK_STATUS_OK,
  AIRLOCK_STATUS_OUT_OF_MEMORY,
  AIRLOCK_STATUS_STACK_OVERFLOW,
} from '../../src/engine/abi.generated.js';
import type { HostCallHandler } from '../../src/engine/engine.js';
import { decodeOutput, encodeMessage, fieldText } from '../../src/engine/protocol.js';
import { CONFIG, disposedAfterEach } from './support.js';
import { WasmEngine, wasmAvailable } from '../../src/engine/wasm/index.js';
import { AirlockError } from '../../src/errors.js';

const engines = disposedAfterEach();

/** Host functions by "module.fn"; each gets the decoded args array. */
type HostFns = Record<string, (args: unknown[]) => unknown>;

function hostHandler(fns: HostFns): HostCallHandler {
  return async (output) => {
    const { final } = decodeOutput(output);
    const name = `${fieldText(final, 0)}.${fieldText(final, 1)}`;
    const args = JSON.parse(fieldText(final, 2) ?? '[]') as unknown[];
    try {
      const value = await fns[name](args);
      return encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_OK, value === undefined ? [] : [JSON.stringify(value)]);
    } catch (e) {
      return encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_HOST_ERROR, [(e as Error).message]);
    }
  };
}

async function bootWith(handlers: Record<string, string>, fns: HostFns = {}, config = CONFIG): Promise<WasmEngine> {
  const engine = new WasmEngine(config, hostHandler(fns));
  engines.push(engine);
  const ready = decodeOutput(await engine.boot());
  expect(ready.final.kind).toBe(AIRLOCK_MSG_READY);
  const pairs = Object.keys(fns).flatMap((k) => k.split('.'));
  const rt = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD_RUNTIME, 0, pairs))).output);
  expect(rt.final.status).toBe(AIRLOCK_STATUS_OK);
  const load = Object.entries(handlers).flatMap(([name, src]) => ['handler', '', name, src]);
  const loaded = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD, 0, load))).output);
  expect(loaded.final.status, fieldText(loaded.final, 0)).toBe(AIRLOCK_STATUS_OK);
  return engine;
}

async function call(engine: WasmEngine, name: string, event: unknown, options?: Parameters<WasmEngine['exchange']>[1]) {
  const r = await engine.exchange(encodeMessage(AIRLOCK_MSG_CALL, 0, [name, JSON.stringify(event)]), options);
  const out = decodeOutput(r.output);
  expect(out.final.kind).toBe(AIRLOCK_MSG_RESULT);
  return { status: out.final.status, value: fieldText(out.final, 0), console: out.console, stats: r };
}

async function rejection(p: Promise<unknown>): Promise<AirlockError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(AirlockError);
    return e as AirlockError;
  }
  throw new Error('expected a rejection');
}

const SPIN = 'function handler() { for (;;) {} }';

describe('wasm engine', () => {
  it('reports itself usable when the module is built', () => {
    expect(wasmAvailable()).toEqual({ usable: true, reasons: [] });
  });

  it('boots to READY and round-trips LOAD and CALL', async () => {
    const engine = await bootWith({ echo: 'function handler(e) { console.log("seen", e.n); return { n: e.n + 1 }; }' });
    for (let i = 0; i < 3; i++) {
      const r = await call(engine, 'echo', { n: i });
      expect(r.status).toBe(AIRLOCK_STATUS_OK);
      expect(JSON.parse(r.value!)).toEqual({ n: i + 1 });
      expect(r.console).toEqual([{ level: 'log', text: `seen ${i}` }]);
      expect(r.stats.wallTimeNs).toBeGreaterThan(0);
      expect(r.stats.cpuTimeNs).toBeNull();
    }
  });

  it('serves sync, async and throwing host calls', async () => {
    const engine = await bootWith(
      {
        h: `import * as m from 'host:m';
            function handler(e) {
              let err = null;
              try { m.fail(); } catch (x) { err = String(x.message); }
              return { sum: m.add(e.a, e.b), later: m.later(), err };
            }`,
      },
      {
        'm.add': ([a, b]) => (a as number) + (b as number),
        'm.later': () => new Promise((r) => setTimeout(() => r('done'), 5)),
        'm.fail': () => {
          throw new Error('host says no');
        },
      },
    );
    const r = await call(engine, 'h', { a: 2, b: 40 });
    expect(r.status).toBe(AIRLOCK_STATUS_OK);
    expect(JSON.parse(r.value!)).toEqual({ sum: 42, later: 'done', err: expect.stringContaining('host says no') });
  });

  it('kill() stops a spinning guest with ERR_CANCELLED and the guest stays usable', async () => {
    const engine = await bootWith({ spin: SPIN, ok: 'function handler() { return 1; }' });
    const p = call(engine, 'spin', {});
    setTimeout(() => engine.kill(), 20);
    const err = await rejection(p);
    expect(err.code).toBe('ERR_CANCELLED');
    expect((err as unknown as { terminatedBy: string }).terminatedBy).toBe('kill');
    expect(err.stats?.wallTimeNs).toBeGreaterThan(0);
    expect((await call(engine, 'ok', {})).value).toBe('1');
  });

  it('kill() during a pending host call cancels the exchange', async () => {
    const engine = await bootWith(
      { wait: `import * as m from 'host:m'; function handler() { m.never(); for (;;) {} }` },
      { 'm.never': () => new Promise(() => undefined) },
    );
    const p = call(engine, 'wait', {});
    setTimeout(() => engine.kill(), 20);
    const err = await rejection(p);
    expect(err.code).toBe('ERR_CANCELLED');
  });

  it('enforces the wall-clock monitor', async () => {
    const engine = await bootWith({ spin: SPIN });
    const err = await rejection(call(engine, 'spin', {}, { wallClockTimeoutMs: 30 }));
    expect(err.code).toBe('ERR_CANCELLED');
    expect((err as unknown as { terminatedBy: string }).terminatedBy).toBe('wall-clock');
    expect(err.stats!.wallTimeNs).toBeGreaterThanOrEqual(30e6);
  });

  it('enforces the CPU-time monitor and reports CPU time', async () => {
    const engine = await bootWith({ spin: SPIN });
    const err = await rejection(call(engine, 'spin', {}, { cpuTimeoutMs: 30, wallClockTimeoutMs: 5000 }));
    expect(err.code).toBe('ERR_CANCELLED');
    expect((err as unknown as { terminatedBy: string }).terminatedBy).toBe('cpu-time');
    expect(err.stats!.cpuTimeNs).toBeGreaterThanOrEqual(30e6);
  });

  it('does not count time waiting on a host call as CPU time', async () => {
    const engine = await bootWith(
      { slow: `import * as m from 'host:m'; function handler() { return m.sleep(); }` },
      { 'm.sleep': () => new Promise((r) => setTimeout(() => r('slept'), 120)) },
    );
    const r = await call(engine, 'slow', {}, { cpuTimeoutMs: 50 });
    expect(r.value).toBe('"slept"');
    expect(r.stats.cpuTimeNs).not.toBeNull();
    expect(r.stats.cpuTimeNs!).toBeLessThan(50e6);
  });

  it('snapshot/restore rolls state back', async () => {
    const engine = await bootWith({
      count: 'let n = 0; function handler() { return ++n; }',
    });
    expect((await call(engine, 'count', {})).value).toBe('1');
    const snap = await engine.snapshot();
    expect((await call(engine, 'count', {})).value).toBe('2');
    expect((await call(engine, 'count', {})).value).toBe('3');
    await engine.restore(snap);
    expect((await call(engine, 'count', {})).value).toBe('2');
  });

  it('a restore with nothing run since keeps the image; a call, a failed call or another image makes the next restore whole', async () => {
    // The worker skips the copy when memory still holds exactly the image asked for
    // (nothing ran since it was restored or taken): each step below would see a stale
    // count if anything that ran guest code let the next restore skip.
    const engine = await bootWith({
      count: 'let n = 0; function handler() { return ++n; }',
      bumpThenThrow: 'function handler() { globalThis.__bumped = (globalThis.__bumped ?? 0) + 1; throw new Error("after a write"); }',
      bumpThenSpin: 'function handler() { globalThis.__bumped = (globalThis.__bumped ?? 0) + 1; for (;;) {} }',
      bumped: 'function handler() { return globalThis.__bumped ?? 0; }',
    });
    expect((await call(engine, 'count', {})).value).toBe('1');
    const a = await engine.snapshot();
    await engine.restore(a); // nothing ran since the snapshot
    await engine.restore(a);
    expect((await call(engine, 'count', {})).value).toBe('2');
    await engine.restore(a); // a call ran
    expect((await call(engine, 'count', {})).value).toBe('2');
    await engine.restore(a);
    expect((await call(engine, 'bumpThenThrow', {})).status).toBe(AIRLOCK_STATUS_EXCEPTION);
    await engine.restore(a); // a failed call wrote memory
    expect((await call(engine, 'bumped', {})).value).toBe('0');
    await engine.restore(a);
    // Stopped by its CPU budget: no post-call work runs after it, only the call itself.
    expect((await rejection(call(engine, 'bumpThenSpin', {}, { cpuTimeoutMs: 20 }))).code).toBe('ERR_CANCELLED');
    await engine.restore(a);
    expect((await call(engine, 'bumped', {})).value).toBe('0');
    await engine.restore(a);
    expect((await call(engine, 'count', {})).value).toBe('2');
    const b = await engine.snapshot(); // n = 2
    await engine.restore(b); // nothing ran since b was taken
    expect((await call(engine, 'count', {})).value).toBe('3');
    await engine.restore(a); // another image
    await engine.restore(a);
    expect((await call(engine, 'count', {})).value).toBe('2');
    await engine.restore(b);
    await engine.restore(b);
    expect((await call(engine, 'count', {})).value).toBe('3');
  });

  it('restore revives a guest whose worker was terminated', async () => {
    const engine = await bootWith({
      count: 'let n = 0; function handler() { return ++n; }',
    });
    await call(engine, 'count', {});
    const snap = await engine.snapshot();
    // Terminate the worker the way the grace timer does.
    (engine as unknown as { worker: { terminate(): Promise<void> } }).worker.terminate();
    const err = await rejection(call(engine, 'count', {}));
    expect(['ERR_INTERNAL', 'ERR_GUEST_ABORT']).toContain(err.code);
    await engine.restore(snap);
    expect((await call(engine, 'count', {})).value).toBe('2');
  });

  it('refuses a snapshot from another engine with ERR_INVALID_ARG', async () => {
    const a = await bootWith({ x: 'function handler() { return 1; }' });
    const b = await bootWith({ x: 'function handler() { return 2; }' });
    const snap = await a.snapshot();
    const err = await rejection(b.restore(snap));
    expect(err.code).toBe('ERR_INVALID_ARG');
    expect((await call(b, 'x', {})).value).toBe('2');
  });

  it('turns deep recursion into a catchable guest error, not a crash', async () => {
    for (const stackSize of [256 << 10, 7 << 20]) {
      const engine = await bootWith(
        {
          caught: 'function r(n) { return r(n + 1) + 1; } function handler() { try { r(0); } catch (e) { return e.name + ": " + e.message; } }',
          uncaught: 'function r(n) { return r(n + 1) + 1; } function handler() { return r(0); }',
        },
        {},
        { ...CONFIG, stackSize },
      );
      const caught = await call(engine, 'caught', {});
      expect(caught.status).toBe(AIRLOCK_STATUS_OK);
      expect(caught.value).toMatch(/stack overflow/i);
      const uncaught = await call(engine, 'uncaught', {});
      expect([AIRLOCK_STATUS_STACK_OVERFLOW, AIRLOCK_STATUS_EXCEPTION]).toContain(uncaught.status);
      expect((await call(engine, 'caught', {})).status).toBe(AIRLOCK_STATUS_OK);
    }
  });

  it('rejects oversize requests and bad options with ERR_INVALID_ARG', async () => {
    const engine = await bootWith({ x: 'function handler() { return 1; }' });
    const big = new Uint8Array(CONFIG.inputSize + 1);
    expect((await rejection(engine.exchange(big))).code).toBe('ERR_INVALID_ARG');
    const req = encodeMessage(AIRLOCK_MSG_CALL, 0, ['x', '{}']);
    expect((await rejection(engine.exchange(req, { wallClockTimeoutMs: -1 }))).code).toBe('ERR_INVALID_ARG');
    expect((await call(engine, 'x', {})).value).toBe('1');
  });

  it('snapshots the state after loadRuntime in the same hand-over, and only that state', async () => {
    const engine = new WasmEngine(CONFIG, hostHandler({}));
    engines.push(engine);
    await engine.boot();
    const rt = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD_RUNTIME, 0, []))).output);
    expect(rt.final.status).toBe(AIRLOCK_STATUS_OK);
    // Taken with the LOAD_RUNTIME exchange: the runtime without handlers.
    const bare = await engine.snapshot();
    const load = (src: string) => engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'x', src]));
    await load('function handler() { return 1; }');
    // An exchange came between: this one is taken afresh and has the handler.
    const withHandler = await engine.snapshot();
    expect((await call(engine, 'x', {})).value).toBe('1');
    await engine.restore(bare);
    expect((await call(engine, 'x', {})).status).toBe(AIRLOCK_STATUS_NO_HANDLER);
    await engine.restore(withHandler);
    expect((await call(engine, 'x', {})).value).toBe('1');
  });

  it('gives a larger configured stack more depth, also across snapshot and restore', async () => {
    const depthWith = async (stackSize: number) => {
      const engine = await bootWith(
        {
          depth: 'let d = 0; function r() { d++; r(); } function handler() { d = 0; try { r(); } catch (e) {} return d; }',
          count: 'let n = 0; function handler() { return ++n; }',
        },
        {},
        { ...CONFIG, stackSize },
      );
      return { engine, depth: Number((await call(engine, 'depth', {})).value) };
    };
    const small = await depthWith(1 << 20);
    const large = await depthWith(4 << 20);
    // The linked stack holds the default 1 MiB; 4 MiB is laid out at boot.
    expect(large.depth).toBeGreaterThan(3 * small.depth);
    const snap = await large.engine.snapshot();
    expect((await call(large.engine, 'count', {})).value).toBe('1');
    await large.engine.restore(snap);
    expect((await call(large.engine, 'count', {})).value).toBe('1');
    expect(Number((await call(large.engine, 'depth', {})).value)).toBe(large.depth);
  });

  it('grows linear memory as the heap is used, up to the heap size and no further', async () => {
    const MiB = 1 << 20;
    const engine = await bootWith(
      {
        // Keeps what it allocates, so each call's memory stays in use.
        hold: 'const kept = []; function handler(e) { kept.push(new Uint8Array(e.mb * 1048576)); return kept.length; }',
      },
      {},
      { ...CONFIG, heapSize: 256 * MiB },
    );
    const memorySize = async () => ((await engine.snapshot()) as unknown as { image: { image: { memorySize: number } } }).image.image.memorySize;
    const booted = await memorySize();
    expect(booted).toBeLessThan(32 * MiB);
    expect((await call(engine, 'hold', { mb: 100 })).value).toBe('1');
    const grown = await memorySize();
    expect(grown).toBeGreaterThan(100 * MiB);
    expect(grown).toBeLessThan(booted + 200 * MiB);
    // Past the configured heap: out of memory, as with the heap reserved up front.
    expect((await call(engine, 'hold', { mb: 200 })).status).toBe(AIRLOCK_STATUS_OUT_OF_MEMORY);
  });

  it('dispose() is idempotent and later calls fail cleanly', async () => {
    const engine = await bootWith({ x: 'function handler() { return 1; }' });
    await engine.dispose();
    await engine.dispose();
    const err = await rejection(call(engine, 'x', {}));
    expect(err.code).toBe('ERR_INVALID_ARG');
  });

  it('dispose() during a spinning call rejects that call', async () => {
    const engine = await bootWith({ spin: SPIN });
    const p = call(engine, 'spin', {});
    setTimeout(() => void engine.dispose(), 20);
    const err = await rejection(p);
    expect(['ERR_CANCELLED', 'ERR_INTERNAL']).toContain(err.code);
  });
});
