// host-functions.test.ts — host:* modules: registration, the JSON wire, sync and async
// callbacks, errors in both directions, re-entrancy, and main-thread execution.
import { isMainThread, threadId } from 'node:worker_threads';
import { afterEach, expect, it } from 'vitest';
import type { LoadedJSSandbox, ProtoJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

describeEachBackend('host functions', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  async function loadWith(register: (proto: ProtoJSSandbox) => void, handlers: Record<string, string>): Promise<LoadedJSSandbox> {
    const proto = await h.builder().build();
    open.push(proto);
    register(proto);
    const js = await proto.loadRuntime();
    for (const [name, code] of Object.entries(handlers)) js.addHandler(name, code);
    return js.getLoadedSandbox();
  }

  it('runs the documented quick start (namespace import, spread args, auto-stringified result)', async () => {
    const loaded = await loadWith(
      (proto) => proto.hostModule('math').register('add', (a: number, b: number) => a + b),
      {
        handler: `import * as math from "host:math";
          function handler(event) { return { result: math.add(event.a, event.b) }; }`,
      },
    );
    expect(await loaded.callHandler('handler', { a: 10, b: 32 })).toEqual({ result: 42 });
  });

  it('supports named imports, chained registration, the register() shorthand and many modules', async () => {
    const loaded = await loadWith(
      (proto) => {
        proto.hostModule('math').register('add', (a: number, b: number) => a + b).register('mul', (a: number, b: number) => a * b);
        proto.register('strings', 'upper', (s: string) => s.toUpperCase());
        proto.register('db', 'query', (table: string) => ({ rows: [{ id: 1, table }] }));
      },
      {
        handler: `import { add, mul } from "host:math";
          import { upper } from "host:strings";
          import * as db from "host:db";
          function handler(e) { return [add(2, 3), mul(2, 3), upper(e.s), db.query("users")]; }`,
      },
    );
    expect(await loaded.callHandler('handler', { s: 'abc' })).toEqual([5, 6, 'ABC', { rows: [{ id: 1, table: 'users' }] }]);
  });

  it('passes arguments as parsed JSON, spread, and returns undefined as undefined', async () => {
    const seen: unknown[][] = [];
    const loaded = await loadWith(
      (proto) =>
        proto.register('spy', 'record', (...args: unknown[]) => {
          seen.push(args);
          return undefined;
        }),
      {
        handler: `import { record } from "host:spy";
          function handler() {
            const r = record(1, "two", { three: [3] }, null, true);
            const none = record();
            return { r: r === undefined, none: none === undefined };
          }`,
      },
    );
    expect(await loaded.callHandler('handler', {})).toEqual({ r: true, none: true });
    expect(seen).toEqual([[1, 'two', { three: [3] }, null, true], []]);
  });

  it('awaits async callbacks while the guest call stays synchronous', async () => {
    const loaded = await loadWith(
      (proto) =>
        proto.hostModule('api').register('fetchUser', async (id: number) => {
          await new Promise((r) => setTimeout(r, 20));
          return { id, name: `user-${id}` };
        }),
      {
        handler: `import * as api from "host:api";
          function handler(e) {
            const a = api.fetchUser(e.id);
            const b = api.fetchUser(e.id + 1);
            return { names: [a.name, b.name], sync: typeof a.then };
          }`,
      },
    );
    expect(await loaded.callHandler('handler', { id: 7 })).toEqual({ names: ['user-7', 'user-8'], sync: 'undefined' });
  });

  it('runs callbacks on the Node main thread', async () => {
    let where: { main: boolean; thread: number } | undefined;
    const loaded = await loadWith(
      (proto) =>
        proto.register('env', 'where', () => {
          where = { main: isMainThread, thread: threadId };
          return true;
        }),
      { handler: 'import { where } from "host:env"; function handler() { return where(); }' },
    );
    expect(await loaded.callHandler('handler', {})).toBe(true);
    expect(where).toEqual({ main: isMainThread, thread: threadId });
  });

  it('a result whose then getter throws is a guest error, as await would make it, and the sandbox stays usable', async () => {
    const loaded = await loadWith(
      (proto) => {
        proto.register('odd', 'value', () => ({
          get then(): never {
            throw new Error('then getter failed');
          },
        }));
        proto.register('odd', 'plain', () => 7);
      },
      {
        odd: `import { value } from "host:odd";
          function handler() { try { value(); return "no"; } catch (err) { return err.message; } }`,
        plain: 'import { plain } from "host:odd"; function handler() { return plain(); }',
      },
    );
    expect(await loaded.callHandler('odd', {})).toBe('then getter failed');
    expect(await loaded.callHandler('plain', {})).toBe(7);
    expect(await loaded.callHandler('odd', {})).toBe('then getter failed');
  });

  it('turns a throwing or rejecting callback into a catchable guest error with the host message', async () => {
    const loaded = await loadWith(
      (proto) => {
        proto.hostModule('auth').register('validate', (token: string) => {
          if (!token) throw new Error('Token is required');
          return { valid: true };
        });
        proto.register('auth2', 'check', async () => {
          await null;
          throw new Error('rejected later');
        });
      },
      {
        caught: `import * as auth from "host:auth";
          function handler(e) {
            try { return auth.validate(e.token); }
            catch (err) { return { error: err.message, name: err.name, isError: err instanceof Error }; }
          }`,
        rejected: `import { check } from "host:auth2";
          function handler() { try { check(); return "no"; } catch (err) { return err.message; } }`,
        uncaught: 'import * as auth from "host:auth"; function handler() { return auth.validate(""); }',
      },
    );
    expect(await loaded.callHandler('caught', { token: 'abc' })).toEqual({ valid: true });
    expect(await loaded.callHandler('caught', {})).toEqual({ error: 'Token is required', name: 'HostFunctionError', isError: true });
    expect(await loaded.callHandler('rejected', {})).toBe('rejected later');
    await expect(loaded.callHandler('uncaught', {})).rejects.toMatchObject({
      code: 'ERR_GUEST_EXCEPTION',
      name: 'HostFunctionError',
      message: 'Token is required',
    });
    expect(loaded.poisoned).toBe(false);
    expect(await loaded.callHandler('caught', { token: 'x' })).toEqual({ valid: true });
  });

  it('turns non-serialisable host results into guest errors, never host crashes', async () => {
    const loaded = await loadWith(
      (proto) => {
        proto.register('bad', 'bigint', () => 10n);
        proto.register('bad', 'cycle', () => {
          const o: Record<string, unknown> = {};
          o.o = o;
          return o;
        });
        proto.register('bad', 'fn', () => () => 1);
      },
      {
        handler: `import * as bad from "host:bad";
          function handler() {
            const out = [];
            for (const f of ["bigint", "cycle"]) { try { bad[f](); out.push("no error"); } catch (e) { out.push(e.name); } }
            out.push(bad.fn() === undefined);
            return out;
          }`,
      },
    );
    expect(await loaded.callHandler('handler', {})).toEqual(['HostFunctionError', 'HostFunctionError', true]);
  });

  it('reports guest arguments that cannot become JSON as a TypeError in the guest', async () => {
    const loaded = await loadWith((proto) => proto.register('m', 'f', () => 1), {
      handler: 'import { f } from "host:m"; function handler() { try { f(1n); return "no"; } catch (e) { return e.name; } }',
    });
    expect(await loaded.callHandler('handler', {})).toBe('TypeError');
  });

  it('gives a clear error, not a deadlock, when a callback calls into its own sandbox', async () => {
    let loaded: LoadedJSSandbox | undefined;
    let inner: unknown;
    loaded = await loadWith(
      (proto) =>
        proto.register('loop', 'reenter', async () => {
          inner = await loaded!.callHandler('plain', {}).catch((e: { code?: string }) => e.code);
          return inner;
        }),
      {
        outer: 'import { reenter } from "host:loop"; function handler() { return reenter(); }',
        plain: 'function handler() { return "plain"; }',
      },
    );
    expect(await loaded.callHandler('outer', {})).toBe('ERR_BUSY');
    expect(inner).toBe('ERR_BUSY');
    expect(await loaded.callHandler('plain', {})).toBe('plain');
  });

  it('lets a callback call into a different sandbox', async () => {
    const other = await h.load({ double: 'function handler(e) { return e * 2; }' });
    open.push(other);
    const loaded = await loadWith(
      (proto) => proto.register('peer', 'double', (n: number) => other.callHandler('double', n)),
      { handler: 'import { double } from "host:peer"; function handler(e) { return double(e) + 1; }' },
    );
    expect(await loaded.callHandler('handler', 20)).toBe(41);
  });

  it('rejects empty names, non-functions and registration after loadRuntime()', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    expect(() => proto.hostModule('')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => proto.hostModule('m').register('', () => 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => proto.register('', 'f', () => 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => proto.register('m', 'f', 'not a function' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    const mod = proto.hostModule('m');
    await proto.loadRuntime();
    expect(() => mod.register('late', () => 1)).toThrow(
      expect.objectContaining({ code: 'ERR_CONSUMED', message: expect.stringContaining('before loadRuntime()') }),
    );
    expect(() => proto.register('m', 'late', () => 1)).toThrow(expect.objectContaining({ code: 'ERR_CONSUMED' }));
  });

  it('refuses to load a handler importing an unregistered host module, naming it', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    const js = await proto.loadRuntime();
    js.addHandler('h', 'import * as nope from "host:nope"; function handler() { return 1; }');
    await expect(js.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_COMPILE', message: expect.stringContaining('host:nope') });
  });

  it('survives many host calls in one handler call', async () => {
    let total = 0;
    const loaded = await loadWith(
      (proto) =>
        proto.register('acc', 'add', (n: number) => {
          total += n;
          return total;
        }),
      { handler: 'import { add } from "host:acc"; function handler(e) { let v = 0; for (let i = 1; i <= e.n; i++) v = add(i); return v; }' },
    );
    expect(await loaded.callHandler('handler', { n: 500 })).toBe((500 * 501) / 2);
  });
});
