// compile-cache.test.ts — the process's compiled-code cache on both tiers: a sandbox loaded
// from cached bytecode behaves exactly as one that compiled its source, a second load of
// the same source asks no compiler, and the key keeps apart what compiles differently.
import { afterAll, beforeEach, expect, it } from 'vitest';
import { compileCache, type LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const handlerSource = `import { twice } from 'lib:math';
import { now } from 'host:clock';
function helper(n) {
  if (n < 0) throw new RangeError('negative: ' + n);
  return twice(n);
}
function handler(event) {
  return { n: helper(event.n), at: now(), text: helper.toString(), answer: globalThis.answer ?? null };
}`;
const mathSource = `export function twice(n) {
  return n * 2;
}
globalThis.answer = 42;`;

afterAll(() => compileCache.configure({ maxBytes: 64 * 1024 * 1024 }));

describeEachBackend('compiled-code cache', (h) => {
  const sandboxes: LoadedJSSandbox[] = [];
  afterAll(async () => {
    await Promise.all(sandboxes.map((s) => s.dispose()));
  });
  beforeEach(() => compileCache.clear());

  async function loaded(options: { cache: boolean; handler?: string; hardened?: boolean; name?: string; namespace?: string }): Promise<LoadedJSSandbox> {
    let builder = h.builder().setCompileCache(options.cache);
    if (options.hardened) builder = builder.setHardened();
    const proto = await builder.build();
    proto.hostModule('clock').register('now', () => 7);
    const js = await proto.loadRuntime();
    js.addModule('math', mathSource, options.namespace ?? 'lib');
    js.addHandler(options.name ?? 'h', options.handler ?? handlerSource);
    const s = await js.getLoadedSandbox();
    sandboxes.push(s);
    return s;
  }

  async function outcome(s: LoadedJSSandbox, event: unknown, name = 'h'): Promise<unknown> {
    try {
      return { ok: await s.callHandler(name, event) };
    } catch (e) {
      const err = e as { code?: string; name?: string; message?: string; stack?: string; guestStack?: string };
      return { code: err.code, name: err.name, message: err.message, guestStack: err.guestStack };
    }
  }

  it('gives the same results, exceptions and stack locations with and without the cache', async () => {
    const plain = await loaded({ cache: false });
    expect(compileCache.stats().compileRequests).toBe(0);
    await loaded({ cache: true }); // fills the cache
    const cached = await loaded({ cache: true });
    expect(compileCache.stats().hits).toBeGreaterThan(0);
    for (const event of [{ n: 3 }, { n: -1 }]) {
      expect(await outcome(cached, event)).toEqual(await outcome(plain, event));
    }
    const thrown = (await outcome(cached, { n: -1 })) as { message: string };
    expect(thrown.message).toContain('negative: -1');
  });

  it('keeps TypeScript line and column numbers in guest stacks through the cache', async () => {
    const ts = `interface Event { n: number }\nfunction handler(event: Event): number {\n  if (event.n < 0) throw new TypeError('below zero');\n  return event.n as number;\n}`;
    const load = async (cache: boolean) => {
      const js = await (await h.builder().setCompileCache(cache).build()).loadRuntime();
      js.addHandler('t', ts, { typescript: true });
      const s = await js.getLoadedSandbox();
      sandboxes.push(s);
      return s;
    };
    const plain = await load(false);
    await load(true);
    const cached = await load(true);
    expect(compileCache.stats().hits).toBe(1);
    const a = (await outcome(plain, { n: -1 }, 't')) as { guestStack: string };
    expect(a.guestStack).toContain('handler:t:3:');
    expect(await outcome(cached, { n: -1 }, 't')).toEqual(a);
  });

  it('compiles a source once: a second sandbox loading it asks no compiler', async () => {
    await loaded({ cache: true });
    const first = compileCache.stats();
    expect(first.compileRequests).toBe(1);
    expect(first.misses).toBe(2); // the handler and its module
    await loaded({ cache: true });
    const second = compileCache.stats();
    expect(second.compileRequests).toBe(1);
    expect(second.hits).toBe(2);
    expect(second.entries).toBe(2);
  });

  it('keys on kind, name, namespace, source and profile', async () => {
    await loaded({ cache: true });
    const base = compileCache.stats().misses;
    await loaded({ cache: true, name: 'other' }); // the handler's name is its module name
    expect(compileCache.stats().misses).toBe(base + 1);
    await loaded({ cache: true, namespace: 'lib2', handler: handlerSource.replace("'lib:math'", "'lib2:math'") });
    expect(compileCache.stats().misses).toBe(base + 3);
    await loaded({ cache: true, hardened: true });
    expect(compileCache.stats().misses).toBe(base + 5);
    await loaded({ cache: true, handler: handlerSource + '\n' });
    expect(compileCache.stats().misses).toBe(base + 6);
  });

  it('reports a compile error exactly as without the cache, and never caches it as bytecode', async () => {
    const errorOf = async (cache: boolean) => {
      try {
        await loaded({ cache, handler: 'function handler() {\n  return 1 +;\n}' });
        return undefined;
      } catch (e) {
        return { code: (e as { code?: string }).code, message: (e as Error).message };
      }
    };
    const plain = await errorOf(false);
    expect(plain?.code).toBe('ERR_COMPILE');
    expect(await errorOf(true)).toEqual(plain);
    expect(await errorOf(true)).toEqual(plain);
    expect(compileCache.stats().compileRequests).toBe(1);
  });

  it('stays within its byte budget, evicting the least recently used', async () => {
    compileCache.configure({ maxBytes: 24 * 1024 });
    const variant = (i: number) => `${handlerSource}\nexport const pad = '${'x'.repeat(5000)} ${i}';`;
    for (let i = 0; i < 6; i++) await loaded({ cache: true, handler: variant(i) });
    const stats = compileCache.stats();
    expect(stats.bytes).toBeLessThanOrEqual(24 * 1024);
    expect(stats.entries).toBeLessThan(7);
    await loaded({ cache: true, handler: variant(5) }); // the newest is still there
    expect(compileCache.stats().compileRequests).toBe(stats.compileRequests);
    await loaded({ cache: true, handler: variant(0) }); // the oldest was evicted
    expect(compileCache.stats().compileRequests).toBe(stats.compileRequests + 1);
    compileCache.configure({ maxBytes: 64 * 1024 * 1024 });
  });

  it('refuses bad settings with ERR_INVALID_ARG', () => {
    expect(() => h.builder().setCompileCache('yes' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    for (const maxBytes of [-1, 1.5, Number.NaN, '1' as never]) {
      expect(() => compileCache.configure({ maxBytes })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
  });

  it('is off with a zero budget: no compiler is asked', async () => {
    compileCache.configure({ maxBytes: 0 });
    const s = await loaded({ cache: true });
    expect(await s.callHandler('h', { n: 2 })).toMatchObject({ n: 4, answer: 42 });
    expect(compileCache.stats()).toMatchObject({ compileRequests: 0, hits: 0, misses: 0 });
    compileCache.configure({ maxBytes: 64 * 1024 * 1024 });
  });
});
