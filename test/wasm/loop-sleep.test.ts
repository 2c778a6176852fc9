// loop-sleep.test.ts — the guest event loop's timer sleep served in the WebAssembly
// worker (src/engine/wasm/loop-sleep.ts), against the engine and the real guest module:
// the main thread never sees a lone sleep; kill() and the wall clock wake a sleeping
// worker at once, so the guest stops at its own interrupt check and keeps its worker
// (a worker that slept through its cancel grace would be terminated, the guest lost);
// the sleep is not CPU time.
import { describe, expect, it } from 'vitest';
import { AIRLOCK_MSG_CALL, AIRLOCK_MSG_HOST_RETURN, AIRLOCK_MSG_LOAD, AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_STATUS_OK } from '../../src/engine/abi.generated.js';
import { decodeOutput, encodeMessage, fieldText } from '../../src/engine/protocol.js';
import { WasmEngine } from '../../src/engine/wasm/index.js';
import type { AirlockError } from '../../src/errors.js';
import { CONFIG, disposedAfterEach } from './support.js';

const engines = disposedAfterEach();

/** An engine with handlers `nap` (sleeps `ms` `times` times) and `ok`; every host call
 *  the main thread sees is named in `seen` and answered with no completions. */
async function sleeper(): Promise<{ engine: WasmEngine; seen: string[] }> {
  const seen: string[] = [];
  const engine = new WasmEngine(CONFIG, async (output) => {
    const { final } = decodeOutput(output);
    seen.push(`${fieldText(final, 0)}.${fieldText(final, 1)}`);
    return encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_OK, ['[]']);
  });
  engines.push(engine);
  await engine.boot();
  await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD_RUNTIME, 0, []));
  const nap = `function handler(e) {
    return (async () => { for (let i = 0; i < e.times; i++) await new Promise((r) => setTimeout(r, e.ms)); return 'rested'; })();
  }`;
  const loaded = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'nap', nap, 'handler', '', 'ok', 'function handler() { return 1; }']))).output);
  expect(loaded.final.status, fieldText(loaded.final, 0)).toBe(AIRLOCK_STATUS_OK);
  return { engine, seen };
}

async function call(engine: WasmEngine, name: string, event: unknown, options?: Parameters<WasmEngine['exchange']>[1]) {
  const r = await engine.exchange(encodeMessage(AIRLOCK_MSG_CALL, 0, [name, JSON.stringify(event)]), options);
  const { final } = decodeOutput(r.output);
  expect(final.status, fieldText(final, 0)).toBe(AIRLOCK_STATUS_OK);
  return { value: fieldText(final, 0), stats: r };
}

async function rejection(p: Promise<unknown>): Promise<AirlockError> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: AirlockError) => e,
  );
}

describe('wasm engine: the timer sleep in the worker', () => {
  it('sleeps without the main thread', async () => {
    const { engine, seen } = await sleeper();
    expect((await call(engine, 'nap', { ms: 1, times: 20 })).value).toBe('"rested"');
    expect(seen).toEqual([]);
  });

  for (const [how, stop] of [
    ['kill()', (engine: WasmEngine) => setTimeout(() => engine.kill(), 30)],
    ['the wall clock', () => undefined],
  ] as const) {
    it(`ends a sleep at ${how}, and the guest stops by itself and stays usable`, async () => {
      const { engine, seen } = await sleeper();
      const pending = call(engine, 'nap', { ms: 60_000, times: 1 }, how === 'the wall clock' ? { wallClockTimeoutMs: 30 } : undefined);
      stop(engine);
      expect((await rejection(pending)).code).toBe('ERR_CANCELLED');
      // A worker terminated after the cancel grace would have lost the guest.
      expect((await call(engine, 'ok', {})).value).toBe('1');
      expect(seen).toEqual([]);
    });
  }

  it('does not charge the sleep to the CPU budget or the CPU time', async () => {
    const { engine } = await sleeper();
    const { stats } = await call(engine, 'nap', { ms: 150, times: 1 }, { cpuTimeoutMs: 50 });
    expect(stats.cpuTimeNs).not.toBeNull();
    expect(stats.cpuTimeNs!).toBeLessThan(50e6);
    expect(stats.wallTimeNs).toBeGreaterThanOrEqual(150e6);
  });
});
