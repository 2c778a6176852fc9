// modules.test.ts — user modules: namespaces, lazy compilation in any order, singletons
// shared by handlers, state across calls, unload, and the errors around them.
import { afterEach, expect, it } from 'vitest';
import type { JSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

describeEachBackend('user modules', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  async function runtime(): Promise<JSSandbox> {
    const proto = await h.builder().build();
    open.push(proto);
    return proto.loadRuntime();
  }

  it('imports a module from the default user namespace', async () => {
    const sandbox = await runtime();
    sandbox.addModule('math', 'export function add(a, b) { return a + b; }\nexport function multiply(a, b) { return a * b; }');
    sandbox.addHandler(
      'handler',
      `import { add, multiply } from 'user:math';
       function handler(event) { return { sum: add(event.a, event.b), product: multiply(event.a, event.b) }; }`,
    );
    const loaded = await sandbox.getLoadedSandbox();
    expect(await loaded.callHandler('handler', { a: 6, b: 7 })).toEqual({ sum: 13, product: 42 });
  });

  it('resolves custom namespaces and dependencies registered in any order', async () => {
    const sandbox = await runtime();
    sandbox.addModule('geometry', "import { PI } from 'user:constants';\nexport function circleArea(r) { return PI * r * r; }");
    sandbox.addModule('utils', 'export function greet(n) { return "hi " + n; }', 'mylib');
    sandbox.addModule('constants', 'export const PI = 3.14159;');
    sandbox.addModule('chain', "import { circleArea } from 'user:geometry';\nimport { greet } from 'mylib:utils';\nexport const both = (r) => [greet('r' + r), circleArea(r)];");
    sandbox.addHandler('h', "import { both } from 'user:chain'; function handler(e) { return both(e.r); }");
    const loaded = await sandbox.getLoadedSandbox();
    expect(await loaded.callHandler('h', { r: 2 })).toEqual(['hi r2', 3.14159 * 4]);
  });

  it('shares one module instance between handlers, with state that persists across calls', async () => {
    const sandbox = await runtime();
    sandbox.addModule('counter', 'let count = 0;\nexport function increment() { return ++count; }\nexport function getCount() { return count; }');
    sandbox.addHandler('writer', "import { increment } from 'user:counter';\nfunction handler(event) { event.count = increment(); return event; }");
    sandbox.addHandler('reader', "import { getCount } from 'user:counter';\nfunction handler(event) { event.count = getCount(); return event; }");
    const loaded = await sandbox.getLoadedSandbox();
    expect(await loaded.callHandler('writer', {})).toEqual({ count: 1 });
    expect(await loaded.callHandler('reader', {})).toEqual({ count: 1 });
    expect(await loaded.callHandler('writer', {})).toEqual({ count: 2 });
    expect(await loaded.callHandler('reader', {})).toEqual({ count: 2 });
  });

  it('evaluates a module once even when imported by several modules and handlers', async () => {
    const sandbox = await runtime();
    sandbox.addModule('once', 'globalThis.loads = (globalThis.loads || 0) + 1;\nexport const id = Math.random();');
    sandbox.addModule('a', "export { id } from 'user:once';");
    sandbox.addModule('b', "export { id } from 'user:once';");
    sandbox.addHandler('h1', "import { id as x } from 'user:a'; import { id as y } from 'user:b'; function handler() { return [x === y, globalThis.loads]; }");
    sandbox.addHandler('h2', "import { id } from 'user:once'; function handler() { return globalThis.loads; }");
    const loaded = await sandbox.getLoadedSandbox();
    expect(await loaded.callHandler('h1', {})).toEqual([true, 1]);
    expect(await loaded.callHandler('h2', {})).toBe(1);
  });

  it('lets modules import host modules', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    proto.register('clock', 'fixed', () => 1234);
    const sandbox = await proto.loadRuntime();
    sandbox.addModule('time', "import { fixed } from 'host:clock';\nexport const now = () => fixed();");
    sandbox.addHandler('h', "import { now } from 'user:time'; function handler() { return now(); }");
    const loaded = await sandbox.getLoadedSandbox();
    expect(await loaded.callHandler('h', {})).toBe(1234);
  });

  it('fails getLoadedSandbox() naming a missing module, and loads once it is added', async () => {
    const sandbox = await runtime();
    sandbox.addHandler('h', "import { x } from 'user:nope'; function handler() { return x; }");
    await expect(sandbox.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_COMPILE', message: expect.stringContaining('user:nope') });
    sandbox.addModule('nope', 'export const x = "found";');
    const loaded = await sandbox.getLoadedSandbox();
    expect(await loaded.callHandler('h', {})).toBe('found');
  });

  it('reports a syntax error inside a module, naming the module', async () => {
    const sandbox = await runtime();
    sandbox.addModule('broken', 'export const a = ;');
    sandbox.addHandler('h', "import { a } from 'user:broken'; function handler() { return a; }");
    await expect(sandbox.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_COMPILE', message: expect.stringContaining('broken') });
  });

  it('reserves the host and handler namespaces and validates names', async () => {
    const sandbox = await runtime();
    expect(() => sandbox.addModule('db', 'export const x = 1;', 'host')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => sandbox.addModule('x', 'export const x = 1;', 'handler')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => sandbox.addModule('', 'export const x = 1;')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => sandbox.addModule('m', 'export const x = 1;', '')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => sandbox.addModule('a:b', 'export const x = 1;')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => sandbox.addModule('m', 5 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  });

  it('removes one module or all of them before loading', async () => {
    const sandbox = await runtime();
    sandbox.addModule('a', 'export const v = "a";');
    sandbox.addModule('b', 'export const v = "b";', 'ns');
    sandbox.removeModule('b', 'ns');
    sandbox.addHandler('h', "import { v } from 'ns:b'; function handler() { return v; }");
    await expect(sandbox.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_COMPILE', message: expect.stringContaining('ns:b') });
    sandbox.clearModules();
    sandbox.addHandler('h', "import { v } from 'user:a'; function handler() { return v; }");
    await expect(sandbox.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_COMPILE', message: expect.stringContaining('user:a') });
  });

  it('clears handlers and modules on unload(), so new versions can be loaded', async () => {
    const sandbox = await runtime();
    sandbox.addModule('counter', 'let n = 0; export const next = () => ++n;');
    sandbox.addHandler('h', "import { next } from 'user:counter'; function handler() { return next(); }");
    const loaded = await sandbox.getLoadedSandbox();
    expect(await loaded.callHandler('h', {})).toBe(1);
    expect(await loaded.callHandler('h', {})).toBe(2);
    const fresh = await loaded.unload();
    fresh.addHandler('h', "import { next } from 'user:counter'; function handler() { return next(); }");
    await expect(fresh.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_COMPILE' });
    fresh.addModule('counter', 'let n = 100; export const next = () => ++n;');
    const again = await fresh.getLoadedSandbox();
    expect(await again.callHandler('h', {})).toBe(101);
  });

  it('carries sources larger than the input buffer', async () => {
    const proto = await h.builder().setInputBufferSize(4096).build();
    open.push(proto);
    const sandbox = await proto.loadRuntime();
    const table = Array.from({ length: 3000 }, (_, i) => `  "k${i}": ${i},`).join('\n');
    const source = `export const table = {\n${table}\n};\nexport const size = Object.keys(table).length;`;
    expect(source.length).toBeGreaterThan(40_000);
    sandbox.addModule('big', source);
    sandbox.addHandler('h', "import { size, table } from 'user:big'; function handler(e) { return [size, table[e.k]]; }");
    const loaded = await sandbox.getLoadedSandbox();
    expect(await loaded.callHandler('h', { k: 'k2999' })).toEqual([3000, 2999]);
  });
});
