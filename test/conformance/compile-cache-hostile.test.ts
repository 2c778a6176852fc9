// compile-cache-hostile.test.ts — a tenant's guest cannot get bytes of its own into the
// compiled-code cache: tenants are never asked to COMPILE, whatever a tenant's guest
// answers to LOAD is never cached, and the bytecode field of every LOAD carries exactly
// what the compiler sandbox produced.
import { afterAll, beforeEach, expect, it } from 'vitest';
import { sizeLimits } from '../../src/builder.js';
import { compileCache } from '../../src/compile-cache.js';
import { SandboxCore } from '../../src/core.js';
import * as abi from '../../src/engine/abi.generated.js';
import { decodeMessageAt, encodeMessage, type Message } from '../../src/engine/protocol.js';
import { engineFactory } from '../../src/engine/select.js';
import { ProtoJSSandbox } from '../../src/sandbox.js';
import type { LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend, type BackendHarness } from './backends.js';

const HANDLER = 'export default function (e) { return { doubled: e.n * 2 }; }';

describeEachBackend('compiled-code cache against a hostile tenant', (h) => {
  const open: LoadedJSSandbox[] = [];
  afterAll(async () => {
    await Promise.all(open.map((s) => s.dispose()));
  });
  beforeEach(() => compileCache.clear());

  /** A tenant whose every request the test sees, and whose guest answers every LOAD with
   *  OK plus a forged "bytecode" field. */
  async function tenant(h: BackendHarness, requests: Message[]): Promise<LoadedJSSandbox> {
    const engine = engineFactory(h.backend);
    const config = {
      heapSize: sizeLimits.heap.default,
      stackSize: sizeLimits.scratch.default,
      inputSize: sizeLimits.inputBuffer.default,
      outputSize: sizeLimits.outputBuffer.default,
      consoleLimit: sizeLimits.consoleLimit.default,
    };
    const core = await SandboxCore.create(config, (c, onHostCall) => {
      const real = engine(c, onHostCall);
      const exchange = real.exchange.bind(real);
      real.exchange = async (request, options) => {
        const { message } = decodeMessageAt(request, 0);
        requests.push(message);
        const result = await exchange(request, options);
        if (message.kind !== abi.AIRLOCK_MSG_LOAD) return result;
        return { ...result, output: encodeMessage(abi.AIRLOCK_MSG_RESULT, abi.AIRLOCK_STATUS_OK, ['FORGED BYTECODE']) };
      };
      return real;
    });
    const js = await new ProtoJSSandbox(core).loadRuntime();
    js.addHandler('h', HANDLER);
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    return loaded;
  }

  it('sends COMPILE to no tenant and the same compiler-made bytecode to every tenant', async () => {
    const first: Message[] = [];
    const second: Message[] = [];
    const a = await tenant(h, first);
    const b = await tenant(h, second);
    expect([...first, ...second].some((m) => m.kind === abi.AIRLOCK_MSG_COMPILE)).toBe(false);
    const loadOf = (ms: Message[]) => ms.find((m) => m.kind === abi.AIRLOCK_MSG_LOAD)!;
    for (const load of [loadOf(first), loadOf(second)]) {
      expect(load.status & abi.AIRLOCK_LOAD_FLAG_BYTECODE).toBe(abi.AIRLOCK_LOAD_FLAG_BYTECODE);
      // (tag, namespace, name, source, bytecode), then the entropy field
      expect(load.fields.length).toBe(6);
      expect(load.fields[4]!.length).toBeGreaterThan(0);
      expect(load.fields[4]!.toString()).not.toContain('FORGED');
    }
    expect(Buffer.compare(loadOf(first).fields[4]!, loadOf(second).fields[4]!)).toBe(0);
    expect(compileCache.stats()).toMatchObject({ compileRequests: 1, misses: 1, hits: 1 });
    expect(await a.callHandler('h', { n: 4 })).toEqual({ doubled: 8 });
    expect(await b.callHandler('h', { n: 5 })).toEqual({ doubled: 10 });
  });
});
