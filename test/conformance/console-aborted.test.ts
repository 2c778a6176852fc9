// console-aborted.test.ts — console output of a call that ends ERR_GUEST_ABORT reaches the
// console handler before the rejection, once, within the host's console budget, and the
// abort's own text never does, on both tiers. What each tier hands the facade when its
// guest aborts (the output bytes, hostile) is proved with hostile guests by
// test/host/aborted-output.test.ts and test/wasm/aborted-output.test.ts, and the
// runtime's own abort by test/guest/runtime.test.ts; no handler can make the real
// guest fault, so here the engine stands in for the last step: it runs the real call,
// then rejects as an aborted tier does, with the console lines the guest really wrote
// followed by an ABORT message.
import { afterEach, expect, it } from 'vitest';
import { sizeLimits } from '../../src/builder.js';
import { SandboxCore, type ConsoleHandler } from '../../src/core.js';
import * as abi from '../../src/engine/abi.generated.js';
import type { EngineFactory } from '../../src/engine/engine.js';
import { encodeMessage, splitOutput } from '../../src/engine/protocol.js';
import { engineFactory } from '../../src/engine/select.js';
import { GuestAbortError } from '../../src/errors.js';
import type { LoadedJSSandbox } from '../../src/index.js';
import { ProtoJSSandbox } from '../../src/sandbox.js';
import { describeEachBackend, type BackendHarness } from './backends.js';

type Line = [string, string];

describeEachBackend('console output of an aborted call', (h: BackendHarness) => {
  const open: LoadedJSSandbox[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  /** A sandbox whose next call, once armed, ends as an aborted guest's would. The
   *  guest counts against the largest console limit and the host keeps `limit`. */
  async function aborting(lines: Line[], limit: number = sizeLimits.consoleLimit.default) {
    let armed = false;
    const real = engineFactory(h.backend);
    const factory: EngineFactory = (config, onHostCall) => {
      const engine = real({ ...config, consoleLimit: sizeLimits.consoleLimit.max }, onHostCall);
      const exchange = engine.exchange.bind(engine);
      engine.exchange = async (request, options) => {
        const r = await exchange(request, options);
        if (!armed) return r;
        armed = false;
        const { console: written } = splitOutput(r.output);
        const err = new GuestAbortError('guest aborted: assertion failed');
        err.guestOutput = Buffer.concat([
          ...written.map(({ level, text }) => encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, [level, text])),
          encodeMessage(abi.AIRLOCK_MSG_ABORT, 0, ['assertion failed']),
        ]);
        throw err;
      };
      return engine;
    };
    const config = {
      heapSize: sizeLimits.heap.default,
      stackSize: sizeLimits.scratch.default,
      inputSize: sizeLimits.inputBuffer.default,
      outputSize: sizeLimits.outputBuffer.default,
      consoleLimit: limit,
    };
    const handler: ConsoleHandler = (level, message) => lines.push([level, message]);
    const proto = new ProtoJSSandbox(await SandboxCore.create(config, factory, handler));
    const js = await proto.loadRuntime();
    js.addHandler('logs', 'function handler(e) { for (let i = 0; i < e.lines; i++) console.log("line " + i); console.warn("about to fail"); return 1; }');
    const s = await js.getLoadedSandbox();
    open.push(s);
    return { s, arm: () => (armed = true) };
  }

  async function guestAbort(p: Promise<unknown>): Promise<{ code?: string }> {
    const e = await p.then(
      () => undefined,
      (err: unknown) => err as { code?: string },
    );
    expect(e?.code).toBe('ERR_GUEST_ABORT');
    return e as { code?: string };
  }

  it('delivers the lines written before the abort, then rejects with ERR_GUEST_ABORT', async () => {
    const lines: Line[] = [];
    const { s, arm } = await aborting(lines);
    arm();
    const call = s.callHandler('logs', { lines: 2 });
    await guestAbort(call);
    expect(lines).toEqual([
      ['log', 'line 0'],
      ['log', 'line 1'],
      ['warn', 'about to fail'],
    ]);
    expect(s.poisoned).toBe(true);
  });

  it('keeps an aborted call within the console budget', async () => {
    const lines: Line[] = [];
    // 20 lines of 7 bytes (plus one each for the line end) against a 64-byte budget.
    const { s, arm } = await aborting(lines, 64);
    arm();
    await guestAbort(s.callHandler('logs', { lines: 20 }));
    const kept = lines.filter(([level]) => level === 'log');
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.reduce((n, [, text]) => n + Buffer.byteLength(text) + 1, 0)).toBeLessThanOrEqual(64);
    expect(lines.at(-1)?.[0]).toBe('warn');
    expect(lines.at(-1)?.[1]).toMatch(/^\[airlock\] \d+ bytes of console output dropped$/);
    expect(lines.some(([, text]) => text.includes('assertion failed'))).toBe(false);
  });
});
