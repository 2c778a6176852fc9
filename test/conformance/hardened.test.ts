// hardened.test.ts — the hardened profile on both tiers: each restriction holds, and
// ordinary handler code (classes, Error subclasses, JSON, promises, Web APIs) still runs.
import { expect, it } from 'vitest';
import { describeEachBackend } from './backends.js';

const attempt = (body: string) => `function handler() { try { ${body}; return 'allowed'; } catch (e) { return e.name + ': ' + e.message; } }`;

describeEachBackend('hardened profile', (h) => {
  it('disables code generation from strings', async () => {
    const sandbox = await h.load(
      {
        evalDirect: attempt(`eval('1 + 1')`),
        evalIndirect: attempt(`(0, globalThis.eval)('1')`),
        fn: attempt(`new Function('return 1')`),
        fnViaPrototype: attempt(`(function () {}).constructor('return 1')`),
        asyncFn: attempt(`(async function () {}).constructor('return 1')`),
        generatorFn: attempt(`(function* () {}).constructor('yield 1')`),
        asyncGeneratorFn: attempt(`(async function* () {}).constructor('yield 1')`),
        reflect: attempt(`Reflect.construct(Object.getPrototypeOf(() => {}).constructor, ['return 1'])`),
      },
      { builder: h.builder().setHardened() },
    );
    try {
      for (const name of ['evalDirect', 'evalIndirect', 'fn', 'fnViaPrototype', 'asyncFn', 'generatorFn', 'asyncGeneratorFn', 'reflect']) {
        expect(await sandbox.callHandler(name, {})).toMatch(/^EvalError: .* is disabled by the hardened profile$/);
      }
    } finally {
      await sandbox.dispose();
    }
  });

  it('freezes the intrinsics and the Web API globals', async () => {
    const sandbox = await h.load(
      {
        protoWrite: attempt(`Array.prototype.push = function () {}`),
        protoAdd: attempt(`Object.prototype.polluted = 1`),
        staticWrite: attempt(`JSON.parse = () => 1`),
        globalRebind: attempt(`globalThis.Math = {}`),
        webapiRebind: attempt(`globalThis.URL = class {}`),
        webapiProto: attempt(`URL.prototype.toString = () => 'x'`),
        frozen: `function handler() { return [Object.isFrozen(Object.prototype), Object.isFrozen(Object.getPrototypeOf(function* () {})), Object.isFrozen(TextEncoder.prototype), Object.isFrozen(crypto)]; }`,
      },
      { builder: h.builder().setHardened() },
    );
    try {
      for (const name of ['protoWrite', 'protoAdd', 'staticWrite', 'globalRebind', 'webapiRebind', 'webapiProto']) {
        expect(await sandbox.callHandler(name, {})).toMatch(/^TypeError: /);
      }
      expect(await sandbox.callHandler('frozen', {})).toEqual([true, true, true, true]);
    } finally {
      await sandbox.dispose();
    }
  });

  it('coarsens the clocks, or fixes Date to the given instant', async () => {
    const clocks = `function handler() { return [performance.now(), Date.now(), new Date().getTime(), typeof Date(), new Date(86400000).toISOString()]; }`;
    const coarse = await h.load({ clocks }, { builder: h.builder().setHardened({ timeResolutionMs: 100 }) });
    const fixed = await h.load({ clocks }, { builder: h.builder().setHardened({ fixedTime: new Date('2020-01-02T03:04:05Z') }) });
    try {
      const [perf, now, dateNow] = (await coarse.callHandler('clocks', {})) as number[];
      expect(perf % 100).toBe(0);
      expect(now % 100).toBe(0);
      expect(dateNow % 100).toBe(0);
      const fixedTime = Date.UTC(2020, 0, 2, 3, 4, 5);
      expect(await fixed.callHandler('clocks', {})).toEqual([expect.any(Number), fixedTime, fixedTime, 'string', '1970-01-02T00:00:00.000Z']);
    } finally {
      await coarse.dispose();
      await fixed.dispose();
    }
  });

  it('still runs ordinary handlers', async () => {
    const ordinary = `
      class ValidationError extends Error {
        constructor(message) { super(message); this.name = 'ValidationError'; }
      }
      class Point { constructor(x, y) { this.x = x; this.y = y; } toString() { return this.x + ',' + this.y; } }
      export async function handler(event) {
        const p = new Point(event.x, 2);
        p.toString = () => 'own';
        const err = new ValidationError('bad');
        const total = await Promise.all([1, 2, 3].map(async (n) => n * 2));
        globalThis.counter = (globalThis.counter ?? 0) + 1;
        return { p: String(p), err: err.name + ':' + err.message, total, counter, json: JSON.parse(JSON.stringify({ a: [1] })),
                 url: new URL('/x?y=1', 'https://h').href, idn: new URL('http://b\u00fccher.example/').hostname, utf8: new TextEncoder().encode('\u00e9').length };
      }`;
    const sandbox = await h.load({ ordinary }, { builder: h.builder().setHardened() });
    try {
      expect(await sandbox.callHandler('ordinary', { x: 1 })).toEqual({
        p: 'own', err: 'ValidationError:bad', total: [2, 4, 6], counter: 1, json: { a: [1] }, url: 'https://h/x?y=1', idn: 'xn--bcher-kva.example', utf8: 2,
      });
      expect(((await sandbox.callHandler('ordinary', { x: 1 })) as { counter: number }).counter).toBe(2);
    } finally {
      await sandbox.dispose();
    }
  });

  it('refuses bad options', () => {
    for (const bad of [{ timeResolutionMs: 0 }, { timeResolutionMs: Number.NaN }, { fixedTime: 1.5 }, { fixedTime: new Date('nope') }]) {
      expect(() => h.builder().setHardened(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
  });
});
