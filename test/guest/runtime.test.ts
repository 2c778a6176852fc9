// runtime.test.ts — the guest runtime's request handling, driven through the native
// target (out/guest/native/airlock-native) over its framed stdin/stdout protocol.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AIRLOCK_CALL_FLAG_GC,
  AIRLOCK_CHUNK_FLAG_LAST,
  AIRLOCK_EXIT_ABORT,
  AIRLOCK_EXIT_RESPONSE,
  AIRLOCK_MSG_CALL,
  AIRLOCK_MSG_CHUNK,
  AIRLOCK_MSG_GC,
  AIRLOCK_MSG_ABORT,
  AIRLOCK_MSG_LOAD,
  AIRLOCK_MSG_READY,
  AIRLOCK_MSG_RESULT,
  AIRLOCK_MSG_UNLOAD,
  AIRLOCK_STATUS_BAD_REQUEST,
  AIRLOCK_STATUS_COMPILE_ERROR,
  AIRLOCK_STATUS_EXCEPTION,
  AIRLOCK_STATUS_INTERRUPTED,
  AIRLOCK_STATUS_NO_HANDLER,
  AIRLOCK_STATUS_NOT_SERIALIZABLE,
  AIRLOCK_STATUS_OK,
  AIRLOCK_STATUS_OUT_OF_MEMORY,
  AIRLOCK_STATUS_STACK_OVERFLOW,
  AIRLOCK_STATUS_TOO_LARGE,
  AIRLOCK_STATUS_UNSETTLED,
} from '../../src/engine/abi.generated';
import { encodeMessage } from '../../src/engine/protocol';
import { NativeGuest, texts, type Exchange, type NativeOptions } from './driver';

const guests: NativeGuest[] = [];

async function start(options: NativeOptions = {}, hostFns: string[][] = []): Promise<NativeGuest> {
  const g = new NativeGuest(options);
  guests.push(g);
  const ready = await g.boot();
  expect(ready.final.kind).toBe(AIRLOCK_MSG_READY);
  expectOk(await g.loadRuntime(hostFns));
  return g;
}

function expectOk(x: Exchange): void {
  expect(x.final.kind).toBe(AIRLOCK_MSG_RESULT);
  expect({ status: x.final.status, fields: texts(x) }).toMatchObject({ status: AIRLOCK_STATUS_OK });
}

function result(x: Exchange): unknown {
  expectOk(x);
  const [json] = texts(x);
  return json === undefined ? undefined : JSON.parse(json);
}

afterAll(async () => {
  await Promise.all(guests.map((g) => g.close()));
});

describe('boot', () => {
  it('answers READY with the engine version and a RESPONSE exit', async () => {
    const g = new NativeGuest();
    guests.push(g);
    const ready = await g.boot();
    expect(ready.exitKind).toBe(AIRLOCK_EXIT_RESPONSE);
    expect(ready.final.kind).toBe(AIRLOCK_MSG_READY);
    expect(texts(ready)).toEqual(['QuickJS 2025-04-26']);
  });
});

describe('handlers', () => {
  let g: NativeGuest;
  beforeAll(async () => {
    g = await start();
  });

  it('runs a hyperlight-style handler that is not exported', async () => {
    expectOk(await g.load({ greet: 'function handler(event) { event.message = "Hello, " + event.name + "!"; return event; }' }));
    expect(result(await g.call('greet', { name: 'World' }))).toEqual({ name: 'World', message: 'Hello, World!' });
  });

  it('accepts an export default function and an exported handler', async () => {
    expectOk(
      await g.load({
        def: 'export default function (e) { return e * 2; }',
        named: 'export function handler(e) { return e + 1; }',
        both: 'export default function other() { return "default"; }\nfunction handler() { return "handler"; }',
      }),
    );
    expect(result(await g.call('def', 21))).toBe(42);
    expect(result(await g.call('named', 41))).toBe(42);
    expect(result(await g.call('both'))).toBe('handler');
  });

  it('passes an absent event as undefined and returns undefined as no field', async () => {
    expectOk(await g.load({ u: 'function handler(e) { if (e !== undefined) throw new Error("got " + e); }' }));
    const x = await g.call('u');
    expectOk(x);
    expect(x.final.fields).toHaveLength(0);
  });

  it('reports a syntax error with the routing key, line and column', async () => {
    const x = await g.load({ greet: 'function handler(e) {\n  return 1 +;\n}' });
    expect(x.final.status).toBe(AIRLOCK_STATUS_COMPILE_ERROR);
    expect(texts(x)[0]).toMatch(/^handler 'greet': SyntaxError: .+ \(handler:greet:2:\d+\)$/);
  });

  it('drops all handlers after a failed LOAD', async () => {
    expectOk(await g.load({ keep: 'function handler() { return 1; }' }));
    const bad = await g.load({ broken: 'function handler( {' });
    expect(bad.final.status).toBe(AIRLOCK_STATUS_COMPILE_ERROR);
    expect((await g.call('keep')).final.status).toBe(AIRLOCK_STATUS_NO_HANDLER);
  });

  it('names a missing module and a missing handler function', async () => {
    const missing = await g.load({ m: 'import { x } from "user:nope";\nfunction handler() { return x; }' });
    expect(missing.final.status).toBe(AIRLOCK_STATUS_COMPILE_ERROR);
    expect(texts(missing)[0]).toContain("handler 'm'");
    expect(texts(missing)[0]).toContain("'user:nope'");
    const noHost = await g.load({ h: 'import { x } from "host:absent";\nfunction handler() {}' });
    expect(texts(noHost)[0]).toContain("'host:absent'");
    const none = await g.load({ x: 'const y = 1;' });
    expect(none.final.status).toBe(AIRLOCK_STATUS_COMPILE_ERROR);
    expect(texts(none)[0]).toBe("handler 'x' does not define a function named handler or a default export");
  });

  it('reports a top-level throw as a compile error', async () => {
    const x = await g.load({ t: 'throw new TypeError("boom");\nfunction handler() {}' });
    expect(x.final.status).toBe(AIRLOCK_STATUS_COMPILE_ERROR);
    expect(texts(x)[0]).toMatch(/^handler 't': TypeError: boom \(handler:t:1:\d+\)$/);
  });

  it('answers NO_HANDLER for an unknown routing key', async () => {
    const x = await g.call('nobody');
    expect(x.final.status).toBe(AIRLOCK_STATUS_NO_HANDLER);
    expect(texts(x)[0]).toContain("'nobody'");
  });

  it('keeps the name, message and guest stack of exceptions', async () => {
    expectOk(
      await g.load({
        thrower: 'class MyError extends Error { constructor(m) { super(m); this.name = "MyError"; } }\n' +
          'function inner(e) { throw new MyError("bad " + e.n); }\nfunction handler(e) { return inner(e); }',
        prim: 'function handler() { throw "plain string"; }',
      }),
    );
    const x = await g.call('thrower', { n: 7 });
    expect(x.final.status).toBe(AIRLOCK_STATUS_EXCEPTION);
    const [name, message, stack] = texts(x);
    expect(name).toBe('MyError');
    expect(message).toBe('bad 7');
    expect(stack).toContain('at inner (handler:thrower:2:');
    expect(stack).toContain('at handler (handler:thrower:3:');
    const p = await g.call('prim');
    expect(p.final.status).toBe(AIRLOCK_STATUS_EXCEPTION);
    expect(texts(p).slice(0, 2)).toEqual(['', 'plain string']);
  });

  it('rejects an event that is not JSON with BAD_REQUEST', async () => {
    expectOk(await g.load({ echo: 'function handler(e) { return e; }' }));
    const x = await g.send(AIRLOCK_MSG_CALL, 0, ['echo', '{not json']);
    expect(x.final.status).toBe(AIRLOCK_STATUS_BAD_REQUEST);
    expect(texts(x)[0]).toMatch(/^event is not valid JSON/);
    expect(result(await g.call('echo', [1, 'two', { three: 3 }]))).toEqual([1, 'two', { three: 3 }]);
  });

  it('reports results that are not JSON-serializable', async () => {
    expectOk(
      await g.load({
        big: 'function handler() { return 10n; }',
        cycle: 'function handler() { const a = {}; a.a = a; return a; }',
      }),
    );
    const big = await g.call('big');
    expect(big.final.status).toBe(AIRLOCK_STATUS_NOT_SERIALIZABLE);
    expect(texts(big)[0]).toContain('BigInt');
    expect((await g.call('cycle')).final.status).toBe(AIRLOCK_STATUS_NOT_SERIALIZABLE);
  });

  it('awaits promises, top-level await, and reports rejections and unsettled promises', async () => {
    expectOk(
      await g.load({
        later: 'const base = await Promise.resolve(40);\nexport default async function (e) { await null; return base + e; }',
        reject: 'async function handler() { await null; throw new RangeError("nope"); }',
        never: 'function handler() { return new Promise(() => {}); }',
      }),
    );
    expect(result(await g.call('later', 2))).toBe(42);
    const r = await g.call('reject');
    expect(r.final.status).toBe(AIRLOCK_STATUS_EXCEPTION);
    expect(texts(r).slice(0, 2)).toEqual(['RangeError', 'nope']);
    const n = await g.call('never');
    expect(n.final.status).toBe(AIRLOCK_STATUS_UNSETTLED);
    expect(result(await g.call('later', 1))).toBe(41);
  });

  it('drops handlers and modules on UNLOAD and loads again afterwards', async () => {
    expectOk(await g.load({ a: 'globalThis.count = (globalThis.count ?? 0) + 1; function handler() { return count; }' }));
    expect(result(await g.call('a'))).toBe(1);
    expectOk(await g.send(AIRLOCK_MSG_UNLOAD, 0, []));
    expect((await g.call('a')).final.status).toBe(AIRLOCK_STATUS_NO_HANDLER);
    expectOk(await g.load({ a: 'globalThis.count = (globalThis.count ?? 0) + 1; function handler() { return count; }' }));
    expect(result(await g.call('a'))).toBe(1);
    expectOk(await g.send(AIRLOCK_MSG_GC, 0, []));
    expectOk(await g.call('a', undefined, AIRLOCK_CALL_FLAG_GC));
  });

  it('provides Date, performance.now and Math.random', async () => {
    expectOk(
      await g.load({
        clock: 'function handler() { return { now: Date.now(), iso: new Date().toISOString(), perf: typeof performance.now(), r: Math.random() }; }',
      }),
    );
    const before = Date.now();
    const v = result(await g.call('clock')) as { now: number; iso: string; perf: string; r: number };
    expect(Math.abs(v.now - before)).toBeLessThan(60_000);
    expect(v.iso.slice(0, 4)).toBe(new Date().toISOString().slice(0, 4));
    expect(v.perf).toBe('number');
    expect(v.r).toBeGreaterThanOrEqual(0);
    expect(v.r).toBeLessThan(1);
  });
});

describe('user modules', () => {
  it('resolves modules in any order, lazily, as singletons with shared state', async () => {
    const g = await start();
    const x = await g.load(
      {
        first: 'import { bump } from "user:counter";\nfunction handler() { return bump(); }',
        second: 'import { bump, label } from "user:counter";\nimport { greet } from "mylib:utils";\nfunction handler() { return greet(label) + bump(); }',
      },
      [
        ['mylib', 'utils', 'export function greet(s) { return "hi " + s + " "; }'],
        ['', 'counter', 'import { prefix } from "user:prefix";\nlet n = 0;\nexport const label = prefix + "counter";\nexport function bump() { return ++n; }'],
        ['user', 'prefix', 'export const prefix = "the ";'],
      ],
    );
    expectOk(x);
    expect(result(await g.call('first'))).toBe(1);
    expect(result(await g.call('second'))).toBe('hi the counter 2');
    expect(result(await g.call('first'))).toBe(3);
  });

  it('names the module that fails to compile', async () => {
    const g = await start();
    const x = await g.load({ h: 'import { f } from "user:broken";\nfunction handler() { return f(); }' }, [
      ['user', 'broken', 'export function f() {\n  return )\n}'],
    ]);
    expect(x.final.status).toBe(AIRLOCK_STATUS_COMPILE_ERROR);
    expect(texts(x)[0]).toMatch(/^handler 'h': SyntaxError: .+\(user:broken:2:\d+\)$/);
  });
});

describe('host functions', () => {
  it('calls the host with JSON args, returns its JSON result, and surfaces host errors', async () => {
    const g = await start({}, [
      ['math', 'add'],
      ['math', 'fail'],
      ['util', 'nothing'],
    ]);
    g.hostFunctions['math.add'] = (a, b) => (a as number) + (b as number);
    g.hostFunctions['math.fail'] = () => {
      throw new Error('host says no');
    };
    g.hostFunctions['util.nothing'] = () => undefined;
    expectOk(
      await g.load({
        calc:
          'import { add, fail } from "host:math";\nimport * as util from "host:util";\n' +
          'function handler(e) {\n' +
          '  console.log("before");\n' +
          '  const sum = add(e.a, e.b);\n' +
          '  let caught;\n' +
          '  try { fail(1); } catch (err) { caught = { name: err.name, message: err.message, isError: err instanceof Error }; }\n' +
          '  return { sum, caught, nothing: util.nothing() === undefined };\n' +
          '}',
        uncaught: 'import { fail } from "host:math";\nfunction handler() { fail(); }',
        badargs: 'import { add } from "host:math";\nfunction handler() { try { add(1n); } catch (e) { return e.name + ": " + e.message; } }',
      }),
    );
    const x = await g.call('calc', { a: 2, b: 3 });
    expect(result(x)).toEqual({
      sum: 5,
      caught: { name: 'HostFunctionError', message: 'host says no', isError: true },
      nothing: true,
    });
    expect(x.hostCalls).toEqual([
      { module: 'math', fn: 'add', args: [2, 3] },
      { module: 'math', fn: 'fail', args: [1] },
      { module: 'util', fn: 'nothing', args: [] },
    ]);
    expect(x.allConsole).toEqual([{ level: 'log', text: 'before' }]);
    const u = await g.call('uncaught');
    expect(u.final.status).toBe(AIRLOCK_STATUS_EXCEPTION);
    expect(texts(u).slice(0, 2)).toEqual(['HostFunctionError', 'host says no']);
    const b = await g.call('badargs');
    expect(result(b)).toMatch(/^TypeError: arguments of host function math\.add are not JSON-serializable/);
    expect(b.hostCalls).toEqual([]);
  });

  it('throws a RangeError in the guest when the arguments do not fit the output buffer', async () => {
    const g = await start({ outputSize: 4096 }, [['io', 'put']]);
    g.hostFunctions['io.put'] = () => 1;
    expectOk(
      await g.load({ big: 'import { put } from "host:io";\nfunction handler() { try { put("x".repeat(10000)); } catch (e) { return e.name; } }' }),
    );
    const x = await g.call('big');
    expect(result(x)).toBe('RangeError');
    expect(x.hostCalls).toEqual([]);
  });

  it('lets handler top-level code call host functions during LOAD', async () => {
    const g = await start({}, [['cfg', 'get']]);
    g.hostFunctions['cfg.get'] = (k) => ({ key: k, value: 7 });
    expectOk(
      await g.load({
        a: 'import { get } from "host:cfg";\nconst c = get("a");\nfunction handler() { return c; }',
        b: 'function handler() { return "b"; }',
      }),
    );
    expect(result(await g.call('a'))).toEqual({ key: 'a', value: 7 });
    expect(result(await g.call('b'))).toBe('b');
  });
});

describe('console', () => {
  it('formats values like Node and emits them before the result', async () => {
    const g = await start();
    expectOk(
      await g.load({
        log:
          'function handler() {\n' +
          '  console.log("s", 1, true, null, undefined, [1, "a"], { k: 1 });\n' +
          '  console.info("i"); console.warn("w"); console.error(new TypeError("bad")); console.debug(Symbol("sym"));\n' +
          '  return 1;\n}',
      }),
    );
    const x = await g.call('log');
    expect(result(x)).toBe(1);
    expect(x.console.map((c) => c.level)).toEqual(['log', 'info', 'warn', 'error', 'debug']);
    expect(x.console[0].text).toBe('s 1 true null undefined [1,"a"] {"k":1}');
    expect(x.console[3].text).toMatch(/^TypeError: bad\n\s+at handler \(handler:log:3:/);
    expect(x.console[4].text).toBe('Symbol(sym)');
  });

  it('keeps at most console_limit bytes per request and reports the rest', async () => {
    const g = await start({ consoleLimit: 100 });
    expectOk(await g.load({ spam: 'function handler(n) { for (let i = 0; i < n; i++) console.log("0123456789"); return n; }' }));
    const x = await g.call('spam', 50);
    expect(result(x)).toBe(50);
    const kept = x.console.filter((c) => c.level === 'log');
    expect(kept).toHaveLength(10);
    expect(x.console.at(-1)).toEqual({ level: 'warn', text: '[airlock] 400 bytes of console output dropped' });
    const again = await g.call('spam', 2);
    expect(again.console).toHaveLength(2);
  });

  it('answers TOO_LARGE when result and console exceed the output buffer, then recovers', async () => {
    const g = await start({ outputSize: 4096 });
    expectOk(await g.load({ big: 'function handler(n) { console.log("hello"); return "x".repeat(n); }' }));
    const x = await g.call('big', 10000);
    expect(x.final.status).toBe(AIRLOCK_STATUS_TOO_LARGE);
    expect(texts(x)[0]).toMatch(/response is \d+ bytes .* output buffer holds 4096 bytes/);
    expect(result(await g.call('big', 10))).toBe('x'.repeat(10));
  });
});

describe('robustness', () => {
  it('assembles CHUNKed requests', async () => {
    const g = await start({ inputSize: 1024 });
    const source = `function handler(e) { return e.length + ${JSON.stringify('y'.repeat(3000))}.length; }`;
    const load = encodeMessage(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'chunky', source]);
    const parts: Buffer[] = [];
    for (let off = 0; off < load.length; off += 900) parts.push(load.subarray(off, off + 900));
    for (let i = 0; i < parts.length; i++) {
      const last = i === parts.length - 1;
      expectOk(await g.send(AIRLOCK_MSG_CHUNK, last ? AIRLOCK_CHUNK_FLAG_LAST : 0, [parts[i]]));
    }
    expect(result(await g.call('chunky', 'abc'))).toBe(3003);
    const bad = await g.send(AIRLOCK_MSG_CHUNK, AIRLOCK_CHUNK_FLAG_LAST, [Buffer.from('short')]);
    expect(bad.final.status).toBe(AIRLOCK_STATUS_BAD_REQUEST);
  });

  it('turns heap exhaustion into OUT_OF_MEMORY and keeps answering', async () => {
    const g = await start({ heapSize: 8 << 20 });
    expectOk(
      await g.load({
        hog: 'function handler() { const a = []; for (;;) a.push("x".repeat(1000) + a.length); }',
        ok: 'function handler(e) { return e; }',
      }),
    );
    const x = await g.call('hog');
    expect(x.final.status).toBe(AIRLOCK_STATUS_OUT_OF_MEMORY);
    expect(texts(x)[0]).toContain('heap');
    expect(result(await g.call('ok', { still: 'alive' }))).toEqual({ still: 'alive' });
    expect((await g.call('hog')).final.status).toBe(AIRLOCK_STATUS_OUT_OF_MEMORY);
    expect(result(await g.call('ok', 2))).toBe(2);
  });

  it('turns deep recursion into STACK_OVERFLOW and keeps answering', async () => {
    const g = await start();
    expectOk(
      await g.load({
        deep: 'function handler() { function r(n) { return r(n + 1) + 1; } return r(0); }',
        caught: 'function handler() { function r(n) { return r(n + 1) + 1; } try { r(0); } catch (e) { return e.message; } }',
        ok: 'function handler(e) { return e; }',
      }),
    );
    const x = await g.call('deep');
    expect(x.final.status).toBe(AIRLOCK_STATUS_STACK_OVERFLOW);
    expect(result(await g.call('caught'))).toBe('stack overflow');
    expect(result(await g.call('ok', 3))).toBe(3);
  });

  it('answers BAD_REQUEST to garbage, truncated and unknown requests', async () => {
    const g = await start();
    expectOk(await g.load({ ok: 'function handler(e) { return e; }' }));
    const cases: Buffer[] = [
      Buffer.alloc(0),
      Buffer.from('garbage'),
      Buffer.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]),
      encodeMessage(99, 0, ['x']),
      encodeMessage(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'x']),
      encodeMessage(AIRLOCK_MSG_LOAD, 0, ['bogus', '', 'x', 'y']),
      (() => {
        const m = encodeMessage(AIRLOCK_MSG_CALL, 0, ['ok', '1']);
        m.writeUInt32LE(0xffffffff, 12); // field count far beyond the body
        return m;
      })(),
      (() => {
        const m = encodeMessage(AIRLOCK_MSG_CALL, 0, ['ok', '1']);
        m.writeUInt32LE(0x7fffffff, 16); // first field longer than the message
        return m;
      })(),
    ];
    for (let i = 0; i < 200; i++) {
      const noise = Buffer.alloc(16 + (i % 48));
      for (let k = 0; k < noise.length; k++) noise[k] = (i * 131 + k * 17) & 0xff;
      noise.writeUInt32LE(1 + (i % 7), 0);
      cases.push(noise);
    }
    for (const c of cases) {
      const x = await g.sendRaw(c);
      expect(x.final.kind).toBe(AIRLOCK_MSG_RESULT);
      expect(x.final.status).not.toBe(AIRLOCK_STATUS_OK);
    }
    expect(result(await g.call('ok', 'alive'))).toBe('alive');
  });

  it('rejects a request larger than the input buffer', async () => {
    const g = await start({ inputSize: 256 });
    const x = await g.send(AIRLOCK_MSG_CALL, 0, ['x', JSON.stringify('z'.repeat(1000))]);
    expect(x.final.status).toBe(AIRLOCK_STATUS_BAD_REQUEST);
    expect(texts(x)[0]).toContain('exceeds the 256-byte input buffer');
  });

  it('stops a running request when the platform asks (INTERRUPTED) and keeps answering', async () => {
    const g = await start();
    expectOk(await g.load({ spin: 'function handler() { for (;;) {} }', ok: 'function handler(e) { return e; }' }));
    const pending = g.call('spin');
    await new Promise((r) => setTimeout(r, 200));
    g.interrupt();
    const x = await pending;
    expect(x.final.status).toBe(AIRLOCK_STATUS_INTERRUPTED);
    expect(result(await g.call('ok', 5))).toBe(5);
  });

  it('writes its ABORT after the console lines of the call it aborts', async () => {
    const g = await start();
    expectOk(await g.load({ spin: 'function handler() { console.log("one"); console.warn("two"); for (;;) {} }' }));
    const pending = g.call('spin');
    await new Promise((r) => setTimeout(r, 200));
    g.abortRunning();
    const x = await pending;
    expect(x.exitKind).toBe(AIRLOCK_EXIT_ABORT);
    expect(x.console).toEqual([
      { level: 'log', text: 'one' },
      { level: 'warn', text: 'two' },
    ]);
    expect(x.final.kind).toBe(AIRLOCK_MSG_ABORT);
    expect(texts(x)).toEqual(['abort requested by SIGUSR2']);
  });

  // A console message is 27 bytes plus its text ("log"); an ABORT of n text bytes is 20 + n.
  for (const [what, lines, size, expected] of [
    ['cut to the room the lines leave', 2, 2006, { kept: 2, text: 'abort requ' }],
    ['alone at the start when not even an empty one fits', 4, 993, { kept: 0, text: 'abort requested by SIGUSR2' }],
  ] as const) {
    it(`writes its ABORT ${what} (4 KiB output buffer)`, async () => {
      const g = await start({ outputSize: 4096 });
      expectOk(await g.load({ fill: `function handler() { for (let i = 0; i < ${lines}; i++) console.log(String(i).repeat(${size})); for (;;) {} }` }));
      const pending = g.call('fill');
      await new Promise((r) => setTimeout(r, 200));
      g.abortRunning();
      const x = await pending;
      expect(x.exitKind).toBe(AIRLOCK_EXIT_ABORT);
      expect(x.final.kind).toBe(AIRLOCK_MSG_ABORT);
      expect(x.console.map((l) => l.text)).toEqual(['0', '1'].slice(0, expected.kept).map((d) => d.repeat(size)));
      expect(texts(x)).toEqual([expected.text]);
    });
  }

  it('exercises the allocator with mixed sizes without corrupting data', async () => {
    const g = await start({ heapSize: 32 << 20 });
    expectOk(
      await g.load({
        churn:
          'function handler(seed) {\n' +
          '  let s = seed; const rnd = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;\n' +
          '  const live = new Map(); let check = 0;\n' +
          '  for (let i = 0; i < 20000; i++) {\n' +
          '    const k = Math.floor(rnd() * 500);\n' +
          '    const old = live.get(k);\n' +
          '    if (old) { if (old.s !== old.c.repeat(old.n)) throw new Error("corrupt " + k); check += old.n; }\n' +
          '    const n = rnd() < 0.05 ? Math.floor(rnd() * 200000) : Math.floor(rnd() * 300);\n' +
          '    const c = String.fromCharCode(97 + (i % 26));\n' +
          '    live.set(k, { s: c.repeat(n), c, n, arr: new Array(n % 50).fill(i) });\n' +
          '  }\n' +
          '  return check;\n}',
      }),
    );
    const a = result(await g.call('churn', 1, AIRLOCK_CALL_FLAG_GC));
    const b = result(await g.call('churn', 1, AIRLOCK_CALL_FLAG_GC));
    expect(typeof a).toBe('number');
    expect(b).toBe(a);
  });
});
