// kvm-image.test.ts — the KVM guest image (out/guest/kvm/airlock-guest.img) boots to
// READY in a real micro-VM and answers requests, host calls and failures, driven
// through the KVM engine and the host addon.
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  AIRLOCK_MSG_CALL,
  AIRLOCK_MSG_HOST_RETURN,
  AIRLOCK_MSG_LOAD,
  AIRLOCK_MSG_LOAD_RUNTIME,
  AIRLOCK_MSG_READY,
  AIRLOCK_MSG_RESULT,
  AIRLOCK_STATUS_EXCEPTION,
  AIRLOCK_STATUS_OK,
  AIRLOCK_STATUS_OUT_OF_MEMORY,
  AIRLOCK_STATUS_STACK_OVERFLOW,
  AIRLOCK_STATUS_BAD_REQUEST,
} from '../../src/engine/abi.generated';
import { KvmEngine } from '../../src/engine/kvm-engine';
import { decodeOutput, encodeMessage, fieldText, type GuestOutput } from '../../src/engine/protocol';
import { describeKvm } from '../support/kvm';

describeKvm('KVM guest image', () => {
  let engine: KvmEngine;
  const hostCalls: string[] = [];

  async function send(kind: number, fields: string[]): Promise<GuestOutput> {
    const r = await engine.exchange(encodeMessage(kind, 0, fields));
    return decodeOutput(r.output);
  }

  beforeAll(async () => {
    engine = new KvmEngine(
      { heapSize: 16 << 20, stackSize: 2 << 20, inputSize: 1 << 20, outputSize: 1 << 20, consoleLimit: 65536 },
      async (output) => {
        const call = decodeOutput(output).final;
        const args = JSON.parse(fieldText(call, 2) ?? '[]') as number[];
        hostCalls.push(`${fieldText(call, 0)}.${fieldText(call, 1)}`);
        return encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_OK, [JSON.stringify(args[0] * args[1])]);
      },
    );
    const ready = decodeOutput(await engine.boot());
    expect(ready.final.kind).toBe(AIRLOCK_MSG_READY);
    expect(fieldText(ready.final, 0)).toBe('QuickJS 2025-04-26');
    expect((await send(AIRLOCK_MSG_LOAD_RUNTIME, ['math', 'mul'])).final.status).toBe(AIRLOCK_STATUS_OK);
  });

  afterAll(async () => {
    await engine?.dispose();
  });

  it('loads handlers and answers calls with console output, host calls and time', async () => {
    const load = await send(AIRLOCK_MSG_LOAD, [
      'handler', '', 'greet',
      'import { mul } from "host:math";\n' +
        'function handler(e) { console.log("hi", e.name); return { m: "Hello " + e.name, p: mul(6, 7), t: Date.now() > 1.6e12, tz: new Date().getTimezoneOffset() }; }',
    ]);
    expect(load.final.status).toBe(AIRLOCK_STATUS_OK);
    const x = await send(AIRLOCK_MSG_CALL, ['greet', '{"name":"VM"}']);
    expect(x.final.kind).toBe(AIRLOCK_MSG_RESULT);
    expect(x.final.status).toBe(AIRLOCK_STATUS_OK);
    expect(JSON.parse(fieldText(x.final, 0) ?? 'null')).toEqual({ m: 'Hello VM', p: 42, t: true, tz: 0 });
    expect(hostCalls).toContain('math.mul');
  });

  it('reports exceptions, stack overflow, heap exhaustion and bad requests, and keeps answering', async () => {
    const load = await send(AIRLOCK_MSG_LOAD, [
      'handler', '', 'thrower', 'function handler() { throw new TypeError("no"); }',
      'handler', '', 'deep', 'function handler() { function r(n) { return r(n + 1) + 1; } return r(0); }',
      'handler', '', 'hog', 'function handler() { const a = []; for (;;) a.push("x".repeat(4096) + a.length); }',
      'handler', '', 'echo', 'function handler(e) { return e; }',
    ]);
    expect(load.final.status).toBe(AIRLOCK_STATUS_OK);
    const t = await send(AIRLOCK_MSG_CALL, ['thrower']);
    expect(t.final.status).toBe(AIRLOCK_STATUS_EXCEPTION);
    expect([fieldText(t.final, 0), fieldText(t.final, 1)]).toEqual(['TypeError', 'no']);
    expect((await send(AIRLOCK_MSG_CALL, ['deep'])).final.status).toBe(AIRLOCK_STATUS_STACK_OVERFLOW);
    expect((await send(AIRLOCK_MSG_CALL, ['hog'])).final.status).toBe(AIRLOCK_STATUS_OUT_OF_MEMORY);
    const bad = decodeOutput((await engine.exchange(Buffer.from('not a message at all'))).output);
    expect(bad.final.status).toBe(AIRLOCK_STATUS_BAD_REQUEST);
    const e = await send(AIRLOCK_MSG_CALL, ['echo', '[1,2,3]']);
    expect(fieldText(e.final, 0)).toBe('[1,2,3]');
  });
});
