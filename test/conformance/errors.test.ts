// errors.test.ts — every bad input gets a coded error, and the sandbox stays usable after.
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  AirlockError,
  CompileError,
  GuestExceptionError,
  SandboxBuilder,
  type LoadedJSSandbox,
} from '../../src/index.js';
import { describeEachBackend } from './backends.js';

describeEachBackend('bad input', (h) => {
  let loaded: LoadedJSSandbox;
  beforeAll(async () => {
    loaded = await h.load({
      echo: 'function handler(e) { return e; }',
      thrower: `function handler(e) {
  const err = new TypeError('bad event: ' + e.why);
  err.detail = 1;
  throw err;
}`,
      custom: 'class MyError extends Error { constructor(m) { super(m); this.name = "MyError"; } }\nfunction handler() { throw new MyError("custom"); }',
      throwsString: 'function handler() { throw "just a string"; }',
      bigint: 'function handler() { return { n: 10n }; }',
      cyclic: 'function handler() { const o = {}; o.self = o; return o; }',
    });
  });
  afterAll(() => loaded?.dispose());

  async function stillUsable(): Promise<void> {
    expect(await loaded.callHandler('echo', { ok: true })).toEqual({ ok: true });
    expect(loaded.poisoned).toBe(false);
  }

  it('rejects builder sizes that are zero, negative, fractional or not numbers', () => {
    const b = new SandboxBuilder();
    for (const bad of [0, -1, 1.5, NaN, Infinity, '1024', null, undefined]) {
      expect(() => b.setHeapSize(bad as number)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => b.setScratchSize(bad as number)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => b.setInputBufferSize(bad as number)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => b.setOutputBufferSize(bad as number)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
    expect(() => b.setBackend('xen' as 'kvm')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    // Chainable, and the error is a real Error subclass.
    expect(b.setHeapSize(8 << 20).setScratchSize(1 << 20)).toBe(b);
    try {
      b.setHeapSize(0);
    } catch (e) {
      expect(e).toBeInstanceOf(Error);
      expect(e).toBeInstanceOf(AirlockError);
    }
  });

  it('rejects empty or non-string handler names', async () => {
    await expect(loaded.callHandler('', {})).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(loaded.callHandler(42 as unknown as string, {})).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await stillUsable();
  });

  it('rejects a call to a handler that is not loaded', async () => {
    await expect(loaded.callHandler('missing', {})).rejects.toMatchObject({ code: 'ERR_INVALID_ARG', message: expect.stringContaining('missing') });
    await stillUsable();
  });

  it('rejects non-serialisable events', async () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(loaded.callHandler('echo', { n: 1n })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(loaded.callHandler('echo', cyclic)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(loaded.callHandler('echo', () => 1)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(loaded.callHandler('echo', Symbol('s'))).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await stillUsable();
  });

  it('rejects bad call options', async () => {
    for (const options of [
      { wallClockTimeoutMs: 0 },
      { wallClockTimeoutMs: -5 },
      { cpuTimeoutMs: 0 },
      { cpuTimeoutMs: NaN },
      { cpuTimeoutMs: '10' },
      { gc: 'yes' },
      null,
      5,
    ]) {
      await expect(loaded.callHandler('echo', {}, options as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    }
    await stillUsable();
  });

  it('keeps a guest exception\'s name, message and stack', async () => {
    const err = await loaded.callHandler('thrower', { why: 'no id' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestExceptionError);
    expect(err).toMatchObject({ code: 'ERR_GUEST_EXCEPTION', name: 'TypeError', message: 'bad event: no id' });
    const guestStack = (err as GuestExceptionError).guestStack;
    expect(guestStack).toContain('handler:thrower:2');
    expect((err as Error).stack).toContain('TypeError: bad event: no id');
    await stillUsable();
  });

  it('keeps custom error class names and non-Error throws', async () => {
    await expect(loaded.callHandler('custom', {})).rejects.toMatchObject({ code: 'ERR_GUEST_EXCEPTION', name: 'MyError', message: 'custom' });
    await expect(loaded.callHandler('throwsString', {})).rejects.toMatchObject({
      code: 'ERR_GUEST_EXCEPTION',
      message: expect.stringContaining('just a string'),
    });
    await stillUsable();
  });

  it('reports results that cannot become JSON as guest exceptions', async () => {
    await expect(loaded.callHandler('bigint', {})).rejects.toMatchObject({ code: 'ERR_GUEST_EXCEPTION', name: 'TypeError' });
    await expect(loaded.callHandler('cyclic', {})).rejects.toMatchObject({ code: 'ERR_GUEST_EXCEPTION', name: 'TypeError' });
    await stillUsable();
  });
});

describeEachBackend('compile errors at getLoadedSandbox()', (h) => {
  it('names the routing key and line of a syntax error, and the JSSandbox can be fixed and retried', async () => {
    const proto = await h.builder().build();
    try {
      const js = await proto.loadRuntime();
      js.addHandler('good', 'function handler() { return "good"; }');
      js.addHandler('broken', 'function handler(e) {\n  return e +;\n}');
      const err = await js.getLoadedSandbox().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CompileError);
      expect(err).toMatchObject({ code: 'ERR_COMPILE' });
      expect((err as Error).message).toContain('broken');
      expect((err as Error).message).toMatch(/SyntaxError/);
      expect((err as Error).message).toMatch(/:2\b/);
      js.addHandler('broken', 'function handler(e) {\n  return e + 1;\n}');
      const loaded = await js.getLoadedSandbox();
      expect(await loaded.callHandler('broken', 1)).toBe(2);
      expect(await loaded.callHandler('good', null)).toBe('good');
    } finally {
      await proto.dispose();
    }
  });

  it('rejects a handler module without a handler function', async () => {
    const proto = await h.builder().build();
    try {
      const js = await proto.loadRuntime();
      js.addHandler('nofn', 'const handler = 42; export const other = 1;');
      await expect(js.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_COMPILE', message: expect.stringContaining('nofn') });
    } finally {
      await proto.dispose();
    }
  });

  it('reports an exception thrown by top-level handler code', async () => {
    const proto = await h.builder().build();
    try {
      const js = await proto.loadRuntime();
      js.addHandler('boom', 'throw new Error("top-level failure");\nfunction handler() {}');
      await expect(js.getLoadedSandbox()).rejects.toMatchObject({
        code: 'ERR_COMPILE',
        message: expect.stringMatching(/boom[\s\S]*top-level failure/),
      });
    } finally {
      await proto.dispose();
    }
  });

  it('rejects empty names and non-string sources synchronously', async () => {
    const proto = await h.builder().build();
    try {
      const js = await proto.loadRuntime();
      expect(() => js.addHandler('', 'function handler() {}')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => js.addHandler('x', 42 as unknown as string)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => js.removeHandler('')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      js.addHandler('ok', 'function handler() { return "ok"; }');
      const loaded = await js.getLoadedSandbox();
      expect(await loaded.callHandler('ok', {})).toBe('ok');
    } finally {
      await proto.dispose();
    }
  });
  it('describes a thrown value that is not an Error by its JSON', async () => {
    const proto = await h.builder().build();
    try {
      const js = await proto.loadRuntime();
      js.addHandler(
        'h',
        'function handler(e) { if (e === 1) throw { code: 42 }; if (e === 2) { const o = {}; o.o = o; throw o; } throw { long: "é".repeat(1000) }; }',
      );
      const loaded = await js.getLoadedSandbox();
      await expect(loaded.callHandler('h', 1)).rejects.toMatchObject({ code: 'ERR_GUEST_EXCEPTION', message: 'thrown value: {"code":42}' });
      await expect(loaded.callHandler('h', 2)).rejects.toMatchObject({
        code: 'ERR_GUEST_EXCEPTION',
        message: 'thrown value: an object that cannot be shown as JSON',
      });
      // Cut to a bounded length on a character boundary, and said to be cut.
      const long = await loaded.callHandler('h', 3).catch((e: Error) => e.message);
      expect(long).toMatch(/^thrown value: \{"long":"é+\.\.\.$/);
      expect(long.length).toBeLessThan(520);
    } finally {
      await proto.dispose();
    }
  });
});
